//! Read-path latency with many containers: ListContainers (no filter and
//! filtered by pod), ContainerStatus of random containers and
//! ListPodSandbox, with N containers in the *created* state (not started),
//! N = 10, 100 then 500 by default (each count grows the same fleet). Without an
//! endpoint it sets up crius, then Debian's containerd 1.6, to each N on the
//! same image, the same pod and container configs and the same client code,
//! then measures both in rounds whose order alternates (a machine that
//! slows down mid-run weighs on both alike), and prints min / p50 / p90 /
//! p99 / max per call type and N, how each grows with N, and
//! crius/containerd ratios. Run with
//! `hack/bench-list.sh`.
//!
//! Pods are host-network (no CNI in the set-up time; both runtimes still
//! get the container bench's bridge config so the network reports ready),
//! 10 containers each running `sleep 3600` from the test registry's
//! busybox, with kubelet's labels and annotations. The main numbers are one
//! client calling the four types in turn over one connection; the
//! concurrent variant has 4 connections calling one type at once.
//!
//!   CRIUS_BENCH_ENDPOINT=/run/containerd/containerd.sock  any CRI runtime
//!   CRIUS_BENCH_LIST_COUNTS=10,100,500  container counts, ascending (default)
//!   CRIUS_BENCH_LIST_PER_POD=10         containers per pod
//!   CRIUS_BENCH_LIST_CALLS=200          measured calls per call type
//!   CRIUS_BENCH_LIST_ROUNDS=4           rounds the calls are split into
//!   CRIUS_BENCH_LIST_WARMUP=20          unmeasured calls per call type first
//!   CRIUS_BENCH_LIST_CLIENTS=4          clients of the concurrent variant (0: none)
//!   CRIUS_BENCH_LIST_RUNTIMES=crius,containerd   which of the two to run
//!   CRIUS_BENCH_LIST_SETUP_LIMIT=900    seconds a runtime may take to reach
//!                                       one count; past it, what was made is measured

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::testenv::testenv;
use common::{Daemon, Runtime, bridge_conflist, percentiles};
use k8s_cri::v1::*;
use prost::Message;
use support::fleet::{Fleet, Plan, client, grow, loadavg};
use support::{Containerd, cgroup_version, remove_pods};

/// The call types measured, in the order they are interleaved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Call {
    ListAll,
    ListPod,
    Status,
    ListPods,
}

const CALLS: [Call; 4] = [Call::ListAll, Call::ListPod, Call::Status, Call::ListPods];

impl Call {
    fn label(self) -> &'static str {
        match self {
            Call::ListAll => "ListContainers (no filter)",
            Call::ListPod => "ListContainers (pod filter)",
            Call::Status => "ContainerStatus (random)",
            Call::ListPods => "ListPodSandbox",
        }
    }
}

/// Settings from the environment.
struct Settings {
    counts: Vec<usize>,
    per_pod: usize,
    calls: usize,
    warmup: usize,
    clients: usize,
    rounds: usize,
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
        let mut counts: Vec<usize> = std::env::var("CRIUS_BENCH_LIST_COUNTS")
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .filter(|n| *n > 0)
                    .collect()
            })
            .filter(|c: &Vec<usize>| !c.is_empty())
            .unwrap_or_else(|| vec![10, 100, 500]);
        counts.sort_unstable();
        counts.dedup();
        Settings {
            counts,
            per_pod: var("CRIUS_BENCH_LIST_PER_POD", 10).max(1),
            calls: var("CRIUS_BENCH_LIST_CALLS", 200).max(1),
            warmup: var("CRIUS_BENCH_LIST_WARMUP", 20),
            clients: var("CRIUS_BENCH_LIST_CLIENTS", 4),
            rounds: var("CRIUS_BENCH_LIST_ROUNDS", 4).max(1),
            setup_limit: Duration::from_secs(var("CRIUS_BENCH_LIST_SETUP_LIMIT", 900) as u64),
        }
    }
}

/// One measured series.
struct Row {
    runtime: String,
    /// The count asked for.
    target: usize,
    /// Containers present (the count asked for, or fewer if set-up stopped).
    n: usize,
    call: Call,
    /// 1: one client, calls one after another; more: that many at once.
    clients: usize,
    ms: Vec<f64>,
    /// Calls per second over the series (concurrent variant).
    per_sec: f64,
}

/// A small deterministic generator: both runtimes see the same sequence of
/// picks (which container, which pod).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One call of `kind` with arguments picked by `rng`; its latency in ms.
async fn call(rt: &mut Runtime, kind: Call, fleet: &Fleet, rng: &mut Rng) -> Result<f64, String> {
    let err = |e: tonic::Status| format!("{}: {}", kind.label(), e.message());
    let ms = match kind {
        Call::ListAll => {
            let t = Instant::now();
            rt.list_containers(ListContainersRequest { filter: None })
                .await
                .map_err(err)?;
            t.elapsed()
        }
        Call::ListPod => {
            let pod = fleet.pods[rng.below(fleet.pods.len())].clone();
            let t = Instant::now();
            rt.list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: pod,
                    ..Default::default()
                }),
            })
            .await
            .map_err(err)?;
            t.elapsed()
        }
        Call::Status => {
            let id = fleet.containers[rng.below(fleet.containers.len())]
                .0
                .clone();
            let t = Instant::now();
            rt.container_status(ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
            .map_err(err)?;
            t.elapsed()
        }
        Call::ListPods => {
            let t = Instant::now();
            rt.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .map_err(err)?;
            t.elapsed()
        }
    };
    Ok(ms.as_secs_f64() * 1000.0)
}

/// Checks the runtime sees what the bench made (every container created,
/// a pod's filter answering its containers) and prints the answer sizes.
async fn check(rt: &mut Runtime, name: &str, fleet: &Fleet) -> Result<(), String> {
    let all = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .map_err(|e| format!("ListContainers: {}", e.message()))?
        .into_inner();
    let ours: HashMap<&str, &Container> =
        all.containers.iter().map(|c| (c.id.as_str(), c)).collect();
    for (id, _) in &fleet.containers {
        match ours.get(id.as_str()) {
            None => return Err(format!("container {id} missing from ListContainers")),
            Some(c) if c.state != ContainerState::ContainerCreated as i32 => {
                return Err(format!("container {id} in state {} (not created)", c.state));
            }
            Some(_) => {}
        }
    }
    let first = fleet.pods[0].clone();
    let in_pod = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: first.clone(),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| format!("ListContainers: {}", e.message()))?
        .into_inner();
    let want = fleet.containers.iter().filter(|(_, p)| *p == 0).count();
    if in_pod.containers.len() != want {
        return Err(format!(
            "pod filter answered {} containers, want {want}",
            in_pod.containers.len()
        ));
    }
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .map_err(|e| format!("ListPodSandbox: {}", e.message()))?
        .into_inner();
    let status = rt
        .container_status(ContainerStatusRequest {
            container_id: fleet.containers[0].0.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| format!("ContainerStatus: {}", e.message()))?
        .into_inner();
    // The client's share of a ListContainers call: decoding the answer
    // (the same code for both runtimes, so the ratio hides it).
    let bytes = bytes::Bytes::from(all.encode_to_vec());
    let mut ms = Vec::new();
    for _ in 0..60 {
        let t = Instant::now();
        let _ = ListContainersResponse::decode(bytes.clone());
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (min, p50, ..) = percentiles(&ms[10..]);
    println!(
        "{name}: decoding the unfiltered answer alone (the client's share): min {min:.2} ms, p50 {p50:.2} ms"
    );
    println!(
        "{name}: answers: ListContainers {} containers {} KiB, pod filter {} containers {} B, ListPodSandbox {} pods {} KiB, ContainerStatus {} B",
        all.containers.len(),
        all.encoded_len() / 1024,
        in_pod.containers.len(),
        in_pod.encoded_len(),
        pods.items.len(),
        pods.encoded_len() / 1024,
        status.encoded_len()
    );
    Ok(())
}

/// Calls of every type interleaved over one connection, `calls` of each;
/// latencies per call type (in [`CALLS`] order).
async fn sequential(
    rt: &mut Runtime,
    fleet: &Fleet,
    calls: usize,
    seed: u64,
) -> Result<Vec<Vec<f64>>, String> {
    let mut rng = Rng(seed);
    let mut series = vec![Vec::with_capacity(calls); CALLS.len()];
    for _ in 0..calls {
        for (k, kind) in CALLS.iter().enumerate() {
            series[k].push(call(rt, *kind, fleet, &mut rng).await?);
        }
    }
    Ok(series)
}

/// `clients` connections calling `kind` at once, `per_client` calls each;
/// (latencies, wall seconds).
async fn concurrent(
    sock: &Path,
    fleet: &Fleet,
    kind: Call,
    clients: usize,
    per_client: usize,
    seed: u64,
) -> Result<(Vec<f64>, f64), String> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(client(sock).await);
    }
    let fleet = std::sync::Arc::new(Fleet {
        pods: fleet.pods.clone(),
        containers: fleet.containers.clone(),
    });
    let t = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut rt)| {
            let fleet = fleet.clone();
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ ((c as u64 + 1) << 40));
                let mut ms = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    ms.push(call(&mut rt, kind, &fleet, &mut rng).await?);
                }
                Ok::<_, String>(ms)
            })
        })
        .collect();
    let mut ms = Vec::new();
    for task in tasks {
        ms.extend(task.await.map_err(|e| e.to_string())??);
    }
    Ok((ms, t.elapsed().as_secs_f64()))
}

fn print_header() {
    println!(
        "{:<15} {:>4} {:<28} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "runtime", "N", "call", "clients", "min", "p50", "p90", "p99", "max", "calls/s"
    );
}

fn print_row(r: &Row) {
    let (min, p50, p90, p99, max) = percentiles(&r.ms);
    println!(
        "{:<15} {:>4} {:<28} {:>7} {min:>7.2} {p50:>7.2} {p90:>7.2} {p99:>7.2} {max:>7.2} {:>8.0}",
        r.runtime,
        r.n,
        r.call.label(),
        r.clients,
        r.per_sec
    );
}

/// One runtime under test.
struct Side {
    name: String,
    sock: PathBuf,
    rt: Runtime,
    image: String,
    fleet: Fleet,
    /// Set-up reached every count so far.
    growing: bool,
    /// Stopped (set-up short or a failed call) and already measured.
    done: bool,
}

impl Side {
    /// Connects and pulls the image.
    async fn new(sock: &Path, name: &str) -> Result<Side, String> {
        let image = common::pull_busybox_at(sock)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(Side {
            name: name.to_string(),
            sock: sock.to_path_buf(),
            rt: client(sock).await,
            image,
            fleet: Fleet::default(),
            growing: true,
            done: false,
        })
    }

    /// Removes every pod it made.
    async fn clean(&mut self) {
        let t = Instant::now();
        println!("{}: removing {} pods", self.name, self.fleet.pods.len());
        remove_pods(&mut self.rt, std::mem::take(&mut self.fleet.pods)).await;
        println!(
            "{}: removed in {:.1} s",
            self.name,
            t.elapsed().as_secs_f64()
        );
    }
}

/// Latencies gathered over the rounds for one (side, call, clients).
#[derive(Default)]
struct Series {
    ms: Vec<f64>,
    secs: f64,
}

/// Grows every side to each count and measures all of them at it, in
/// rounds whose order alternates, so a machine that slows down mid-run
/// weighs on all alike. Rows of what was measured, even if a side stopped.
async fn run(sides: &mut [Side], s: &Settings) -> Vec<Row> {
    // Unique names, so an endpoint that already holds pods takes these too.
    let prefix = format!("list-{}", std::process::id());
    let mut rows = Vec::new();
    for &target in &s.counts {
        for side in sides.iter_mut().filter(|x| x.growing && !x.done) {
            let plan = Plan {
                name: &side.name,
                prefix: &prefix,
                image: &side.image,
                per_pod: s.per_pod,
                setup_limit: s.setup_limit,
            };
            side.growing = grow(&mut side.rt, &mut side.fleet, &plan, target).await;
        }
        let mut live: Vec<usize> = Vec::new();
        for (i, side) in sides.iter_mut().enumerate() {
            if side.done || side.fleet.containers.is_empty() {
                continue;
            }
            let warm = async {
                check(&mut side.rt, &side.name, &side.fleet).await?;
                sequential(&mut side.rt, &side.fleet, s.warmup, 1).await
            };
            match warm.await {
                Ok(_) => live.push(i),
                Err(e) => {
                    println!("{}: {e}", side.name);
                    side.done = true;
                }
            }
        }
        if live.is_empty() {
            break;
        }
        let per_round = s.calls.div_ceil(s.rounds);
        let per_client = per_round.div_ceil(s.clients.max(1));
        let mut got: HashMap<(usize, usize, usize), Series> = HashMap::new();
        for round in 0..s.rounds {
            let mut order = live.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            let seed = 0x2545_F491_4F6C_DD1D ^ ((target as u64) << 20) ^ round as u64;
            let mut line = format!("round {}/{}", round + 1, s.rounds);
            for &i in &order {
                let side = &mut sides[i];
                let t = Instant::now();
                let seq = match sequential(&mut side.rt, &side.fleet, per_round, seed).await {
                    Ok(seq) => seq,
                    Err(e) => {
                        println!("{}: {e}", side.name);
                        side.done = true;
                        continue;
                    }
                };
                let secs = t.elapsed().as_secs_f64();
                let (_, p50, _, _, _) = percentiles(&seq[0]);
                line.push_str(&format!("; {} ListContainers p50 {p50:.2} ms", side.name));
                for (k, ms) in seq.into_iter().enumerate() {
                    let e = got.entry((i, k, 1)).or_default();
                    e.ms.extend(ms);
                    e.secs += secs;
                }
                if s.clients < 2 {
                    continue;
                }
                for (k, kind) in CALLS.iter().enumerate() {
                    match concurrent(&side.sock, &side.fleet, *kind, s.clients, per_client, seed)
                        .await
                    {
                        Ok((ms, secs)) => {
                            let e = got.entry((i, k, s.clients)).or_default();
                            e.ms.extend(ms);
                            e.secs += secs;
                        }
                        Err(e) => {
                            println!("{}: {e}", side.name);
                            side.done = true;
                            break;
                        }
                    }
                }
            }
            println!("{line} (load average {})", loadavg());
        }
        print_header();
        for &i in &live {
            for clients in [1, s.clients] {
                for (k, kind) in CALLS.iter().enumerate() {
                    let Some(series) = got.remove(&(i, k, clients)) else {
                        continue;
                    };
                    let per_sec = if clients == 1 {
                        // One call at a time, interleaved: 1 / mean latency.
                        1000.0 / (series.ms.iter().sum::<f64>() / series.ms.len() as f64)
                    } else {
                        series.ms.len() as f64 / series.secs
                    };
                    let row = Row {
                        runtime: sides[i].name.clone(),
                        target,
                        n: sides[i].fleet.containers.len(),
                        call: *kind,
                        clients,
                        ms: series.ms,
                        per_sec,
                    };
                    print_row(&row);
                    rows.push(row);
                }
            }
        }
        for side in sides.iter_mut() {
            if !side.growing {
                side.done = true;
            }
        }
    }
    for side in sides.iter_mut() {
        side.clean().await;
    }
    rows
}

/// How each runtime's one-client p50 grows with N: the factor over the
/// smallest N measured, and the cost per extra container between counts.
fn growth(rows: &[Row]) {
    println!(
        "{:<15} {:<28} {:>5} {:>8} {:>8} {:>14}",
        "runtime", "call", "N", "p50 ms", "x first", "us/container"
    );
    for r in rows.iter().filter(|r| r.clients == 1) {
        let series: Vec<&Row> = rows
            .iter()
            .filter(|x| x.clients == 1 && x.runtime == r.runtime && x.call == r.call)
            .collect();
        let p50 = |x: &Row| percentiles(&x.ms).1;
        let first = series[0];
        let prev = series
            .iter()
            .rev()
            .find(|x| x.n < r.n)
            .copied()
            .unwrap_or(first);
        let per = if r.n > prev.n {
            format!(
                "{:.2}",
                (p50(r) - p50(prev)) * 1000.0 / (r.n - prev.n) as f64
            )
        } else {
            "-".into()
        };
        println!(
            "{:<15} {:<28} {:>5} {:>8.2} {:>8.2} {per:>14}",
            r.runtime,
            r.call.label(),
            r.n,
            p50(r),
            p50(r) / p50(first)
        );
    }
}

/// The crius/containerd ratios of p50 and p99 per count, call and clients.
fn ratios(rows: &[Row]) {
    let crius: Vec<&Row> = rows.iter().filter(|r| r.runtime == "crius").collect();
    let mut header = false;
    for r in &crius {
        let Some(c) = rows.iter().find(|c| {
            c.runtime == "containerd 1.6"
                && c.target == r.target
                && c.call == r.call
                && c.clients == r.clients
        }) else {
            continue;
        };
        if !header {
            println!(
                "{:<4} {:<28} {:>7} {:>10} {:>10}",
                "N", "call", "clients", "p50 ratio", "p99 ratio"
            );
            header = true;
        }
        let (_, p50, _, p99, _) = percentiles(&r.ms);
        let (_, cp50, _, cp99, _) = percentiles(&c.ms);
        let n = if r.n == c.n {
            r.target.to_string()
        } else {
            format!("{}: {} vs {}", r.target, r.n, c.n)
        };
        println!(
            "{:<4} {:<28} {:>7} {:>10.2} {:>10.2}",
            n,
            r.call.label(),
            r.clients,
            p50 / cp50,
            p99 / cp99
        );
    }
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("list benchmark: run it with `hack/bench-list.sh`");
        return;
    }
    let s = Settings::from_env();
    println!(
        "counts {:?}, {} containers per pod (host network, created, not started); {} calls per call type after {} warm-up, in {} rounds; concurrent variant: {} clients; {} CPUs; cgroup {}",
        s.counts,
        s.per_pod,
        s.calls,
        s.warmup,
        s.rounds,
        s.clients,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cgroup_version()
    );
    let mut sides = Vec::new();
    let (mut daemon, mut ctrd) = (None, None);
    let ctrd_dir =
        std::env::temp_dir().join(format!("crius-bench-list-ctrd-{}", std::process::id()));
    if let Ok(endpoint) = std::env::var("CRIUS_BENCH_ENDPOINT") {
        let sock = PathBuf::from(endpoint.trim_start_matches("unix://"));
        match Side::new(&sock, &sock.display().to_string()).await {
            Ok(side) => sides.push(side),
            Err(e) => println!("{e}"),
        }
    } else {
        let which = std::env::var("CRIUS_BENCH_LIST_RUNTIMES")
            .unwrap_or_else(|_| "crius,containerd".into());
        if which.split(',').any(|w| w.trim() == "crius") {
            // As the container bench: volatile state on a tmpfs, info log level.
            let d = Daemon::builder()
                .registries(&testenv().registries_conf())
                .runroot_on_tmpfs()
                .env("CRIUS_LOG_LEVEL", "info")
                .start();
            d.install_cni_config(
                "10-bench.conflist",
                &bridge_conflist("crius-bench", "crtb0", "10.197.0.0/16"),
            );
            match Side::new(&d.paths.socket, "crius").await {
                Ok(side) => sides.push(side),
                Err(e) => println!("{e}"),
            }
            daemon = Some(d);
        }
        if which.split(',').any(|w| w.trim() == "containerd") {
            match Containerd::start(&ctrd_dir, "crtb1", "10.196.0.0/16") {
                Ok(c) => {
                    match Side::new(&c.sock, "containerd 1.6").await {
                        Ok(side) => sides.push(side),
                        Err(e) => println!("{e}"),
                    }
                    ctrd = Some(c);
                }
                Err(e) => println!("containerd 1.6: {e}"),
            }
        }
    }
    let rows = run(&mut sides, &s).await;
    drop(sides);
    drop(daemon);
    // Host-network pods: crius's bridge exists only if something made it.
    if Path::new("/sys/class/net/crtb0").exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "crtb0"])
            .status();
    }
    if let Some(c) = ctrd {
        drop(c);
        // Its images and snapshots went with the drop; the log stays only
        // if it measured nothing.
        if !rows.iter().any(|r| r.runtime == "containerd 1.6") {
            println!(
                "containerd 1.6 log: {}",
                ctrd_dir.join("containerd.log").display()
            );
        } else if common::mounts_under(&ctrd_dir).is_empty() {
            let _ = std::fs::remove_dir_all(&ctrd_dir);
        } else {
            println!("{} still has mounts; left in place", ctrd_dir.display());
        }
    }
    if rows.is_empty() {
        return;
    }
    println!(
        "-- all (ms per call; calls/s: 1 client = 1/mean latency, N clients = completed calls over their wall time)"
    );
    print_header();
    for r in &rows {
        print_row(r);
    }
    println!("-- growth with N (one client)");
    growth(&rows);
    println!("-- crius / containerd 1.6");
    ratios(&rows);
}
