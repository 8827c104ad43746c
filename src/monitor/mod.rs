//! The pod monitor: one small single-threaded process per pod (`crius
//! monitor`), outliving the daemon. It creates and starts the pod's
//! containers through the embedded executor (which forks, so this process
//! must stay single-threaded), holds their stdio, writes their CRI logs,
//! reaps them and records exit codes and OOM kills in files under each
//! container's directory, and runs execs. The daemon talks to it with the
//! protocol in `proto/monitor.proto` ([`client`]).
//!
//! The monitor itself, by concern:
//! - [`event_loop`]: the process ([`run`]) and its poll loop, which takes
//!   the executor it drives, so tests can give it a fake one;
//! - `handlers`: one function per request op, and the failure codes;
//! - `table`: the containers, execs, waiters and subscribers, and how an
//!   exit is settled (output drained, `exit.json` written while the
//!   process is a zombie, events, waiters answered, then reaped);
//! - `io`: frames, non-blocking drains, fan-out to attachers, log sinks.

pub mod client;
mod event_loop;
mod handlers;
mod io;
pub mod logs;
mod table;

/// Generated from `proto/monitor.proto`.
// prost-build output: documented (if at all) in the .proto, not editable here.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/crius.monitor.v1.rs"));
}

pub use event_loop::run;

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// The monitor's pid, written at start inside its directory, so a hung
/// monitor can be killed when its pod goes.
pub const PID_FILE: &str = "monitor.pid";
/// Socket name inside the monitor's directory.
pub const SOCKET: &str = "monitor.sock";
/// Largest frame accepted (exec output is capped below this).
pub const MAX_FRAME: usize = 40 << 20;
/// Exec output kept per stream; the rest is dropped.
pub const EXEC_OUTPUT_CAP: usize = 16 << 20;

/// A protocol frame: 4-byte big-endian length, then the message.
pub fn frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Files a monitor writes in a container's directory.
pub mod files {
    /// The init's pid, written at create.
    pub const PID: &str = "pid";
    /// Start time (ns since the epoch), written at start.
    pub const STARTED: &str = "started";
    /// [`super::ExitRecord`] as JSON, written when the init is reaped.
    pub const EXIT: &str = "exit.json";
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    /// Exit status; `128 + signal` for a process killed by a signal, 255 when neither is known.
    pub exit_code: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// The container's memory cgroup recorded an OOM kill (checked only for non-zero exits).
    pub oom_killed: bool,
    /// The pod's monitor died, so the daemon killed the container and
    /// wrote this record (ContainerStatus says so instead of "Error").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub monitor_died: bool,
}

/// A pod's monitor directory: `runroot/m/<id prefix>`, short because its
/// socket path must fit in sun_path (108 bytes).
pub fn dir(runroot: &std::path::Path, pod_id: &str) -> std::path::PathBuf {
    runroot.join("m").join(&pod_id[..pod_id.len().min(32)])
}

/// Nanoseconds since the epoch, now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
