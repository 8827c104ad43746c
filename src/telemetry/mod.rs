//! The daemon's own metrics in Prometheus form (`[metrics] address`):
//! per-RPC latency and results by gRPC code, image pulls (bytes, time),
//! counts of pods, containers, monitors and event subscribers, and what
//! the stats collector costs. Counters and histograms are updated where
//! things happen; the counts are set from the core just before each scrape
//! (see [`Telemetry::set_counts`]). `serve.rs` answers `GET /metrics`.

pub mod serve;

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Node counts, set before a scrape.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Pods by state name.
    pub pods: Vec<(&'static str, i64)>,
    /// Containers by state name.
    pub containers: Vec<(&'static str, i64)>,
    /// Pod monitors the daemon is subscribed to.
    pub monitors: i64,
    /// GetContainerEvents streams open.
    pub event_subscribers: i64,
    /// Timer rounds of the stats collector so far.
    pub collector_rounds: u64,
    /// Target samples the collector has taken so far (on its timer and at
    /// first sight).
    pub collector_samples: u64,
    /// CPU time of the collector's thread over all its rounds.
    pub collector_cpu: Duration,
    /// Wall time of the collector's last round.
    pub collector_last_round: Duration,
    /// Containers and pods sampled in the collector's last round.
    pub collector_targets: i64,
}

/// See the module docs.
pub struct Telemetry {
    registry: Registry,
    rpc_seconds: Family<MethodLabels, Histogram>,
    rpc_results: Family<ResultLabels, Counter>,
    pull_seconds: Family<OutcomeLabels, Histogram>,
    pull_bytes: Counter,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    monitors: Gauge,
    subscribers: Gauge,
    collector_rounds: Counter,
    collector_samples: Counter,
    collector_cpu: Counter<f64>,
    collector_last_round: Gauge<f64, std::sync::atomic::AtomicU64>,
    collector_targets: Gauge,
    /// Collector totals already added to the counters (they only grow).
    seen: Mutex<(u64, u64, f64)>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// The metric families, registered under `crius_`.
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("crius");
        // 100 µs … ~3.3 min: ListContainers to a slow pull-free create.
        let rpc_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 21))
        });
        let pull_seconds = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        let t = Telemetry {
            rpc_seconds,
            rpc_results: Family::default(),
            pull_seconds,
            pull_bytes: Counter::default(),
            pods: Family::default(),
            containers: Family::default(),
            monitors: Gauge::default(),
            subscribers: Gauge::default(),
            collector_rounds: Counter::default(),
            collector_samples: Counter::default(),
            collector_cpu: Counter::default(),
            collector_last_round: Gauge::default(),
            collector_targets: Gauge::default(),
            seen: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register_with_unit(
            "grpc_request_duration",
            "CRI calls' time from request to response headers, by method",
            Unit::Seconds,
            t.rpc_seconds.clone(),
        );
        registry.register(
            "grpc_requests",
            "CRI calls by method and gRPC status code",
            t.rpc_results.clone(),
        );
        registry.register_with_unit(
            "image_pull_duration",
            "PullImage time, by outcome (ok, error)",
            Unit::Seconds,
            t.pull_seconds.clone(),
        );
        registry.register_with_unit(
            "image_pulled",
            "Compressed bytes of the images pulled",
            Unit::Bytes,
            t.pull_bytes.clone(),
        );
        registry.register("pods", "Pods by state", t.pods.clone());
        registry.register("containers", "Containers by state", t.containers.clone());
        registry.register(
            "monitors",
            "Pod monitors the daemon follows",
            t.monitors.clone(),
        );
        registry.register(
            "container_event_subscribers",
            "GetContainerEvents streams open",
            t.subscribers.clone(),
        );
        registry.register(
            "stats_collector_rounds",
            "Timer rounds of the stats collector",
            t.collector_rounds.clone(),
        );
        registry.register(
            "stats_collector_samples",
            "cgroups (and pod networks) sampled by the stats collector",
            t.collector_samples.clone(),
        );
        registry.register_with_unit(
            "stats_collector_cpu",
            "CPU time of the stats collector's thread",
            Unit::Seconds,
            t.collector_cpu.clone(),
        );
        registry.register_with_unit(
            "stats_collector_last_round",
            "Wall time of the collector's last round",
            Unit::Seconds,
            t.collector_last_round.clone(),
        );
        registry.register(
            "stats_collector_targets",
            "Containers and pods in the collector's last round",
            t.collector_targets.clone(),
        );
        Telemetry { registry, ..t }
    }

    /// One CRI call: its method, gRPC code (as a number) and time.
    pub fn observe_rpc(&self, method: &str, code: &str, took: Duration) {
        self.rpc_seconds
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
        self.rpc_results
            .get_or_create(&ResultLabels {
                method: method.to_string(),
                code: code_name(code).to_string(),
            })
            .inc();
    }

    /// One PullImage: its time and, when it worked, the image's size.
    pub fn observe_pull(&self, took: Duration, bytes: Option<u64>) {
        let outcome = if bytes.is_some() { "ok" } else { "error" };
        self.pull_seconds
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
        if let Some(b) = bytes {
            self.pull_bytes.inc_by(b);
        }
    }

    /// Sets the counts a scrape shows.
    pub fn set_counts(&self, c: &Counts) {
        self.pods.clear();
        for (state, n) in &c.pods {
            self.pods
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(*n);
        }
        self.containers.clear();
        for (state, n) in &c.containers {
            self.containers
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(*n);
        }
        self.monitors.set(c.monitors);
        self.subscribers.set(c.event_subscribers);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let cpu = c.collector_cpu.as_secs_f64();
        self.collector_rounds
            .inc_by(c.collector_rounds.saturating_sub(seen.0));
        self.collector_samples
            .inc_by(c.collector_samples.saturating_sub(seen.1));
        if cpu > seen.2 {
            self.collector_cpu.inc_by(cpu - seen.2);
        }
        *seen = (
            c.collector_rounds.max(seen.0),
            c.collector_samples.max(seen.1),
            cpu.max(seen.2),
        );
        self.collector_last_round
            .set(c.collector_last_round.as_secs_f64());
        self.collector_targets.set(c.collector_targets);
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// gRPC's name for a numeric status code.
fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode() {
        let t = Telemetry::new();
        t.observe_rpc("Version", "0", Duration::from_micros(300));
        t.observe_rpc("ContainerStatus", "5", Duration::from_millis(2));
        t.observe_pull(Duration::from_secs(1), Some(1000));
        t.set_counts(&Counts {
            pods: vec![("ready", 2)],
            containers: vec![("running", 3)],
            collector_rounds: 4,
            collector_cpu: Duration::from_millis(20),
            ..Default::default()
        });
        // Counters only grow, whatever the totals were.
        t.set_counts(&Counts {
            pods: vec![("ready", 2)],
            containers: vec![("running", 3)],
            collector_rounds: 5,
            ..Default::default()
        });
        let text = t.encode().unwrap();
        for line in [
            "crius_grpc_requests_total{method=\"ContainerStatus\",code=\"NotFound\"} 1",
            "crius_grpc_request_duration_seconds_count{method=\"Version\"} 1",
            "crius_image_pulled_bytes_total 1000",
            "crius_stats_collector_rounds_total 5",
            "crius_pods{state=\"ready\"} 2",
            "crius_containers{state=\"running\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
