//! The collector: one OS thread that samples every tracked cgroup (and
//! pod network namespace) on one timer and keeps the latest sample of
//! each in memory, so stats calls over hundreds of containers only copy
//! numbers. It is its own thread, not a tokio task, because reading a
//! pod's interfaces enters the pod's network namespace (see `net.rs`),
//! which must never happen on an async worker. A target seen for the first
//! time is sampled at once, on the same thread, while the caller awaits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::cgroup::{self, CgroupSample};
use super::net::{self, Interface};
use crate::cgroups::Cgroups;

/// How long a caller waits for the first sample of new targets.
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(5);

/// Something to sample: a container or a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Container or pod id: the key of its samples.
    pub id: String,
    /// Its cgroup, relative to the hierarchy roots.
    pub cgroup: String,
    /// A pod's pinned network namespace (none: host network, containers).
    pub netns: Option<PathBuf>,
    /// Tasks in the cgroup that are not the workload's: the systemd
    /// driver's scope seeds (one per live container scope), left out of
    /// the process counts.
    pub seeds: u64,
}

/// One target's numbers at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// When it was taken (after its cgroup was read); `None` only in a
    /// default, empty sample.
    pub at: Option<SystemTime>,
    /// The target's cgroup numbers.
    pub cgroup: CgroupSample,
    /// CPU nanoseconds per second between the previous sample and this
    /// one; `None` for a target's first sample.
    pub nano_cores: Option<u64>,
    /// A pod's interfaces; `None` without a namespace or when unreadable.
    pub interfaces: Option<Vec<Interface>>,
}

impl Sample {
    /// Nanoseconds since the epoch.
    pub fn at_nanos(&self) -> i64 {
        self.at
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
}

/// What the collector costs, for the daemon's own metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// Timer rounds done.
    pub rounds: u64,
    /// Target samples taken, on the timer and at first sight.
    pub samples: u64,
    /// CPU time of the collector thread, all rounds.
    pub cpu: Duration,
    /// Targets sampled in the last round.
    pub last_targets: usize,
    /// Wall time of the last round.
    pub last_wall: Duration,
    /// CPU time of the collector thread in the last round.
    pub last_cpu: Duration,
}

type Waiter = tokio::sync::oneshot::Sender<()>;

#[derive(Default)]
struct Control {
    stop: bool,
    /// New targets to sample now, with who waits for them.
    urgent: Vec<(Vec<Target>, Waiter)>,
}

struct Shared {
    cgroups: Cgroups,
    targets: Mutex<Arc<Vec<Target>>>,
    latest: RwLock<HashMap<String, Arc<Sample>>>,
    control: Mutex<Control>,
    wake: Condvar,
    cost: Mutex<Cost>,
    /// Set if the thread could not leave a pod's network namespace.
    net_broken: AtomicBool,
}

/// See the module docs. Dropping it stops the thread.
pub struct Collector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Collector {
    /// Starts the thread, sampling every `interval`.
    pub fn start(cgroups: Cgroups, interval: Duration) -> std::io::Result<Collector> {
        let shared = Arc::new(Shared {
            cgroups,
            targets: Mutex::default(),
            latest: RwLock::default(),
            control: Mutex::default(),
            wake: Condvar::new(),
            cost: Mutex::default(),
            net_broken: AtomicBool::new(false),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("crius-stats".into())
            .spawn(move || thread.run(interval.max(Duration::from_millis(100))))?;
        Ok(Collector { shared })
    }

    /// Replaces the set the timer samples; samples of targets no longer in
    /// it go at the next round.
    pub fn track(&self, targets: Vec<Target>) {
        *lock(&self.shared.targets) = Arc::new(targets);
    }

    /// The latest samples of `targets` by id, sampling the never-seen ones
    /// first (the caller awaits the collector thread, never blocks).
    pub async fn latest(&self, targets: &[Target]) -> HashMap<String, Arc<Sample>> {
        let missing: Vec<Target> = {
            let latest = self.shared.read_latest();
            targets
                .iter()
                .filter(|t| !latest.contains_key(&t.id))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            lock(&self.shared.control).urgent.push((missing, tx));
            self.shared.wake.notify_one();
            // A stuck read (a hung cgroup file) must not hang the call: it
            // answers without those samples.
            let _ = tokio::time::timeout(FIRST_SAMPLE_WAIT, rx).await;
        }
        let latest = self.shared.read_latest();
        targets
            .iter()
            .filter_map(|t| latest.get(&t.id).map(|s| (t.id.clone(), s.clone())))
            .collect()
    }

    /// What the collector has cost so far.
    pub fn cost(&self) -> Cost {
        *lock(&self.shared.cost)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        lock(&self.shared.control).stop = true;
        self.shared.wake.notify_all();
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl Shared {
    fn read_latest(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Sample>>> {
        self.latest.read().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, interval: Duration) {
        let mut next = Instant::now() + interval;
        loop {
            let urgent = {
                let mut c = lock(&self.control);
                while !c.stop && c.urgent.is_empty() && Instant::now() < next {
                    let wait = next.saturating_duration_since(Instant::now());
                    c = self
                        .wake
                        .wait_timeout(c, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if c.stop {
                    return;
                }
                std::mem::take(&mut c.urgent)
            };
            for (targets, waiter) in urgent {
                let n = self.sample_all(&targets);
                lock(&self.cost).samples += n as u64;
                let _ = waiter.send(());
            }
            if Instant::now() >= next {
                self.round();
                next = Instant::now() + interval;
            }
        }
    }

    /// One timer round over the tracked targets.
    fn round(&self) {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let targets = lock(&self.targets).clone();
        self.sample_all(&targets);
        {
            let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
            latest.retain(|id, _| targets.iter().any(|t| &t.id == id));
        }
        let used = thread_cpu().saturating_sub(cpu);
        let mut cost = lock(&self.cost);
        cost.rounds += 1;
        cost.samples += targets.len() as u64;
        cost.cpu += used;
        cost.last_targets = targets.len();
        cost.last_wall = wall.elapsed();
        cost.last_cpu = used;
    }

    fn sample_all(&self, targets: &[Target]) -> usize {
        for t in targets {
            let prev = self.read_latest().get(&t.id).cloned();
            let sample = Arc::new(self.sample(t, prev.as_deref()));
            self.latest
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(t.id.clone(), sample);
        }
        targets.len()
    }

    fn sample(&self, t: &Target, prev: Option<&Sample>) -> Sample {
        let dir = |c: &str| self.cgroups.controller_dir(c, &t.cgroup);
        let cgroup = if self.cgroups.version() == "v2" {
            dir("").map(|d| cgroup::read_v2(&d)).unwrap_or_default()
        } else {
            match (dir("cpu"), dir("cpuacct"), dir("memory"), dir("pids")) {
                (Some(cpu), Some(cpuacct), Some(memory), Some(pids)) => {
                    cgroup::read_v1(&cgroup::V1Dirs {
                        cpu,
                        cpuacct,
                        memory,
                        pids,
                    })
                }
                _ => CgroupSample::default(),
            }
        };
        let mut cgroup = cgroup;
        if let Some(p) = &mut cgroup.pids {
            p.current = p.current.saturating_sub(t.seeds);
        }
        let at = SystemTime::now();
        let nano_cores = prev.and_then(|p| {
            let dt = at.duration_since(p.at?).ok()?.as_nanos();
            let used = cgroup.cpu_ns?.checked_sub(p.cgroup.cpu_ns?)? as u128;
            (dt > 0).then(|| (used * 1_000_000_000 / dt) as u64)
        });
        let netns = t
            .netns
            .as_ref()
            .filter(|_| !self.net_broken.load(Ordering::Relaxed));
        let interfaces = netns.and_then(|ns| match net::read_in(ns) {
            Ok(i) => Some(i),
            Err(e @ net::NetError::Return(_)) => {
                // Stuck in a pod's namespace: what this thread would read
                // for other pods is wrong, so it reads none any more
                // (cgroup files are read by path, which stays right).
                tracing::error!(error = %e, "stats collector stops reading pod networks");
                self.net_broken.store(true, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::debug!(id = %t.id, error = %e, "pod network stats unavailable");
                None
            }
        });
        Sample {
            at: Some(at),
            cgroup,
            nano_cores,
            interfaces,
        }
    }
}
