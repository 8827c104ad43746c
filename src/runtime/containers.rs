//! Container operations of the core: one method per CRI call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{
    AttachRequest, ContainerConfig, ContainerState, ExecRequest, LinuxContainerResources,
    PodSandboxConfig, PortForwardRequest,
};

use super::Runtime;
use crate::container::{ContainerRecord, RunState};
use crate::error::{Error, Result};
use crate::sandbox::{PodState, labels_match};
use crate::streaming::Pending;

/// Which containers ListContainers wants.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    /// An id or id prefix; empty: any.
    pub id: String,
    /// A pod id or id prefix; empty: any.
    pub pod: String,
    /// Only containers in this state; `None`: any.
    pub state: Option<ContainerState>,
    /// Every label here must be on the container.
    pub labels: HashMap<String, String>,
}

/// A container with where it is in its life.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// The stored container.
    pub record: Arc<ContainerRecord>,
    /// Its current run state.
    pub run: RunState,
}

/// A container as ContainerStatus shows it.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    /// The container and its run state.
    pub view: ContainerView,
    /// Kubernetes' words: Completed, Error, OOMKilled, StartError, Unknown;
    /// MonitorDied when the pod's monitor died under it.
    pub reason: &'static str,
    /// Why it failed to start or ended, in a sentence (empty otherwise).
    pub message: String,
    /// Exit code; 255 for an exited container with no exit record, 0 while it runs.
    pub exit_code: i32,
    /// Nanoseconds since the epoch; 0 while it runs.
    pub finished_at: i64,
    /// With verbose: the OCI spec it runs with.
    pub spec: Option<serde_json::Value>,
}

/// The outcome of an ExecSync.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr (a timeout note is appended when it timed out).
    pub stderr: Vec<u8>,
    /// The command's exit code.
    pub exit_code: i32,
}

fn matches(c: &ContainerRecord, run: &RunState, f: &ContainerFilter) -> bool {
    c.id.starts_with(&f.id)
        && c.pod_id.starts_with(&f.pod)
        && f.state.is_none_or(|s| s == run.state)
        && labels_match(&c.config.labels, &f.labels)
}

/// What ContainerStatus' `message` says: why the start failed, or that
/// the pod's monitor died and the daemon ended the container.
pub(super) fn message(c: &ContainerRecord, run: &RunState) -> String {
    match (&c.start_error, run.exit) {
        (Some(e), _) if run.started_at == 0 => e.clone(),
        (_, Some(e)) if e.monitor_died => MONITOR_DIED.to_string(),
        (Some(e), _) => e.clone(),
        _ => String::new(),
    }
}

/// The message of a container ended because its pod's monitor died.
const MONITOR_DIED: &str = "the pod's monitor process died (killed or crashed): \
     crius killed the container's processes and recorded it exited";

/// The status words for a container's run state.
pub(super) fn reason(c: &ContainerRecord, run: &RunState) -> (&'static str, i32, i64) {
    let (reason, code, finished) = match run.exit {
        Some(e) if e.monitor_died => ("MonitorDied", e.exit_code, e.finished_at),
        Some(e) if e.oom_killed => ("OOMKilled", e.exit_code, e.finished_at),
        Some(e) if e.exit_code == 0 => ("Completed", 0, e.finished_at),
        Some(e) => ("Error", e.exit_code, e.finished_at),
        None if run.state == ContainerState::ContainerExited => ("Unknown", 255, 0),
        None => ("", 0, 0),
    };
    if c.start_error.is_some() && run.started_at == 0 {
        ("StartError", code, finished)
    } else {
        (reason, code, finished)
    }
}

impl Runtime {
    /// CreateContainer in a ready pod.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
        sandbox_config: Option<PodSandboxConfig>,
    ) -> Result<String> {
        // The node policy judges the stored pod (its namespace), and host
        // paths where they really lead (file system reads: off the async
        // workers).
        let pod = self.pods.get(pod_id)?;
        crate::sync::blocking(|| {
            self.policy
                .check_container(&pod.config, &config, |p| std::fs::canonicalize(p).ok())
        })?;
        self.containers
            .create(
                &self.pods,
                &self.images,
                &self.storage,
                pod_id,
                config,
                sandbox_config,
            )
            .await
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<()> {
        self.containers.start(&self.pods, id).await
    }

    /// StopContainer: its stop signal, SIGKILL after `timeout`.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        self.containers.stop(&self.pods, id, timeout).await
    }

    /// RemoveContainer (stopping it first); an unknown id is fine.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        self.containers.remove(&self.pods, &self.storage, id).await
    }

    /// ListContainers, from memory.
    pub fn list_containers(&self, filter: &ContainerFilter) -> Result<Vec<ContainerView>> {
        Ok(self
            .containers
            .list_with_state()?
            .into_iter()
            .filter(|(c, run)| matches(c, run, filter))
            .map(|(record, run)| ContainerView { record, run })
            .collect())
    }

    /// ContainerStatus, from memory; with `verbose` also its OCI spec.
    pub async fn container_status(&self, id: &str, verbose: bool) -> Result<ContainerStatus> {
        let record = self.containers.get(id)?;
        let run = self.containers.run_state(&record);
        let (reason, exit_code, finished_at) = reason(&record, &run);
        let spec = if verbose {
            let path = self.containers.spec_path(&record.id);
            tokio::task::spawn_blocking(move || {
                std::fs::read(path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            })
            .await
            .ok()
            .flatten()
        } else {
            None
        };
        Ok(ContainerStatus {
            message: message(&record, &run),
            view: ContainerView { record, run },
            reason,
            exit_code,
            finished_at,
            spec,
        })
    }

    /// UpdateContainerResources: the cgroup limits of a running container.
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: LinuxContainerResources,
    ) -> Result<()> {
        self.containers.update(id, resources).await
    }

    /// ReopenContainerLog, after kubelet rotated it.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        self.containers.reopen_log(&self.pods, id).await
    }

    /// ExecSync: the command's output and exit code (`timeout` zero: none).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let (stdout, stderr, exit_code) = self
            .containers
            .exec_sync(&self.pods, id, cmd, timeout)
            .await?;
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code,
        })
    }

    /// Exec: a single-use URL for a running container's streaming exec.
    pub fn exec_url(&self, req: ExecRequest) -> Result<String> {
        let (monitor, id) = self.containers.monitor_for(&self.pods, &req.container_id)?;
        self.issue(Pending::Exec {
            req: ExecRequest {
                container_id: id,
                ..req
            },
            monitor,
        })
    }

    /// Attach: a single-use URL for a running container's main process.
    pub fn attach_url(&self, req: AttachRequest) -> Result<String> {
        let (monitor, id) = self.containers.monitor_for(&self.pods, &req.container_id)?;
        self.issue(Pending::Attach {
            req: AttachRequest {
                container_id: id,
                ..req
            },
            monitor,
        })
    }

    /// PortForward: a single-use URL into a ready pod's network namespace.
    pub fn port_forward_url(&self, req: PortForwardRequest) -> Result<String> {
        let pod = self.pods.get(&req.pod_sandbox_id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let netns = (!pod.host_network).then(|| {
            self.pods
                .ns_path(&pod.id, crate::sandbox::pinns::NsKind::Net)
        });
        self.issue(Pending::PortForward {
            req: PortForwardRequest {
                pod_sandbox_id: pod.id,
                ..req
            },
            netns,
        })
    }

    fn issue(&self, pending: Pending) -> Result<String> {
        self.streaming.issue(pending).map_err(Error::from)
    }
}
