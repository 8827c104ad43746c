//! Stats operations of the core: which cgroups and namespaces the
//! collector samples (every container and pod of the node, refreshed on
//! each call), and the answers built from its latest samples and the
//! writable layers' latest walk. Nothing here reads a file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{ContainerFilter, PodFilter, Runtime};
use crate::config::CgroupDriver;
use crate::container::{ContainerRecord, RunState};
use crate::error::Result;
use crate::sandbox::PodRecord;
use crate::sandbox::pinns::NsKind;
use crate::stats::{Sample, Target};
use k8s_cri::v1::ContainerState;

/// A container's writable layer, as last measured.
#[derive(Debug, Clone)]
pub struct LayerUsage {
    /// Where writable layers live (the CRI `fs_id`).
    pub mountpoint: PathBuf,
    /// File content bytes in the layer (apparent sizes; hardlinks counted
    /// per link).
    pub bytes: u64,
    /// Entries (files, directories, links) in the layer.
    pub inodes: u64,
    /// When the walk that measured it ended.
    pub at: SystemTime,
}

/// One container's stats.
#[derive(Debug, Clone)]
pub struct ContainerStatsView {
    /// The container's record (id, pod, config, cgroup).
    pub record: Arc<ContainerRecord>,
    /// `None` while its cgroup has not been sampled (gone, or too slow).
    pub sample: Option<Arc<Sample>>,
    /// Its writable layer; `None` when the latest walk did not measure it.
    pub layer: Option<LayerUsage>,
}

/// One pod's stats: its cgroup and network, and its containers'.
#[derive(Debug, Clone)]
pub struct PodStatsView {
    /// The pod's record.
    pub record: Arc<PodRecord>,
    /// Its pod cgroup and network namespace; `None` without a cgroup
    /// parent or while not sampled.
    pub sample: Option<Arc<Sample>>,
    /// Each of its containers' stats.
    pub containers: Vec<ContainerStatsView>,
}

impl Runtime {
    /// Every container and pod cgroup, for the collector's timer.
    fn stats_targets(&self) -> Result<Vec<Target>> {
        let containers = self.containers.list_with_state()?;
        let mut out: Vec<Target> = containers
            .iter()
            .map(|(c, state)| self.container_target(c, state))
            .collect();
        out.extend(
            self.pods
                .list()?
                .iter()
                .filter_map(|p| self.pod_target(p, &containers)),
        );
        Ok(out)
    }

    /// The pod's target; `containers` (with their state) count its seeds.
    fn pod_target(
        &self,
        p: &PodRecord,
        containers: &[(Arc<ContainerRecord>, RunState)],
    ) -> Option<Target> {
        Some(Target {
            id: p.id.clone(),
            cgroup: p.cgroup.clone()?,
            netns: (!p.host_network).then(|| self.pods.ns_path(&p.id, NsKind::Net)),
            seeds: containers
                .iter()
                .filter(|(c, _)| c.pod_id == p.id)
                .map(|(_, state)| self.seeds(state))
                .sum(),
        })
    }

    fn container_target(&self, c: &ContainerRecord, state: &RunState) -> Target {
        Target {
            id: c.id.clone(),
            cgroup: c.cgroup.clone(),
            netns: None,
            seeds: self.seeds(state),
        }
    }

    /// The seed processes in a container's cgroup (`Target::seeds`): with
    /// the systemd driver its scope holds one until the container has
    /// exited (and for a moment after, while its exit is recorded).
    fn seeds(&self, state: &RunState) -> u64 {
        u64::from(
            self.config.runtime.cgroup_driver == CgroupDriver::Systemd
                && state.state != ContainerState::ContainerExited,
        )
    }

    /// Stats of `records`, in their order.
    async fn container_views(
        &self,
        records: Vec<Arc<ContainerRecord>>,
    ) -> Result<Vec<ContainerStatsView>> {
        self.collector.track(self.stats_targets()?);
        let targets: Vec<Target> = records
            .iter()
            .map(|c| self.container_target(c, &self.containers.run_state(c)))
            .collect();
        let mut samples = self.collector.latest(&targets).await;
        let layers = self.storage.usage().await;
        Ok(records
            .into_iter()
            .map(|record| ContainerStatsView {
                sample: samples.remove(&record.id),
                layer: layers
                    .by_container
                    .get(&record.id)
                    .map(|&(bytes, inodes)| LayerUsage {
                        mountpoint: self.storage.root().to_path_buf(),
                        bytes,
                        inodes,
                        at: layers.at,
                    }),
                record,
            })
            .collect())
    }

    /// ContainerStats of one container (id or unique prefix).
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStatsView> {
        let record = self.containers.get(id)?;
        let mut views = self.container_views(vec![record]).await?;
        views
            .pop()
            .ok_or_else(|| crate::error::Error::Internal("no stats for the container".into()))
    }

    /// ListContainerStats: the containers `filter` selects (its state is
    /// ignored: stats have no state filter).
    pub async fn list_container_stats(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStatsView>> {
        let records = self
            .list_containers(filter)?
            .into_iter()
            .map(|v| v.record)
            .collect();
        self.container_views(records).await
    }

    /// PodSandboxStats of one pod (id or unique prefix).
    pub async fn pod_stats(&self, id: &str) -> Result<PodStatsView> {
        let pod = Arc::new(self.pods.get(id)?);
        let mut views = self.pod_views(vec![pod]).await?;
        views
            .pop()
            .ok_or_else(|| crate::error::Error::Internal("no stats for the pod".into()))
    }

    /// ListPodSandboxStats: the pods `filter` selects (its state is
    /// ignored).
    pub async fn list_pod_stats(&self, filter: &PodFilter) -> Result<Vec<PodStatsView>> {
        let filter = PodFilter {
            state: None,
            ..filter.clone()
        };
        let pods = self.list_pods(&filter)?;
        self.pod_views(pods).await
    }

    async fn pod_views(&self, pods: Vec<Arc<PodRecord>>) -> Result<Vec<PodStatsView>> {
        let all = self.containers.list_with_state()?;
        let records: Vec<Arc<ContainerRecord>> = all
            .iter()
            .filter(|(c, _)| pods.iter().any(|p| p.id == c.pod_id))
            .map(|(c, _)| c.clone())
            .collect();
        let mut by_pod: HashMap<String, Vec<ContainerStatsView>> = HashMap::new();
        for c in self.container_views(records).await? {
            by_pod.entry(c.record.pod_id.clone()).or_default().push(c);
        }
        let targets: Vec<Target> = pods
            .iter()
            .filter_map(|p| self.pod_target(p, &all))
            .collect();
        let mut samples = self.collector.latest(&targets).await;
        Ok(pods
            .into_iter()
            .map(|record| PodStatsView {
                sample: samples.remove(&record.id),
                containers: by_pod.remove(&record.id).unwrap_or_default(),
                record,
            })
            .collect())
    }

    /// What the stats collector has cost so far.
    pub fn collector_cost(&self) -> crate::stats::Cost {
        self.collector.cost()
    }
}
