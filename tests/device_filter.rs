//! The cgroup v2 device filter for real: the eBPF program crius attaches to
//! a container's cgroup, on this host's cgroup2 mount (`/sys/fs/cgroup` on
//! a v2 host, `/sys/fs/cgroup/unified` in the hybrid layout). A process
//! moved into the filtered cgroup may make a block device node but not
//! open it, nor a character device outside the standard ones; /dev/null
//! works; a sibling cgroup without the program opens the same node.
//! Needs root and a cgroup2 mount: without them the test fails, it never
//! skips.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crius::cgroups::{CgroupMode, cgroup_mode, devices};
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// A cgroup made for the test, removed when dropped (its processes are
/// gone by then).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(root: &Path, name: &str) -> TestCgroup {
        let dir = root.join(format!("crius-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn cgroup2_root() -> PathBuf {
    match cgroup_mode() {
        Some(CgroupMode::Unified) => "/sys/fs/cgroup".into(),
        Some(CgroupMode::Hybrid) => "/sys/fs/cgroup/unified".into(),
        other => panic!("no cgroup2 mount here ({other:?}): the device filter cannot be tested"),
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// In a child moved into `cgroup`: optionally mknod `node`, then open it
/// with `flags`. The child's first failure comes back as the error (the
/// kernel's errno), through `spawn`.
fn open_in(
    cgroup: &Path,
    node: &Path,
    flags: OFlag,
    make: Option<(SFlag, u64, u64)>,
) -> io::Result<()> {
    let procs = c(&cgroup.join("cgroup.procs"));
    let node = c(node);
    let mut cmd = Command::new("/bin/true");
    let step = move |procs: &CStr, node: &CStr| -> nix::Result<()> {
        let fd = open(procs, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        nix::unistd::write(&fd, b"0")?;
        drop(fd);
        if let Some((kind, major, minor)) = make {
            mknod(
                node,
                kind,
                Mode::from_bits_truncate(0o600),
                makedev(major, minor),
            )?;
        }
        drop(open(node, flags | OFlag::O_CLOEXEC, Mode::empty())?);
        Ok(())
    };
    // The test must act between fork and exec (join the cgroup, then
    // mknod and open) in a child of its own: pre_exec is the way.
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec the closure only makes syscalls
    // (open, write, mknod, close) on C strings built before the fork; it
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || step(&procs, &node).map_err(io::Error::from));
    }
    let status = cmd.spawn()?.wait()?;
    assert!(status.success(), "/bin/true failed: {status}");
    Ok(())
}

#[test]
fn the_ebpf_device_filter_refuses_block_devices_and_allows_the_standard_ones() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the device filter test needs root (bpf(2), cgroup writes, mknod)"
    );
    let root = cgroup2_root();
    println!("cgroup2 at {} ({:?})", root.display(), cgroup_mode());
    let tmpdir = tempdir();
    let tmp = tmpdir.path();
    let filtered = TestCgroup::new(&root, "devices");
    let open_cg = TestCgroup::new(&root, "nodevices");
    devices::attach_filter(&filtered.0, &devices::rules(&[]).expect("rules"))
        .unwrap_or_else(|e| panic!("attaching the device filter: {e}"));

    // /dev/null (and friends) work.
    for dev in ["/dev/null", "/dev/zero", "/dev/urandom"] {
        open_in(&filtered.0, Path::new(dev), OFlag::O_RDWR, None)
            .unwrap_or_else(|e| panic!("{dev} in the filtered cgroup: {e}"));
    }
    // A loop device's node may be made (as v1's `b *:* m`) but not opened.
    let blk = tmp.join("loop");
    let e = open_in(
        &filtered.0,
        &blk,
        OFlag::O_RDONLY,
        Some((SFlag::S_IFBLK, 7, 0)),
    )
    .expect_err("a block device opened through the filter");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "block device: {e}");
    assert!(blk.exists(), "mknod of a block node is allowed, as on v1");
    // A character device outside the standard ones (/dev/mem) neither.
    let mem = tmp.join("mem");
    let e = open_in(
        &filtered.0,
        &mem,
        OFlag::O_RDONLY,
        Some((SFlag::S_IFCHR, 1, 1)),
    )
    .expect_err("/dev/mem opened through the filter");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "char 1:1: {e}");

    // The same loop node opens from a cgroup without the program: the
    // refusal above was the filter's (a missing loop driver would say
    // ENXIO, never EPERM).
    let control = open_in(&open_cg.0, &blk, OFlag::O_RDONLY, None);
    println!("loop node without the filter: {control:?}");
    match control {
        Ok(()) => {}
        Err(e) => assert_ne!(
            e.raw_os_error(),
            Some(libc::EPERM),
            "without the filter the node must not be refused by the device rules \
             (is this test in a restricted v1 devices cgroup?): {e}"
        ),
    }
}

/// A directory for the device nodes, in the temp dir (the target dir may be
/// read-only, as in the VM lane).
fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("crius-devices-")
        .tempdir()
        .expect("temp dir")
}
