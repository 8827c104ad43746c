//! The embedded OCI executor: turns an OCI runtime spec into a running
//! process, with no runc/crun binary in between. It forks, so it must only
//! be called from a single-threaded process (the pod monitor), never from
//! the tokio daemon.
//!
//! The [`Executor`] trait is the seam between the monitor and what runs a
//! container: [`Embedded`] here, or an external OCI runtime binary
//! ([`oci::Oci`], runc's command line) for a RuntimeClass handler that
//! names one.

#[cfg(test)]
pub(crate) mod fake;
pub mod linux;
mod lsm;
pub mod mount_attr;
mod namespaces;
pub mod oci;
pub mod pod_init;
mod process;
mod report;
mod rootfs;
pub mod seccomp;
pub mod sys;
pub mod userns;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::{Process, Spec};

/// Who must act on a failure a set-up child reported: the request's
/// author (bad input, a program missing from the image) or the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A fault of the node or of crius.
    Internal,
    /// Something the spec asks for cannot be (a working directory that is
    /// a file, a limit the kernel calls invalid).
    InvalidArgument,
    /// The kernel refuses a privilege crius does not hold.
    PermissionDenied,
    /// The process could not be executed (missing, not executable).
    ExecFailed,
}

impl FailureKind {
    /// One byte on the report channel.
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            FailureKind::Internal => 0,
            FailureKind::InvalidArgument => 1,
            FailureKind::PermissionDenied => 2,
            FailureKind::ExecFailed => 3,
        }
    }

    pub(crate) fn from_byte(b: u8) -> FailureKind {
        match b {
            1 => FailureKind::InvalidArgument,
            2 => FailureKind::PermissionDenied,
            3 => FailureKind::ExecFailed,
            _ => FailureKind::Internal,
        }
    }
}

/// Why the executor could not create or run a process.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A system call in the parent (`pipe2`, `prctl`, `fork`, `socketpair`) failed.
    #[error("{op}: {source}")]
    Sys {
        /// The call that failed.
        op: &'static str,
        /// Its errno as an I/O error.
        source: std::io::Error,
    },
    /// The child failed (or died) while setting up or exec'ing.
    #[error("{0}")]
    Child(String),
    /// The child reported a failure of a kind the caller maps.
    #[error("{message}")]
    Refused {
        /// Whose fault it is, for the gRPC status.
        kind: FailureKind,
        /// The child's description of the failure.
        message: String,
    },
    /// The spec cannot be run as given (no process, no args, an argument with a NUL, an unusable
    /// PID namespace peer).
    #[error("invalid spec: {0}")]
    Spec(String),
}

impl ExecutorError {
    /// Who must act on it.
    pub fn kind(&self) -> FailureKind {
        match self {
            ExecutorError::Refused { kind, .. } => *kind,
            ExecutorError::Spec(_) => FailureKind::InvalidArgument,
            _ => FailureKind::Internal,
        }
    }

    /// A reported failure: the kind it was reported with.
    pub(crate) fn reported(kind: FailureKind, message: String) -> ExecutorError {
        match kind {
            FailureKind::Internal => ExecutorError::Child(message),
            kind => ExecutorError::Refused { kind, message },
        }
    }

    pub(crate) fn sys(op: &'static str) -> impl FnOnce(std::io::Error) -> ExecutorError {
        move |source| ExecutorError::Sys { op, source }
    }
}

/// The three standard descriptors of a new process. Pipes or files, never
/// left unset: a process must not inherit the monitor's.
pub struct Stdio {
    /// The process's fd 0.
    pub stdin: OwnedFd,
    /// The process's fd 1.
    pub stdout: OwnedFd,
    /// The process's fd 2; the same terminal as stdin/stdout when `terminal`.
    pub stderr: OwnedFd,
    /// stdin is a terminal: the process gets it as controlling terminal.
    pub terminal: bool,
}

/// What the executor needs besides the spec.
pub struct CreateOptions {
    /// The container's cgroup directory in every hierarchy, created and
    /// limited by the daemon; the process joins them before it runs.
    pub cgroup_dirs: Vec<PathBuf>,
    /// Compiled seccomp filter (classic BPF), if the spec asks for one.
    pub seccomp: Option<Vec<u8>>,
    /// The mount namespace (`/proc/<pid>/ns/mnt`) of a process in the PID
    /// namespace the container joins, when the spec asks for a fresh proc
    /// mount there (a target container's): its /proc is cloned from it.
    pub pid_peer: Option<PathBuf>,
    /// Keep the inherited oom_score_adj where the kernel refuses the
    /// spec's, instead of failing (`[runtime] restrict_oom_score_adj`).
    pub clamp_oom_score_adj: bool,
}

/// A container whose init is set up and waits for [`Executor::start`].
pub struct Created {
    /// The init's pid as the monitor sees it (the host PID namespace).
    pub pid: i32,
    /// The monitor's end of the channel to the waiting init (the embedded
    /// executor's; an external runtime keeps its own).
    chan: Option<OwnedFd>,
    /// The terminal's master when an external runtime made the container's
    /// terminal itself (OCI `--console-socket`): it replaces the pty the
    /// monitor would have made.
    pub console: Option<OwnedFd>,
    /// Non-fatal notes from the child (e.g. a clamped oom_score_adj).
    pub warnings: Vec<String>,
}

/// Runs OCI containers and processes inside them.
pub trait Executor {
    /// Sets up namespaces, cgroups, mounts and the process, stopping just
    /// before `execve`.
    fn create(
        &self,
        spec: &Spec,
        stdio: Stdio,
        opts: &CreateOptions,
    ) -> Result<Created, ExecutorError>;
    /// Lets a created container exec its process; fails if the exec failed.
    fn start(&self, created: Created) -> Result<(), ExecutorError>;
    /// Starts `process` inside the running container whose init is `pid`,
    /// with the container's namespaces and cgroup.
    fn exec(
        &self,
        pid: i32,
        spec: &Spec,
        process: &Process,
        stdio: Stdio,
        opts: &CreateOptions,
    ) -> Result<i32, ExecutorError>;
    /// Like [`Executor::exec`] with a terminal allocated inside the
    /// container (its own devpts); returns the pid and the pty master.
    fn exec_tty(
        &self,
        pid: i32,
        spec: &Spec,
        process: &Process,
        opts: &CreateOptions,
    ) -> Result<(i32, OwnedFd), ExecutorError>;
    /// Whether the container's terminal is made by the executor (handed
    /// back in [`Created::console`]) rather than given in [`Stdio`].
    fn makes_terminal(&self) -> bool {
        false
    }
    /// Drops what the executor keeps about the container once its process
    /// is gone (an external runtime's state); nothing for the embedded one.
    fn remove(&self) -> Result<(), ExecutorError> {
        Ok(())
    }
}

/// The executor linked into crius.
#[derive(Debug, Default, Clone, Copy)]
pub struct Embedded;
