//! Pod sandbox operations of the core: one method per CRI call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_cri::v1::{LinuxContainerResources, PodSandboxConfig};

use super::Runtime;
use crate::error::{Error, Result};
use crate::sandbox::pinns::NsKind;
use crate::sandbox::{PodRecord, PodState, labels_match};

/// Which pods ListPodSandbox wants.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    /// An id or id prefix; empty: any.
    pub id: String,
    /// Only pods in this state; `None`: any.
    pub state: Option<PodState>,
    /// Every label here must be on the pod.
    pub labels: HashMap<String, String>,
}

/// A pod as PodSandboxStatus shows it.
#[derive(Debug, Clone)]
pub struct PodStatus {
    /// The stored pod.
    pub record: Arc<PodRecord>,
    /// With verbose: what the debugging details need.
    pub verbose: Option<PodDetails>,
}

/// PodSandboxStatus's verbose details.
#[derive(Debug, Clone)]
pub struct PodDetails {
    /// CNI CHECK of the pod's network: `None` without an attachment.
    pub network_check: Option<std::result::Result<(), String>>,
    /// The pinned network namespace (none for host-network pods).
    pub netns: Option<PathBuf>,
}

impl Runtime {
    /// RunPodSandbox: a ready pod, or the one already made for the same
    /// name, namespace, uid and attempt (a retry). `handler` is the default
    /// (`""`) or one of `[runtime.handlers]`; it is recorded with the pod.
    /// The node policy may refuse it (PermissionDenied).
    pub async fn run_pod(&self, config: PodSandboxConfig, handler: &str) -> Result<String> {
        self.policy.check_pod(&config)?;
        if !handler.is_empty() && !self.config.runtime.handlers.contains_key(handler) {
            let known: Vec<String> = std::iter::once("\"\" (the default)".to_string())
                .chain(
                    self.config
                        .runtime
                        .handlers
                        .keys()
                        .map(|k| format!("{k:?}")),
                )
                .collect();
            return Err(Error::InvalidArgument(format!(
                "unknown runtime handler {}; configured: {}",
                crate::error::shown(handler),
                known.join(", ")
            )));
        }
        if crate::sandbox::userns_maps(&config).is_some() {
            self.user_namespaces_for(handler).map_err(|why| {
                Error::FailedPrecondition(format!("user namespaces are not available: {why}"))
            })?;
        }
        self.pods.run(config, handler, &self.network).await
    }

    /// StopPodSandbox: the pod's containers first, then the pod. Stopping
    /// an unknown pod succeeds (kubelet retries after its GC).
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let pod = match self.pods.get(id) {
            Ok(p) => p,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _pod = self.pods.exclusive(&pod.id).await;
        self.containers.stop_pod(&self.pods, &pod.id).await?;
        self.pods.stop(&pod.id, &self.network).await
    }

    /// RemovePodSandbox: the pod's containers and monitor, then the pod.
    /// Removing an unknown pod succeeds.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let pod = match self.pods.get(id) {
            Ok(p) => p,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _pod = self.pods.exclusive(&pod.id).await;
        self.containers
            .remove_pod(&self.pods, &self.storage, &pod.id)
            .await?;
        self.pods.remove(&pod.id, &self.network).await
    }

    /// UpdatePodSandboxResources (in-place pod resize): the pod cgroup's
    /// limits become `resources` plus `overhead`, live. Held against the
    /// pod's stop and removal like a container start.
    pub async fn update_pod_resources(
        &self,
        id: &str,
        resources: Option<LinuxContainerResources>,
        overhead: Option<LinuxContainerResources>,
    ) -> Result<()> {
        let pod = self.pods.get(id)?;
        let _pod = self.pods.shared(&pod.id).await;
        self.pods
            .update_resources(&pod.id, resources, overhead)
            .await
    }

    /// PodSandboxStatus, from memory; with `verbose` also a CNI CHECK.
    pub async fn pod_status(&self, id: &str, verbose: bool) -> Result<PodStatus> {
        let record = Arc::new(self.pods.get(id)?);
        let verbose = if verbose {
            let network_check = self
                .pods
                .check_network(&record, &self.network)
                .await
                .map(|r| r.map_err(|e| e.to_string()));
            Some(PodDetails {
                network_check,
                netns: (!record.host_network).then(|| self.pods.ns_path(&record.id, NsKind::Net)),
            })
        } else {
            None
        };
        Ok(PodStatus { record, verbose })
    }

    /// ListPodSandbox, from memory.
    pub fn list_pods(&self, filter: &PodFilter) -> Result<Vec<Arc<PodRecord>>> {
        Ok(self
            .pods
            .list()?
            .into_iter()
            .filter(|p| p.id.starts_with(&filter.id))
            .filter(|p| filter.state.is_none_or(|s| s == p.state))
            .filter(|p| labels_match(&p.config.labels, &filter.labels))
            .collect())
    }
}
