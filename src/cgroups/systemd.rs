//! The systemd cgroup driver's half that talks to systemd: transient units
//! through `org.freedesktop.systemd1.Manager` on the system bus, as runc's
//! and cri-o's systemd cgroup managers do. systemd owns the cgroup tree
//! under its slices; a cgroup crius made there itself would be unknown to
//! systemd (not stopped, not accounted, its limits reset on a reload).
//!
//! Every call is async (zbus on the daemon's tokio runtime) and bounded:
//! a method call and the job it queues together get [`DEADLINE`]. A job
//! is done when systemd's `JobRemoved` signal names it; the signal stream
//! is opened before the call, so a fast job is not missed.

use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{Connection, MatchRule, MessageStream};

const SERVICE: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// How long connecting, one unit call and its job may take together.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A unit property as systemd's D-Bus API takes it (`(sv)`).
pub type Property = (&'static str, Value<'static>);

/// Why systemd could not be used or refused a unit.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// systemd does not run as init here (no `/run/systemd/system`).
    #[error(
        "cgroup_driver = \"systemd\" needs systemd as the init system, and this host was not booted with it (no /run/systemd/system); use cgroup_driver = \"cgroupfs\" here"
    )]
    NotBooted,
    /// The system bus could not be reached.
    #[error(
        "cgroup_driver = \"systemd\": cannot reach systemd on the system bus: {0} (is dbus running?)"
    )]
    Bus(#[source] Box<zbus::Error>),
    /// A call to systemd failed.
    #[error("systemd {call} {unit}: {source}")]
    Call {
        /// The manager method.
        call: &'static str,
        /// The unit.
        unit: String,
        /// systemd's answer (boxed: zbus's error is large).
        #[source]
        source: Box<zbus::Error>,
    },
    /// A job ended other than `done` (`failed`, `timeout`, `dependency`, …).
    #[error("systemd {call} {unit}: job ended {result:?}")]
    Job {
        /// The manager method.
        call: &'static str,
        /// The unit.
        unit: String,
        /// The job's result.
        result: String,
    },
    /// The call or its job did not finish within [`DEADLINE`].
    #[error("systemd {call} {unit}: no answer within {DEADLINE:?}")]
    Timeout {
        /// The manager method.
        call: &'static str,
        /// The unit.
        unit: String,
    },
}

/// A connection to systemd's manager on the system bus.
#[derive(Debug, Clone)]
pub struct Systemd {
    conn: Connection,
    runtime: tokio::runtime::Handle,
}

/// `crius-helper hold`: the first process of a container's scope (systemd
/// starts no empty scope), kept there for the container's whole life so
/// the scope's cgroup outlives the container's last process until the
/// monitor has read its `memory.events` (the OOM verdict) and written the
/// exit record. It reads its stdin to the end: nothing (the daemon died or
/// the create failed) and it exits at once; the path of the container's
/// exit record (sent once the create succeeded) and it waits until that
/// file exists or its directory is gone, checking every [`HOLD_POLL`].
/// Removing the container kills it with the rest of the scope.
///
/// It blocks SIGTERM (SIGKILL still ends it): systemd before 253 stops a
/// scope one of whose processes the kernel OOM-killed, SIGTERM first, which
/// would take the seed and the cgroup with it before the monitor reads the
/// verdict; blocked, the seed leaves as above, well within the scope's
/// stop timeout. Removal SIGKILLs it.
pub fn hold() -> std::process::ExitCode {
    use nix::sys::signal::{SigSet, Signal};
    let mut blocked = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        blocked.add(sig);
    }
    let _ = blocked.thread_block();
    let mut record = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut record);
    let record = std::path::PathBuf::from(record.trim_end_matches('\n'));
    if record.as_os_str().is_empty() {
        return std::process::ExitCode::SUCCESS;
    }
    let dir = record.parent().map(std::path::Path::to_path_buf);
    while !record.exists() && dir.as_ref().is_some_and(|d| d.is_dir()) {
        std::thread::sleep(HOLD_POLL);
    }
    std::process::ExitCode::SUCCESS
}

/// How often the seed looks for the container's exit record: the scope
/// outlives the container by at most about this much.
pub const HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether the host was booted with systemd (`sd_booted(3)`'s test).
pub fn booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

impl Systemd {
    /// Connects to the system bus and subscribes to the manager's signals
    /// (systemd sends `JobRemoved` only to subscribers). Must run on the
    /// tokio runtime the later calls block on.
    pub async fn connect() -> Result<Systemd, SystemdError> {
        if !booted() {
            return Err(SystemdError::NotBooted);
        }
        let connect = async {
            let conn = Connection::system().await?;
            conn.call_method(Some(SERVICE), PATH, Some(MANAGER), "Subscribe", &())
                .await?;
            Ok::<_, zbus::Error>(conn)
        };
        let conn = tokio::time::timeout(DEADLINE, connect)
            .await
            .map_err(|_| SystemdError::Bus(Box::new(zbus::Error::Failure("timed out".into()))))?
            .map_err(|e| SystemdError::Bus(Box::new(e)))?;
        Ok(Systemd {
            conn,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Runs `f` to completion from blocking code (a `spawn_blocking` or
    /// `block_in_place` thread), where the cgroup interface runs.
    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// Starts transient unit `name` with `props` and waits for its job.
    pub async fn start(&self, name: &str, props: Vec<Property>) -> Result<(), SystemdError> {
        let aux: Vec<(String, Vec<(String, Value<'static>)>)> = Vec::new();
        self.job(
            "StartTransientUnit",
            name,
            &(name, "fail", props, aux),
            false,
        )
        .await
    }

    /// Stops unit `name` (its processes are killed) and waits for the
    /// job; a unit that does not exist (never made, or already gone: a
    /// scope ends when its last process does) is no error. A failed unit
    /// is then reset so it does not linger in `systemctl list-units`.
    pub async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        let r = self.job("StopUnit", name, &(name, "replace"), true).await;
        let _ = tokio::time::timeout(
            DEADLINE,
            self.conn.call_method(
                Some(SERVICE),
                PATH,
                Some(MANAGER),
                "ResetFailedUnit",
                &(name,),
            ),
        )
        .await;
        r
    }

    /// Sets properties of a running unit (runtime only: gone at reboot,
    /// as the unit is).
    pub async fn set_properties(
        &self,
        name: &str,
        props: Vec<Property>,
    ) -> Result<(), SystemdError> {
        let call = "SetUnitProperties";
        let r = tokio::time::timeout(
            DEADLINE,
            self.conn.call_method(
                Some(SERVICE),
                PATH,
                Some(MANAGER),
                call,
                &(name, true, props),
            ),
        )
        .await;
        match r {
            Err(_) => Err(SystemdError::Timeout {
                call,
                unit: name.into(),
            }),
            Ok(Err(source)) => Err(SystemdError::Call {
                call,
                unit: name.into(),
                source: Box::new(source),
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Calls a manager method that queues a job, and waits for the job's
    /// `JobRemoved`. With `missing_ok`, `NoSuchUnit` counts as done.
    async fn job<B>(
        &self,
        call: &'static str,
        unit: &str,
        body: &B,
        missing_ok: bool,
    ) -> Result<(), SystemdError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let err = |source| SystemdError::Call {
            call,
            unit: unit.into(),
            source: Box::new(source),
        };
        let run = async {
            let rule = MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .sender(SERVICE)
                .and_then(|b| b.interface(MANAGER))
                .and_then(|b| b.member("JobRemoved"))
                .map_err(err)?
                .build();
            let mut signals = MessageStream::for_match_rule(rule, &self.conn, Some(64))
                .await
                .map_err(err)?;
            let reply = match self
                .conn
                .call_method(Some(SERVICE), PATH, Some(MANAGER), call, body)
                .await
            {
                Err(zbus::Error::MethodError(name, _, _))
                    if missing_ok && name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
                {
                    return Ok(());
                }
                r => r.map_err(err)?,
            };
            let job: OwnedObjectPath = reply.body().deserialize().map_err(err)?;
            while let Some(msg) = signals.next().await {
                let Ok(msg) = msg else { continue };
                let Ok((_id, path, _unit, result)) =
                    msg.body()
                        .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return if result == "done" {
                        Ok(())
                    } else {
                        Err(SystemdError::Job {
                            call,
                            unit: unit.into(),
                            result,
                        })
                    };
                }
            }
            Err(err(zbus::Error::Failure(
                "the bus connection closed".into(),
            )))
        };
        tokio::time::timeout(DEADLINE, run)
            .await
            .unwrap_or_else(|_| {
                Err(SystemdError::Timeout {
                    call,
                    unit: unit.into(),
                })
            })
    }
}

/// The properties of a unit crius starts: described, and not tied to the
/// shutdown ordering of ordinary units (as runc: containers outlive
/// `crius.service`).
pub fn base_properties(description: String) -> Vec<Property> {
    vec![
        ("Description", Value::from(description)),
        ("DefaultDependencies", Value::from(false)),
        // A unit that ends failed is unloaded too, not kept for inspection.
        ("CollectMode", Value::from("inactive-or-failed")),
    ]
}

/// How long systemd gives a scope's processes between SIGTERM and SIGKILL
/// when it is stopped (systemd's default is 90 s; a slice has none).
pub const SCOPE_STOP_TIMEOUT_USEC: u64 = 10_000_000;

/// The unit properties for the CRI resources systemd has a property for
/// (the cgroup files are written too: systemd then keeps the same values
/// across a `daemon-reload`). Unset (zero) fields give none. `pids_limit`
/// (the node's default, 0: none) becomes `TasksMax` unless the resources
/// set `pids.max`, as `cgroups::add_pids_limit` does for the file.
pub fn resource_properties(
    r: &k8s_cri::v1::LinuxContainerResources,
    pids_limit: u64,
) -> Vec<Property> {
    let mut out: Vec<Property> = Vec::new();
    if r.cpu_shares > 0 {
        // runc's mapping of shares [2, 262144] onto weight [1, 10000].
        let shares = r.cpu_shares.clamp(2, 262_144) as u64;
        out.push((
            "CPUWeight",
            Value::from(1 + ((shares - 2) * 9999) / 262_142),
        ));
    }
    if r.cpu_quota > 0 {
        let period = if r.cpu_period > 0 {
            r.cpu_period as u64
        } else {
            100_000
        };
        // systemd rounds the per-second quota to whole 10 ms of a second:
        // round up, as runc does, so the written cpu.max is never lower.
        let per_sec = (r.cpu_quota as u64 * 1_000_000).div_ceil(period);
        let per_sec = per_sec.div_ceil(10_000) * 10_000;
        out.push(("CPUQuotaPerSecUSec", Value::from(per_sec)));
        out.push(("CPUQuotaPeriodUSec", Value::from(period)));
    }
    if r.memory_limit_in_bytes > 0 {
        out.push(("MemoryMax", Value::from(r.memory_limit_in_bytes as u64)));
    }
    if let Some(max) = r.unified.get("pids.max") {
        let tasks = if max == "max" {
            Some(u64::MAX)
        } else {
            max.parse().ok()
        };
        if let Some(t) = tasks {
            out.push(("TasksMax", Value::from(t)));
        }
    } else if pids_limit > 0 {
        out.push(("TasksMax", Value::from(pids_limit)));
    }
    for (name, list) in [
        ("AllowedCPUs", &r.cpuset_cpus),
        ("AllowedMemoryNodes", &r.cpuset_mems),
    ] {
        if let Some(mask) = cpuset_mask(list) {
            out.push((name, Value::from(mask)));
        }
    }
    out
}

/// A cpuset list (`0-3,8`) as systemd's bitmask bytes (bit n of byte n/8);
/// `None` when empty or malformed (the file write then decides).
fn cpuset_mask(list: &str) -> Option<Vec<u8>> {
    let mut mask = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        if a > b || b >= 8192 {
            return None;
        }
        for n in a..=b {
            if mask.len() <= n / 8 {
                mask.resize(n / 8 + 1, 0);
            }
            mask[n / 8] |= 1 << (n % 8);
        }
    }
    (!mask.is_empty()).then_some(mask)
}

/// The unit a cgroup path of the systemd driver names: its last component
/// (`…/crius-<id>.scope`, `…/<parent>-crius_pod_<id>.slice`).
pub fn unit_of(rel: &str) -> Option<&str> {
    let last = rel.trim_end_matches('/').rsplit('/').next()?;
    (last.ends_with(".scope") || last.ends_with(".slice")).then_some(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::LinuxContainerResources;

    fn prop<'a>(p: &'a [Property], name: &str) -> Option<&'a Value<'static>> {
        p.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    #[test]
    fn resources_become_unit_properties() {
        let mut r = LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 256 << 20,
            cpuset_cpus: "0-1,9".into(),
            ..Default::default()
        };
        r.unified.insert("pids.max".into(), "100".into());
        let p = resource_properties(&r, 0);
        assert_eq!(prop(&p, "CPUWeight"), Some(&Value::from(39u64)));
        assert_eq!(
            prop(&p, "CPUQuotaPerSecUSec"),
            Some(&Value::from(500_000u64))
        );
        assert_eq!(
            prop(&p, "CPUQuotaPeriodUSec"),
            Some(&Value::from(100_000u64))
        );
        assert_eq!(prop(&p, "MemoryMax"), Some(&Value::from(256u64 << 20)));
        assert_eq!(prop(&p, "TasksMax"), Some(&Value::from(100u64)));
        // The node's pids limit yields to the container's own.
        let p = resource_properties(&r, 4096);
        assert_eq!(prop(&p, "TasksMax"), Some(&Value::from(100u64)));
        r.unified.remove("pids.max");
        let p = resource_properties(&r, 4096);
        assert_eq!(prop(&p, "TasksMax"), Some(&Value::from(4096u64)));
        r.unified.insert("pids.max".into(), "100".into());
        let p = resource_properties(&r, 0);
        assert_eq!(
            prop(&p, "AllowedCPUs"),
            Some(&Value::from(vec![0b11u8, 0b10]))
        );
        assert!(prop(&p, "AllowedMemoryNodes").is_none());
        assert!(resource_properties(&LinuxContainerResources::default(), 0).is_empty());
        // An odd quota rounds up to systemd's 10 ms step.
        let odd = LinuxContainerResources {
            cpu_quota: 12_345,
            cpu_period: 100_000,
            ..Default::default()
        };
        assert_eq!(
            prop(&resource_properties(&odd, 0), "CPUQuotaPerSecUSec"),
            Some(&Value::from(130_000u64))
        );
    }

    #[test]
    fn units_are_named_by_the_paths_last_component() {
        assert_eq!(
            unit_of("a.slice/a-crius_pod_1.slice/crius-2.scope"),
            Some("crius-2.scope")
        );
        assert_eq!(
            unit_of("a.slice/a-crius_pod_1.slice"),
            Some("a-crius_pod_1.slice")
        );
        assert_eq!(unit_of("crius/crius-pod-1"), None);
    }

    #[test]
    fn cpuset_masks() {
        assert_eq!(cpuset_mask("0"), Some(vec![1]));
        assert_eq!(cpuset_mask("7-8"), Some(vec![0x80, 1]));
        assert_eq!(cpuset_mask(""), None);
        assert_eq!(cpuset_mask("3-1"), None);
        assert_eq!(cpuset_mask("x"), None);
    }
}
