//! Pinned namespaces: a pod's network, IPC and UTS namespaces are created by
//! a short-lived child (`crius pinns`, like cri-o's pinns) and kept alive by
//! bind-mounting them onto files, so no pause process is needed and the
//! namespaces outlive a daemon restart.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// A namespace kind crius pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsKind {
    /// Network namespace; the one CNI configures.
    Net,
    /// IPC namespace (System V IPC, POSIX message queues), shared by the pod's containers.
    Ipc,
    /// UTS namespace, carrying the pod's hostname.
    Uts,
    /// Needs a process: the pod init (`crius-helper pod-init`) is its PID 1.
    Pid,
}

impl NsKind {
    /// The name under /proc/PID/ns and of the pin file.
    pub fn name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Pid => "pid",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
            NsKind::Pid => CloneFlags::CLONE_NEWPID,
        }
    }

    /// Parses a name given to `crius pinns`.
    pub fn parse(s: &str) -> Option<NsKind> {
        match s {
            "net" => Some(NsKind::Net),
            "ipc" => Some(NsKind::Ipc),
            "uts" => Some(NsKind::Uts),
            "pid" => Some(NsKind::Pid),
            _ => None,
        }
    }
}

/// Errors while pinning or unpinning.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A namespace syscall (`unshare`, `sethostname`, the bind mount of a pin) failed.
    #[error("{what}: {source}")]
    Sys {
        /// The step that failed.
        what: String,
        /// The errno.
        source: nix::errno::Errno,
    },
    /// Creating a pin file or directory, or bringing up loopback, failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The pod init (PID 1 of the pod's PID namespace) failed to start or to seal itself.
    #[error("pod init: {0}")]
    PodInit(#[source] crate::executor::ExecutorError),
    /// A sysctl the kernel does not know, or a value it refuses: bad input.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// The sysctl name, e.g. `net.ipv4.ip_unprivileged_port_start`.
        key: String,
        /// The error writing it under `/proc/sys`.
        source: std::io::Error,
    },
}

/// `pinns`'s exit status when a sysctl was refused (the daemon answers
/// InvalidArgument for it).
pub const EXIT_BAD_SYSCTL: u8 = 3;

/// Runs in the `crius pinns` child: new namespaces for this process, the
/// hostname set in the new UTS namespace, the pod's sysctls written (they
/// land in the new namespaces, as /proc/sys follows the writer's), each
/// namespace bind-mounted to `dir/<name>`. The child exits afterwards; the
/// mounts keep the namespaces alive. With a PID namespace it also starts
/// the pod init (its PID 1, which first mounts the namespace's /proc at
/// `proc_pin`, then seals itself off, see `executor::pod_init`) and returns
/// its pid once it is sealed.
pub fn pin_in_child(
    dir: &Path,
    kinds: &[NsKind],
    hostname: Option<&str>,
    sysctls: &[(String, String)],
    proc_pin: Option<&Path>,
    userns: Option<&IdMaps>,
) -> Result<Option<u32>, PinError> {
    if let Some(maps) = userns {
        pin_userns(dir, maps)?;
    }
    let flags = kinds.iter().fold(CloneFlags::empty(), |f, k| f | k.flag());
    nix::sched::unshare(flags).map_err(|source| PinError::Sys {
        what: "unshare".into(),
        source,
    })?;
    // Every runtime brings the pod's loopback up (containerd and cri-o run
    // the `loopback` plugin outside the configured network for it); done
    // here it costs one ioctl instead of a plugin process.
    if kinds.contains(&NsKind::Net) {
        crate::executor::sys::set_loopback_up().map_err(|source| PinError::Io {
            path: PathBuf::from("lo"),
            source,
        })?;
    }
    if let (true, Some(h)) = (kinds.contains(&NsKind::Uts), hostname) {
        nix::unistd::sethostname(h).map_err(|source| PinError::Sys {
            what: format!("sethostname {h:?}"),
            source,
        })?;
    }
    for (key, value) in sysctls {
        let path = PathBuf::from("/proc/sys").join(sysctl_path(key));
        std::fs::write(&path, value).map_err(|source| PinError::Sysctl {
            key: key.clone(),
            source,
        })?;
    }
    // The first child after unshare(CLONE_NEWPID) is PID 1 of the new
    // namespace; it keeps the namespace usable for the pod's containers.
    let init = if kinds.contains(&NsKind::Pid) {
        let pin = proc_pin.ok_or_else(|| PinError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("a PID namespace needs --proc"),
        })?;
        std::fs::create_dir_all(pin).map_err(|source| PinError::Io {
            path: pin.to_path_buf(),
            source,
        })?;
        Some(crate::executor::pod_init::spawn(pin, dir).map_err(PinError::PodInit)?)
    } else {
        None
    };
    let init_pid = init.as_ref().map(|i| i.pid);
    for k in kinds {
        let src = match (k, init_pid) {
            (NsKind::Pid, Some(pid)) => format!("/proc/{pid}/ns/pid"),
            _ => format!("/proc/self/ns/{}", k.name()),
        };
        pin(&src, &dir.join(k.name()))?;
    }
    match init {
        Some(i) => i
            .wait_sealed(POD_INIT_TIMEOUT)
            .map(|pid| Some(pid as u32))
            .map_err(PinError::PodInit),
        None => Ok(None),
    }
}

/// A pod's user namespace mappings: uids, then gids.
pub type IdMaps = (
    Vec<crate::executor::userns::IdMap>,
    Vec<crate::executor::userns::IdMap>,
);

/// The pin file of a pod's user namespace, beside the others.
pub const USERNS_PIN: &str = "user";

/// Makes the pod's user namespace with its mappings and pins it at
/// `dir/user`. The pod's other namespaces stay owned by the host's user
/// namespace (they are pinned by bind mounts in the host's mount
/// namespace, which a process inside the new one could not make); the
/// pod's containers join it last, after their mounts are made.
fn pin_userns(dir: &Path, (uids, gids): &IdMaps) -> Result<(), PinError> {
    let ns = crate::executor::userns::create(uids, gids).map_err(|source| PinError::Io {
        path: PathBuf::from("user namespace"),
        source,
    })?;
    let src = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&ns));
    pin(&src, &dir.join(USERNS_PIN))
}

/// Pins the namespace file `src` by bind-mounting it on a new file `target`.
fn pin(src: &str, target: &Path) -> Result<(), PinError> {
    std::fs::File::create(target).map_err(|source| PinError::Io {
        path: target.to_path_buf(),
        source,
    })?;
    nix::mount::mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| PinError::Sys {
        what: format!("bind {src} to {}", target.display()),
        source,
    })
}

/// How long the pod init may take to seal itself.
const POD_INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `net.ipv4.ip_forward` → `net/ipv4/ip_forward`; names already using `/`
/// (needed when a component holds a dot, like an interface name) stay.
pub fn sysctl_path(key: &str) -> String {
    if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    }
}

/// Releases a pinned namespace; a missing pin is fine (idempotent).
pub fn unpin(path: &Path) -> Result<(), PinError> {
    if !path.exists() {
        return Ok(());
    }
    unmount(path)?;
    std::fs::remove_file(path).map_err(|source| PinError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Detaches whatever is mounted at `path`; nothing mounted is fine.
pub fn unmount(path: &Path) -> Result<(), PinError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(source) => Err(PinError::Sys {
            what: format!("umount {}", path.display()),
            source,
        }),
    }
}

/// Mounts the pod's own /dev/shm: a tmpfs of `size_kib`, shared by its containers.
pub fn mount_shm(path: &Path, size_kib: u64) -> Result<(), PinError> {
    std::fs::create_dir_all(path).map_err(|source| PinError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let opts = format!("mode=1777,size={size_kib}k");
    nix::mount::mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(|source| PinError::Sys {
        what: format!("mount shm at {}", path.display()),
        source,
    })
}

/// `pinns` as a command: parses the namespace and sysctl arguments, pins,
/// prints `init_pid=<pid>` when a PID namespace got an init.
pub fn main(
    dir: &std::path::Path,
    hostname: Option<&str>,
    namespaces: &[String],
    sysctls: &[String],
    proc_pin: Option<&Path>,
    (uid_maps, gid_maps): (&[String], &[String]),
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let parse = |v: &[String]| {
        v.iter()
            .map(|m| crate::executor::userns::IdMap::parse(m))
            .collect::<Option<Vec<_>>>()
    };
    let userns = match (parse(uid_maps), parse(gid_maps)) {
        (Some(u), Some(g)) if u.is_empty() && g.is_empty() => None,
        (Some(u), Some(g)) if !u.is_empty() && !g.is_empty() => Some((u, g)),
        _ => {
            eprintln!("crius pinns: bad or unpaired --uid-map/--gid-map");
            return ExitCode::from(2);
        }
    };
    let mut kinds = Vec::new();
    for n in namespaces {
        match NsKind::parse(n) {
            Some(k) => kinds.push(k),
            None => {
                eprintln!("crius pinns: unknown namespace {n:?}");
                return ExitCode::from(2);
            }
        }
    }
    let mut pairs = Vec::new();
    for kv in sysctls {
        match kv.split_once('=') {
            Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
            None => {
                eprintln!("crius pinns: sysctl {kv:?} is not key=value");
                return ExitCode::from(2);
            }
        }
    }
    match pin_in_child(dir, &kinds, hostname, &pairs, proc_pin, userns.as_ref()) {
        Ok(init) => {
            if let Some(pid) = init {
                println!("init_pid={pid}");
            }
            ExitCode::SUCCESS
        }
        Err(e @ PinError::Sysctl { .. }) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_BAD_SYSCTL)
        }
        Err(e) => {
            eprintln!("crius pinns: {e}");
            ExitCode::FAILURE
        }
    }
}
