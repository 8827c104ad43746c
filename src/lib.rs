//! crius: a Kubernetes CRI container runtime.
//!
//! The binary in `main.rs` parses the command line and calls [`daemon::run`];
//! everything else lives here so tests and benchmarks can use it directly.
//! See `docs/architecture.md` for how the modules fit together.

pub mod cgroups;
pub mod check;
pub mod config;
pub mod container;
pub mod daemon;
pub mod error;
// The executor is where crius meets the kernel (fork, setns, pivot_root,
// seccomp, raw syscalls without a safe wrapper): the one module allowed
// `unsafe`, each block with its SAFETY argument.
#[allow(unsafe_code)]
pub mod executor;
pub mod fault;
pub mod helper;
pub mod ids;
pub mod image;
pub mod inspect;
pub mod listing;
pub mod logging;
pub mod monitor;
pub mod network;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod stats;
pub mod storage;
pub mod store;
pub mod streaming;
pub mod sync;
pub mod telemetry;
