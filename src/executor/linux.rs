//! Linux implementation of the embedded executor.
//!
//! The caller (the monitor, single-threaded) forks an intermediate child,
//! which never becomes visible inside a container: it is not dumpable,
//! closes every descriptor it does not need, sets limits, joins the
//! container's cgroups and namespaces (a PID namespace only applies to its
//! children) and unshares new ones. It then forks the process the
//! container will see, reports its pid and exits; the caller is a child
//! subreaper, so that process becomes its child.
//!
//! What a container can see of the new process is settled before it
//! exists in the container's PID namespace: when the container joins an
//! existing PID namespace (a pod's, a target container's, the host's) the
//! intermediate also builds the rootfs, pivots into it and takes on the
//! container's user, capabilities and no_new_privs, so the new process is
//! born in the container's root with the container's credentials. Only a
//! container with a PID namespace of its own sets up in the new process,
//! which is PID 1 there and alone until it execs (its /proc must be mounted
//! from inside the namespace). Execs always take the first path. The new
//! process then holds its stdio and one channel to the monitor
//! (`report.rs`), nothing else, until execve replaces the sealed helper
//! program (see `crate::helper`).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use oci_spec::runtime::{Process, Spec};

use super::namespaces;
use super::process::{self, Failure, Prepared};
use super::report::{self, Report, fail, fail_as};
use super::{CreateOptions, Created, Embedded, Executor, ExecutorError, FailureKind, Stdio, sys};

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn check(op: &'static str, rc: libc::c_int) -> Result<libc::c_int, ExecutorError> {
    if rc < 0 {
        Err(ExecutorError::Sys {
            op,
            source: errno(),
        })
    } else {
        Ok(rc)
    }
}

/// A close-on-exec pipe `(read, write)`.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), ExecutorError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid 2-element array for pipe2 to fill.
    check("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: pipe2 succeeded, both descriptors are new and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes the calling process adopt orphaned descendants, so container
/// inits forked by an intermediate child end up as its children.
pub fn become_subreaper() -> Result<(), ExecutorError> {
    // SAFETY: prctl with integer arguments only.
    check("prctl(PR_SET_CHILD_SUBREAPER)", unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    })?;
    Ok(())
}

fn fork() -> Result<i32, ExecutorError> {
    // SAFETY: callers are single-threaded (the monitor, or a child of it),
    // so the child's copy of the heap and locks is consistent.
    let pid = unsafe { libc::fork() };
    check("fork", pid)
}

/// Kills and reaps a child that failed during setup; how it had ended
/// (a child already dead reports its own status, not our SIGKILL).
fn abandon(pid: i32) -> i32 {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid)
}

/// Reaps a child; its wait status.
fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && errno().kind() == std::io::ErrorKind::Interrupted
    {}
    status
}

/// A wait status in words.
fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let hint = if sig == libc::SIGKILL {
            " (out of memory?)"
        } else {
            ""
        };
        format!("killed by signal {sig}{hint}")
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

/// Puts the stdio descriptors in place (0, 1, 2), makes a terminal the
/// controlling one, and closes everything else but the monitor channel.
/// Answers the channel's new descriptor.
pub(super) fn setup_stdio(stdio: &Stdio, terminal: bool, chan: RawFd) -> Result<RawFd, String> {
    setup_stdio_keeping(stdio, terminal, chan, None).map(|(chan, _)| chan)
}

/// [`setup_stdio`], keeping `extra` open too (the user namespace a
/// container that sets up in its visible process joins); the new numbers
/// of both.
fn setup_stdio_keeping(
    stdio: &Stdio,
    terminal: bool,
    chan: RawFd,
    extra: Option<RawFd>,
) -> Result<(RawFd, Option<RawFd>), String> {
    // SAFETY: setsid has no arguments.
    unsafe { libc::setsid() };
    let slots = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    let keep: Vec<RawFd> = std::iter::once(chan).chain(extra).collect();
    let kept = sys::arrange_fds(&slots, &keep).map_err(|e| format!("stdio: {e}"))?;
    if terminal {
        // SAFETY: stdin is the pty slave; make it our controlling terminal.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(format!("TIOCSCTTY: {}", errno()));
        }
    }
    Ok((kept[0], kept.get(1).copied()))
}

/// Blocks until the monitor writes the start byte; exits if it hung up.
pub(super) fn wait_for_start(chan: RawFd) {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading one byte into b.
        let n = unsafe { libc::read(chan, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return;
        }
        if n < 0 && errno().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        sys::exit(0);
    }
}

/// Resolves argv[0] on the container's PATH and execs; reports why not
/// (a missing or unrunnable program is the request's problem, not ours).
fn exec_or_report(p: &Prepared, chan: RawFd) -> ! {
    let path = match process::resolve(p.argv[0].to_str().unwrap_or(""), &p.path_env) {
        Ok(path) => path,
        Err(e) => fail_as(chan, FailureKind::ExecFailed, "exec", e),
    };
    let e = process::exec(p, &path);
    let kind = match e.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::EACCES
            | libc::ENOEXEC
            | libc::ENOTDIR
            | libc::ELOOP
            | libc::EISDIR
            | libc::ETXTBSY
            | libc::ENAMETOOLONG,
        ) => FailureKind::ExecFailed,
        _ => FailureKind::Internal,
    };
    fail_as(chan, kind, &format!("exec {:?}", p.argv[0]), e)
}

/// Reports a failed set-up step with its kind and ends the process.
fn fail_step(chan: RawFd, what: &str, f: Failure) -> ! {
    fail_as(chan, f.kind, what, f.message)
}

/// What the intermediate keeps of the monitor's descriptors: `setup`
/// needs all of them (namespace files too), the visible process only
/// `child` (its stdio, a console socket, the channel).
struct Keep {
    setup: Vec<RawFd>,
    child: Vec<RawFd>,
}

/// The intermediate child: hide, let go of the monitor's descriptors,
/// run `setup` (limits, cgroups, namespaces, and where the container joins
/// a PID namespace its rootfs and credentials), drop what only `setup`
/// needed, then fork the visible process, report its pid, exit.
fn intermediate(
    chan: RawFd,
    keep: &Keep,
    setup: impl FnOnce() -> Result<(), Failure>,
    child: impl FnOnce(),
) -> ! {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        fail(chan, "not dumpable", e);
    }
    process::reset_signals();
    if let Err(e) = sys::close_fds_except(&keep.setup) {
        fail(chan, "closing the monitor's descriptors", e);
    }
    if let Err(f) = setup() {
        fail_step(chan, "entering the container", f);
    }
    // The namespace files are closed under their `File`s, which this
    // process never drops: it leaves through _exit.
    if let Err(e) = sys::close_fds_except(&keep.child) {
        fail(chan, "closing the set-up's descriptors", e);
    }
    match fork() {
        Ok(0) => {
            child();
            sys::exit(127)
        }
        Ok(pid) => {
            let mut msg = [b'P', 0, 0, 0, 0];
            msg[1..].copy_from_slice(&pid.to_le_bytes());
            sys::write_all(chan, &msg);
            sys::exit(0)
        }
        Err(e) => fail(chan, "fork", e),
    }
}

impl Embedded {
    /// Forks the intermediate with the child's end of the channel, and
    /// closes this process's copy at once: a child that dies (say, killed
    /// for memory during set-up) then shows as EOF, not as a silent wait.
    fn spawn(
        &self,
        theirs: OwnedFd,
        ours: OwnedFd,
        mut keep: Keep,
        setup: impl FnOnce() -> Result<(), Failure>,
        child: impl FnOnce(),
    ) -> Result<(i32, OwnedFd, Report), ExecutorError> {
        keep.child.push(theirs.as_raw_fd());
        keep.setup.extend_from_slice(&keep.child);
        let mid = fork()?;
        if mid == 0 {
            intermediate(theirs.as_raw_fd(), &keep, setup, child);
        }
        drop(theirs);
        let mut report = Report::default();
        let got =
            report::read_reports(&ours, &mut report, |r| r.pid.is_some() || r.error.is_some());
        let status = reap(mid);
        got?;
        // A fast child's error can come in the same read as the pid: it
        // stays in the report for the caller.
        match (report.pid, report.error.clone()) {
            (Some(pid), _) => Ok((pid, ours, report)),
            (None, Some((kind, e))) => Err(ExecutorError::reported(kind, e)),
            (None, None) => Err(ExecutorError::Child(format!(
                "container set-up ended without a word ({})",
                describe(status)
            ))),
        }
    }
}

fn stdio_fds(stdio: &Stdio) -> [RawFd; 3] {
    [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ]
}

impl Executor for Embedded {
    fn create(
        &self,
        spec: &Spec,
        stdio: Stdio,
        opts: &CreateOptions,
    ) -> Result<Created, ExecutorError> {
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| ExecutorError::Spec("no process".into()))?;
        let prepared = process::prepare(process, opts)?;
        let ns = namespaces::plan_namespaces(spec)?;
        let mounts = super::rootfs::plan(spec, &opts.cgroup_dirs)?;
        // A joined PID namespace's /proc comes from a process already in
        // it: the set-up below runs outside that namespace.
        let peer = match (ns.joined_pid(), mounts.wants_fresh_proc()) {
            (Some(_), true) => {
                let p = opts.pid_peer.as_ref().ok_or_else(|| {
                    ExecutorError::Spec(
                        "a proc mount in a joined PID namespace needs a process of it".into(),
                    )
                })?;
                Some(File::open(p).map_err(|e| {
                    ExecutorError::Spec(format!("PID namespace peer {}: {e}", p.display()))
                })?)
            }
            _ => None,
        };
        let join = namespaces::join_file(crate::cgroups::detected_mode());
        let (ours, theirs) = report::channel()?;
        let chan = theirs.as_raw_fd();
        let inside = ns.new_pid();
        let setup = || -> Result<(), Failure> {
            process::limits(&prepared, chan)?;
            namespaces::join_cgroups(&opts.cgroup_dirs, join)?;
            let proc = match (&peer, ns.joined_pid()) {
                (Some(peer), Some(pid_ns)) => Some(namespaces::clone_peer_proc(peer, pid_ns)?),
                _ => None,
            };
            namespaces::enter(&ns)?;
            if !inside {
                let user = ns.user.as_ref().map(|f| f.as_fd());
                super::rootfs::apply(&mounts, proc, user)?;
                process::make_cwd(&prepared)?;
                namespaces::enter_user(user)?;
                process::become_process(&prepared)?;
            }
            Ok(())
        };
        let child = || {
            let user = ns.user.as_ref().filter(|_| inside).map(|f| f.as_raw_fd());
            let (chan, user) = match setup_stdio_keeping(&stdio, prepared.terminal, chan, user) {
                Ok(c) => c,
                Err(e) => fail(chan, "stdio", e),
            };
            if inside {
                // SAFETY: setup_stdio kept this descriptor open (under a
                // new number) and nothing closes it before execve.
                let user = user.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
                if let Err(e) = super::rootfs::apply(&mounts, None, user) {
                    fail(chan, "rootfs", e);
                }
                let ready = process::make_cwd(&prepared)
                    .and_then(|()| namespaces::enter_user(user).map_err(Failure::from))
                    .and_then(|()| process::become_process(&prepared));
                if let Err(f) = ready {
                    fail_step(chan, "process", f);
                }
            }
            // The labels hold until execve; set now, so a refusal fails
            // the create.
            if let Err(f) = process::set_exec_labels(&prepared) {
                fail_step(chan, "security labels", f);
            }
            sys::write_all(chan, b"R");
            wait_for_start(chan);
            exec_or_report(&prepared, chan);
        };
        // A container with a PID namespace of its own sets up in the
        // visible process (see the module), which then still needs the
        // user namespace to join (and to idmap volumes with).
        let user_fd = ns.user.iter().filter(|_| inside).map(|f| f.as_raw_fd());
        let keep = Keep {
            setup: ns.fds().chain(peer.iter().map(|p| p.as_raw_fd())).collect(),
            child: stdio_fds(&stdio).iter().copied().chain(user_fd).collect(),
        };
        let (pid, ours, mut report) = self.spawn(theirs, ours, keep, setup, child)?;
        let got = report::read_reports(&ours, &mut report, |r| r.ready || r.error.is_some());
        if let Err(e) = got {
            abandon(pid);
            return Err(e);
        }
        if let Some((kind, e)) = report.error {
            abandon(pid);
            return Err(ExecutorError::reported(kind, e));
        }
        if !report.ready {
            let status = abandon(pid);
            return Err(ExecutorError::Child(format!(
                "container init ended during set-up ({})",
                describe(status)
            )));
        }
        Ok(Created {
            pid,
            chan: Some(ours),
            console: None,
            warnings: report.warnings,
        })
    }

    fn start(&self, created: Created) -> Result<(), ExecutorError> {
        let chan = created
            .chan
            .ok_or_else(|| ExecutorError::Child("no channel to the created init".into()))?;
        let mut w = File::from(chan.try_clone().map_err(ExecutorError::sys("dup"))?);
        w.write_all(b"s")
            .map_err(ExecutorError::sys("signalling start"))?;
        drop(w);
        // EOF means execve succeeded (the child's end is close-on-exec).
        let mut report = Report::default();
        report::read_reports(&chan, &mut report, |r| r.error.is_some())?;
        match report.error {
            Some((kind, e)) => Err(ExecutorError::reported(kind, e)),
            None => Ok(()),
        }
    }

    fn exec(
        &self,
        pid: i32,
        _spec: &Spec,
        process: &Process,
        stdio: Stdio,
        opts: &CreateOptions,
    ) -> Result<i32, ExecutorError> {
        self.exec_with(pid, process, opts, Some(stdio), None)
    }

    fn exec_tty(
        &self,
        pid: i32,
        _spec: &Spec,
        process: &Process,
        opts: &CreateOptions,
    ) -> Result<(i32, OwnedFd), ExecutorError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| ExecutorError::Sys {
            op: "socketpair",
            source: e.into(),
        })?;
        let pid = self.exec_with(pid, process, opts, None, Some(theirs))?;
        let mut byte = [0u8; 1];
        let (_, mut fds) = sys::recv_with_fds(&ours, &mut byte)
            .map_err(ExecutorError::sys("receiving the terminal"))?;
        match fds.pop() {
            Some(master) => Ok((pid, master)),
            None => Err(ExecutorError::Child("no terminal from the exec".into())),
        }
    }
}

impl Embedded {
    /// Exec with the given stdio, or (`console`) a terminal opened inside
    /// the container, whose master goes back over the socket. The
    /// intermediate enters every namespace of the container (the mount
    /// namespace last: its root becomes ours) and takes on the process's
    /// credentials, so the exec is born as the container will see it.
    fn exec_with(
        &self,
        pid: i32,
        process: &Process,
        opts: &CreateOptions,
        stdio: Option<Stdio>,
        console: Option<OwnedFd>,
    ) -> Result<i32, ExecutorError> {
        let prepared = process::prepare(process, opts)?;
        let ns = namespaces::process_namespaces(pid)?;
        let join = namespaces::join_file(crate::cgroups::detected_mode());
        let (ours, theirs) = report::channel()?;
        let chan = theirs.as_raw_fd();
        let keep = Keep {
            setup: ns.fds().collect(),
            child: stdio
                .iter()
                .flat_map(stdio_fds)
                .chain(console.iter().map(|c| c.as_raw_fd()))
                .collect(),
        };
        let setup = || -> Result<(), Failure> {
            process::limits(&prepared, chan)?;
            namespaces::join_cgroups(&opts.cgroup_dirs, join)?;
            namespaces::enter(&ns)?;
            namespaces::enter_user(ns.user.as_ref().map(|f| f.as_fd()))?;
            process::become_process(&prepared)
        };
        let child = || {
            let stdio = match (stdio, &console) {
                (Some(s), _) => s,
                (None, Some(sock)) => match container_pty(sock) {
                    Ok(s) => s,
                    Err(e) => fail(chan, "terminal", e),
                },
                (None, None) => fail(chan, "stdio", "none given"),
            };
            let chan = match setup_stdio(&stdio, stdio.terminal, chan) {
                Ok(c) => c,
                Err(e) => fail(chan, "stdio", e),
            };
            if let Err(f) = process::set_exec_labels(&prepared) {
                fail_step(chan, "security labels", f);
            }
            exec_or_report(&prepared, chan);
        };
        let (child_pid, ours, mut report) = self.spawn(theirs, ours, keep, setup, child)?;
        report::read_reports(&ours, &mut report, |r| r.error.is_some())?;
        if let Some((kind, e)) = report.error {
            // The child already exited (127); the caller reaps it.
            return Err(ExecutorError::reported(kind, e));
        }
        Ok(child_pid)
    }
}

/// Opens a pseudo-terminal from the container's own devpts (so the
/// process sees `/dev/pts/N` as its terminal), sends the master over
/// `sock` and returns the slave as stdio.
fn container_pty(sock: &OwnedFd) -> Result<Stdio, String> {
    let (master, slave) = sys::pty().map_err(|e| e.to_string())?;
    sys::send_with_fds(sock, b"m", &[master.as_fd()])
        .map_err(|e| format!("sending the terminal: {e}"))?;
    drop(master);
    let dup = |f: &OwnedFd| f.try_clone().map_err(|e| e.to_string());
    Ok(Stdio {
        stdin: dup(&slave)?,
        stdout: dup(&slave)?,
        stderr: slave,
        terminal: true,
    })
}

/// Borrowed descriptor helper for callers building [`Stdio`] from files.
pub fn owned(fd: impl AsFd) -> Result<OwnedFd, ExecutorError> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(ExecutorError::sys("dup"))
}
