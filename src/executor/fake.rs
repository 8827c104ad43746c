//! A test double for [`Executor`], as youki tests through its `Syscall`
//! trait: it runs the spec's process as a plain child of the caller, so
//! the monitor's own logic (its loop, reaping, exit records, events, exec
//! capture and timeouts, waits, kills, error codes) can be tested without
//! root and without an image.
//!
//! What it keeps of [`Embedded`]: the fork happens in the calling process,
//! so the process is the caller's child and is reaped by it; the child
//! arranges its stdio with the real `setup_stdio` (own session, the pty
//! as controlling terminal) and holds only that and the report channel; a
//! created process waits for the real start byte before it execs, and
//! [`Executor::start`] is the real one; a program that cannot be executed
//! is reported as `ExecFailed` through the same channel, so start and exec
//! fail as the real ones do.
//!
//! What it fakes away: no namespaces, cgroups, rootfs, user, capabilities,
//! rlimits, seccomp or cwd (the process runs as the test, in its working
//! directory, on the host's tree); `CreateOptions` is ignored (the monitor
//! still reads `cgroup.procs` and `memory.events` itself, so tests give it
//! a directory of their own there); no intermediate process; the terminal
//! of a TTY exec is the caller's pty, not one opened inside a container.
//! Failures the real set-up reports (a bad spec, a refused privilege) are
//! scripted with the annotation [`FAIL_CREATE`].
//!
//! Every child it starts is killed when its parent dies (`PDEATHSIG`), so a
//! test monitor that is killed leaves nothing running.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use oci_spec::runtime::{Process, Spec};

use super::report::{self, Report};
use super::{CreateOptions, Created, Embedded, Executor, ExecutorError, FailureKind, Stdio, sys};

/// Annotation that makes [`Fake::create`] fail with the kind it names:
/// `internal`, `invalid-argument`, `permission-denied`, `exec-failed`.
pub(crate) const FAIL_CREATE: &str = "crius.test/fail-create";

/// See the module documentation.
pub(crate) struct Fake;

fn kind(name: &str) -> FailureKind {
    match name {
        "invalid-argument" => FailureKind::InvalidArgument,
        "permission-denied" => FailureKind::PermissionDenied,
        "exec-failed" => FailureKind::ExecFailed,
        _ => FailureKind::Internal,
    }
}

fn argv(process: Option<&Process>) -> Result<Vec<CString>, ExecutorError> {
    let args = process
        .and_then(|p| p.args().as_ref())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ExecutorError::Spec("no args".into()))?;
    args.iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|e| ExecutorError::Spec(e.to_string())))
        .collect()
}

/// Forks the process on `stdio`; with `wait_start` it reports ready and
/// waits for the start byte before it execs. Answers its pid.
fn spawn(
    stdio: &Stdio,
    chan: &OwnedFd,
    argv: &[CString],
    wait_start: bool,
) -> Result<i32, ExecutorError> {
    let parent = nix::unistd::getpid();
    // SAFETY: the caller is the monitor loop, single-threaded (a test runs
    // it in a forked child); the child only arranges descriptors and execs
    // or leaves through _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            child(stdio, chan.as_raw_fd(), argv, wait_start, parent)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
        Err(e) => Err(ExecutorError::Sys {
            op: "fork",
            source: e.into(),
        }),
    }
}

fn child(
    stdio: &Stdio,
    chan: RawFd,
    argv: &[CString],
    wait_start: bool,
    parent: nix::unistd::Pid,
) -> ! {
    let orphan_proof = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if orphan_proof.is_err() || nix::unistd::getppid() != parent {
        sys::exit(0);
    }
    let chan = match super::linux::setup_stdio(stdio, stdio.terminal, chan) {
        Ok(c) => c,
        Err(e) => report::fail(chan, "stdio", e),
    };
    if wait_start {
        sys::write_all(chan, b"R");
        super::linux::wait_for_start(chan);
    }
    let e = nix::unistd::execvp(&argv[0], argv).unwrap_err();
    let kind = match e {
        nix::errno::Errno::ENOENT | nix::errno::Errno::EACCES | nix::errno::Errno::ENOEXEC => {
            FailureKind::ExecFailed
        }
        _ => FailureKind::Internal,
    };
    report::fail_as(chan, kind, &format!("exec {:?}", argv[0]), e)
}

/// Reads the channel until `done`, EOF or an error report.
fn await_report(ours: &OwnedFd, done: impl Fn(&Report) -> bool) -> Result<Report, ExecutorError> {
    let mut report = Report::default();
    report::read_reports(ours, &mut report, |r| done(r) || r.error.is_some())?;
    match report.error.take() {
        // The child exits (127); the caller reaps it.
        Some((kind, e)) => Err(ExecutorError::reported(kind, e)),
        None => Ok(report),
    }
}

impl Executor for Fake {
    fn create(
        &self,
        spec: &Spec,
        stdio: Stdio,
        _opts: &CreateOptions,
    ) -> Result<Created, ExecutorError> {
        if let Some(name) = spec.annotations().as_ref().and_then(|a| a.get(FAIL_CREATE)) {
            return Err(ExecutorError::reported(
                kind(name),
                format!("scripted failure ({name})"),
            ));
        }
        let argv = argv(spec.process().as_ref())?;
        let (ours, theirs) = report::channel()?;
        let pid = spawn(&stdio, &theirs, &argv, true)?;
        drop((theirs, stdio));
        let report = await_report(&ours, |r| r.ready)?;
        if !report.ready {
            return Err(ExecutorError::Child("ended during set-up".into()));
        }
        Ok(Created {
            pid,
            chan: Some(ours),
            console: None,
            warnings: report.warnings,
        })
    }

    fn start(&self, created: Created) -> Result<(), ExecutorError> {
        // The start byte and the report after it are the real protocol.
        Embedded.start(created)
    }

    fn exec(
        &self,
        _pid: i32,
        _spec: &Spec,
        process: &Process,
        stdio: Stdio,
        _opts: &CreateOptions,
    ) -> Result<i32, ExecutorError> {
        let argv = argv(Some(process))?;
        let (ours, theirs) = report::channel()?;
        let pid = spawn(&stdio, &theirs, &argv, false)?;
        drop((theirs, stdio));
        // EOF: execve succeeded (the channel is close-on-exec).
        await_report(&ours, |_| false)?;
        Ok(pid)
    }

    fn exec_tty(
        &self,
        pid: i32,
        spec: &Spec,
        process: &Process,
        opts: &CreateOptions,
    ) -> Result<(i32, OwnedFd), ExecutorError> {
        let (master, slave) = sys::pty().map_err(ExecutorError::sys("pty"))?;
        let dup = |f: &OwnedFd| f.try_clone().map_err(ExecutorError::sys("dup"));
        let stdio = Stdio {
            stdin: dup(&slave)?,
            stdout: dup(&slave)?,
            stderr: slave,
            terminal: true,
        };
        let pid = self.exec(pid, spec, process, stdio, opts)?;
        Ok((pid, master))
    }
}
