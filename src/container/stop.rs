//! Stopping containers. One stop runs per container at a time; a later
//! StopContainer, RemoveContainer or pod teardown joins it and can only
//! bring its kill deadline forward (kubelet shortens the grace period on a
//! force delete), so no stop — however long its timeout, even one whose
//! client gave up long ago — ever holds up another. Stops do not hold the
//! container's lock while they wait.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::orphans::Why;
use super::{ContainerRecord, Containers, monitor_err};
use crate::error::{Error, Result};
use crate::monitor::ExitRecord;
use crate::monitor::client::{Client, MonitorError, Probe};
use crate::monitor::proto::{self, request::Op};
use crate::sandbox::Pods;
use k8s_cri::v1::ContainerState;

/// How long a SIGKILLed container may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Longest single wait on the monitor, so a stop notices a moved deadline
/// even if a wake-up were missed.
const WAIT_SLICE: Duration = Duration::from_secs(60);

/// `now + d`, saturating: a client's timeout may be anything up to
/// 2^63 s, which `Instant` cannot hold.
pub fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stopped {
    /// Through its monitor, as usual.
    Normally,
    /// Its monitor did not answer (stopped or hung): the container was
    /// killed through its cgroup and its exit recorded by the daemon.
    MonitorHung,
}

type Outcome = std::result::Result<Stopped, String>;

/// A stop in progress: its kill deadline, which joiners may move earlier,
/// and its outcome once done.
pub(super) struct Stopping {
    deadline: watch::Sender<Instant>,
    done: watch::Sender<Option<Outcome>>,
}

/// Unregisters the leading stop and publishes its outcome, also when the
/// stopping future is dropped.
struct Leader<'a> {
    containers: &'a Containers,
    id: String,
    stopping: Arc<Stopping>,
    outcome: Option<Outcome>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.containers.stopping.lock() {
            map.remove(&self.id);
        }
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Err("the stop was abandoned".into()));
        self.stopping.done.send_replace(Some(outcome));
    }
}

impl Containers {
    /// Stops a container: its stop signal, SIGKILL after `timeout`; returns
    /// once it is gone. Stopping a stopped or unknown container is fine.
    /// A container whose monitor does not answer is killed through its
    /// cgroup, and the stop says so (Unavailable).
    pub async fn stop(&self, pods: &Pods, id: &str, timeout: Duration) -> Result<()> {
        // CRI: stopping an unknown container succeeds.
        let c = match self.get(id) {
            Ok(c) => c,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.stop_by(pods, &c, deadline_after(timeout)).await? {
            Stopped::Normally => Ok(()),
            Stopped::MonitorHung => Err(Error::Unavailable(format!(
                "the monitor of pod {} does not answer (stopped or hung?): container {} was killed through its cgroup",
                c.pod_id, c.id
            ))),
        }
    }

    /// Stops `c` with SIGKILL at `deadline` at the latest, joining a stop
    /// already under way (moving its deadline earlier if ours is).
    pub(super) async fn stop_by(
        &self,
        pods: &Pods,
        c: &ContainerRecord,
        deadline: Instant,
    ) -> Result<Stopped> {
        let (stopping, leads) = {
            let mut map = self
                .stopping
                .lock()
                .map_err(|_| Error::Internal("stop registry poisoned".into()))?;
            match map.get(&c.id) {
                Some(s) => {
                    s.deadline.send_if_modified(|d| {
                        let earlier = deadline < *d;
                        if earlier {
                            *d = deadline;
                        }
                        earlier
                    });
                    (s.clone(), false)
                }
                None => {
                    let s = Arc::new(Stopping {
                        deadline: watch::Sender::new(deadline),
                        done: watch::Sender::new(None),
                    });
                    map.insert(c.id.clone(), s.clone());
                    (s, true)
                }
            }
        };
        if !leads {
            let s = stopping;
            let mut done = s.done.subscribe();
            let outcome = done
                .wait_for(Option::is_some)
                .await
                .map(|o| o.clone())
                .ok()
                .flatten();
            return match outcome {
                Some(Ok(how)) => Ok(how),
                None => Ok(Stopped::Normally),
                Some(Err(e)) => Err(Error::Internal(e)),
            };
        }
        let mut leader = Leader {
            containers: self,
            id: c.id.clone(),
            stopping: stopping.clone(),
            outcome: None,
        };
        let r = self
            .stop_leading(pods, c, stopping.deadline.subscribe())
            .await;
        leader.outcome = Some(r.as_ref().map(|how| *how).map_err(|e| e.to_string()));
        drop(leader);
        r
    }

    async fn stop_leading(
        &self,
        pods: &Pods,
        c: &ContainerRecord,
        mut deadline: watch::Receiver<Instant>,
    ) -> Result<Stopped> {
        let st = self.run_state(c);
        let monitor = Self::monitor(pods, &c.pod_id);
        if st.state == ContainerState::ContainerExited {
            self.kill_cgroup(c);
            return Ok(Stopped::Normally);
        }
        match monitor.probe().await {
            Probe::Alive => {}
            // Nobody will reap or record: kill what is left through the
            // cgroup and record the kill ourselves.
            Probe::Dead => {
                self.stop_orphan(c, Why::MonitorDied).await?;
                return Ok(Stopped::Normally);
            }
            Probe::Hung => {
                self.stop_orphan(c, Why::Stopped).await?;
                return Ok(Stopped::MonitorHung);
            }
        }
        if st.state == ContainerState::ContainerCreated {
            // Never started: nothing to signal gracefully.
            let _ = self.kill(&monitor, c, libc::SIGKILL, true).await;
        }
        if Instant::now() < *deadline.borrow() {
            let _ = self.kill(&monitor, c, c.stop_signal, false).await;
            loop {
                let left = deadline.borrow().saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    exited = self.wait(&monitor, c, left.min(WAIT_SLICE)) => {
                        if let Err(Error::NotFound(_)) = exited {
                            return self.stop_forgotten(c).await;
                        }
                        if exited? {
                            self.kill_cgroup(c);
                            tracing::info!(container_id = %c.id, "container stopped");
                            return Ok(Stopped::Normally);
                        }
                    }
                    // A joiner moved the deadline: look again.
                    _ = deadline.changed() => {}
                }
            }
        }
        if let Err(e) = self.kill(&monitor, c, libc::SIGKILL, true).await {
            return match monitor_err(e) {
                Error::NotFound(_) => self.stop_forgotten(c).await,
                e => Err(e),
            };
        }
        if !self.wait(&monitor, c, KILL_WAIT).await? {
            return Err(Error::Internal(format!(
                "container {} did not die after SIGKILL",
                c.id
            )));
        }
        self.kill_cgroup(c);
        tracing::info!(container_id = %c.id, "container killed");
        Ok(Stopped::Normally)
    }

    async fn kill(
        &self,
        monitor: &Client,
        c: &ContainerRecord,
        signal: i32,
        all: bool,
    ) -> std::result::Result<proto::Response, MonitorError> {
        monitor
            .call(Op::Kill(proto::Kill {
                id: c.id.clone(),
                signal,
                all,
            }))
            .await
    }

    /// Stops a container its (live) monitor no longer knows: a removal that
    /// a daemon crash cut short after the monitor forgot it but before the
    /// record went. Only the cgroup is left to act on, as for a dead monitor.
    async fn stop_forgotten(&self, c: &ContainerRecord) -> Result<Stopped> {
        tracing::info!(container_id = %c.id, "monitor no longer knows the container");
        self.stop_orphan(c, Why::Stopped).await?;
        Ok(Stopped::Normally)
    }

    /// Stops a container whose monitor is gone or hung: SIGKILL to its
    /// cgroup until empty, then an exit record (see `orphans.rs`).
    async fn stop_orphan(&self, c: &ContainerRecord, why: Why) -> Result<()> {
        tracing::warn!(container_id = %c.id, "monitor gone; killing the container's cgroup");
        self.orphans().end(c, why).await
    }

    /// Waits for the exit, through the monitor; without a monitor (it
    /// died) by watching the process.
    async fn wait(&self, monitor: &Client, c: &ContainerRecord, timeout: Duration) -> Result<bool> {
        match monitor
            .call(Op::Wait(proto::Wait {
                id: c.id.clone(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }))
            .await
        {
            Ok(r) => {
                if r.exited {
                    // Known now, not only once the watcher hears of it.
                    self.table.exited(
                        &c.id,
                        ExitRecord {
                            exit_code: r.exit_code,
                            finished_at: r.finished_at,
                            oom_killed: r.oom_killed,
                            monitor_died: false,
                        },
                    );
                }
                Ok(r.exited)
            }
            Err(MonitorError::Io { .. }) => {
                let deadline = deadline_after(timeout);
                while Instant::now() < deadline {
                    if self.run_state(c).state == ContainerState::ContainerExited {
                        return Ok(true);
                    }
                    if let Some(pid) = self.run_state(c).pid {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(false)
            }
            Err(e) => Err(monitor_err(e)),
        }
    }
}
