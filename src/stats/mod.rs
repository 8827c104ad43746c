//! Resource usage of containers and pods for the CRI stats and metrics
//! calls: cgroup readers for v1 and v2 (`cgroup.rs`), a pod's interface
//! counters read inside its network namespace (`net.rs`), and the
//! background collector that keeps the latest sample of each
//! (`collector.rs`). The core decides what to sample and turns samples
//! into answers; this module knows nothing of pods or containers.

pub mod cgroup;
pub mod collector;
pub mod metrics;
pub mod net;

pub use cgroup::{CgroupSample, Memory, Pids};
pub use collector::{Collector, Cost, Sample, Target};
pub use net::Interface;
