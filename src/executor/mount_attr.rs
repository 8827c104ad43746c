//! Recursive read-only bind mounts (CRI `Mount.recursive_read_only`):
//! `mount_setattr(2)` with `AT_RECURSIVE` and `MOUNT_ATTR_RDONLY` makes a
//! mount and every mount beneath it read-only in one call, where a
//! `MS_REMOUNT | MS_RDONLY` reaches only the top one (Linux 5.12+).
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
