//! ListMetricDescriptors and ListPodSandboxMetrics in the core: the same
//! samples as the stats calls, as cAdvisor-named metrics (see
//! [`crate::stats::metrics`]).

use super::{ContainerStatsView, PodFilter, Runtime};
use crate::error::Result;
use crate::stats::metrics::{self, Descriptor, Fs, Spec, Value};

/// One pod's metrics and its containers'.
#[derive(Debug, Clone)]
pub struct PodMetrics {
    /// The pod sandbox's id.
    pub pod_id: String,
    /// Nanoseconds since the epoch of the values' sample.
    pub at: i64,
    /// The pod's own metrics: its interfaces' counters.
    pub metrics: Vec<Value>,
    /// Each of its containers' metrics.
    pub containers: Vec<ContainerMetrics>,
}

/// One container's metrics.
#[derive(Debug, Clone)]
pub struct ContainerMetrics {
    /// The container's id.
    pub container_id: String,
    /// Nanoseconds since the epoch of the values' sample; 0 without one.
    pub at: i64,
    /// Its cgroup, writable layer and spec metrics.
    pub metrics: Vec<Value>,
}

/// The writable layers' filesystem: size and inodes (statvfs).
fn filesystem(root: &std::path::Path) -> Option<(u64, u64, u64)> {
    let st = nix::sys::statvfs::statvfs(root).ok()?;
    let frsize = st.fragment_size() as u64;
    Some((
        st.blocks() as u64 * frsize,
        st.files() as u64,
        st.files_free() as u64,
    ))
}

impl Runtime {
    /// ListMetricDescriptors: every metric ListPodSandboxMetrics may send.
    pub fn metric_descriptors(&self) -> &'static [Descriptor] {
        metrics::DESCRIPTORS
    }

    /// ListPodSandboxMetrics: every pod's metrics and its containers'.
    pub async fn list_pod_metrics(&self) -> Result<Vec<PodMetrics>> {
        let views = self.list_pod_stats(&PodFilter::default()).await?;
        let root = self.storage.root().to_path_buf();
        let fs = crate::sync::blocking(|| filesystem(&root));
        let device = root.display().to_string();
        Ok(views
            .into_iter()
            .map(|v| {
                let name = v
                    .record
                    .config
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let base = [v.record.id.clone(), name, String::new()];
                let sample = v.sample.as_deref();
                PodMetrics {
                    pod_id: v.record.id.clone(),
                    at: sample.map_or(0, |s| s.at_nanos()),
                    metrics: metrics::pod(&base, sample),
                    containers: v
                        .containers
                        .iter()
                        .map(|c| self.container_metrics(c, fs, &device))
                        .collect(),
                }
            })
            .collect())
    }

    fn container_metrics(
        &self,
        c: &ContainerStatsView,
        fs: Option<(u64, u64, u64)>,
        device: &str,
    ) -> ContainerMetrics {
        let r = &c.record;
        let base = [
            r.id.clone(),
            r.config
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            r.config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
        ];
        let res = r.resources.clone().unwrap_or_default();
        let spec = Spec {
            cpu_period: res.cpu_period.max(0) as u64,
            cpu_shares: res.cpu_shares.max(0) as u64,
            memory_limit: res.memory_limit_in_bytes.max(0) as u64,
            swap_limit: res.memory_swap_limit_in_bytes.max(0) as u64,
            started_at: self.containers.run_state(r).started_at,
        };
        let fs = fs.map(|(limit_bytes, inodes_total, inodes_free)| Fs {
            device: device.to_string(),
            usage_bytes: c.layer.as_ref().map_or(0, |l| l.bytes),
            limit_bytes,
            inodes_total,
            inodes_free,
        });
        let sample = c.sample.as_deref();
        ContainerMetrics {
            container_id: r.id.clone(),
            at: sample.map_or(0, |s| s.at_nanos()),
            metrics: metrics::container(&base, sample, &spec, fs.as_ref()),
        }
    }
}
