//! The program crius runs per pod (the monitor, the namespace pinner and
//! the pod's PID 1) and the sealed copy every such process runs from.
//!
//! A process crius starts can become visible inside a container's PID
//! namespace, and from there `/proc/<pid>/exe` reaches the file it runs
//! (CVE-2019-5736: open it read-only, wait, reopen it for writing through
//! `/proc/self/fd`, overwrite the host's binary). So helpers never run the
//! installed file itself: the daemon mounts the directory holding it as a
//! read-only overlayfs that is attached nowhere (a detached mount, as runc's
//! `exeseal` does) and runs the helper through a descriptor of the file in
//! it. A write open through such a descriptor fails with EROFS before the
//! kernel even checks whether the file is busy, so the binary stays safe
//! when nothing runs it any more. Where overlayfs cannot be mounted, a
//! sealed memfd copy (writes fail with EPERM) is the fallback.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{MemfdFlags, OFlags, SealFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

/// The name helpers are started as (`argv[0]`).
pub const ARGV0: &str = "crius-helper";

/// The installed helper: the small `crius-helper` next to the daemon's
/// binary, else the daemon binary itself (same subcommands, slower start).
pub fn installed() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let small = me.with_file_name(ARGV0);
    if small.is_file() { small } else { me }
}

/// How the running helper is kept from being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// A file in a detached read-only overlayfs: writes fail with EROFS.
    ReadOnlyMount,
    /// A sealed memfd copy: writes fail with EPERM.
    Memfd,
}

/// A sealed helper: a descriptor that can be exec'd through
/// `/proc/self/fd/<fd>` (it is close-on-exec: the path is resolved before
/// the kernel closes it).
#[derive(Debug)]
pub struct Sealed {
    fd: OwnedFd,
    /// Which seal holds.
    pub seal: Seal,
}

/// Why a helper could not be sealed.
#[derive(Debug, thiserror::Error)]
#[error("sealing {path}: {how}: {source}")]
pub struct SealError {
    path: PathBuf,
    how: &'static str,
    #[source]
    source: std::io::Error,
}

impl Sealed {
    /// Seals `exe`: a read-only overlay of its directory, else a memfd copy.
    pub fn new(exe: &Path) -> Result<Sealed, SealError> {
        match overlay(exe) {
            Ok(fd) => Ok(Sealed {
                fd,
                seal: Seal::ReadOnlyMount,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "read-only overlay for the helper failed; using a sealed memfd copy");
                Ok(Sealed {
                    fd: memfd(exe)?,
                    seal: Seal::Memfd,
                })
            }
        }
    }

    /// The path that runs this helper from this process.
    pub fn program(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// The daemon's sealed helper, made on first use.
pub fn sealed() -> Result<&'static Sealed, &'static SealError> {
    static SEALED: OnceLock<Result<Sealed, SealError>> = OnceLock::new();
    SEALED.get_or_init(|| Sealed::new(&installed())).as_ref()
}

/// A command running the sealed helper with `args`, an empty environment
/// (a helper's environment is readable where it is visible) and
/// `crius-helper` as argv[0].
pub fn command(args: &[&str]) -> Result<tokio::process::Command, &'static SealError> {
    let mut cmd = tokio::process::Command::new(sealed()?.program());
    cmd.arg0(ARGV0).args(args).env_clear();
    Ok(cmd)
}

fn err<'a>(path: &'a Path, how: &'static str) -> impl FnOnce(rustix::io::Errno) -> SealError + 'a {
    move |e| SealError {
        path: path.to_path_buf(),
        how,
        source: e.into(),
    }
}

/// Escapes a path for overlayfs's `lowerdir` list.
fn lowerdir_entry(p: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_encoded_bytes() {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from_vec(out)
}

/// `exe` inside a detached, read-only overlay of its directory. overlayfs
/// needs two layers when it has no upper one; the second is an empty
/// detached tmpfs, so nothing is attached anywhere in the mount tree.
fn overlay(exe: &Path) -> Result<OwnedFd, SealError> {
    let exe = std::fs::canonicalize(exe).map_err(|source| SealError {
        path: exe.to_path_buf(),
        how: "resolving",
        source,
    })?;
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(SealError {
            path: exe.clone(),
            how: "splitting",
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    };
    let tmpfs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(err(&exe, "fsopen tmpfs"))?;
    rustix::mount::fsconfig_set_string(&tmpfs, "size", "4k").map_err(err(&exe, "tmpfs size"))?;
    rustix::mount::fsconfig_create(&tmpfs).map_err(err(&exe, "tmpfs"))?;
    let empty = rustix::mount::fsmount(
        &tmpfs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(err(&exe, "fsmount tmpfs"))?;
    let mut lower = lowerdir_entry(dir);
    lower.push(":");
    lower.push(format!("/proc/self/fd/{}", empty.as_raw_fd()));
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(err(&exe, "fsopen overlay"))?;
    rustix::mount::fsconfig_set_string(&fs, "lowerdir", lower.as_os_str())
        .map_err(err(&exe, "overlay lowerdir"))?;
    rustix::mount::fsconfig_create(&fs).map_err(err(&exe, "overlay"))?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV,
    )
    .map_err(err(&exe, "fsmount overlay"))?;
    rustix::fs::openat(&mnt, name, OFlags::PATH | OFlags::CLOEXEC, 0.into())
        .map_err(err(&exe, "opening it in the overlay"))
}

/// A sealed in-memory copy of `exe`.
fn memfd(exe: &Path) -> Result<OwnedFd, SealError> {
    let io = |how| {
        move |source| SealError {
            path: exe.to_path_buf(),
            how,
            source,
        }
    };
    let fd = rustix::fs::memfd_create(
        ARGV0,
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::EXEC,
    )
    .or_else(|_| rustix::fs::memfd_create(ARGV0, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING))
    .map_err(err(exe, "memfd_create"))?;
    let mut src = File::open(exe).map_err(io("opening"))?;
    let mut dst = File::from(fd);
    std::io::copy(&mut src, &mut dst).map_err(io("copying"))?;
    rustix::fs::fcntl_add_seals(
        dst.as_fd(),
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )
    .map_err(err(exe, "sealing"))?;
    Ok(OwnedFd::from(dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Opens `path` read-only, then tries to reopen it for writing and
    /// write through `/proc/self/fd`, as a container would.
    fn reopen_and_write(path: &Path) -> std::io::Result<()> {
        let ro = File::open(path)?;
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", ro.as_raw_fd()))?;
        w.write_all(b"x")
    }

    fn sample() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, b"#!/bin/sh\necho sealed\n").unwrap();
        (dir, exe)
    }

    #[test]
    fn lowerdir_entries_escape_separators() {
        assert_eq!(lowerdir_entry(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }

    #[test]
    fn memfd_copy_refuses_writes_and_keeps_the_bytes() {
        let (_d, exe) = sample();
        let fd = memfd(&exe).unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let e = reopen_and_write(&path).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&exe).unwrap());
    }

    #[test]
    fn overlay_copy_is_read_only() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (it mounts overlayfs)");
        }
        let (_d, exe) = sample();
        let s = Sealed::new(&exe).unwrap();
        assert_eq!(s.seal, Seal::ReadOnlyMount);
        // The O_PATH descriptor reopened read-only, then for writing.
        let path = s.program();
        let e = reopen_and_write(&path).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&exe).unwrap());
        // The host file itself is untouched and still writable by the host.
        std::fs::write(&exe, b"changed").unwrap();
    }
}
