//! Seccomp: compile OCI seccomp profiles to classic BPF and load them.
//!
//! The daemon compiles a profile once (through libseccomp, cached by the
//! profile's sha256) and hands the BPF bytes to the container's init child,
//! which calls [`install`] just before `execve`. Compiling happens in the
//! daemon because it allocates and costs milliseconds; installing is a single
//! system call that is safe to make after `fork`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use sha2::{Digest, Sha256};

/// Why a profile could not be compiled or a BPF program not decoded; every
/// message names the offending syscall, action or architecture so a bad
/// profile can be fixed from the CRI error alone.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile uses an action this runtime cannot enforce.
    #[error("seccomp action {action} (syscalls {syscalls}) is not supported")]
    UnsupportedAction {
        /// The action's name in the profile, e.g. `SCMP_ACT_NOTIFY`.
        action: String,
        /// The rule's syscall names, comma-separated (`defaultAction` for the default).
        syscalls: String,
    },
    /// An `errnoRet` does not fit the 16-bit data field of a seccomp return.
    #[error("seccomp errnoRet {value} for {syscalls} is out of range (max 65535)")]
    ErrnoRet {
        /// The profile's `errnoRet`.
        value: u32,
        /// The rule's syscall names, comma-separated (`defaultAction` for the default).
        syscalls: String,
    },
    /// An architecture in the profile could not be added to the filter.
    #[error("seccomp architecture {arch}: {source}")]
    Arch {
        /// The architecture's OCI name (also libseccomp's), e.g. `SCMP_ARCH_X86_64`.
        arch: String,
        /// libseccomp's error.
        source: libseccomp::error::SeccompError,
    },
    /// The profile lists architectures, none of which this host can run.
    #[error("seccomp profile architectures [{listed}] do not include host architecture {host}")]
    NoHostArch {
        /// The profile's architectures, comma-separated.
        listed: String,
        /// This host's native architecture.
        host: String,
    },
    /// A syscall argument comparison is malformed.
    #[error("seccomp rule for {syscall}: {reason}")]
    BadArg {
        /// The syscall whose rule has the comparison.
        syscall: String,
        /// What is wrong with it (an argument index outside 0..6).
        reason: String,
    },
    /// libseccomp refused a rule.
    #[error("seccomp rule for {syscall} ({action}): {source}")]
    Rule {
        /// The syscall name the rule is for.
        syscall: String,
        /// The rule's action.
        action: String,
        /// libseccomp's error. (Syscall names it does not know are skipped, not errors.)
        source: libseccomp::error::SeccompError,
    },
    /// libseccomp failed outside of a particular rule.
    #[error("seccomp: {what}: {source}")]
    Libseccomp {
        /// The step that failed, e.g. `creating filter context`.
        what: &'static str,
        /// libseccomp's error.
        source: libseccomp::error::SeccompError,
    },
    /// Exporting or reading back the BPF program failed.
    #[error("seccomp: exporting BPF: {0}")]
    Export(#[source] std::io::Error),
    /// The profile could not be serialized for its cache key.
    #[error("seccomp: serializing profile: {0}")]
    Serialize(#[source] serde_json::Error),
    /// Bytes handed to [`Program::from_bytes`] are not a loadable program.
    #[error("seccomp: invalid BPF program: {0}")]
    BadProgram(String),
}

/// Size of one `struct sock_filter` in the byte encoding.
const INSN_BYTES: usize = 8;

/// A compiled classic-BPF program ready to load into the kernel.
///
/// Kept as plain `sock_filter`s (not a libseccomp context) so it can be
/// cached, shared between containers and installed after `fork` without
/// allocating.
#[derive(Clone)]
pub struct Program {
    filters: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("instructions", &self.filters.len())
            .finish()
    }
}

impl Program {
    /// Number of BPF instructions, for logs and limits (the kernel accepts at most 4096).
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether the program has no instructions (such a program cannot be installed).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Encode as 8 bytes per instruction, native endian, so the daemon can
    /// hand the BPF to a child process through a file or pipe.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.filters.len() * INSN_BYTES);
        for f in &self.filters {
            out.extend_from_slice(&f.code.to_ne_bytes());
            out.push(f.jt);
            out.push(f.jf);
            out.extend_from_slice(&f.k.to_ne_bytes());
        }
        out
    }

    /// A program from instructions built in code (the pod init's filter).
    pub(crate) fn from_filters(filters: Vec<libc::sock_filter>) -> Program {
        Program { filters }
    }

    /// Decode what [`Program::to_bytes`] (or libseccomp's BPF export)
    /// produced; rejects sizes the kernel would refuse, so [`install`] only
    /// fails for kernel-side reasons.
    pub fn from_bytes(b: &[u8]) -> Result<Program, SeccompError> {
        if b.is_empty() || !b.len().is_multiple_of(INSN_BYTES) {
            return Err(SeccompError::BadProgram(format!(
                "{} bytes is not a non-zero multiple of {INSN_BYTES}",
                b.len()
            )));
        }
        let n = b.len() / INSN_BYTES;
        if n > libc::BPF_MAXINSNS as usize {
            return Err(SeccompError::BadProgram(format!(
                "{n} instructions exceed the kernel limit of {}",
                libc::BPF_MAXINSNS
            )));
        }
        let filters = b
            .chunks_exact(INSN_BYTES)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Program { filters })
    }
}

/// Compile an OCI seccomp profile for the host arch. Cached: the same profile
/// (by sha256 of its JSON) compiles once per process and later calls return
/// the cached Arc (compiling costs 10-15 ms, containers must start in a few ms).
///
/// The cache is never evicted: a node sees a handful of distinct profiles
/// (the runtime default per capability set plus localhost profiles).
pub fn compile(profile: &LinuxSeccomp) -> Result<Arc<Program>, SeccompError> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Arc<Program>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let json = serde_json::to_vec(profile).map_err(SeccompError::Serialize)?;
    let key: [u8; 32] = Sha256::digest(&json).into();
    if let Some(p) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return Ok(Arc::clone(p));
    }
    // Compile without holding the lock so unrelated profiles don't queue up;
    // if two callers race on one profile, the first insert wins.
    let program = Arc::new(compile_uncached(profile)?);
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(Arc::clone(cache.entry(key).or_insert(program)))
}

fn compile_uncached(profile: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let default = scmp_action(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|source| SeccompError::Libseccomp {
        what: "creating filter context",
        source,
    })?;
    add_arches(
        &mut ctx,
        profile.architectures().as_deref().unwrap_or_default(),
    )?;
    // `flags` (SECCOMP_FILTER_FLAG_LOG/SPEC_ALLOW/TSYNC/...) are ignored: they
    // are arguments to seccomp(2), not part of the BPF, and [`install`] loads
    // with flags 0 in a single-threaded child, where TSYNC is moot.
    for rule in profile.syscalls().iter().flatten() {
        add_rule(&mut ctx, rule, default)?;
    }
    export(&ctx)
}

fn add_rule(
    ctx: &mut ScmpFilterContext,
    rule: &LinuxSyscall,
    default: ScmpAction,
) -> Result<(), SeccompError> {
    let names = rule.names().join(",");
    let action = scmp_action(rule.action(), rule.errno_ret(), &names)?;
    if action == default {
        // libseccomp refuses rules that repeat the default action; runc skips them too.
        return Ok(());
    }
    let args = rule.args().as_deref().unwrap_or_default();
    let cmps = args
        .iter()
        .map(|a| comparator(a, &names))
        .collect::<Result<Vec<_>, _>>()?;
    // Conditions on distinct arguments are ANDed in one rule. Several on the
    // same argument cannot be (libseccomp rejects them), so like runc each
    // becomes its own rule and they are ORed.
    // (`comparator` has already rejected indexes outside 0..6.)
    let mut seen = [false; 6];
    let distinct = args
        .iter()
        .all(|a| !std::mem::replace(&mut seen[a.index()], true));
    let groups: Vec<&[ScmpArgCompare]> = if distinct {
        vec![&cmps[..]]
    } else {
        cmps.iter().map(std::slice::from_ref).collect()
    };
    for name in rule.names() {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            tracing::debug!(syscall = %name, "seccomp: skipping syscall unknown to libseccomp");
            continue;
        };
        for group in &groups {
            ctx.add_rule_conditional(action, syscall, group)
                .map_err(|source| SeccompError::Rule {
                    syscall: name.clone(),
                    action: rule.action().to_string(),
                    source,
                })?;
        }
    }
    Ok(())
}

fn scmp_action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    syscalls: &str,
) -> Result<ScmpAction, SeccompError> {
    let errno = || -> Result<u16, SeccompError> {
        let value = errno_ret.unwrap_or(libc::EPERM as u32);
        u16::try_from(value).map_err(|_| SeccompError::ErrnoRet {
            value,
            syscalls: syscalls.to_string(),
        })
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(errno()?)),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno()?),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        // A user-notification filter needs a listener (seccomp agent) that
        // crius does not provide.
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction {
                action: action.to_string(),
                syscalls: syscalls.to_string(),
            });
        }
    })
}

fn comparator(arg: &LinuxSeccompArg, syscall: &str) -> Result<ScmpArgCompare, SeccompError> {
    let bad = |reason: String| SeccompError::BadArg {
        syscall: syscall.to_string(),
        reason,
    };
    let index = u32::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| bad(format!("argument index {} is not in 0..6", arg.index())))?;
    let (op, datum) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
        // OCI: `value` is the mask, `valueTwo` what the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    Ok(ScmpArgCompare::new(index, op, datum))
}

/// The OCI wire name of an architecture (`SCMP_ARCH_X86_64`), which is also
/// libseccomp's name for it.
fn arch_name(arch: Arch) -> String {
    match serde_json::to_value(arch) {
        Ok(serde_json::Value::String(name)) => name,
        _ => arch.to_string(),
    }
}

/// Architectures whose syscalls a process on this host can make (the native
/// one first), as in moby's `archMap`.
fn host_arches() -> Vec<ScmpArch> {
    let native = ScmpArch::native();
    let mut out = vec![native];
    out.extend_from_slice(match native {
        ScmpArch::X8664 => &[ScmpArch::X86, ScmpArch::X32][..],
        ScmpArch::Aarch64 => &[ScmpArch::Arm],
        ScmpArch::S390X => &[ScmpArch::S390],
        ScmpArch::Ppc64 => &[ScmpArch::Ppc],
        ScmpArch::Mips64 => &[ScmpArch::Mips, ScmpArch::Mips64N32],
        ScmpArch::Mipsel64 => &[ScmpArch::Mipsel, ScmpArch::Mipsel64N32],
        _ => &[],
    });
    out
}

/// Add the profile's architectures that can run here. The native arch is
/// always in a new context; other families are skipped (they could never
/// match on this host), but a list with nothing for this host is an error:
/// the profile was written for another machine.
fn add_arches(ctx: &mut ScmpFilterContext, listed: &[Arch]) -> Result<(), SeccompError> {
    let host = host_arches();
    let mut matched = listed.is_empty();
    for &arch in listed {
        let name = arch_name(arch);
        let scmp = ScmpArch::from_str(&name).map_err(|source| SeccompError::Arch {
            arch: name.clone(),
            source,
        })?;
        if scmp == ScmpArch::Native || scmp == host[0] {
            matched = true;
        } else if host.contains(&scmp) {
            matched = true;
            ctx.add_arch(scmp)
                .map_err(|source| SeccompError::Arch { arch: name, source })?;
        } else {
            tracing::debug!(arch = %name, "seccomp: skipping architecture foreign to this host");
        }
    }
    if !matched {
        return Err(SeccompError::NoHostArch {
            listed: listed
                .iter()
                .map(Arch::to_string)
                .collect::<Vec<_>>()
                .join(","),
            host: format!("{:?}", host[0]),
        });
    }
    Ok(())
}

/// libseccomp 2.5 exports BPF only to a file descriptor: write into a memfd
/// (no size limit, unlike a pipe) and read it back.
fn export(ctx: &ScmpFilterContext) -> Result<Program, SeccompError> {
    // SAFETY: the name is a NUL-terminated literal; the result is checked below.
    let fd = unsafe { libc::memfd_create(c"crius-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Export(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&file)
        .map_err(|source| SeccompError::Libseccomp {
            what: "exporting BPF",
            source,
        })?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(SeccompError::Export)?;
    Program::from_bytes(&bytes)
}

/// Load the program for the calling thread (and its future children). Called
/// in the container's init child just before execve, after no_new_privs or
/// while CAP_SYS_ADMIN is still held. Must not allocate (runs after fork).
pub fn install(program: &Program) -> Result<(), std::io::Error> {
    let Ok(len) = u16::try_from(program.filters.len()) else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    let prog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer; the cast to *mut is
        // what the C struct demands.
        filter: program.filters.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `len` valid sock_filters that outlive the
    // call; seccomp(2) copies the program and does not keep the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Syscalls the moby/containerd default profile allows unconditionally
/// (names unknown to the local libseccomp are skipped at compile time). The
/// last three are allowed on kernels >= 4.8, where ptrace cannot bypass
/// seccomp; crius does not support older kernels.
const DEFAULT_ALLOW: &str = "\
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown \
chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime \
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect \
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old \
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit \
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod \
fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr \
flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate \
ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat \
getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 \
getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority \
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage \
getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr \
getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl \
io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup \
io_submit ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown \
lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr _llseek \
lremovexattr lseek lsetxattr lsm_get_self_attr lsm_list_modules lsm_set_self_attr lstat \
lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat \
mlock mlock2 mlockall map_shadow_stack mmap mmap2 mprotect mq_getsetattr mq_notify mq_open \
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap \
mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at \
nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe \
pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv \
preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read \
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg \
remap_file_pages removexattr removexattrat rename renameat renameat2 restart_syscall rmdir \
rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend \
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr \
sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler \
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr \
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop \
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 \
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority \
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 \
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 \
setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 \
sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount \
statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create \
timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 \
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times \
tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime utimensat \
utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev \
process_vm_readv process_vm_writev ptrace";

/// Architecture-specific allowances, keyed by the compile target.
const ARCH_ALLOW: &str = if cfg!(target_arch = "x86_64") {
    "arch_prctl modify_ldt"
} else if cfg!(target_arch = "x86") {
    "modify_ldt"
} else if cfg!(any(target_arch = "aarch64", target_arch = "arm")) {
    "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"
} else if cfg!(target_arch = "powerpc64") {
    "sync_file_range2 swapcontext"
} else if cfg!(target_arch = "s390x") {
    "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"
} else if cfg!(target_arch = "riscv64") {
    "riscv_flush_icache riscv_hwprobe"
} else {
    ""
};

/// Syscalls allowed only when the container holds the capability.
const CAP_ALLOW: &[(&str, &str)] = &[
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount umount2 unshare",
    ),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    (
        "CAP_SYS_PTRACE",
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    (
        "CAP_SYS_TIME",
        "settimeofday stime clock_settime clock_settime64",
    ),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    (
        "CAP_SYS_NICE",
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
];

fn syscall_rule(
    names: &str,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: Vec<LinuxSeccompArg>,
) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.split_whitespace().map(String::from).collect())
        .set_action(action)
        .set_errno_ret(errno_ret)
        .set_args((!args.is_empty()).then_some(args));
    rule
}

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    // The builder is declared with `#[builder(default)]`: every field has a
    // default, so `build` cannot fail (and this type has no setters).
    b.build().expect("LinuxSeccompArg fields all have defaults")
}

/// The runtime's default profile for `RuntimeDefault` (what containerd/cri-o
/// use: the moby default allowlist, defaultAction SCMP_ACT_ERRNO errnoRet
/// EPERM, with arg-filtered personality/clone/clone3 (clone3 → ENOSYS so
/// glibc falls back to clone), socket AF_VSOCK denial, and capability-gated
/// syscalls included only when the container has that capability).
///
/// `capabilities` are the container's bounding set, e.g. `"CAP_SYS_ADMIN"`
/// (the `CAP_` prefix is optional, case is ignored).
pub fn runtime_default(capabilities: &[String]) -> LinuxSeccomp {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpGt as Gt, ScmpCmpLt as Lt};
    let has = |cap: &str| {
        capabilities.iter().any(|c| {
            let c = c.trim();
            c.eq_ignore_ascii_case(cap) || cap[4..].eq_ignore_ascii_case(c)
        })
    };
    let mut rules = vec![syscall_rule(DEFAULT_ALLOW, Allow, None, vec![])];
    if !ARCH_ALLOW.is_empty() {
        rules.push(syscall_rule(ARCH_ALLOW, Allow, None, vec![]));
    }
    // socket(2) for every family but AF_ALG and AF_VSOCK, as three single
    // conditions (repeated conditions on one argument would be ORed): the
    // two blocked families fall through to EPERM.
    let (alg, vsock) = (libc::AF_ALG as u64, libc::AF_VSOCK as u64);
    for a in [
        arg(0, Lt, alg, None),
        arg(0, Eq, alg + 1, None),
        arg(0, Gt, vsock, None),
    ] {
        rules.push(syscall_rule("socket", Allow, None, vec![a]));
    }
    // personality(2) only for PER_LINUX, PER_LINUX32, UNAME26 variants and the query.
    for p in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(syscall_rule(
            "personality",
            Allow,
            None,
            vec![arg(0, Eq, p, None)],
        ));
    }
    for (cap, names) in CAP_ALLOW {
        if has(cap) {
            rules.push(syscall_rule(names, Allow, None, vec![]));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone(2) without namespace flags; s390 swaps the first two arguments.
        let ns = (libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP) as u64;
        let index = usize::from(cfg!(target_arch = "s390x"));
        let masked = arg(index, LinuxSeccompOperator::ScmpCmpMaskedEq, ns, Some(0));
        rules.push(syscall_rule("clone", Allow, None, vec![masked]));
        // clone3's flags live in a struct BPF cannot read: ENOSYS makes glibc
        // fall back to clone, which is filtered above (moby#42681).
        rules.push(syscall_rule(
            "clone3",
            Errno,
            Some(libc::ENOSYS as u32),
            vec![],
        ));
    }
    let arches = match ScmpArch::native() {
        ScmpArch::X8664 => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        ScmpArch::Aarch64 => vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64],
        ScmpArch::S390X => vec![Arch::ScmpArchS390, Arch::ScmpArchS390x],
        ScmpArch::Riscv64 => vec![Arch::ScmpArchRiscv64],
        _ => vec![],
    };
    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(Errno)
        .set_default_errno_ret(Some(libc::EPERM as u32))
        .set_architectures((!arches.is_empty()).then_some(arches))
        .set_syscalls(Some(rules));
    profile
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).expect("valid profile JSON")
    }

    /// Fork; the child sets no_new_privs, installs `program` (if any) and runs
    /// `body`, exiting with its result. Returns the child's exit status.
    fn in_child(program: Option<&Program>, body: fn() -> i32) -> i32 {
        // SAFETY: the child only makes async-signal-safe calls (prctl,
        // seccomp, raw syscalls, _exit) and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: plain syscalls in the forked child, see above.
            unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(200);
                }
                if let Some(p) = program
                    && install(p).is_err()
                {
                    libc::_exit(201);
                }
                libc::_exit(body());
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// 0 on success, else errno, as an exit status.
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc >= 0 {
            0
        } else {
            // SAFETY: reading this thread's errno.
            unsafe { *libc::__errno_location() }
        }
    }

    /// socket(AF_VSOCK) must fail with EPERM, socket(AF_UNIX) and clone3's
    /// ENOSYS must behave as in moby's profile; 0 if all do.
    fn vsock_unix_clone3() -> i32 {
        // SAFETY: socket and clone3 with a NULL args pointer take no valid pointers.
        unsafe {
            if errno_of(libc::syscall(
                libc::SYS_socket,
                libc::AF_VSOCK,
                libc::SOCK_STREAM,
                0,
            )) != libc::EPERM
            {
                return 101;
            }
            if libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) < 0 {
                return 102;
            }
            errno_of(libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0)) - libc::ENOSYS
        }
    }

    fn unshare_ns() -> i32 {
        // SAFETY: getpid and unshare take no pointers.
        unsafe {
            if libc::syscall(libc::SYS_getpid) <= 0 {
                return 100;
            }
            errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS))
        }
    }

    #[test]
    fn runtime_default_compiles_and_is_cached() {
        let p = runtime_default(&["CAP_CHOWN".into(), "CAP_NET_RAW".into()]);
        let t = Instant::now();
        let first = compile(&p).expect("compile runtime default");
        let cold = t.elapsed();
        assert!(
            !first.is_empty() && first.len() <= 4096,
            "{} insns",
            first.len()
        );
        let t = Instant::now();
        let second = compile(&p.clone()).expect("compile again");
        let warm = t.elapsed();
        assert!(Arc::ptr_eq(&first, &second));
        if ScmpArch::native() == ScmpArch::X8664 {
            // The i386 audit arch is checked too, so 32-bit binaries are filtered.
            assert!(first.filters.iter().any(|f| f.k == 0x4000_0003));
        }
        assert!(
            warm.as_millis() < 5,
            "cached compile took {warm:?} (cold {cold:?})"
        );
        let admin = compile(&runtime_default(&["CAP_SYS_ADMIN".into()])).expect("admin");
        assert!(!Arc::ptr_eq(&first, &admin));
    }

    #[test]
    fn runtime_default_gates_capabilities() {
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            let rules = p.syscalls().iter().flatten();
            rules.flat_map(|r| r.names().clone()).collect()
        };
        let plain = names(&runtime_default(&[]));
        assert!(!plain.contains(&"mount".to_string()));
        assert!(
            plain.contains(&"clone3".to_string()),
            "clone3 → ENOSYS rule"
        );
        let admin = names(&runtime_default(&["sys_admin".into()]));
        assert!(admin.contains(&"mount".to_string()));
        assert_eq!(admin.iter().filter(|n| *n == "clone").count(), 1);
    }

    #[test]
    fn bytes_round_trip() {
        let p = compile(&runtime_default(&[])).expect("compile");
        let bytes = p.to_bytes();
        assert_eq!(bytes.len(), p.len() * 8);
        let back = Program::from_bytes(&bytes).expect("decode");
        assert_eq!(back.to_bytes(), bytes);
        assert!(Program::from_bytes(&bytes[..7]).is_err());
        assert!(Program::from_bytes(&[]).is_err());
        assert!(Program::from_bytes(&vec![0; 8 * 4097]).is_err());
    }

    #[test]
    fn bad_action_and_arch_are_errors() {
        let notify = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}));
        let err = compile(&notify)
            .expect_err("notify is unsupported")
            .to_string();
        assert!(
            err.contains("SCMP_ACT_NOTIFY") && err.contains("mkdir"),
            "{err}"
        );
        let foreign = if ScmpArch::native() == ScmpArch::S390X {
            "SCMP_ARCH_X86_64"
        } else {
            "SCMP_ARCH_S390X"
        };
        let arch = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": [foreign]}));
        let err = compile(&arch).expect_err("foreign arch").to_string();
        assert!(err.contains(foreign), "{err}");
        let errno = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 70000}));
        assert!(matches!(
            compile(&errno),
            Err(SeccompError::ErrnoRet { .. })
        ));
        let index = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL",
                "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}));
        assert!(matches!(compile(&index), Err(SeccompError::BadArg { .. })));
        // Not an OCI action/arch at all: rejected when the spec is parsed.
        let bogus = serde_json::json!({"defaultAction": "SCMP_ACT_BOGUS"});
        assert!(serde_json::from_value::<LinuxSeccomp>(bogus).is_err());
    }

    #[test]
    fn unknown_syscall_is_skipped() {
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["no_such_syscall_xyz", "getpid"], "action": "SCMP_ACT_ALLOW"}]}));
        assert!(!compile(&p).expect("unknown names are skipped").is_empty());
    }

    #[test]
    fn repeated_argument_index_compiles_as_or() {
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}));
        compile(&p).expect("same-index conditions become separate rules");
    }

    #[test]
    fn kernel_enforces_errno_ret() {
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}));
        let program = compile(&p).expect("compile");
        let getcwd = || {
            let mut buf = [0u8; 256];
            // SAFETY: the buffer is valid for its length.
            errno_of(unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) })
        };
        assert_eq!(in_child(None, getcwd), 0, "getcwd works without the filter");
        assert_eq!(in_child(Some(&program), getcwd), 38);
    }

    #[test]
    fn kernel_runtime_default_blocks_unshare_without_sys_admin() {
        if in_child(None, unshare_ns) != 0 {
            eprintln!("skipping: this process cannot unshare(CLONE_NEWNS) even without seccomp");
            return;
        }
        let plain = compile(&runtime_default(&[])).expect("compile");
        assert_eq!(in_child(Some(&plain), unshare_ns), libc::EPERM);
        assert_eq!(in_child(Some(&plain), vsock_unix_clone3), 0);
        let admin = compile(&runtime_default(&["CAP_SYS_ADMIN".into()])).expect("compile");
        assert_eq!(in_child(Some(&admin), unshare_ns), 0);
    }
}
