//! The KEP-2371 metrics (ListMetricDescriptors, ListPodSandboxMetrics):
//! cAdvisor's names, help texts, types and label keys, and their values
//! from a sample. Every metric carries the base labels `id`, `name` and
//! `image`; some add their own (`interface`, `device`, …). CRI values are
//! integers, so seconds are whole seconds, as cri-o sends them.

use super::collector::Sample;

/// How Prometheus treats a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A cumulative total that only grows.
    Counter,
    /// A current value that goes up and down.
    Gauge,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// cAdvisor's metric name, e.g. `container_cpu_usage_seconds_total`.
    pub name: &'static str,
    /// cAdvisor's help text.
    pub help: &'static str,
    /// Whether it is a counter or a gauge.
    pub kind: Kind,
    /// Label keys after [`BASE_LABELS`].
    pub extra_labels: &'static [&'static str],
}

/// The labels every metric starts with.
pub const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

use Kind::{Counter, Gauge};

const fn d(name: &'static str, help: &'static str, kind: Kind) -> Descriptor {
    Descriptor {
        name,
        help,
        kind,
        extra_labels: &[],
    }
}

const fn dl(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    extra_labels: &'static [&'static str],
) -> Descriptor {
    Descriptor {
        name,
        help,
        kind,
        extra_labels,
    }
}

const IFACE: &[&str] = &["interface"];
const DEVICE: &[&str] = &["device"];

/// Every metric this runtime reports (blkio and fs I/O have descriptors
/// but no values yet: blkio accounting is not read).
pub const DESCRIPTORS: &[Descriptor] = &[
    d(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        Counter,
    ),
    d(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        Counter,
    ),
    d(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        Counter,
    ),
    d(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        Counter,
    ),
    d(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        Counter,
    ),
    d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        Counter,
    ),
    d(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        Gauge,
    ),
    d(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
    ),
    d("container_memory_rss", "Size of RSS in bytes.", Gauge),
    d(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        Gauge,
    ),
    d(
        "container_memory_swap",
        "Container swap usage in bytes.",
        Gauge,
    ),
    d(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        Gauge,
    ),
    d(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        Gauge,
    ),
    d(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        Gauge,
    ),
    d(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        Counter,
    ),
    dl(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        Counter,
        &["failure_type", "scope"],
    ),
    d(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        Counter,
    ),
    d(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
    ),
    d(
        "container_threads",
        "Number of threads running inside the container.",
        Gauge,
    ),
    d(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        Gauge,
    ),
    d(
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        Gauge,
    ),
    d(
        "container_sockets",
        "Number of open sockets for the container.",
        Gauge,
    ),
    dl(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Gauge,
        DEVICE,
    ),
    dl(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        Gauge,
        DEVICE,
    ),
    dl(
        "container_fs_inodes_total",
        "Number of Inodes.",
        Gauge,
        DEVICE,
    ),
    dl(
        "container_fs_inodes_free",
        "Number of available Inodes.",
        Gauge,
        DEVICE,
    ),
    dl(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read.",
        Counter,
        DEVICE,
    ),
    dl(
        "container_fs_reads_total",
        "Cumulative count of reads completed.",
        Counter,
        DEVICE,
    ),
    dl(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        Counter,
        DEVICE,
    ),
    dl(
        "container_fs_writes_total",
        "Cumulative count of writes completed.",
        Counter,
        DEVICE,
    ),
    dl(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        Counter,
        &["device", "major", "minor", "operation"],
    ),
    d(
        "container_spec_cpu_period",
        "CPU period of the container.",
        Gauge,
    ),
    d(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        Gauge,
    ),
    d(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Gauge,
    ),
    d(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        Gauge,
    ),
    d(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        Gauge,
    ),
    d(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        Gauge,
    ),
    dl(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        Counter,
        IFACE,
    ),
    dl(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        Counter,
        IFACE,
    ),
    dl(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        Counter,
        IFACE,
    ),
    dl(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        Counter,
        IFACE,
    ),
    dl(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        Counter,
        IFACE,
    ),
    dl(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        Counter,
        IFACE,
    ),
    dl(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        Counter,
        IFACE,
    ),
    dl(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        Counter,
        IFACE,
    ),
];

/// One value of one metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The metric's name, as in its [`Descriptor`].
    pub name: &'static str,
    /// Its descriptor's kind.
    pub kind: Kind,
    /// Base label values, then the descriptor's extra ones.
    pub labels: Vec<String>,
    /// The value in the metric's unit (bytes, a count, or whole seconds).
    pub value: u64,
}

/// What a container's spec metrics read: its resources and start.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// CFS period in microseconds, from the CRI resources; 0 when unset.
    pub cpu_period: u64,
    /// CPU shares (relative weight), from the CRI resources; 0 when unset.
    pub cpu_shares: u64,
    /// Memory limit in bytes, from the CRI resources; 0 when none.
    pub memory_limit: u64,
    /// The CRI `memory_swap_limit_in_bytes` (memory plus swap), bytes; 0
    /// when unset.
    pub swap_limit: u64,
    /// Nanoseconds since the epoch; 0 before it started.
    pub started_at: i64,
}

/// The writable layer's filesystem and the container's share of it.
#[derive(Debug, Clone, Default)]
pub struct Fs {
    /// The `device` label: the path of the storage root.
    pub device: String,
    /// Bytes in the container's writable layer, from the latest layer walk
    /// (0 when it has not measured the container).
    pub usage_bytes: u64,
    /// Size in bytes of the filesystem holding the layers (statvfs blocks
    /// × fragment size).
    pub limit_bytes: u64,
    /// Inodes of that filesystem (statvfs `f_files`).
    pub inodes_total: u64,
    /// Free inodes of that filesystem (statvfs `f_ffree`).
    pub inodes_free: u64,
}

struct Out<'a> {
    base: &'a [String; 3],
    values: Vec<Value>,
}

impl Out<'_> {
    fn put(&mut self, name: &'static str, extra: &[&str], value: u64) {
        let kind = DESCRIPTORS
            .iter()
            .find(|d| d.name == name)
            .map_or(Kind::Gauge, |d| d.kind);
        let mut labels: Vec<String> = self.base.to_vec();
        labels.extend(extra.iter().map(|s| s.to_string()));
        self.values.push(Value {
            name,
            kind,
            labels,
            value,
        });
    }
}

const NS: u64 = 1_000_000_000;

/// A container's metrics; `base` is its id, name and image.
pub fn container(
    base: &[String; 3],
    s: Option<&Sample>,
    spec: &Spec,
    fs: Option<&Fs>,
) -> Vec<Value> {
    let mut o = Out {
        base,
        values: Vec::new(),
    };
    if let Some(s) = s {
        let c = &s.cgroup;
        if let Some(ns) = c.cpu_ns {
            o.put("container_cpu_usage_seconds_total", &[], ns / NS);
        }
        if let Some(cd) = &c.cpu_detail {
            o.put("container_cpu_user_seconds_total", &[], cd.user_ns / NS);
            o.put("container_cpu_system_seconds_total", &[], cd.system_ns / NS);
            o.put("container_cpu_cfs_periods_total", &[], cd.periods);
            o.put(
                "container_cpu_cfs_throttled_periods_total",
                &[],
                cd.throttled_periods,
            );
            o.put(
                "container_cpu_cfs_throttled_seconds_total",
                &[],
                cd.throttled_ns / NS,
            );
        }
        if let Some(m) = &c.memory {
            o.put("container_memory_usage_bytes", &[], m.usage);
            o.put("container_memory_working_set_bytes", &[], m.working_set);
            o.put("container_memory_rss", &[], m.rss);
            o.put("container_memory_cache", &[], m.cache);
            o.put("container_memory_swap", &[], m.swap.unwrap_or(0));
            o.put("container_memory_kernel_usage", &[], m.kernel);
            o.put("container_memory_mapped_file", &[], m.mapped_file);
            o.put(
                "container_memory_max_usage_bytes",
                &[],
                m.max_usage.unwrap_or(m.usage),
            );
            o.put("container_memory_failcnt", &[], m.failcnt);
            let major = m.major_page_faults;
            let minor = m.page_faults.saturating_sub(major);
            for scope in ["container", "hierarchy"] {
                o.put(
                    "container_memory_failures_total",
                    &["pgfault", scope],
                    minor,
                );
                o.put(
                    "container_memory_failures_total",
                    &["pgmajfault", scope],
                    major,
                );
            }
            o.put("container_oom_events_total", &[], m.oom_kills);
        }
        if let Some(p) = &c.pids {
            o.put("container_processes", &[], p.current);
            o.put("container_threads", &[], p.current);
            o.put("container_threads_max", &[], p.limit.unwrap_or(0));
        }
        if let Some(f) = &c.fds {
            o.put("container_file_descriptors", &[], f.open);
            o.put("container_sockets", &[], f.sockets);
        }
        o.put(
            "container_last_seen",
            &[],
            (s.at_nanos().max(0) as u64) / NS,
        );
    }
    if let Some(fs) = fs {
        let dev = [fs.device.as_str()];
        o.put("container_fs_usage_bytes", &dev, fs.usage_bytes);
        o.put("container_fs_limit_bytes", &dev, fs.limit_bytes);
        o.put("container_fs_inodes_total", &dev, fs.inodes_total);
        o.put("container_fs_inodes_free", &dev, fs.inodes_free);
    }
    o.put("container_spec_cpu_period", &[], spec.cpu_period);
    o.put("container_spec_cpu_shares", &[], spec.cpu_shares);
    o.put("container_spec_memory_limit_bytes", &[], spec.memory_limit);
    o.put(
        "container_spec_memory_swap_limit_bytes",
        &[],
        spec.swap_limit,
    );
    o.put(
        "container_start_time_seconds",
        &[],
        (spec.started_at.max(0) as u64) / NS,
    );
    o.values
}

/// A pod's own metrics: its interfaces.
pub fn pod(base: &[String; 3], s: Option<&Sample>) -> Vec<Value> {
    let mut o = Out {
        base,
        values: Vec::new(),
    };
    for i in s.and_then(|s| s.interfaces.as_deref()).unwrap_or_default() {
        let n = [i.name.as_str()];
        o.put("container_network_receive_bytes_total", &n, i.rx_bytes);
        o.put("container_network_receive_packets_total", &n, i.rx_packets);
        o.put(
            "container_network_receive_packets_dropped_total",
            &n,
            i.rx_drops,
        );
        o.put("container_network_receive_errors_total", &n, i.rx_errors);
        o.put("container_network_transmit_bytes_total", &n, i.tx_bytes);
        o.put("container_network_transmit_packets_total", &n, i.tx_packets);
        o.put(
            "container_network_transmit_packets_dropped_total",
            &n,
            i.tx_drops,
        );
        o.put("container_network_transmit_errors_total", &n, i.tx_errors);
    }
    o.values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{CgroupSample, Interface, Memory, Pids};

    fn base() -> [String; 3] {
        ["c1".into(), "app".into(), "busybox".into()]
    }

    #[test]
    fn every_value_has_a_descriptor_with_as_many_labels() {
        let sample = Sample {
            at: Some(std::time::SystemTime::now()),
            cgroup: CgroupSample {
                cpu_ns: Some(3 * NS + 5),
                memory: Some(Memory {
                    usage: 10,
                    page_faults: 7,
                    major_page_faults: 2,
                    ..Default::default()
                }),
                pids: Some(Pids {
                    current: 2,
                    limit: None,
                }),
                cpu_detail: Some(Default::default()),
                fds: Some(Default::default()),
            },
            nano_cores: None,
            interfaces: Some(vec![Interface {
                name: "eth0".into(),
                rx_bytes: 99,
                ..Default::default()
            }]),
        };
        let mut values = container(
            &base(),
            Some(&sample),
            &Spec::default(),
            Some(&Fs::default()),
        );
        values.extend(pod(&base(), Some(&sample)));
        for v in &values {
            let d = DESCRIPTORS
                .iter()
                .find(|d| d.name == v.name)
                .unwrap_or_else(|| panic!("no descriptor for {}", v.name));
            assert_eq!(
                v.labels.len(),
                BASE_LABELS.len() + d.extra_labels.len(),
                "{v:?}"
            );
            assert_eq!(v.kind, d.kind);
        }
        let get = |name: &str| values.iter().find(|v| v.name == name).unwrap().value;
        assert_eq!(get("container_cpu_usage_seconds_total"), 3);
        assert_eq!(get("container_network_receive_bytes_total"), 99);
        let faults: Vec<_> = values
            .iter()
            .filter(|v| v.name == "container_memory_failures_total")
            .map(|v| (v.labels[3].as_str(), v.value))
            .collect();
        assert!(faults.contains(&("pgfault", 5)) && faults.contains(&("pgmajfault", 2)));
        // Descriptor names are unique.
        let mut names: Vec<_> = DESCRIPTORS.iter().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DESCRIPTORS.len());
    }
}
