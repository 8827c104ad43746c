//! Containers left without a monitor. A pod's monitor reaps its
//! containers and records their exits; when it is gone (killed, crashed)
//! or hung, nobody would, and a container would stay RUNNING for ever with
//! its processes alive. The daemon kills what is left in the container's
//! cgroup and records the exit itself, saying why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::ContainerState;
use tokio::time::Instant;

use super::table::Table;
use super::{ContainerRecord, internal, now_nanos};
use crate::cgroups::Cgroups;
use crate::error::{Error, Result};
use crate::monitor::{ExitRecord, files};

/// How long a SIGKILLed container's cgroup may take to empty.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why the daemon, not the monitor, ended a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// The monitor is dead: the exit is recorded as its death's
    /// consequence (ContainerStatus reason `MonitorDied`).
    MonitorDied,
    /// A stop found the monitor hung, or not knowing the container.
    Stopped,
}

/// What ending an orphaned container needs; cheap to clone into the
/// per-pod watcher task.
#[derive(Clone)]
pub(super) struct Orphans {
    pub(super) cgroups: Cgroups,
    /// `runroot/containers`.
    pub(super) dir: PathBuf,
    pub(super) table: Arc<Table>,
}

impl Orphans {
    /// Whether the container's cgroup has no process left.
    fn empty(&self, c: &ContainerRecord) -> bool {
        self.cgroups
            .dirs(&c.cgroup)
            .unwrap_or_default()
            .iter()
            .all(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .map_or(true, |p| p.trim().is_empty())
            })
    }

    fn kill_cgroup(&self, c: &ContainerRecord) {
        for dir in self.cgroups.dirs(&c.cgroup).unwrap_or_default() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// SIGKILL to the container's cgroup until it is empty, then an exit
    /// record (137) unless the monitor wrote one before it went, so its
    /// status says Exited, and why.
    pub(super) async fn end(&self, c: &ContainerRecord, why: Why) -> Result<()> {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            if crate::sync::blocking(|| {
                self.kill_cgroup(c);
                self.empty(c)
            }) {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Internal(format!(
                    "container {} did not die after SIGKILL",
                    c.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state_dir = self.dir.join(&c.id);
        let exit = state_dir.join(files::EXIT);
        let rec = ExitRecord {
            exit_code: 137,
            finished_at: now_nanos(),
            oom_killed: false,
            monitor_died: why == Why::MonitorDied,
        };
        let written = crate::sync::blocking(|| -> Result<bool> {
            if exit.exists() {
                return Ok(false);
            }
            let json = serde_json::to_vec(&rec).map_err(internal)?;
            let _ = std::fs::create_dir_all(&state_dir);
            std::fs::write(&exit, json).map_err(internal)?;
            Ok(true)
        })?;
        if written {
            self.table.exited(&c.id, rec);
        }
        Ok(())
    }

    /// Pod `pod_id`'s monitor is dead: each of its containers that was
    /// made (has a pid) and has not exited is killed and recorded exited
    /// with reason `MonitorDied`. Containers whose create has not reached
    /// the monitor yet are left to their create.
    pub(super) async fn monitor_died(&self, pod_id: &str) {
        let Ok(all) = self.table.all() else {
            return;
        };
        for (c, run) in all {
            if c.pod_id != pod_id
                || run.state == ContainerState::ContainerExited
                || run.pid.is_none()
            {
                continue;
            }
            match self.end(&c, Why::MonitorDied).await {
                Ok(()) => tracing::warn!(
                    container_id = %c.id,
                    pod_id,
                    "the pod's monitor died: container killed and recorded exited"
                ),
                Err(e) => tracing::warn!(
                    container_id = %c.id,
                    pod_id,
                    error = %e,
                    "the pod's monitor died; ending the container failed"
                ),
            }
        }
    }
}
