//! Recursive read-only bind mounts (CRI `Mount.recursive_read_only`):
//! `mount_setattr(2)` with `AT_RECURSIVE` and `MOUNT_ATTR_RDONLY` makes a
//! mount and every mount beneath it read-only in one call, where a
//! `MS_REMOUNT | MS_RDONLY` reaches only the top one (Linux 5.12+).
//!
//! Idmapped mounts (user namespaces): a detached clone of a directory
//! (`open_tree(OPEN_TREE_CLONE)`) given `MOUNT_ATTR_IDMAP` with a pod's user
//! namespace and attached elsewhere, so files owned by host root show as
//! the namespace's root (Linux 5.12+, overlayfs lower layers 5.19+): the
//! image layers of a pod with a user namespace, and its idmapped volumes
//! (CRI `Mount.uid_mappings`).
//!
//! Neither rustix (1.1) nor nix (0.31) wraps `mount_setattr`, so the raw
//! syscall is here, behind safe functions over [`AsFd`].

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;

/// `struct mount_attr` (`MOUNT_ATTR_SIZE_VER0`, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY` from linux/mount.h.
const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `MOUNT_ATTR_IDMAP` from linux/mount.h.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

fn mount_setattr(
    dirfd: libc::c_int,
    flags: libc::c_int,
    attr: Option<&MountAttr>,
    size: usize,
) -> io::Result<()> {
    let path = c"";
    let attr = attr.map_or(std::ptr::null(), |a| a as *const MountAttr);
    // SAFETY: `path` is a NUL-terminated string and `attr` is NULL or
    // points at a live `MountAttr` of at least `size` bytes (the probe
    // passes NULL with size 0); the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr,
            size,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the mount whose root `mount` is (an `O_PATH` descriptor of it)
/// and every mount beneath it read-only.
pub(super) fn make_recursively_readonly(mount: impl AsFd) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(
        mount.as_fd().as_raw_fd(),
        libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
        Some(&attr),
        std::mem::size_of::<MountAttr>(),
    )
}

/// A detached clone of the mount at `src` (with `recursive`, of every
/// mount beneath it too), idmapped through the user namespace `userns`: a
/// file owned by host id N shows as the id N maps to inside that
/// namespace, and one made by id M inside is owned by the host id M maps
/// to on disk (for the pod's own namespace: the ids on disk are the ids
/// inside). Only the top mount is idmapped (as runc's `idmap`, not
/// `ridmap`): mounts beneath it keep their ids. A filesystem that cannot
/// be idmapped answers EINVAL.
pub fn idmapped_tree(
    src: &std::path::Path,
    recursive: bool,
    userns: impl AsFd,
) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, src, flags)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_fd().as_raw_fd() as u64,
    };
    mount_setattr(
        tree.as_raw_fd(),
        libc::AT_EMPTY_PATH,
        Some(&attr),
        std::mem::size_of::<MountAttr>(),
    )?;
    Ok(tree)
}

/// Mounts a clone of `src` (not what is mounted beneath it) at `target`,
/// idmapped through the user namespace `userns` (see [`idmapped_tree`]).
pub fn idmapped_bind(
    src: &std::path::Path,
    target: &std::path::Path,
    userns: impl AsFd,
) -> io::Result<()> {
    let tree = idmapped_tree(src, false, userns)?;
    rustix::mount::move_mount(
        &tree,
        c"",
        rustix::fs::CWD,
        target,
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Attaches at `target` (an `O_PATH` descriptor: a container's volume
/// destination, resolved inside its rootfs) a clone of `source` idmapped
/// with `userns`; a filesystem that refuses it is named with the reason.
pub(super) fn idmapped_bind_at(
    source: &std::path::Path,
    recursive: bool,
    userns: impl AsFd,
    target: impl AsFd,
) -> Result<(), String> {
    let tree = idmapped_tree(source, recursive, userns).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EINVAL) => ": its filesystem does not support idmapped mounts",
            Some(libc::EPERM) => ": not permitted (is it idmapped already?)",
            Some(libc::ENOSYS) => ": this kernel has no idmapped mounts (Linux 5.12+)",
            _ => "",
        };
        format!("idmapped bind of {}: {e}{why}", source.display())
    })?;
    rustix::mount::move_mount(
        &tree,
        "",
        target,
        "",
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
            | rustix::mount::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| format!("attaching the idmapped bind of {}: {e}", source.display()))
}

/// Detaches every mount at or beneath `dir` (deepest first, from
/// /proc/self/mountinfo); nothing mounted is fine.
pub fn unmount_tree(dir: &std::path::Path) -> io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(std::path::PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether this kernel (and the seccomp filter crius runs under) lets
/// crius call `mount_setattr`: asked once, with an argument the kernel
/// refuses with EINVAL before it looks at anything else (a size below
/// the first version of the struct). ENOSYS (older kernel) or EPERM (a
/// filter) mean no.
pub fn recursive_readonly_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| match mount_setattr(-1, libc::AT_EMPTY_PATH, None, 0) {
        Err(e) => e.raw_os_error() == Some(libc::EINVAL),
        Ok(()) => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answers_without_side_effects() {
        // This host's kernel (5.12+) has it; the answer is cached.
        let first = recursive_readonly_supported();
        assert_eq!(first, recursive_readonly_supported());
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        if (major, minor) >= (5, 12) {
            assert!(first, "kernel {release} has mount_setattr");
        }
    }
}
