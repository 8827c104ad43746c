//! The embedded OCI executor: turns an OCI runtime spec into a running
//! process, with no runc/crun binary in between. It forks, so it must only
//! be called from a single-threaded process (the pod monitor), never from
//! the tokio daemon.
//!
//! The [`Executor`] trait is the seam a RuntimeClass handler could later
//! map onto an external OCI runtime.

pub mod linux;
mod namespaces;
pub mod pod_init;
mod process;
mod report;
mod rootfs;
pub mod seccomp;
pub mod sys;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::{Process, Spec};

/// Why the executor could not create or run a process.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: std::io::Error,
    },
    /// The child reported a failure while setting up or exec'ing.
    #[error("{0}")]
    Child(String),
    #[error("invalid spec: {0}")]
    Spec(String),
}

impl ExecutorError {
    pub(crate) fn sys(op: &'static str) -> impl FnOnce(std::io::Error) -> ExecutorError {
        move |source| ExecutorError::Sys { op, source }
    }
}

/// The three standard descriptors of a new process. Pipes or files, never
/// left unset: a process must not inherit the monitor's.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
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
}

/// A container whose init is set up and waits for [`Executor::start`].
pub struct Created {
    pub pid: i32,
    /// The monitor's end of the channel to the waiting init.
    chan: OwnedFd,
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
}

/// The executor linked into crius.
#[derive(Debug, Default, Clone, Copy)]
pub struct Embedded;
