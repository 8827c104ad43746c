//! The runtime core: the node-wide state every CRI operation works on, with
//! one method per operation (pods in `pods.rs`, containers in
//! `containers.rs`, images in `images.rs`, the node here). gRPC handlers in
//! [`crate::server`] validate requests, convert them, call one method and
//! map its typed error; they reach nothing else of the node.

mod containers;
mod events;
mod images;
mod metrics;
mod pods;
mod policy;
mod stats;
mod telemetry;

pub use crate::config::CgroupDriver;
pub use crate::container::{ContainerRecord, RunState, cri_signal};
pub use crate::image::PullAuth;
pub use crate::image::record::ImageUser;
pub use crate::sandbox::{PodRecord, PodState};
pub use crate::stats::metrics::{
    BASE_LABELS, Descriptor as MetricDescriptor, Kind as MetricKind, Value as MetricValue,
};
pub use crate::stats::{CgroupSample, Cost as CollectorCost, Interface, Memory, Pids, Sample};
pub use crate::telemetry::Telemetry;
pub use containers::{ContainerFilter, ContainerStatus, ContainerView, ExecOutput};
pub use events::ContainerEvent;
pub use images::{FsUsage, ImageView};
pub use metrics::{ContainerMetrics, PodMetrics};
pub use pods::{PodDetails, PodFilter, PodStatus};
pub use stats::{ContainerStatsView, LayerUsage, PodStatsView};

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Result;
use crate::image::Images;
use crate::network::{Network, Readiness};
use crate::sandbox::Pods;
use crate::store::{Store, Table};

/// Name reported by `Version`.
pub const RUNTIME_NAME: &str = "crius";
/// The CRI API version served.
pub const CRI_API_VERSION: &str = "v1";
const POD_CIDR_KEY: &str = "pod_cidr";

/// A runtime condition as kubelet reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The condition type: `RuntimeReady` or `NetworkReady`.
    pub kind: &'static str,
    /// Whether it holds.
    pub ready: bool,
    /// CamelCase reason when not ready (e.g. `NetworkPluginNotReady`); empty when ready.
    pub reason: String,
    /// Human-readable detail when not ready; empty when ready.
    pub message: String,
}

/// What this runtime supports beyond the CRI's baseline, as `Status`
/// reports it (kubelet and critest turn features on or off by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// The runtime handlers (RuntimeClass names; `""` is the default), each
    /// with what it supports.
    pub handlers: Vec<HandlerFeatures>,
    /// `SupplementalGroupsPolicy` Merge and Strict work, and ContainerStatus
    /// reports the process's user and groups.
    pub supplemental_groups_policy: bool,
    /// User namespaces work for pods on the host network.
    pub user_namespaces_host_network: bool,
}

/// What one runtime handler supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerFeatures {
    /// The RuntimeClass handler name; empty for the default.
    pub name: String,
    /// CRI mounts may be recursive read-only (the kernel has mount_setattr).
    pub recursive_read_only_mounts: bool,
    /// Pods may run in user namespaces.
    pub user_namespaces: bool,
}

/// The core: private state, one method per operation.
pub struct Runtime {
    config: Config,
    store: Arc<Store>,
    network: Network,
    images: Images,
    pods: Pods,
    storage: crate::storage::Storage,
    containers: crate::container::Containers,
    streaming: Arc<crate::streaming::Streaming>,
    /// Samples container and pod usage in the background (see `stats.rs`).
    collector: crate::stats::Collector,
    /// The daemon's own metrics (see `telemetry.rs` here).
    telemetry: Arc<Telemetry>,
    /// What this node refuses to run (`[policy]`, see `policy.rs`).
    policy: policy::NodePolicy,
}

impl Runtime {
    /// Builds the core from the effective config and an opened store.
    /// `streaming_url` is the base URL of the bound streaming listener.
    /// `systemd` is the connection the systemd cgroup driver uses (the
    /// daemon makes it, and refuses to start without it, before this).
    pub fn new(
        config: Config,
        store: Arc<Store>,
        streaming_url: String,
        systemd: Option<crate::cgroups::systemd::Systemd>,
    ) -> Result<Runtime> {
        let pod_cidr: Option<String> = store.get(Table::Meta, POD_CIDR_KEY)?;
        let network = Network::new(
            config.network.conf_dir.clone(),
            config.network.plugin_dirs.clone(),
            std::time::Duration::from_secs(config.network.plugin_timeout),
            pod_cidr,
        );
        let images = Images::open(&config.root, config.image.clone(), store.clone())?;
        let mut cgroups = crate::cgroups::Cgroups::detect(config.runtime.cgroup_driver);
        if let Some(sd) = systemd {
            cgroups = cgroups.with_systemd(sd);
        }
        if config.runtime.cgroup_favor_dynmods {
            match crate::cgroups::favor_dynmods(&config.runroot.join("cgroup-favordynmods")) {
                Ok(()) => tracing::info!("cgroup favordynmods on"),
                Err(e) => tracing::warn!(error = %e, "cgroup favordynmods not available"),
            }
        }
        tracing::info!(cgroup_version = cgroups.version(), "cgroups");
        let containers = crate::container::Containers::new(
            store.clone(),
            &config.runroot,
            cgroups.clone(),
            &config.runtime,
        );
        let collector = crate::stats::Collector::start(
            cgroups.clone(),
            std::time::Duration::from_secs(config.metrics.stats_interval),
        )
        .map_err(|e| crate::error::Error::Internal(format!("starting the stats collector: {e}")))?;
        let pods = Pods::new(store.clone(), &config.runroot, cgroups)?;
        containers.watch_all(&pods);
        let storage = crate::storage::Storage::open(&config.root)
            .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        Ok(Runtime {
            policy: policy::NodePolicy::new(&config),
            config,
            store,
            network,
            images,
            pods,
            storage,
            containers,
            streaming: Arc::new(crate::streaming::Streaming::new(streaming_url)),
            collector,
            telemetry: Arc::default(),
        })
    }

    /// Startup reconciliation, before the socket serves: compares the
    /// store with the node and repairs or collects what a crash left half
    /// done (pods cut short mid-setup, state no record owns, monitors of
    /// pods that are gone), one `reconcile:` log line per action.
    pub async fn reconcile(&self) {
        self.pods.reconcile(&self.network).await;
        self.containers.reconcile(&self.pods, &self.storage).await;
    }

    /// The URLs Exec, Attach and PortForward hand out, for the streaming
    /// server to redeem.
    pub fn streaming(&self) -> Arc<crate::streaming::Streaming> {
        self.streaming.clone()
    }

    /// The configuration the daemon runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cgroup driver, which kubelet's must match.
    pub fn cgroup_driver(&self) -> CgroupDriver {
        self.config.runtime.cgroup_driver
    }

    /// The features `Status` advertises: what works on this node, for the
    /// default handler (`""`) and each of `[runtime.handlers]`. User
    /// namespaces (mode POD) and recursive read-only mounts are the embedded
    /// executor's only, user namespaces where the start-up probe could
    /// idmap an overlay layer (`storage::Storage::idmap_support`).
    pub fn features(&self) -> Features {
        Features {
            handlers: std::iter::once(String::new())
                .chain(self.config.runtime.handlers.keys().cloned())
                .map(|name| HandlerFeatures {
                    recursive_read_only_mounts: self.containers.recursive_readonly_for(&name),
                    user_namespaces: self.user_namespaces_for(&name).is_ok(),
                    name,
                })
                .collect(),
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
        }
    }

    /// Whether pods of runtime handler `handler` may have their own user
    /// namespace; why not, when not.
    fn user_namespaces_for(&self, handler: &str) -> std::result::Result<(), String> {
        if !self.containers.embedded(handler) {
            return Err(format!(
                "runtime handler {} runs an external OCI runtime, which crius does not give user namespaces",
                crate::error::shown(handler)
            ));
        }
        self.storage.idmap_support()
    }

    /// RuntimeReady and NetworkReady, evaluated now.
    pub fn conditions(&self) -> Vec<Condition> {
        let runtime = Condition {
            kind: "RuntimeReady",
            ready: true,
            reason: String::new(),
            message: String::new(),
        };
        let network = match self.network.readiness() {
            Readiness::Ready(_) => Condition {
                kind: "NetworkReady",
                ready: true,
                reason: String::new(),
                message: String::new(),
            },
            Readiness::NotReady(why) => Condition {
                kind: "NetworkReady",
                ready: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: {why}"),
            },
        };
        vec![runtime, network]
    }

    /// Debug details for `Status` with verbose: JSON values by key.
    pub fn status_info(&self) -> Result<HashMap<String, String>> {
        let mut info = HashMap::new();
        info.insert("config".to_string(), to_json(&self.config)?);
        let cni = match self.network.readiness() {
            Readiness::Ready(f) => serde_json::json!({ "network": f }),
            Readiness::NotReady(why) => serde_json::json!({ "error": why }),
        };
        info.insert("cniconfig".to_string(), to_json(&cni)?);
        info.insert("podCIDR".to_string(), to_json(&self.network.pod_cidr())?);
        Ok(info)
    }

    /// Keeps the pod CIDR kubelet assigns to this node, across restarts.
    pub fn update_pod_cidr(&self, cidr: &str) -> Result<()> {
        let cidr = cidr.trim();
        if cidr.is_empty() {
            return Ok(());
        }
        for part in cidr.split(',') {
            validate_cidr(part.trim())?;
        }
        self.store.put(Table::Meta, POD_CIDR_KEY, &cidr)?;
        self.network.set_pod_cidr(Some(cidr.to_string()));
        tracing::info!(pod_cidr = cidr, "pod CIDR updated");
        Ok(())
    }
}

/// Accepts `a.b.c.d/n` and `v6::/n` only.
fn validate_cidr(cidr: &str) -> Result<()> {
    let bad = || {
        crate::error::Error::InvalidArgument(format!(
            "invalid pod CIDR {}",
            crate::error::shown(cidr)
        ))
    };
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok(())
}

/// Serialises a value to a JSON string for `info` maps.
fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| crate::error::Error::Internal(format!("encoding info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_validation() {
        assert!(validate_cidr("10.88.0.0/16").is_ok());
        assert!(validate_cidr("fd00::/64").is_ok());
        assert!(validate_cidr("10.88.0.0/33").is_err());
        assert!(validate_cidr("10.88.0.0").is_err());
        assert!(validate_cidr("nonsense/8").is_err());
    }
}
