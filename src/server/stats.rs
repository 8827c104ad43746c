//! The core's stats views as CRI messages.

use k8s_cri::v1::*;

use crate::runtime::{
    BASE_LABELS, ContainerStatsView, Interface, MetricDescriptor, MetricKind, MetricValue,
    PodMetrics as CorePodMetrics, PodStatsView, Sample,
};

fn val(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn cpu(s: &Sample) -> Option<CpuUsage> {
    Some(CpuUsage {
        timestamp: s.at_nanos(),
        usage_core_nano_seconds: val(s.cgroup.cpu_ns?),
        usage_nano_cores: s.nano_cores.and_then(val),
        // Pressure stall information: not collected yet.
        psi: None,
    })
}

fn memory(s: &Sample) -> Option<MemoryUsage> {
    let m = s.cgroup.memory.as_ref()?;
    Some(MemoryUsage {
        timestamp: s.at_nanos(),
        working_set_bytes: val(m.working_set),
        available_bytes: m.available().and_then(val),
        usage_bytes: val(m.usage),
        rss_bytes: val(m.rss),
        page_faults: val(m.page_faults),
        major_page_faults: val(m.major_page_faults),
        psi: None,
    })
}

fn swap(s: &Sample) -> Option<SwapUsage> {
    let m = s.cgroup.memory.as_ref()?;
    let used = m.swap?;
    Some(SwapUsage {
        timestamp: s.at_nanos(),
        swap_available_bytes: m.swap_limit.map(|l| l.saturating_sub(used)).and_then(val),
        swap_usage_bytes: val(used),
    })
}

fn nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A container's stats message.
pub fn container(v: &ContainerStatsView) -> ContainerStats {
    let c = &v.record;
    let s = v.sample.as_deref();
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: s.and_then(cpu),
        memory: s.and_then(memory),
        writable_layer: v.layer.as_ref().map(|l| FilesystemUsage {
            timestamp: nanos(l.at),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: l.mountpoint.display().to_string(),
            }),
            used_bytes: val(l.bytes),
            inodes_used: val(l.inodes),
        }),
        swap: s.and_then(swap),
        io: None,
    }
}

fn interface(i: &Interface) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: val(i.rx_bytes),
        rx_errors: val(i.rx_errors),
        tx_bytes: val(i.tx_bytes),
        tx_errors: val(i.tx_errors),
    }
}

/// A pod's stats message, its containers' included.
pub fn pod(v: &PodStatsView) -> PodSandboxStats {
    let p = &v.record;
    let s = v.sample.as_deref();
    let network = s.and_then(|s| {
        let ifaces = s.interfaces.as_ref()?;
        // kubelet's default: eth0 when there is one.
        let default = ifaces
            .iter()
            .find(|i| i.name == "eth0")
            .or_else(|| ifaces.first());
        Some(NetworkUsage {
            timestamp: s.at_nanos(),
            default_interface: default.map(interface),
            interfaces: ifaces.iter().map(interface).collect(),
        })
    });
    let process = s.and_then(|s| {
        Some(ProcessUsage {
            timestamp: s.at_nanos(),
            process_count: val(s.cgroup.pids.as_ref()?.current),
        })
    });
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: p.id.clone(),
            metadata: p.config.metadata.clone(),
            labels: p.config.labels.clone(),
            annotations: p.config.annotations.clone(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: s.and_then(cpu),
            memory: s.and_then(memory),
            network,
            process,
            containers: v.containers.iter().map(container).collect(),
            // Block I/O (and its pressure): not collected yet.
            io: None,
        }),
        windows: None,
    }
}

/// A metric family as ListMetricDescriptors shows it.
pub fn descriptor(d: &MetricDescriptor) -> k8s_cri::v1::MetricDescriptor {
    k8s_cri::v1::MetricDescriptor {
        name: d.name.into(),
        help: d.help.into(),
        label_keys: BASE_LABELS
            .iter()
            .chain(d.extra_labels)
            .map(|s| s.to_string())
            .collect(),
    }
}

fn metric(v: &MetricValue, at: i64) -> Metric {
    Metric {
        name: v.name.into(),
        timestamp: at,
        metric_type: match v.kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        } as i32,
        label_values: v.labels.clone(),
        value: val(v.value),
    }
}

/// A pod's metrics message, its containers' included.
pub fn pod_metrics(p: &CorePodMetrics) -> PodSandboxMetrics {
    PodSandboxMetrics {
        pod_sandbox_id: p.pod_id.clone(),
        metrics: p.metrics.iter().map(|v| metric(v, p.at)).collect(),
        container_metrics: p
            .containers
            .iter()
            .map(|c| ContainerMetrics {
                container_id: c.container_id.clone(),
                metrics: c.metrics.iter().map(|v| metric(v, c.at)).collect(),
            })
            .collect(),
    }
}
