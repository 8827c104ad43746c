//! Linux implementation of the embedded executor.
//!
//! The caller (single-threaded) forks an intermediate child that joins the
//! container's cgroup and namespaces and unshares new ones; it forks the
//! container init (so a new PID namespace applies) and exits. The caller is
//! a child subreaper, so the init becomes its child. The init sets up the
//! rootfs, user, capabilities and seccomp, reports over a sync pipe and
//! waits on a start pipe before `execve`.
//!
//! Sync pipe messages (each one `write`, below PIPE_BUF, so atomic):
//! `P<pid i32 le>` from the intermediate, `R` ready, `W<u16 len><text>`
//! warning, `E<u16 len><text>` fatal error.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimit, Process, Spec};

use super::{CreateOptions, Created, Embedded, Executor, ExecutorError, Stdio};

/// How long a child may take to report back before it is killed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Writes one framed message to the sync pipe; errors are ignored (the
/// reader is gone, nothing left to tell).
fn send(fd: RawFd, kind: u8, text: &str) {
    let bytes = text.as_bytes();
    let len = bytes.len().min(2000);
    let mut msg = Vec::with_capacity(3 + len);
    msg.push(kind);
    msg.extend_from_slice(&(len as u16).to_le_bytes());
    msg.extend_from_slice(&bytes[..len]);
    // SAFETY: msg is a valid buffer of msg.len() bytes.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

fn fail(sync: RawFd, what: &str, e: impl std::fmt::Display) -> ! {
    send(sync, b'E', &format!("{what}: {e}"));
    // SAFETY: _exit never returns and runs no destructors, right for a forked child.
    unsafe { libc::_exit(127) }
}

/// What the parent learnt from the children.
#[derive(Default)]
struct Report {
    pid: Option<i32>,
    ready: bool,
    error: Option<String>,
    warnings: Vec<String>,
    eof: bool,
}

/// Reads sync messages until `done(report)` or EOF or the deadline.
fn read_reports(
    sync: &OwnedFd,
    report: &mut Report,
    done: impl Fn(&Report) -> bool,
) -> Result<(), ExecutorError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut buf: Vec<u8> = Vec::new();
    let mut file = File::from(sync.try_clone().map_err(ExecutorError::sys("dup"))?);
    while !done(report) && !report.eof {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExecutorError::Child("container setup timed out".into()));
        }
        let mut pfd = libc::pollfd {
            fd: sync.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(60_000) as i32) };
        if n < 0 {
            let e = errno();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ExecutorError::Sys {
                op: "poll",
                source: e,
            });
        }
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        let got = match file.read(&mut chunk) {
            Ok(0) => {
                report.eof = true;
                0
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => {
                return Err(ExecutorError::Sys {
                    op: "read",
                    source: e,
                });
            }
        };
        buf.extend_from_slice(&chunk[..got]);
        while let Some(used) = parse_one(&buf, report) {
            buf.drain(..used);
        }
    }
    Ok(())
}

fn parse_one(buf: &[u8], report: &mut Report) -> Option<usize> {
    match *buf.first()? {
        b'P' if buf.len() >= 5 => {
            report.pid = Some(i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]));
            Some(5)
        }
        b'R' => {
            report.ready = true;
            Some(1)
        }
        k @ (b'W' | b'E') if buf.len() >= 3 => {
            let len = u16::from_le_bytes([buf[1], buf[2]]) as usize;
            if buf.len() < 3 + len {
                return None;
            }
            let text = String::from_utf8_lossy(&buf[3..3 + len]).into_owned();
            if k == b'E' {
                report.error = Some(text);
            } else {
                report.warnings.push(text);
            }
            Some(3 + len)
        }
        b'P' | b'W' | b'E' => None,
        _ => Some(buf.len()),
    }
}

fn ns_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// Which namespaces to enter (opened files) and which to create.
struct Namespaces {
    join: Vec<(libc::c_int, File)>,
    unshare: libc::c_int,
}

fn plan_namespaces(spec: &Spec) -> Result<Namespaces, ExecutorError> {
    let mut join = Vec::new();
    let mut unshare = 0;
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in list {
        let flag = ns_flag(ns.typ());
        match ns.path() {
            Some(p) => {
                let f = File::open(p)
                    .map_err(|e| ExecutorError::Spec(format!("namespace {}: {e}", p.display())))?;
                join.push((flag, f));
            }
            None => unshare |= flag,
        }
    }
    // A user namespace is entered first, the others with its privileges.
    join.sort_by_key(|(flag, _)| *flag != libc::CLONE_NEWUSER);
    Ok(Namespaces { join, unshare })
}

/// The namespaces of a running process, for exec: every kind it does not
/// share with us.
fn process_namespaces(pid: i32) -> Result<Namespaces, ExecutorError> {
    let mut join = Vec::new();
    for (name, flag) in [
        ("user", libc::CLONE_NEWUSER),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let f = File::open(&theirs).map_err(|e| ExecutorError::Sys {
            op: "open namespace",
            source: e,
        })?;
        join.push((flag, f));
    }
    Ok(Namespaces { join, unshare: 0 })
}

/// Joins the cgroup in every hierarchy.
///
/// On v1 the calling thread is moved through `tasks`: the kernel moves a
/// lone `current` thread without write-locking the global threadgroup
/// rwsem, whose RCU grace period made a `cgroup.procs` write cost 10–14 ms
/// here (0.6 ms through `tasks`). Callers are single-threaded (forked
/// from the monitor), so the thread is the whole process. A v2 directory
/// has no `tasks` file and gets `cgroup.procs`.
fn join_cgroups(dirs: &[PathBuf]) -> Result<(), String> {
    for d in dirs {
        let joined = match std::fs::write(d.join("tasks"), "0") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(d.join("cgroup.procs"), "0")
            }
            other => other,
        };
        joined.map_err(|e| format!("joining cgroup {}: {e}", d.display()))?;
    }
    Ok(())
}

fn enter(ns: &Namespaces) -> Result<(), String> {
    for (flag, f) in &ns.join {
        // SAFETY: f is an open namespace file; setns has no memory effects.
        if unsafe { libc::setns(f.as_raw_fd(), *flag) } < 0 {
            return Err(format!("setns({flag:#x}): {}", errno()));
        }
    }
    if ns.unshare != 0 {
        // SAFETY: unshare with flags only.
        if unsafe { libc::unshare(ns.unshare) } < 0 {
            return Err(format!("unshare({:#x}): {}", ns.unshare, errno()));
        }
    }
    Ok(())
}

fn fork() -> Result<i32, ExecutorError> {
    // SAFETY: callers are single-threaded (the monitor, or a child of it),
    // so the child's copy of the heap and locks is consistent.
    let pid = unsafe { libc::fork() };
    check("fork", pid)
}

/// Kills and reaps a child that failed during setup.
fn abandon(pid: i32) {
    // SAFETY: signalling and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Reaps the intermediate child (it exits right after forking the init).
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waiting for our own child; status is a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && errno().kind() == std::io::ErrorKind::Interrupted
    {}
}

/// Everything the container's process needs after the fork, prepared in
/// the parent so errors about the spec surface before any fork.
struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    path_env: String,
    cwd: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    caps: Caps,
    no_new_privs: bool,
    rlimits: Vec<PosixRlimit>,
    oom_score_adj: Option<i32>,
    seccomp: Option<super::seccomp::Program>,
    terminal: bool,
}

#[derive(Default)]
struct Caps {
    bounding: caps::CapsHashSet,
    effective: caps::CapsHashSet,
    permitted: caps::CapsHashSet,
    inheritable: caps::CapsHashSet,
    ambient: caps::CapsHashSet,
}

fn cstring(s: &str) -> Result<CString, ExecutorError> {
    CString::new(s).map_err(|_| ExecutorError::Spec(format!("NUL byte in {s:?}")))
}

fn cap_set(
    set: &Option<oci_spec::runtime::Capabilities>,
) -> Result<caps::CapsHashSet, ExecutorError> {
    let mut out = caps::CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{c}");
        let cap: caps::Capability = name
            .parse()
            .map_err(|_| ExecutorError::Spec(format!("unknown capability {name}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn prepare(process: &Process, opts: &CreateOptions) -> Result<Prepared, ExecutorError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(ExecutorError::Spec("process has no args".into()));
    }
    let env = process.env().clone().unwrap_or_default();
    let path_env = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    let user = process.user();
    let c = process.capabilities().clone().unwrap_or_default();
    let caps = Caps {
        bounding: cap_set(c.bounding())?,
        effective: cap_set(c.effective())?,
        permitted: cap_set(c.permitted())?,
        inheritable: cap_set(c.inheritable())?,
        ambient: cap_set(c.ambient())?,
    };
    Ok(Prepared {
        argv: args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        envp: env.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
        path_env,
        cwd: process.cwd().clone(),
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        caps,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        rlimits: process.rlimits().clone().unwrap_or_default(),
        oom_score_adj: process.oom_score_adj(),
        seccomp: opts
            .seccomp
            .as_deref()
            .map(super::seccomp::Program::from_bytes)
            .transpose()
            .map_err(|e| ExecutorError::Spec(e.to_string()))?,
        terminal: process.terminal().unwrap_or(false),
    })
}

/// Gives the new process default signal handling: the monitor blocks
/// SIGCHLD and Rust ignores SIGPIPE, and both would survive execve.
fn reset_signals() {
    // SAFETY: resetting dispositions and the mask of this (only) thread.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Puts the stdio descriptors in place (0, 1, 2) and makes every other
/// descriptor close on exec.
fn setup_stdio(stdio: &Stdio, terminal: bool) -> Result<(), String> {
    reset_signals();
    // SAFETY: setsid has no arguments.
    unsafe { libc::setsid() };
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    // Move the sources above 2 first, so a dup2 never clobbers a source.
    let mut high = [0; 3];
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: duplicating a descriptor we own.
        high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) };
        if high[i] < 0 {
            return Err(format!("dup stdio: {}", errno()));
        }
    }
    for (i, fd) in high.iter().enumerate() {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(*fd, i as i32) } < 0 {
            return Err(format!("dup2 stdio: {}", errno()));
        }
    }
    if terminal {
        // SAFETY: stdin is the pty slave; make it our controlling terminal.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(format!("TIOCSCTTY: {}", errno()));
        }
    }
    // SAFETY: marks descriptors >= 3 close-on-exec; no memory is touched.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Ok(())
}

fn rlimit_resource(t: oci_spec::runtime::PosixRlimitType) -> Option<libc::__rlimit_resource_t> {
    use oci_spec::runtime::PosixRlimitType as T;
    Some(match t {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    })
}

/// oom_score_adj, rlimits, user, capabilities, no_new_privs, seccomp, cwd:
/// the process attributes, in the order that keeps the privileges each
/// step needs. Returns warnings.
fn become_process(p: &Prepared, sync: RawFd) -> Result<(), String> {
    if let Some(adj) = p.oom_score_adj
        && let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string())
    {
        {
            // Lowering needs CAP_SYS_RESOURCE, which some nodes withhold:
            // keep the inherited value rather than fail the container.
            let cur = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
            send(
                sync,
                b'W',
                &format!("oom_score_adj {adj} refused ({e}); kept {}", cur.trim()),
            );
        }
    }
    for r in &p.rlimits {
        let Some(res) = rlimit_resource(r.typ()) else {
            continue;
        };
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: lim is a valid rlimit.
        if unsafe { libc::setrlimit(res, &lim) } < 0 {
            return Err(format!("setrlimit {:?}: {}", r.typ(), errno()));
        }
    }
    // Drop from the bounding set while we still hold CAP_SETPCAP.
    for cap in caps::all() {
        if !p.caps.bounding.contains(&cap)
            && caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    if !p.no_new_privs {
        // Without no_new_privs loading a filter needs CAP_SYS_ADMIN, which
        // the process may be about to lose.
        if let Some(program) = &p.seccomp {
            super::seccomp::install(program).map_err(|e| format!("loading seccomp filter: {e}"))?;
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    // SAFETY: groups points at p.groups.len() gids.
    if unsafe { libc::setgroups(p.groups.len(), p.groups.as_ptr()) } < 0 {
        return Err(format!("setgroups: {}", errno()));
    }
    // SAFETY: plain id syscalls.
    if unsafe { libc::setresgid(p.gid, p.gid, p.gid) } < 0 {
        return Err(format!("setgid {}: {}", p.gid, errno()));
    }
    // SAFETY: plain id syscalls.
    if unsafe { libc::setresuid(p.uid, p.uid, p.uid) } < 0 {
        return Err(format!("setuid {}: {}", p.uid, errno()));
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    // Shrink effective first: capset refuses an effective set that is not
    // within the permitted one.
    caps::set(None, caps::CapSet::Effective, &p.caps.effective)
        .map_err(|e| format!("effective capabilities: {e}"))?;
    caps::set(None, caps::CapSet::Permitted, &p.caps.permitted)
        .map_err(|e| format!("permitted capabilities: {e}"))?;
    caps::set(None, caps::CapSet::Inheritable, &p.caps.inheritable)
        .map_err(|e| format!("inheritable capabilities: {e}"))?;
    if !p.caps.ambient.is_empty() {
        caps::set(None, caps::CapSet::Ambient, &p.caps.ambient)
            .map_err(|e| format!("ambient capabilities: {e}"))?;
    }
    if p.no_new_privs {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(format!("no_new_privs: {}", errno()));
        }
        if let Some(program) = &p.seccomp {
            super::seccomp::install(program).map_err(|e| format!("loading seccomp filter: {e}"))?;
        }
    }
    std::env::set_current_dir(&p.cwd)
        .map_err(|e| format!("working directory {}: {e}", p.cwd.display()))?;
    Ok(())
}

/// Finds argv[0] on the container's PATH, as the container sees it.
fn resolve(argv0: &str, path_env: &str) -> Result<CString, String> {
    use std::os::unix::fs::PermissionsExt;
    let exists = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if argv0.contains('/') {
        Some(PathBuf::from(argv0))
    } else {
        path_env
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(argv0))
            .find(|p| exists(p))
    };
    let Some(path) = found else {
        return Err(format!("executable file {argv0:?} not found in $PATH"));
    };
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())
}

fn exec(p: &Prepared, path: &CString) -> std::io::Error {
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv/envp are NULL-terminated arrays of valid C strings.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// Blocks until the parent writes the start byte; exits if it hung up.
fn wait_for_start(start: RawFd) {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reading one byte into b.
        let n = unsafe { libc::read(start, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            return;
        }
        if n < 0 && errno().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // SAFETY: _exit in a forked child.
        unsafe { libc::_exit(0) };
    }
}

/// The intermediate child: cgroups and namespaces, then fork the real
/// process, report its pid, exit.
fn intermediate(sync: RawFd, cgroups: &[PathBuf], ns: &Namespaces, child: impl FnOnce()) -> ! {
    if let Err(e) = join_cgroups(cgroups).and_then(|_| enter(ns)) {
        fail(sync, "entering the container", e);
    }
    match fork() {
        Ok(0) => {
            child();
            // SAFETY: _exit in a forked child.
            unsafe { libc::_exit(127) }
        }
        Ok(pid) => {
            let mut msg = [b'P', 0, 0, 0, 0];
            msg[1..].copy_from_slice(&pid.to_le_bytes());
            // SAFETY: writing 5 bytes from msg.
            unsafe { libc::write(sync, msg.as_ptr().cast(), msg.len()) };
            // SAFETY: _exit in a forked child.
            unsafe { libc::_exit(0) }
        }
        Err(e) => fail(sync, "fork", e),
    }
}

impl Embedded {
    fn spawn(
        &self,
        sync_w: &OwnedFd,
        sync_r: OwnedFd,
        cgroups: &[PathBuf],
        ns: &Namespaces,
        child: impl FnOnce(),
    ) -> Result<(i32, OwnedFd, Report), ExecutorError> {
        let mid = fork()?;
        if mid == 0 {
            intermediate(sync_w.as_raw_fd(), cgroups, ns, child);
        }
        let mut report = Report::default();
        let got = read_reports(&sync_r, &mut report, |r| {
            r.pid.is_some() || r.error.is_some()
        });
        reap(mid);
        got?;
        match (report.pid, report.error.take()) {
            (Some(pid), _) => Ok((pid, sync_r, report)),
            (None, Some(e)) => Err(ExecutorError::Child(e)),
            (None, None) => Err(ExecutorError::Child(
                "container setup exited without a word".into(),
            )),
        }
    }
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
        let prepared = prepare(process, opts)?;
        let ns = plan_namespaces(spec)?;
        let mounts = super::rootfs::plan(spec, &opts.cgroup_dirs)?;
        let (sync_r, sync_w) = pipe()?;
        let (start_r, start_w) = pipe()?;
        let sync_fd = sync_w.as_raw_fd();
        let start_fd = start_r.as_raw_fd();
        let child = || {
            if let Err(e) = setup_stdio(&stdio, prepared.terminal) {
                fail(sync_fd, "stdio", e);
            }
            if let Err(e) = super::rootfs::apply(&mounts) {
                fail(sync_fd, "rootfs", e);
            }
            if let Err(e) = become_process(&prepared, sync_fd) {
                fail(sync_fd, "process", e);
            }
            let path = match resolve(prepared.argv[0].to_str().unwrap_or(""), &prepared.path_env) {
                Ok(p) => p,
                Err(e) => fail(sync_fd, "exec", e),
            };
            // SAFETY: writing the one-byte ready message.
            unsafe { libc::write(sync_fd, b"R".as_ptr().cast(), 1) };
            wait_for_start(start_fd);
            let e = exec(&prepared, &path);
            fail(sync_fd, &format!("exec {:?}", prepared.argv[0]), e);
        };
        let (pid, sync_r, mut report) =
            self.spawn(&sync_w, sync_r, &opts.cgroup_dirs, &ns, child)?;
        drop(sync_w);
        drop(start_r);
        let got = read_reports(&sync_r, &mut report, |r| r.ready || r.error.is_some());
        if let Err(e) = got {
            abandon(pid);
            return Err(e);
        }
        if let Some(e) = report.error {
            abandon(pid);
            return Err(ExecutorError::Child(e));
        }
        if !report.ready {
            abandon(pid);
            return Err(ExecutorError::Child(
                "container init exited during setup".into(),
            ));
        }
        Ok(Created {
            pid,
            start: start_w,
            sync: sync_r,
            warnings: report.warnings,
        })
    }

    fn start(&self, created: Created) -> Result<(), ExecutorError> {
        let mut w = File::from(created.start);
        w.write_all(b"s")
            .map_err(ExecutorError::sys("signalling start"))?;
        drop(w);
        // EOF means execve succeeded (the sync pipe is close-on-exec).
        let mut report = Report::default();
        read_reports(&created.sync, &mut report, |r| r.error.is_some())?;
        match report.error {
            Some(e) => Err(ExecutorError::Child(e)),
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
        let (_, mut fds) = super::sys::recv_with_fds(ours.as_raw_fd(), &mut byte)
            .map_err(ExecutorError::sys("receiving the terminal"))?;
        match fds.pop() {
            Some(master) => Ok((pid, master)),
            None => Err(ExecutorError::Child("no terminal from the exec".into())),
        }
    }
}

impl Embedded {
    /// Exec with the given stdio, or (`console`) a terminal opened inside
    /// the container, whose master goes back over the socket.
    fn exec_with(
        &self,
        pid: i32,
        process: &Process,
        opts: &CreateOptions,
        stdio: Option<Stdio>,
        console: Option<OwnedFd>,
    ) -> Result<i32, ExecutorError> {
        let prepared = prepare(process, opts)?;
        let ns = process_namespaces(pid)?;
        let (sync_r, sync_w) = pipe()?;
        let sync_fd = sync_w.as_raw_fd();
        let child = || {
            let stdio = match (stdio, &console) {
                (Some(s), _) => s,
                (None, Some(sock)) => match container_pty(sock.as_raw_fd()) {
                    Ok(s) => s,
                    Err(e) => fail(sync_fd, "terminal", e),
                },
                (None, None) => fail(sync_fd, "stdio", "none given"),
            };
            if let Err(e) = setup_stdio(&stdio, stdio.terminal) {
                fail(sync_fd, "stdio", e);
            }
            if let Err(e) = become_process(&prepared, sync_fd) {
                fail(sync_fd, "process", e);
            }
            let path = match resolve(prepared.argv[0].to_str().unwrap_or(""), &prepared.path_env) {
                Ok(p) => p,
                Err(e) => fail(sync_fd, "exec", e),
            };
            let e = exec(&prepared, &path);
            fail(sync_fd, &format!("exec {:?}", prepared.argv[0]), e);
        };
        let (child_pid, sync_r, mut report) =
            self.spawn(&sync_w, sync_r, &opts.cgroup_dirs, &ns, child)?;
        drop(sync_w);
        read_reports(&sync_r, &mut report, |r| r.error.is_some())?;
        if let Some(e) = report.error {
            // The child already exited (127); the caller reaps it.
            return Err(ExecutorError::Child(e));
        }
        Ok(child_pid)
    }
}

/// Opens a pseudo-terminal from the container's own devpts (so the
/// process sees `/dev/pts/N` as its terminal), sends the master over
/// `sock` and returns the slave as stdio.
fn container_pty(sock: RawFd) -> Result<Stdio, String> {
    let ptmx = CString::new("/dev/ptmx").unwrap_or_default();
    // SAFETY: open/unlockpt/ptsname_r on descriptors we own; name is a
    // valid buffer.
    unsafe {
        let m = libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err(format!("opening /dev/ptmx: {}", errno()));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::unlockpt(m) < 0 {
            return Err(format!("unlockpt: {}", errno()));
        }
        let mut name = [0 as libc::c_char; 64];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err("ptsname".into());
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(format!("opening the pty slave: {}", errno()));
        }
        let slave = OwnedFd::from_raw_fd(s);
        super::sys::send_with_fds(sock, b"m", &[master.as_raw_fd()])
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
}

/// Borrowed descriptor helper for callers building [`Stdio`] from files.
pub fn owned(fd: impl AsFd) -> Result<OwnedFd, ExecutorError> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(ExecutorError::sys("dup"))
}
