//! User namespaces with given id mappings, as CRI `UserNamespace` mode POD
//! asks for a pod: made by a forked child that unshares one and waits
//! while this process (root in the parent namespace, so any mapping is
//! allowed) writes its `uid_map` and `gid_map`; the namespace is kept
//! through a descriptor of `/proc/<child>/ns/user`, the child then exits.
//!
//! The child runs only raw, async-signal-safe syscalls (unshare, read,
//! write, _exit), so this may be called from a multi-threaded process (the
//! daemon's start-up probe) as well as from the `pinns` helper.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd;

/// One contiguous range of ids: `container_id..container_id+length` inside
/// the namespace is `host_id..host_id+length` outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// The first id inside the namespace.
    pub container_id: u32,
    /// The id it is on the host.
    pub host_id: u32,
    /// How many ids the range holds.
    pub length: u32,
}

impl IdMap {
    /// The host id of `id` inside the namespace, when the range maps it.
    pub fn host_of(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.length).then(|| self.host_id + off)
    }

    /// `container_id host_id length` as `uid_map` takes it (and the
    /// command line of `pinns` passes it, with `:` between).
    pub fn line(&self) -> String {
        format!("{} {} {}", self.container_id, self.host_id, self.length)
    }

    /// Parses `container:host:length`.
    pub fn parse(s: &str) -> Option<IdMap> {
        let mut it = s.split(':').map(|p| p.parse::<u32>().ok());
        let m = IdMap {
            container_id: it.next()??,
            host_id: it.next()??,
            length: it.next()??,
        };
        it.next().is_none().then_some(m)
    }
}

fn map_text(maps: &[IdMap]) -> String {
    maps.iter().map(|m| m.line() + "\n").collect()
}

/// A new user namespace with these mappings, as an open descriptor of it
/// (`setns`-able, bind-mountable through `/proc/self/fd/N`, usable as
/// `mount_setattr`'s `userns_fd`).
pub fn create(uids: &[IdMap], gids: &[IdMap]) -> io::Result<File> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (rr, rw) = (ready_r.as_raw_fd(), ready_w.as_raw_fd());
    let (dr, dw) = (done_r.as_raw_fd(), done_w.as_raw_fd());
    // SAFETY: the child only makes raw syscalls on descriptors it owns
    // (unshare, write, read, _exit): no allocation, no locks, so it is sound
    // even when other threads of this process held locks at the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; `byte` lives on this stack frame.
        unsafe {
            libc::close(rr);
            libc::close(dw);
            let byte: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                b'u'
            } else {
                b'e'
            };
            libc::write(rw, (&byte as *const u8).cast(), 1);
            let mut buf = 0u8;
            // Returns at EOF: the parent is done with the namespace.
            libc::read(dr, (&mut buf as *mut u8).cast(), 1);
            libc::_exit(0)
        }
    }
    drop(ready_w);
    drop(done_r);
    let result = (|| {
        let mut byte = [0u8; 1];
        File::from(ready_r).read_exact(&mut byte)?;
        if byte[0] != b'u' {
            return Err(io::Error::other(
                "unshare(CLONE_NEWUSER) failed in the child (user namespaces disabled?)",
            ));
        }
        for (file, maps) in [("uid_map", uids), ("gid_map", gids)] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(map_text(maps).as_bytes()))
                .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
        }
        File::open(format!("/proc/{pid}/ns/user"))
    })();
    drop(done_w);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    result
}

/// Whether pods can have user namespaces with idmapped layers here: a user
/// namespace is made and a detached clone of `dir` (on the filesystem the
/// layers live on) is idmapped with it, then an overlay is mounted over
/// such a clone in a scratch directory under `dir` (overlayfs takes
/// idmapped lower layers from Linux 5.19). Asked once at start; the reason
/// when not.
pub fn probe(dir: &std::path::Path) -> Result<(), String> {
    let map = [IdMap {
        container_id: 0,
        host_id: 1_000_000,
        length: 65536,
    }];
    let ns = create(&map, &map).map_err(|e| format!("user namespace: {e}"))?;
    let scratch = dir.join("userns-probe");
    let _ = super::mount_attr::unmount_tree(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let r = (|| {
        let [lower, idmapped, upper, work, merged] =
            ["lower", "idmapped", "upper", "work", "merged"].map(|d| scratch.join(d));
        for d in [&lower, &idmapped, &upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        super::mount_attr::idmapped_bind(&lower, &idmapped, &ns)
            .map_err(|e| format!("idmapped mount of {}: {e}", lower.display()))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            idmapped.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| format!("overlay over an idmapped layer: {e}"))?;
        Ok(())
    })();
    super::mount_attr::unmount_tree(&scratch).map_err(|e| format!("unmounting the probe: {e}"))?;
    let _ = std::fs::remove_dir_all(&scratch);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_and_translate() {
        let m = IdMap::parse("0:1000:100000").unwrap();
        assert_eq!(m.line(), "0 1000 100000");
        assert_eq!(m.host_of(0), Some(1000));
        assert_eq!(m.host_of(99_999), Some(100_999));
        assert_eq!(m.host_of(100_000), None);
        assert!(IdMap::parse("0:1000").is_none());
        assert!(IdMap::parse("0:1000:1:2").is_none());
        assert!(IdMap::parse("a:1:1").is_none());
    }

    #[test]
    fn a_namespace_gets_its_maps() {
        let m = [IdMap {
            container_id: 0,
            host_id: 2000,
            length: 10,
        }];
        let ns = create(&m, &m).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", ns.as_raw_fd())).unwrap();
        assert!(link.to_string_lossy().starts_with("user:["), "{link:?}");
        let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
        assert_ne!(link, ours);
    }
}
