//! The monitor end to end, without root: its real loop ([`serve`]) runs in
//! a forked child of the test, on a unix socket in a temporary directory,
//! driving containers through the fake executor
//! ([`crate::executor::fake`]), and the tests talk to it with the daemon's
//! own [`Client`].
//!
//! A forked child rather than a thread because the monitor owns process
//! state: it reaps every child of its process (a thread would reap other
//! tests' children), and its SIGCHLD signalfd only works when no other
//! thread can take the signal. The child closes every descriptor but the
//! listener and stdio first, so other tests' pipes see EOF as they expect.

mod exec;
mod lifecycle;
mod protocol;
mod retire;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::client::{Client, MonitorError};
use super::event_loop::serve;
use super::proto::{self, Response, request::Op};
use super::{ExitRecord, SOCKET, files};
use crate::executor::fake::{FAIL_CREATE, Fake};
use crate::executor::linux::become_subreaper;
use crate::executor::sys;

/// A monitor running the fake executor in a forked child.
pub(super) struct Harness {
    dir: tempfile::TempDir,
    pub client: Client,
    monitor: Pid,
    /// The monitor process was reaped by [`Harness::shutdown`].
    reaped: bool,
}

/// How a test container is made.
#[derive(Default, Clone)]
pub(super) struct Spec {
    /// `/bin/sh -c` this.
    pub script: String,
    pub terminal: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    /// The cgroup directories the monitor is told about (plain
    /// directories here: it reads `cgroup.procs` and `memory.events`).
    pub cgroup_dirs: Vec<PathBuf>,
    /// [`FAIL_CREATE`]'s value.
    pub fail_create: Option<&'static str>,
}

impl Spec {
    pub fn sh(script: &str) -> Spec {
        Spec {
            script: script.to_string(),
            ..Default::default()
        }
    }
}

impl Harness {
    pub fn start() -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("crius-mon")
            .tempdir()
            .unwrap();
        let listener = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        listener.set_nonblocking(true).unwrap();
        // The monitor's own code is safe; forking a test monitor is the one
        // exception, as in the real daemon (where the executor forks).
        #[allow(unsafe_code)]
        // SAFETY: the child is single-threaded from here on; glibc's malloc
        // is usable after fork, and the child takes no other lock a test
        // thread could hold. It leaves through _exit, never back into the
        // test harness.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // As the real monitor, whose directory is its cwd (how
                // retiring tells a monitor's pid from a reused one).
                let run = std::panic::catch_unwind(|| {
                    nix::unistd::chdir(dir.path()).map_err(|e| e.to_string())?;
                    monitor_main(&listener)
                });
                sys::exit(match run {
                    Ok(Ok(())) => 0,
                    Ok(Err(_)) => 1,
                    Err(_) => 101,
                })
            }
            nix::unistd::ForkResult::Parent { child } => Harness {
                client: Client::new(dir.path()),
                dir,
                monitor: child,
                reaped: false,
            },
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The container's directory (its bundle, `pid`, `exit.json`).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.path(id)
    }

    pub fn log(&self, id: &str) -> PathBuf {
        self.path(&format!("{id}.log"))
    }

    pub async fn create(&self, id: &str, spec: &Spec) -> Result<Response, MonitorError> {
        let dir = self.bundle(id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut annotations = serde_json::Map::new();
        if let Some(kind) = spec.fail_create {
            annotations.insert(FAIL_CREATE.into(), kind.into());
        }
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/bin/sh", "-c", spec.script],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
                "terminal": spec.terminal,
            },
            "annotations": annotations,
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let op = Op::Create(proto::Create {
            id: id.into(),
            dir: dir.display().to_string(),
            log_path: self.log(id).display().to_string(),
            cgroup_dirs: spec
                .cgroup_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
            clamp_oom_score_adj: false,
            oci_runtime: None,
        });
        self.client.call(op).await
    }

    pub async fn start_container(&self, id: &str) -> Result<Response, MonitorError> {
        self.client
            .call(Op::Start(proto::ContainerRef { id: id.into() }))
            .await
    }

    /// Creates and starts; the container's pid.
    pub async fn run(&self, id: &str, spec: &Spec) -> i32 {
        let pid = self.create(id, spec).await.unwrap().pid;
        self.start_container(id).await.unwrap();
        pid
    }

    pub async fn wait(&self, id: &str, timeout_ms: u64) -> Result<Response, MonitorError> {
        self.client
            .call(Op::Wait(proto::Wait {
                id: id.into(),
                timeout_ms,
            }))
            .await
    }

    /// Waits (up to 10 s) for the container's exit.
    pub async fn exited(&self, id: &str) -> Response {
        let r = self.wait(id, 10_000).await.unwrap();
        assert!(r.exited, "{id} did not exit");
        r
    }

    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<Response, MonitorError> {
        self.client
            .call(Op::Kill(proto::Kill {
                id: id.into(),
                signal,
                all,
            }))
            .await
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        script: &str,
        timeout_ms: u64,
    ) -> Result<Response, MonitorError> {
        self.client
            .call(Op::ExecSync(proto::Exec {
                id: id.into(),
                cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                timeout_ms,
            }))
            .await
    }

    pub fn exit_record(&self, id: &str) -> Option<ExitRecord> {
        let json = std::fs::read(self.bundle(id).join(files::EXIT)).ok()?;
        Some(serde_json::from_slice(&json).unwrap())
    }

    /// Asks the monitor to shut down; how its process ended.
    pub async fn shutdown(&mut self) -> WaitStatus {
        self.client
            .call(Op::Shutdown(Default::default()))
            .await
            .unwrap();
        let st = waitpid(self.monitor, None).unwrap();
        self.reaped = true;
        st
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // The fake's children die with it (PDEATHSIG).
        let _ = nix::sys::signal::kill(self.monitor, Signal::SIGKILL);
        let _ = waitpid(self.monitor, None);
    }
}

/// The forked child: the loop over the fake executor.
fn monitor_main(listener: &UnixListener) -> Result<(), String> {
    sys::close_fds_except(&[0, 1, 2, listener.as_raw_fd()]).map_err(|e| e.to_string())?;
    // As the real monitor: orphans of its containers come back to it.
    become_subreaper().map_err(|e| e.to_string())?;
    let sigchld = sys::SigChld::block().map_err(|e| e.to_string())?;
    serve(listener, &sigchld, Box::new(Fake))
}

/// The monitor's failure code of a call.
pub(super) fn code<T: std::fmt::Debug>(r: Result<T, MonitorError>) -> proto::Code {
    match r {
        Err(MonitorError::Remote { code, .. }) => code,
        other => panic!("expected a monitor error, got {other:?}"),
    }
}

/// Whether `pid` is gone (reaped), waiting up to 5 s for it.
pub(super) fn gone(pid: i32) -> bool {
    eventually(|| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Polls `f` for up to 5 s.
pub(super) fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
