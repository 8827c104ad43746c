//! The pod init: PID 1 of a pod's shared PID namespace (the role of the
//! pause process in cri-o and containerd). Every container of the pod sees
//! it, and one with CAP_SYS_PTRACE can follow `/proc/1/{root,cwd,exe,fd}`
//! and read `/proc/1/environ`, so it holds nothing of the host:
//!
//! - its own mount namespace whose root is an empty read-only tmpfs
//!   (entered with pivot_root; the host's tree is detached), cwd `/`;
//! - no capabilities (every set emptied), no_new_privs, not dumpable;
//! - an empty environment and no descriptors;
//! - its program is the daemon's sealed helper (see `crate::helper`);
//! - a seccomp filter allowing only what its loop uses (signals, wait,
//!   exit).
//!
//! It gets there while it is still alone in the new PID namespace: the
//! pinner ([`spawn`], [`Started::wait_sealed`]) returns only once it
//! reported sealed, and no container can join before that. On the way, it
//! mounts the namespace's /proc at a directory the caller names (the pod's
//! "proc pin"): containers joining the namespace get their /proc as a bind
//! of it, so their set-up never needs a privileged process inside the
//! namespace (see `linux.rs`).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::ExecutorError;
use super::sys;

/// The descriptor the pod init reports on ("S" once sealed, "E…" on error).
const REPORT_FD: RawFd = 3;
/// The empty root the pod init pivots into, passed across its exec.
const NEW_ROOT_FD: RawFd = 4;

/// A pod init forked into a new PID namespace, not yet known to be
/// sealed; killed if dropped before [`Started::wait_sealed`] succeeds.
pub struct Started {
    /// Its pid in the caller's PID namespace.
    pub pid: i32,
    report: OwnedFd,
    sealed: bool,
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.sealed {
            // Our own unreaped child and a valid signal: the one failure
            // possible (it is gone) is no failure to kill() already.
            let _ = sys::kill(self.pid, libc::SIGKILL);
        }
    }
}

/// Forks the pod init. The caller must be single-threaded and have
/// unshared CLONE_NEWPID, so the child is PID 1 of the new namespace.
/// `proc_pin` (an existing directory) gets the namespace's /proc;
/// `scratch` is any existing directory the child mounts its empty root
/// over (in its own mount namespace only).
pub fn spawn(proc_pin: &Path, scratch: &Path) -> Result<Started, ExecutorError> {
    let exe = rustix::fs::open(
        "/proc/self/exe",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        0.into(),
    )
    .map_err(|e| ExecutorError::Sys {
        op: "open /proc/self/exe",
        source: e.into(),
    })?;
    let (report_r, report_w) = super::linux::pipe()?;
    // stdio for the exec: Rust's runtime wants 0-2 open, and the init
    // closes them first thing. A pipe nobody writes holds nothing.
    let (dead, dead_w) = super::linux::pipe()?;
    drop(dead_w);
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| ExecutorError::Spec(format!("NUL in {}", p.display())))
    };
    let (proc_pin, scratch) = (cstr(proc_pin)?, cstr(scratch)?);
    // SAFETY: the caller is single-threaded (pinns); the child only makes
    // syscalls and leaves through execveat or _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let why = lock_down(&proc_pin, &scratch, &exe, &dead, &report_w);
            sys::report_and_exit(REPORT_FD, &why);
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Started {
            pid: child.as_raw(),
            report: report_r,
            sealed: false,
        }),
        Err(e) => Err(ExecutorError::Sys {
            op: "fork",
            source: e.into(),
        }),
    }
}

impl Started {
    /// Waits until the init has installed its filter (it then closes its
    /// report descriptor); kills it on error or after `timeout`.
    pub fn wait_sealed(mut self, timeout: Duration) -> Result<i32, ExecutorError> {
        let mut got = Vec::new();
        let r = read_until_eof(&self.report, &mut got, timeout);
        if r.is_ok() && got == b"S" {
            self.sealed = true;
            return Ok(self.pid);
        }
        let why = match r {
            Err(e) => e,
            Ok(()) if got.first() == Some(&b'E') => String::from_utf8_lossy(&got[1..]).into(),
            Ok(()) => "exited before it was sealed".into(),
        };
        Err(ExecutorError::Child(why))
    }
}

fn read_until_eof(fd: &OwnedFd, out: &mut Vec<u8>, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        let mut pfd = [sys::PollFd::new(fd, sys::PollFlags::IN)];
        let ready = sys::poll(&mut pfd, Some(left.min(Duration::from_secs(60))))
            .map_err(|e| format!("poll: {e}"))?;
        if ready == 0 {
            continue;
        }
        let mut buf = [0u8; 512];
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// In the forked child: not dumpable, the /proc pin, a private mount
/// namespace with an empty read-only tmpfs for a root, then exec
/// `crius-helper pod-init` with no environment and only the report channel
/// (fd 3) and that root (fd 4). The exec happens before pivot_root: the
/// helper is dynamically linked and its loader lives in the host's tree.
/// Returns only on failure, with what went wrong.
fn lock_down(
    proc_pin: &CString,
    scratch: &CString,
    exe: &OwnedFd,
    dead: &OwnedFd,
    report: &OwnedFd,
) -> String {
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let run = || -> Result<(), String> {
        step("not dumpable", nix::sys::prctl::set_dumpable(false))?;
        // Out of the daemon's process group: a signal to it must not
        // reach the pod.
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        step(
            "mounting the pod's /proc",
            nix::mount::mount(
                Some("proc"),
                proc_pin.as_c_str(),
                Some("proc"),
                nodev,
                None::<&str>,
            ),
        )?;
        step(
            "new mount namespace",
            nix::sched::unshare(CloneFlags::CLONE_NEWNS),
        )?;
        step(
            "private mounts",
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            ),
        )?;
        step(
            "empty root",
            nix::mount::mount(
                Some("none"),
                scratch.as_c_str(),
                Some("tmpfs"),
                nodev | MsFlags::MS_RDONLY,
                Some("size=4k,mode=0555"),
            ),
        )?;
        let root = rustix::fs::open(
            scratch.as_c_str(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            0.into(),
        )
        .map_err(|e| format!("opening the empty root: {e}"))?;
        let kept = sys::arrange_fds(
            &[
                dead.as_raw_fd(),
                dead.as_raw_fd(),
                dead.as_raw_fd(),
                report.as_raw_fd(),
                root.as_raw_fd(),
            ],
            &[exe.as_raw_fd()],
        )
        .map_err(|e| format!("descriptors: {e}"))?;
        let argv = [c"crius-helper", c"pod-init"];
        let envp: [&std::ffi::CStr; 0] = [];
        // SAFETY: kept[0] is the (close-on-exec) O_PATH descriptor of our own
        // program, duplicated by arrange_fds; nothing else owns it.
        let exe = unsafe { OwnedFd::from_raw_fd(kept[0]) };
        let e = nix::unistd::execveat(&exe, c"", &argv, &envp, nix::fcntl::AtFlags::AT_EMPTY_PATH);
        Err(format!("exec: {e:?}"))
    };
    match run() {
        Ok(()) => "returned".into(),
        Err(e) => e,
    }
}

/// After exec, still alone in its PID namespace (the pinner waits for "S"
/// before the pod can be used): into the empty root, every capability
/// gone, no_new_privs, no descriptors but the report channel.
fn seal() -> Result<(), String> {
    let step = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    step("not dumpable", nix::sys::prctl::set_dumpable(false))?;
    // SAFETY: NEW_ROOT_FD is the O_PATH directory descriptor the pinner
    // passed; it is closed below and owned by nothing else.
    let root = unsafe { OwnedFd::from_raw_fd(NEW_ROOT_FD) };
    step("entering the empty root", nix::unistd::fchdir(&root))?;
    drop(root);
    step("pivot_root", nix::unistd::pivot_root(".", "."))?;
    step(
        "detaching the host's tree",
        nix::mount::umount2(".", MntFlags::MNT_DETACH),
    )?;
    step("chdir /", nix::unistd::chdir("/"))?;
    drop_all_capabilities()?;
    step("no_new_privs", nix::sys::prctl::set_no_new_privs())?;
    sys::close_fds_except(&[REPORT_FD]).map_err(|e| format!("closing descriptors: {e}"))?;
    Ok(())
}

/// Empties every capability set, the bounding set first (that needs
/// CAP_SETPCAP, which goes with the rest).
fn drop_all_capabilities() -> Result<(), String> {
    for cap in caps::all() {
        if caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("clearing {set:?} capabilities: {e}"))?;
    }
    Ok(())
}

/// The pod init after exec: sealed (see [`seal`]), signals blocked, the
/// seccomp filter in, then "S" to the pinner; it then reaps every orphan
/// the kernel hands it and exits on SIGTERM or SIGINT (its death ends the
/// namespace and every process left in it).
pub fn main() -> ! {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    if let Err(e) = seal() {
        sys::report_and_exit(REPORT_FD, &e);
    }
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        sys::report_and_exit(REPORT_FD, &format!("blocking signals: {e}"));
    }
    let filtered = filter().and_then(|p| super::seccomp::install(&p).map_err(|e| e.to_string()));
    if let Err(e) = filtered {
        sys::report_and_exit(REPORT_FD, &format!("seccomp: {e}"));
    }
    sys::write_all(REPORT_FD, b"S");
    sys::close(REPORT_FD);
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => sys::exit(0),
            Ok(_) | Err(_) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
        }
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// The syscalls the init's loop makes after the filter is in.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// An allow-list filter for [`ALLOWED`]: any other syscall fails with
/// EPERM, any other architecture's calling convention kills. Built by
/// hand (a dozen instructions) because compiling through libseccomp takes
/// milliseconds and the init must be sealed before a container starts.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn filter() -> Result<super::seccomp::Program, String> {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS,
    };
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    // struct seccomp_data: nr at offset 0, arch at offset 4.
    let mut f = vec![stmt(BPF_LD | BPF_W | BPF_ABS, 4), jeq(AUDIT_ARCH, 1, 0)];
    f.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    f.push(stmt(BPF_LD | BPF_W | BPF_ABS, 0));
    let n = ALLOWED.len();
    for (i, nr) in ALLOWED.iter().enumerate() {
        // Match: jump over the remaining checks and the EPERM return.
        let to_allow = u8::try_from(n - i).map_err(|e| e.to_string())?;
        let nr = u32::try_from(*nr).map_err(|e| e.to_string())?;
        f.push(jeq(nr, to_allow, 0));
    }
    f.push(stmt(
        BPF_RET | BPF_K,
        SECCOMP_RET_ERRNO | libc::EPERM as u32,
    ));
    f.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    Ok(super::seccomp::Program::from_filters(f))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn filter() -> Result<super::seccomp::Program, String> {
    Err("no pod init filter for this architecture".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_allows_the_loop_and_denies_the_rest() {
        // Run in a forked child: a filter cannot be removed again.
        let prog = filter().unwrap();
        // SAFETY: the test process may have threads; the child only makes
        // syscalls (no allocation) and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    if nix::sys::prctl::set_no_new_privs().is_err()
                        || super::super::seccomp::install(&prog).is_err()
                    {
                        return 10;
                    }
                    // Denied: getpid and open answer EPERM.
                    // SAFETY: plain syscalls without pointers.
                    if unsafe { libc::syscall(libc::SYS_getpid) } != -1
                        || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
                    {
                        return 11;
                    }
                    // Allowed: a signal mask change.
                    // SAFETY: a null set only queries.
                    if unsafe {
                        libc::syscall(
                            libc::SYS_rt_sigprocmask,
                            libc::SIG_BLOCK,
                            std::ptr::null::<libc::sigset_t>(),
                            std::ptr::null_mut::<libc::sigset_t>(),
                            8,
                        )
                    } != 0
                    {
                        return 12;
                    }
                    0
                })();
                sys::exit(code);
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
