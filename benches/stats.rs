//! Stats read-path latency with many running containers:
//! ListContainerStats and ListPodSandboxStats (no filter) with N running
//! containers (default 200, 10 per host-network pod, `sleep 3600` from the
//! test registry's busybox), on crius and then Debian's containerd 1.6 with
//! the same client code; prints min / p50 / p90 / p99 / max per call, and
//! for crius the stats collector's CPU time per sample round and per
//! container sample (read from its thread, `crius-stats`, in /proc). Run
//! with `hack/bench-stats.sh`.
//!
//!   CRIUS_BENCH_STATS_CONTAINERS=200    running containers
//!   CRIUS_BENCH_STATS_CALLS=200         measured calls per call type
//!   CRIUS_BENCH_STATS_RUNTIMES=crius,containerd

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::testenv::testenv;
use common::{Daemon, Runtime, channel, container_config, percentiles, pod_config};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use support::{Containerd, remove_pods};

const PER_POD: usize = 10;
/// crius's sampling period in the bench.
const INTERVAL_S: u64 = 1;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn host_pod(i: usize) -> PodSandboxConfig {
    let mut p = pod_config(&format!("stats-{i}"), "bench-stats");
    p.hostname = String::new();
    common::host_network(&mut p);
    p
}

/// Pulls busybox and runs `n` containers; returns the pod ids.
async fn fill(rt: &mut Runtime, sock: &Path, n: usize, name: &str) -> Result<Vec<String>, String> {
    let image = common::pull_busybox_at(sock).await?;
    let (mut pods, start) = (Vec::new(), Instant::now());
    for i in 0..n.div_ceil(PER_POD) {
        let cfg = host_pod(i);
        let pod = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
            .into_inner()
            .pod_sandbox_id;
        pods.push(pod.clone());
        for k in 0..PER_POD.min(n - i * PER_POD) {
            let mut c = container_config(&format!("c{k}"), &image, &["sleep", "3600"]);
            c.log_path = String::new();
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(c),
                    sandbox_config: Some(cfg.clone()),
                })
                .await
                .map_err(|e| format!("CreateContainer: {}", e.message()))?
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest { container_id: id })
                .await
                .map_err(|e| format!("StartContainer: {}", e.message()))?;
        }
    }
    println!(
        "{name}: {n} running containers in {} pods, {:.1} s",
        pods.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(pods)
}

/// Latencies (ms) of `calls` ListContainerStats and ListPodSandboxStats,
/// interleaved, after a warm-up. A call type that fails is reported once
/// and measured no further (containerd 1.6 cannot give stats of pods
/// without a cgroup parent).
async fn measure(rt: &mut Runtime, calls: usize, n: usize) -> Result<[Vec<f64>; 2], String> {
    let mut out = [Vec::new(), Vec::new()];
    let mut failed = [false, false];
    for i in 0..calls + 10 {
        if !failed[0] {
            let t = Instant::now();
            match rt
                .list_container_stats(ListContainerStatsRequest { filter: None })
                .await
            {
                Ok(r) if r.get_ref().stats.len() != n => {
                    return Err(format!(
                        "ListContainerStats gave {} of {n}",
                        r.get_ref().stats.len()
                    ));
                }
                Ok(_) if i >= 10 => out[0].push(t.elapsed().as_secs_f64() * 1000.0),
                Ok(_) => {}
                Err(e) => {
                    println!("ListContainerStats: {}", e.message());
                    failed[0] = true;
                }
            }
        }
        if !failed[1] {
            let t = Instant::now();
            match rt
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
                .await
            {
                Ok(_) if i >= 10 => out[1].push(t.elapsed().as_secs_f64() * 1000.0),
                Ok(_) => {}
                Err(e) => {
                    println!("ListPodSandboxStats: {}", e.message());
                    failed[1] = true;
                }
            }
        }
    }
    Ok(out)
}

/// CPU time (user + system) of the daemon's thread named `name`.
fn thread_cpu(pid: u32, name: &str) -> Option<Duration> {
    let tick = 1.0 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        return Some(Duration::from_secs_f64(ticks * tick));
    }
    None
}

fn report(name: &str, lat: &[Vec<f64>; 2]) {
    for (label, ms) in ["ListContainerStats", "ListPodSandboxStats"]
        .iter()
        .zip(lat)
    {
        if ms.is_empty() {
            println!("{name:<16} {label:<20} not measured (it failed)");
            continue;
        }
        let (min, p50, p90, p99, max) = percentiles(ms);
        println!(
            "{name:<16} {label:<20} min {min:7.2}  p50 {p50:7.2}  p90 {p90:7.2}  p99 {p99:7.2}  max {max:7.2} ms  ({} calls)",
            ms.len()
        );
    }
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("stats benchmark: run it with `hack/bench-stats.sh`");
        return;
    }
    let n = env_usize("CRIUS_BENCH_STATS_CONTAINERS", 200);
    let calls = env_usize("CRIUS_BENCH_STATS_CALLS", 200);
    let which =
        std::env::var("CRIUS_BENCH_STATS_RUNTIMES").unwrap_or_else(|_| "crius,containerd".into());
    println!(
        "{n} running containers, {PER_POD} per host-network pod; {calls} calls per type; {} CPUs; load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if which.contains("crius") {
        let d = Daemon::builder()
            .registries(&testenv().registries_conf())
            .runroot_on_tmpfs()
            .config(&format!("[metrics]\nstats_interval = {INTERVAL_S}\n"))
            .env("CRIUS_LOG_LEVEL", "info")
            .start();
        let mut rt = RuntimeServiceClient::new(channel(&d.paths.socket).await)
            .max_decoding_message_size(usize::MAX);
        match fill(&mut rt, &d.paths.socket, n, "crius").await {
            Ok(pods) => {
                // The collector samples what the stats calls asked for: one
                // call, then rounds over every container and pod.
                let _ = measure(&mut rt, 1, n).await;
                let (t0, c0) = (Instant::now(), thread_cpu(d.pid(), "crius-stats"));
                tokio::time::sleep(Duration::from_secs(10)).await;
                let (t1, c1) = (Instant::now(), thread_cpu(d.pid(), "crius-stats"));
                match measure(&mut rt, calls, n).await {
                    Ok(lat) => report("crius", &lat),
                    Err(e) => println!("crius: {e}"),
                }
                if let (Some(c0), Some(c1)) = (c0, c1) {
                    let rounds = (t1 - t0).as_secs_f64() / INTERVAL_S as f64;
                    let per_round = (c1 - c0).as_secs_f64() * 1000.0 / rounds;
                    let targets = n + pods.len();
                    println!(
                        "crius collector: {per_round:.1} ms CPU per round of {targets} cgroups ({n} containers, {} pods), {:.1} µs per sample",
                        pods.len(),
                        per_round * 1000.0 / targets as f64
                    );
                }
                remove_pods(&mut rt, pods).await;
            }
            Err(e) => println!("crius: {e}"),
        }
        drop(d);
    }
    if which.contains("containerd") {
        let dir = std::env::temp_dir().join(format!("crius-bench-stats-{}", std::process::id()));
        match Containerd::start(&dir, "crtbs1", "10.195.0.0/16") {
            Ok(c) => {
                let mut rt = RuntimeServiceClient::new(channel(&c.sock).await)
                    .max_decoding_message_size(usize::MAX);
                match fill(&mut rt, &c.sock, n, "containerd 1.6").await {
                    Ok(pods) => {
                        match measure(&mut rt, calls, n).await {
                            Ok(lat) => report("containerd 1.6", &lat),
                            Err(e) => println!("containerd 1.6: {e}"),
                        }
                        remove_pods(&mut rt, pods).await;
                    }
                    Err(e) => println!("containerd 1.6: {e}"),
                }
                drop(c);
            }
            Err(e) => println!("containerd 1.6: {e}"),
        }
    }
}
