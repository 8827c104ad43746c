//! ListContainers against StreamContainers with N created containers
//! (default 1000): wall time per call (until the last message is in) and
//! the daemon's peak resident memory while each is called. crius only:
//! containerd 1.6, the comparison runtime of the other benches, has no
//! `Stream*` RPCs. Run with `hack/bench-stream.sh`.
//!
//! The fleet is the list bench's (`support::fleet`): host-network pods of
//! 10 `sleep 3600` containers each, created, not started, with kubelet's
//! labels and annotations. The calls alternate in rounds (List first in
//! odd rounds, Stream first in even ones). Before each series the daemon's
//! peak RSS (`VmHWM`) is reset through `/proc/<pid>/clear_refs` (`5`), and
//! read after it: "peak" is the highest of the rounds, "rise" the largest
//! peak minus the RSS at the reset (memory the allocator kept from an
//! earlier series counts in the RSS at reset, not in the rise).
//!
//!   CRIUS_BENCH_STREAM_COUNT=1000       containers
//!   CRIUS_BENCH_STREAM_PER_POD=10       containers per pod
//!   CRIUS_BENCH_STREAM_CALLS=200        measured calls per call type (one client)
//!   CRIUS_BENCH_STREAM_ROUNDS=4         rounds the calls are split into
//!   CRIUS_BENCH_STREAM_CLIENTS=4        clients of the concurrent variant (0: none)
//!   CRIUS_BENCH_STREAM_SETUP_LIMIT=900  seconds set-up may take

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::testenv::testenv;
use common::{Daemon, Runtime, bridge_conflist, percentiles};
use k8s_cri::v1::*;
use prost::Message;
use support::fleet::{Fleet, Plan, client, grow, loadavg};
use support::{cgroup_version, remove_pods};

/// The two calls compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Call {
    List,
    Stream,
}

impl Call {
    fn label(self) -> &'static str {
        match self {
            Call::List => "ListContainers",
            Call::Stream => "StreamContainers",
        }
    }
}

struct Settings {
    count: usize,
    per_pod: usize,
    calls: usize,
    rounds: usize,
    clients: usize,
    setup_limit: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d)
        };
        Settings {
            count: var("CRIUS_BENCH_STREAM_COUNT", 1000).max(1),
            per_pod: var("CRIUS_BENCH_STREAM_PER_POD", 10).max(1),
            calls: var("CRIUS_BENCH_STREAM_CALLS", 200).max(1),
            rounds: var("CRIUS_BENCH_STREAM_ROUNDS", 4).max(1),
            clients: var("CRIUS_BENCH_STREAM_CLIENTS", 4),
            setup_limit: Duration::from_secs(var("CRIUS_BENCH_STREAM_SETUP_LIMIT", 900) as u64),
        }
    }
}

/// One call of `kind` without a filter: (ms until the whole answer is in,
/// containers, messages).
async fn call(rt: &mut Runtime, kind: Call) -> Result<(f64, usize, usize), String> {
    let err = |e: tonic::Status| format!("{}: {}", kind.label(), e.message());
    let t = Instant::now();
    let (n, messages) = match kind {
        Call::List => {
            let r = rt
                .list_containers(ListContainersRequest { filter: None })
                .await
                .map_err(err)?;
            (r.into_inner().containers.len(), 1)
        }
        Call::Stream => {
            let mut s = rt
                .stream_containers(StreamContainersRequest { filter: None })
                .await
                .map_err(err)?
                .into_inner();
            let (mut n, mut messages) = (0, 0);
            while let Some(m) = s.message().await.map_err(err)? {
                n += m.containers.len();
                messages += 1;
            }
            (n, messages)
        }
    };
    Ok((t.elapsed().as_secs_f64() * 1000.0, n, messages))
}

/// A line of `/proc/<pid>/status`, KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the daemon's peak RSS; its RSS now, KiB.
fn reset_peak(pid: u32) -> u64 {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        panic!("resetting VmHWM of {pid}: {e}");
    }
    status_kib(pid, "VmRSS:")
}

/// What one (call, clients) gathered over the rounds.
#[derive(Default)]
struct Series {
    ms: Vec<f64>,
    /// Highest VmHWM after a series, KiB.
    peak: u64,
    /// Largest VmHWM minus the RSS at its reset, KiB.
    rise: u64,
}

impl Series {
    fn memory(&mut self, at_reset: u64, pid: u32) {
        let hwm = status_kib(pid, "VmHWM:");
        self.peak = self.peak.max(hwm);
        self.rise = self.rise.max(hwm.saturating_sub(at_reset));
    }
}

/// `clients` connections calling `kind` at once, `per_client` calls each.
async fn concurrent(
    sock: &Path,
    kind: Call,
    clients: usize,
    per_client: usize,
) -> Result<Vec<f64>, String> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(client(sock).await);
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut rt| {
            tokio::spawn(async move {
                let mut ms = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    ms.push(call(&mut rt, kind).await?.0);
                }
                Ok::<_, String>(ms)
            })
        })
        .collect();
    let mut ms = Vec::new();
    for t in tasks {
        ms.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(ms)
}

async fn measure(
    rt: &mut Runtime,
    sock: &Path,
    pid: u32,
    s: &Settings,
) -> Result<Vec<(Call, usize, Series)>, String> {
    let kinds = [Call::List, Call::Stream];
    let mut got: Vec<(Call, usize, Series)> = Vec::new();
    for clients in [1, s.clients] {
        if clients == 1 || clients >= 2 && !got.iter().any(|g| g.1 == clients) {
            for k in kinds {
                got.push((k, clients, Series::default()));
            }
        }
    }
    let per_round = s.calls.div_ceil(s.rounds);
    let per_client = per_round.div_ceil(s.clients.max(1));
    for round in 0..s.rounds {
        let mut order = kinds;
        if round % 2 == 1 {
            order.reverse();
        }
        let mut line = format!("round {}/{}", round + 1, s.rounds);
        for kind in order {
            let at_reset = reset_peak(pid);
            let mut ms = Vec::with_capacity(per_round);
            for _ in 0..per_round {
                ms.push(call(rt, kind).await?.0);
            }
            let series = got
                .iter_mut()
                .find(|g| g.0 == kind && g.1 == 1)
                .map(|g| &mut g.2)
                .ok_or("no series")?;
            series.memory(at_reset, pid);
            let (_, p50, _, _, _) = percentiles(&ms);
            line.push_str(&format!("; {} p50 {p50:.2} ms", kind.label()));
            series.ms.extend(ms);
            if s.clients < 2 {
                continue;
            }
            let at_reset = reset_peak(pid);
            let ms = concurrent(sock, kind, s.clients, per_client).await?;
            let series = got
                .iter_mut()
                .find(|g| g.0 == kind && g.1 == s.clients)
                .map(|g| &mut g.2)
                .ok_or("no series")?;
            series.memory(at_reset, pid);
            series.ms.extend(ms);
        }
        println!("{line} (load average {})", loadavg());
    }
    Ok(got)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("stream benchmark: run it with `hack/bench-stream.sh`");
        return;
    }
    let s = Settings::from_env();
    println!(
        "{} containers, {} per pod (host network, created, not started); {} calls per call type in {} rounds; concurrent variant: {} clients; {} CPUs; cgroup {}",
        s.count,
        s.per_pod,
        s.calls,
        s.rounds,
        s.clients,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cgroup_version()
    );
    // As the list bench: volatile state on a tmpfs, info log level.
    let d = Daemon::builder()
        .registries(&testenv().registries_conf())
        .runroot_on_tmpfs()
        .env("CRIUS_LOG_LEVEL", "info")
        .start();
    d.install_cni_config(
        "10-bench.conflist",
        &bridge_conflist("crius-bench", "crtb0", "10.197.0.0/16"),
    );
    let sock = d.paths.socket.clone();
    let image = match common::pull_busybox_at(&sock).await {
        Ok(i) => i,
        Err(e) => {
            println!("crius: {e}");
            return;
        }
    };
    let mut rt = client(&sock).await;
    let mut fleet = Fleet::default();
    let prefix = format!("stream-{}", std::process::id());
    let plan = Plan {
        name: "crius",
        prefix: &prefix,
        image: &image,
        per_pod: s.per_pod,
        setup_limit: s.setup_limit,
    };
    let grown = grow(&mut rt, &mut fleet, &plan, s.count).await;
    let n = fleet.containers.len();
    if !grown {
        println!("measuring the {n} containers made");
    }
    let pid = d.pid();
    let result = async {
        // The answers, once: sizes and message counts.
        let all = rt
            .list_containers(ListContainersRequest { filter: None })
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        let (_, streamed, messages) = call(&mut rt, Call::Stream).await?;
        println!(
            "answers: ListContainers {} containers in one message of {} KiB; StreamContainers {streamed} containers in {messages} messages",
            all.containers.len(),
            all.encoded_len() / 1024
        );
        if all.containers.len() != n || streamed != n {
            return Err(format!(
                "made {n}, listed {}, streamed {streamed}",
                all.containers.len()
            ));
        }
        for kind in [Call::List, Call::Stream] {
            for _ in 0..20 {
                call(&mut rt, kind).await?;
            }
        }
        println!(
            "daemon RSS after set-up and warm-up: {} MiB (peak so far {} MiB)",
            status_kib(pid, "VmRSS:") / 1024,
            status_kib(pid, "VmHWM:") / 1024
        );
        measure(&mut rt, &sock, pid, &s).await
    }
    .await;
    match result {
        Ok(rows) => {
            println!(
                "{:<17} {:>5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9}",
                "call", "N", "clients", "min", "p50", "p90", "p99", "max", "peak MiB", "rise MiB"
            );
            for (kind, clients, series) in rows {
                let (min, p50, p90, p99, max) = percentiles(&series.ms);
                println!(
                    "{:<17} {n:>5} {clients:>7} {min:>7.2} {p50:>7.2} {p90:>7.2} {p99:>7.2} {max:>7.2} {:>9.1} {:>9.1}",
                    kind.label(),
                    series.peak as f64 / 1024.0,
                    series.rise as f64 / 1024.0
                );
            }
        }
        Err(e) => println!("crius: {e}"),
    }
    let t = Instant::now();
    remove_pods(&mut rt, std::mem::take(&mut fleet.pods)).await;
    println!("removed the pods in {:.1} s", t.elapsed().as_secs_f64());
    drop(d);
    if Path::new("/sys/class/net/crtb0").exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "crtb0"])
            .status();
    }
}
