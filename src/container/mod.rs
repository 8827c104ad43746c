//! Containers: the record kept in the store, the rootfs, the OCI spec and
//! cgroup the daemon prepares, and the pod monitor that runs them. The
//! running state (pid, start, exit) lives in files the monitor writes under
//! `runroot/containers/<id>/`, so it is right after a daemon restart and
//! for containers that exited while the daemon was down.

mod create;
pub mod events;
mod lifecycle;
pub mod lsm;
mod orphans;
pub mod process;
mod reconcile;
mod record;
pub mod spec;
mod stop;
mod table;

pub use record::{
    ContainerRecord, ImageVolume, RunState, cri_signal, matches_filter, signal_number,
};
use record::{container_name, list_bytes, parse_signal};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{
    ContainerConfig, ContainerState, LinuxContainerResources, NamespaceMode, PodSandboxConfig,
};
use oci_spec::runtime::LinuxNamespaceType;
use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroups;
use crate::error::{Error, Result};
use crate::image::Images;
use crate::monitor::ExitRecord;
use crate::monitor::client::{Client, MonitorError};
use crate::monitor::proto::{self, request::Op};
use crate::sandbox::pinns::NsKind;
use crate::sandbox::{PodRecord, PodState, Pods};
use crate::storage::Storage;
use crate::store::{Store, Table};
use crate::sync::KeyedLocks;

/// The node's containers.
pub struct Containers {
    store: Arc<Store>,
    dir: PathBuf,
    cgroups: Cgroups,
    locks: KeyedLocks,
    log_dir: PathBuf,
    /// ListContainers' answer, kept under a client's message limit.
    listed: crate::listing::Budget,
    /// `[runtime] restrict_oom_score_adj`.
    restrict_oom_score_adj: bool,
    /// `[runtime] seccomp_use_default_when_empty`.
    seccomp_default: bool,
    /// `[runtime] default_capabilities`.
    default_capabilities: Vec<String>,
    /// `[runtime] apparmor_default_profile`.
    apparmor_default: String,
    /// The node's AppArmor (see `lsm`).
    apparmor: Box<dyn lsm::AppArmorHost + Send + Sync>,
    /// `[runtime] pids_limit` (0: none).
    pids_limit: u64,
    /// Whether the kernel lets the executor make mounts recursively
    /// read-only (`mount_setattr`), probed once at start.
    recursive_readonly: bool,
    /// `[runtime.handlers]`: what runs the containers of a pod that names one.
    handlers: std::collections::BTreeMap<String, crate::config::HandlerConfig>,
    /// The daemon's runroot (an OCI runtime's default `--root` is under it).
    runroot: PathBuf,
    /// Stops under way, by container id (see `stop.rs`).
    stopping: std::sync::Mutex<HashMap<String, Arc<stop::Stopping>>>,
    /// Every container with its run state, in memory (see `table.rs`).
    table: Arc<table::Table>,
    /// GetContainerEvents' subscribers, fed by the table.
    events: Arc<events::Events>,
    /// Per pod with containers: the task that follows its monitor's exits.
    watchers: std::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// A monitor's answer as a core error: its code says who must act.
fn monitor_err(e: MonitorError) -> Error {
    use crate::monitor::proto::Code;
    match e {
        MonitorError::Remote { code, message } => match code {
            Code::NotFound => Error::NotFound(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            // The program is missing or cannot run in the container: the
            // request's command, not a runtime fault (cri-o says Unknown,
            // containerd Unknown too); the container's content decides.
            Code::ExecFailed => Error::FailedPrecondition(message),
            Code::Internal => Error::Internal(message),
        },
        other => Error::Internal(other.to_string()),
    }
}

fn now_nanos() -> i64 {
    crate::monitor::now_nanos()
}

impl Containers {
    /// Records in the store; state files under `runroot/containers`.
    pub fn new(
        store: Arc<Store>,
        runroot: &Path,
        cgroups: Cgroups,
        config: &crate::config::RuntimeConfig,
    ) -> Containers {
        let log_dir = &config.log_dir;
        let dir = runroot.join("containers");
        let records: Vec<ContainerRecord> = store
            .list::<ContainerRecord>(Table::Containers)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let listed = crate::listing::Budget::new("containers", crate::listing::ANSWER_LIMIT);
        for c in &records {
            listed.count_existing(list_bytes(c));
        }
        let events = Arc::new(events::Events::new(config.container_events_buffer));
        Containers {
            log_dir: log_dir.to_path_buf(),
            store,
            table: Arc::new(table::Table::load(&dir, records, events.clone())),
            events,
            dir,
            cgroups,
            locks: KeyedLocks::default(),
            listed,
            restrict_oom_score_adj: config.restrict_oom_score_adj,
            seccomp_default: config.seccomp_use_default_when_empty,
            default_capabilities: config.default_capabilities.clone(),
            apparmor_default: config.apparmor_default_profile.clone(),
            apparmor: Box::new(lsm::NodeAppArmor::default()),
            pids_limit: config.pids_limit,
            recursive_readonly: crate::executor::mount_attr::recursive_readonly_supported(),
            handlers: config.handlers.clone(),
            runroot: runroot.to_path_buf(),
            stopping: Default::default(),
            watchers: Default::default(),
        }
    }

    /// Whether CRI mounts may be recursive read-only on this node (Status
    /// advertises it as `recursive_read_only_mounts`).
    pub fn recursive_readonly_supported(&self) -> bool {
        self.recursive_readonly
    }

    /// Whether the containers of runtime handler `handler` may have
    /// recursive read-only mounts: the embedded executor's where the kernel
    /// has mount_setattr; an external OCI runtime's not (runc 1.1 has no
    /// `rro` option).
    pub fn recursive_readonly_for(&self, handler: &str) -> bool {
        self.recursive_readonly && self.oci_runtime(handler).is_none()
    }

    /// Whether runtime handler `handler` runs containers with the embedded
    /// executor (not an external OCI runtime).
    pub fn embedded(&self, handler: &str) -> bool {
        self.oci_runtime(handler).is_none()
    }

    /// The external OCI runtime of runtime handler `handler`, for the
    /// monitor; None for the embedded executor.
    fn oci_runtime(&self, handler: &str) -> Option<crate::monitor::proto::OciRuntime> {
        let h = self.handlers.get(handler)?;
        match (h.runtime_type, &h.runtime_path) {
            (crate::config::RuntimeType::Oci, Some(path)) => {
                Some(crate::monitor::proto::OciRuntime {
                    path: path.display().to_string(),
                    root: h.root(&self.runroot, handler).display().to_string(),
                })
            }
            _ => None,
        }
    }

    /// Follows the monitors of every pod that has containers (at start).
    pub fn watch_all(&self, pods: &Pods) {
        let mut seen = std::collections::HashSet::new();
        for c in self.list().unwrap_or_default() {
            if seen.insert(c.pod_id.clone()) {
                self.watch(pods, &c.pod_id);
            }
        }
    }

    /// Starts following `pod_id`'s monitor unless already: its exit events
    /// keep the table current; while it is not reachable the table reads
    /// the files, and the watcher tries again every second. A dead monitor
    /// (nothing listens) has its containers ended (`orphans.rs`).
    fn watch(&self, pods: &Pods, pod_id: &str) {
        let Ok(mut watchers) = self.watchers.lock() else {
            return;
        };
        if watchers.contains_key(pod_id) {
            return;
        }
        let (table, client, pod) = (
            self.table.clone(),
            Self::monitor(pods, pod_id),
            pod_id.to_string(),
        );
        let orphans = self.orphans();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(mut events) = client.subscribe().await {
                    table.set_watched(&pod, true);
                    while let Ok(Some(ev)) = events.next().await {
                        if ev.unseen {
                            // Its exit happened with no daemon watching:
                            // the state this daemon reports is news.
                            tracing::info!(
                                container_id = %ev.id,
                                exit_code = ev.exit_code,
                                "reconcile: container {} exited with code {} while the daemon was down",
                                ev.id,
                                ev.exit_code
                            );
                        }
                        table.exited(
                            &ev.id,
                            ExitRecord {
                                exit_code: ev.exit_code,
                                finished_at: ev.finished_at,
                                oom_killed: ev.oom_killed,
                                monitor_died: false,
                            },
                        );
                    }
                    table.set_watched(&pod, false);
                }
                // Nothing listens on its socket: it was killed or crashed,
                // and nobody reaps or records its containers.
                if client.probe().await == crate::monitor::client::Probe::Dead {
                    orphans.monitor_died(&pod).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        watchers.insert(pod_id.to_string(), task.abort_handle());
    }

    /// What ending a container without its monitor needs.
    fn orphans(&self) -> orphans::Orphans {
        orphans::Orphans {
            cgroups: self.cgroups.clone(),
            dir: self.dir.clone(),
            table: self.table.clone(),
        }
    }

    /// Stops following a removed pod's monitor.
    fn unwatch(&self, pod_id: &str) {
        if let Ok(mut watchers) = self.watchers.lock()
            && let Some(w) = watchers.remove(pod_id)
        {
            w.abort();
        }
        self.table.set_watched(pod_id, false);
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where a container's OCI spec (`config.json`) is.
    pub fn spec_path(&self, id: &str) -> PathBuf {
        self.state_dir(id).join("config.json")
    }

    /// The pod's monitor (see [`crate::monitor::dir`]).
    fn monitor(pods: &Pods, pod_id: &str) -> Client {
        Client::new(&crate::monitor::dir(pods.runroot(), pod_id))
    }

    /// All containers.
    pub fn list(&self) -> Result<Vec<Arc<ContainerRecord>>> {
        Ok(self.table.all()?.into_iter().map(|(c, _)| c).collect())
    }

    /// A new GetContainerEvents subscriber.
    pub fn subscribe(&self) -> events::Subscription {
        self.events.subscribe()
    }

    /// Pod monitors whose events the daemon receives now.
    pub fn monitors_followed(&self) -> usize {
        self.table.subscribed()
    }

    /// GetContainerEvents subscribers now.
    pub fn event_subscribers(&self) -> usize {
        self.events.subscribers()
    }

    /// All containers with their run state.
    pub fn list_with_state(&self) -> Result<Vec<(Arc<ContainerRecord>, RunState)>> {
        self.table.all()
    }

    /// The container with this id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        self.table.get(id).map(|(c, _)| c)
    }

    /// Where a container is in its life.
    pub fn run_state(&self, c: &ContainerRecord) -> RunState {
        match self.table.get(&c.id) {
            Ok((_, st)) => st,
            Err(_) => table::run_state_from_files(&self.dir, c),
        }
    }

    /// Chain ids of layers some container's rootfs stacks, so image removal
    /// never frees them.
    pub fn layers_in_use(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list()?
            .iter()
            .flat_map(|c| {
                let volumes = c.image_volumes.iter().flat_map(|v| v.layers.iter());
                c.layers.iter().chain(volumes).cloned().collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}
