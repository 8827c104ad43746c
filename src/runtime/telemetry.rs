//! The core's side of the daemon's own metrics: the counts a scrape shows,
//! read from memory, and the page itself.

use std::sync::Arc;

use k8s_cri::v1::ContainerState;

use super::{PodState, Runtime, Telemetry};
use crate::telemetry::Counts;

impl Runtime {
    /// Where RPC and pull metrics are recorded.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        self.telemetry.clone()
    }

    /// The Prometheus page: counts refreshed now, then every family.
    /// (Container states of pods whose monitor is not followed come from
    /// files, hence on a blocking section.)
    pub fn metrics_page(&self) -> Result<String, String> {
        let counts = crate::sync::blocking(|| self.counts()).map_err(|e| e.to_string())?;
        self.telemetry.set_counts(&counts);
        self.telemetry.encode().map_err(|e| e.to_string())
    }

    fn counts(&self) -> crate::error::Result<Counts> {
        let pods = self.pods.list()?;
        let ready = pods.iter().filter(|p| p.state == PodState::Ready).count() as i64;
        let containers = self.containers.list_with_state()?;
        let in_state =
            |s: ContainerState| containers.iter().filter(|(_, r)| r.state == s).count() as i64;
        let cost = self.collector.cost();
        Ok(Counts {
            pods: vec![("ready", ready), ("notready", pods.len() as i64 - ready)],
            containers: vec![
                ("created", in_state(ContainerState::ContainerCreated)),
                ("running", in_state(ContainerState::ContainerRunning)),
                ("exited", in_state(ContainerState::ContainerExited)),
                ("unknown", in_state(ContainerState::ContainerUnknown)),
            ],
            monitors: self.containers.monitors_followed() as i64,
            event_subscribers: self.containers.event_subscribers() as i64,
            collector_rounds: cost.rounds,
            collector_samples: cost.samples,
            collector_cpu: cost.cpu,
            collector_last_round: cost.last_wall,
            collector_targets: cost.last_targets as i64,
        })
    }
}
