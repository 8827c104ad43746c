//! The container process's attributes: argv, environment, user and
//! groups, capabilities, rlimits, oom_score_adj, no_new_privs, seccomp and
//! cwd. Prepared in the monitor from the OCI `process` (so a bad spec fails
//! before any fork) and applied in the forked child that sets the process
//! up, before it becomes visible inside the container (see `linux.rs`).

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{PosixRlimit, Process};

use super::{CreateOptions, ExecutorError, FailureKind};

/// A set-up step that failed, with who must act on it.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    pub(super) message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            kind: FailureKind::Internal,
            message,
        }
    }
}

fn refused(kind: FailureKind, message: String) -> Failure {
    Failure { kind, message }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Everything the container's process needs after the fork, prepared in
/// the parent so errors about the spec surface before any fork.
pub(super) struct Prepared {
    pub(super) argv: Vec<CString>,
    envp: Vec<CString>,
    pub(super) path_env: String,
    cwd: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    caps: Caps,
    no_new_privs: bool,
    rlimits: Vec<PosixRlimit>,
    oom_score_adj: Option<i32>,
    /// Keep the inherited oom_score_adj where the kernel refuses the
    /// spec's (`[runtime] restrict_oom_score_adj`) instead of failing.
    clamp_oom_score_adj: bool,
    seccomp: Option<super::seccomp::Program>,
    /// AppArmor profile and SELinux label, set for the execve.
    lsm: super::lsm::Labels,
    pub(super) terminal: bool,
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

pub(super) fn prepare(process: &Process, opts: &CreateOptions) -> Result<Prepared, ExecutorError> {
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
        clamp_oom_score_adj: opts.clamp_oom_score_adj,
        seccomp: opts
            .seccomp
            .as_deref()
            .map(super::seccomp::Program::from_bytes)
            .transpose()
            .map_err(|e| ExecutorError::Spec(e.to_string()))?,
        lsm: super::lsm::labels(process)?,
        terminal: process.terminal().unwrap_or(false),
    })
}

/// The process's AppArmor profile and SELinux label, for its coming
/// execve (see `lsm.rs`): called by the process that execs, inside the
/// container's PID namespace, after its set-up.
pub(super) fn set_exec_labels(p: &Prepared) -> Result<(), Failure> {
    super::lsm::apply(&p.lsm, &mut super::lsm::Proc)
}

/// Gives the new process default signal handling: the monitor blocks
/// SIGCHLD and Rust ignores SIGPIPE, and both would survive execve.
pub(super) fn reset_signals() {
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

/// oom_score_adj and rlimits: inherited by the process forked after them,
/// and set while this process still sees the host's /proc and holds the
/// privileges a raise needs. A refused oom_score_adj fails the container,
/// or with `clamp_oom_score_adj` is kept at the inherited value with a
/// warning.
pub(super) fn limits(p: &Prepared, sync: RawFd) -> Result<(), Failure> {
    if let Some(adj) = p.oom_score_adj
        && let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string())
    {
        // Lowering needs CAP_SYS_RESOURCE, which some nodes withhold.
        let cur = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
        if !p.clamp_oom_score_adj {
            return Err(refused(
                FailureKind::PermissionDenied,
                format!(
                    "oom_score_adj {adj} refused by the kernel ({e}); crius runs at {} (set [runtime] restrict_oom_score_adj = true to keep that instead)",
                    cur.trim()
                ),
            ));
        }
        super::report::warn(
            sync,
            &format!("oom_score_adj {adj} refused ({e}); kept {}", cur.trim()),
        );
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
            let e = errno();
            let kind = if e.raw_os_error() == Some(libc::EPERM) {
                FailureKind::PermissionDenied
            } else {
                FailureKind::InvalidArgument
            };
            return Err(refused(kind, format!("setrlimit {:?}: {e}", r.typ())));
        }
    }
    Ok(())
}

/// Bounding set, seccomp, user, capabilities, no_new_privs, cwd: the
/// container's credentials, in the order that keeps the privileges each
/// step needs. Without no_new_privs the filter goes in while CAP_SYS_ADMIN
/// is still held; the syscalls left after it (fork, stdio, the start
/// handshake, execve) are ones any runtime-default profile allows.
pub(super) fn become_process(p: &Prepared) -> Result<(), Failure> {
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
        return Err(format!("setgroups: {}", errno()).into());
    }
    // SAFETY: plain id syscalls.
    if unsafe { libc::setresgid(p.gid, p.gid, p.gid) } < 0 {
        return Err(format!("setgid {}: {}", p.gid, errno()).into());
    }
    // SAFETY: plain id syscalls.
    if unsafe { libc::setresuid(p.uid, p.uid, p.uid) } < 0 {
        return Err(format!("setuid {}: {}", p.uid, errno()).into());
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
            return Err(format!("no_new_privs: {}", errno()).into());
        }
        if let Some(program) = &p.seccomp {
            super::seccomp::install(program).map_err(|e| format!("loading seccomp filter: {e}"))?;
        }
    }
    std::env::set_current_dir(&p.cwd).map_err(|e| {
        refused(
            FailureKind::InvalidArgument,
            format!("working directory {}: {e}", p.cwd.display()),
        )
    })?;
    Ok(())
}

/// Makes the working directory exist, as root and inside the container's
/// root (called after pivot_root, so paths cannot leave it), as Docker and
/// runc do for a WORKDIR the image lacks. A path through a file is the
/// request's error.
pub(super) fn make_cwd(p: &Prepared) -> Result<(), Failure> {
    std::fs::create_dir_all(&p.cwd).map_err(|e| {
        refused(
            FailureKind::InvalidArgument,
            format!("working directory {}: {e}", p.cwd.display()),
        )
    })
}

/// Finds argv[0] on the container's PATH, as the container sees it.
pub(super) fn resolve(argv0: &str, path_env: &str) -> Result<CString, String> {
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

pub(super) fn exec(p: &Prepared, path: &CString) -> std::io::Error {
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv/envp are NULL-terminated arrays of valid C strings.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}
