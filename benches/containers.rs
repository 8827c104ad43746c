//! Pod + container start: a CRI load generator that takes any endpoint.
//! Times RunPodSandbox → CreateContainer → StartContainer (container
//! running) one pod after another, then N pods at once, and reports the
//! runtime's daemon and per-pod monitor/shim memory. Without an endpoint it
//! runs crius and Debian's containerd 1.6 on the same bridge CNI config in
//! alternating rounds and prints the ratios per round and over all rounds.
//! Run with `hack/bench.sh`.
//!
//!   CRIUS_BENCH_ENDPOINT=/run/containerd/containerd.sock  any CRI runtime
//!   CRIUS_BENCH_PODS=20        sequential pods (default 20)
//!   CRIUS_BENCH_PARALLEL=20    pods started at once (default 20)
//!   CRIUS_BENCH_ROUNDS=3       rounds of crius then containerd (default 3)
//!   CRIUS_BENCH_CONFIG='[runtime]\ncgroup_favor_dynmods = true'  extra crius config
//!   CRIUS_BENCH_CRIUS_ONLY=1   crius alone (no containerd, e.g. in the VM lane)

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::Instant;

use common::testenv::testenv;
use common::{Daemon, Runtime, bridge_conflist, channel, container_config, pod_config};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use support::{Containerd, cgroup_version, pids_matching, remove_pods, rss_kib, summary};

/// What one runtime measured.
struct Report {
    /// CreateContainer + StartContainer of `sh -c true` in a warm pod.
    create_start_ms: Vec<f64>,
    sequential_ms: Vec<f64>,
    parallel_ms: f64,
    /// Daemon RSS idle: image pulled, no pod yet.
    idle_kib: u64,
    daemon_kib: u64,
    /// Daemon RSS idle again: every pod removed, 3 s later.
    after_kib: u64,
    per_pod_kib: f64,
}

/// One pod with one `sleep` container, until the container runs.
async fn pod_with_container(
    mut rt: Runtime,
    image: String,
    tag: String,
) -> Result<(String, f64), String> {
    let t = Instant::now();
    let pod_cfg = pod_config(&tag, "bench");
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
        .into_inner()
        .pod_sandbox_id;
    let mut cfg = container_config("app", &image, &["sleep", "3600"]);
    cfg.log_path = String::new();
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg),
        })
        .await
        .map_err(|e| format!("CreateContainer: {}", e.message()))?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest { container_id: id })
        .await
        .map_err(|e| format!("StartContainer: {}", e.message()))?;
    Ok((pod, t.elapsed().as_secs_f64() * 1000.0))
}

/// Runs the load against a CRI socket. `memory` finds (daemon pid, per-pod
/// helper pids) while the parallel pods run.
async fn load(
    sock: &Path,
    n: usize,
    parallel: usize,
    name: &str,
    memory: impl Fn() -> (i32, Vec<i32>),
) -> Result<Report, String> {
    let image = common::pull_busybox_at(sock).await?;
    let mut rt = RuntimeServiceClient::new(channel(sock).await);
    let idle_kib = rss_kib(memory().0);
    // Warm-up (first pod pays for the pause image, page cache, bridge).
    let (warm, _) = pod_with_container(rt.clone(), image.clone(), format!("{name}-warm")).await?;
    remove_pods(&mut rt, vec![warm]).await;
    let mut sequential_ms = Vec::new();
    let mut pods = Vec::new();
    for i in 0..n {
        let (pod, ms) =
            pod_with_container(rt.clone(), image.clone(), format!("{name}-seq-{i}")).await?;
        sequential_ms.push(ms);
        pods.push(pod);
    }
    // Container alone: create+start in the first (warm) pod, then wait for
    // the exit and remove it (untimed).
    let mut create_start_ms = Vec::new();
    for i in 0..n {
        let mut cfg = container_config(&format!("true-{i}"), &image, &["/bin/sh", "-c", "true"]);
        cfg.log_path = String::new();
        let t = Instant::now();
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pods[0].clone(),
                config: Some(cfg),
                sandbox_config: Some(pod_config(&format!("{name}-seq-0"), "bench")),
            })
            .await
            .map_err(|e| format!("CreateContainer: {}", e.message()))?
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| format!("StartContainer: {}", e.message()))?;
        create_start_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = rt
            .stop_container(StopContainerRequest {
                container_id: id.clone(),
                timeout: 10,
            })
            .await;
        let _ = rt
            .remove_container(RemoveContainerRequest { container_id: id })
            .await;
    }
    remove_pods(&mut rt, std::mem::take(&mut pods)).await;
    let t = Instant::now();
    let tasks: Vec<_> = (0..parallel)
        .map(|i| {
            tokio::spawn(pod_with_container(
                rt.clone(),
                image.clone(),
                format!("{name}-par-{i}"),
            ))
        })
        .collect();
    let mut failure = None;
    for task in tasks {
        match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((pod, _)) => pods.push(pod),
            Err(e) => failure = Some(e),
        }
    }
    let parallel_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (daemon, helpers) = memory();
    let daemon_kib = rss_kib(daemon);
    let per_pod_kib =
        helpers.iter().map(|p| rss_kib(*p)).sum::<u64>() as f64 / parallel.max(1) as f64;
    remove_pods(&mut rt, pods).await;
    if let Some(e) = failure {
        return Err(e);
    }
    // Idle means after the daemon's idle blocking threads of the burst
    // have exited (their keep-alive is 2 s), as containerd's goroutines
    // have parked: measured 1 s after, their touched stacks (~200 KiB
    // each, 14 threads) still counted.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after_kib = rss_kib(daemon);
    Ok(Report {
        create_start_ms,
        sequential_ms,
        parallel_ms,
        idle_kib,
        daemon_kib,
        after_kib,
        per_pod_kib,
    })
}

fn print(name: &str, r: &Report, n: usize, parallel: usize) {
    let (min, med, p90) = summary(r.create_start_ms.clone());
    println!(
        "{name:<15} container create+start in a warm pod, {n} times: {min:.1} / {med:.1} / {p90:.1} ms (min / median / p90)"
    );
    let (min, med, p90) = summary(r.sequential_ms.clone());
    println!(
        "{name:<15} pod+container running, {n} one after another: {min:.1} / {med:.1} / {p90:.1} ms (min / median / p90)"
    );
    println!(
        "{name:<15} {parallel} pods at once: {:.0} ms; daemon RSS {:.1} MiB (idle before {:.1}, after {:.1}); per-pod monitor/shim RSS {:.2} MiB",
        r.parallel_ms,
        r.daemon_kib as f64 / 1024.0,
        r.idle_kib as f64 / 1024.0,
        r.after_kib as f64 / 1024.0,
        r.per_pod_kib / 1024.0
    );
}

/// crius with its volatile state on a tmpfs and persistent state on disk, as
/// on a node where /run is a tmpfs, on its own bridge.
fn start_crius(extra: &str) -> Daemon {
    let crius = Daemon::builder()
        .registries(&testenv().registries_conf())
        .config(extra)
        .runroot_on_tmpfs()
        // At its default log level (the harness's is debug), like containerd.
        .env("CRIUS_LOG_LEVEL", "info")
        .start();
    crius.install_cni_config(
        "10-bench.conflist",
        &bridge_conflist("crius-bench", "crtb0", "10.197.0.0/16"),
    );
    crius
}

async fn measure_crius(crius: &Daemon, n: usize, parallel: usize) -> Result<Report, String> {
    let daemon_pid = crius.pid() as i32;
    let runroot = crius.paths.runroot.clone();
    load(&crius.paths.socket, n, parallel, "crius", || {
        (daemon_pid, crate::common::monitor_pids(&runroot))
    })
    .await
    .map_err(|e| format!("crius: {e}"))
}

/// crius alone, for machines without containerd (the VM lane's guest): the
/// same rounds, so a guest run and a host run can be set side by side.
async fn crius_only(extra: &str, rounds: usize, n: usize, parallel: usize) {
    let crius = start_crius(extra);
    println!(
        "cgroup {}, driver {}; {rounds} rounds, crius only",
        cgroup_version(),
        common::test_cgroup_driver().unwrap_or_else(|| "cgroupfs".into())
    );
    let (mut seq, mut par) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        match measure_crius(&crius, n, parallel).await {
            Ok(r) => {
                println!("-- round {round}");
                print("crius", &r, n, parallel);
                seq.extend(r.sequential_ms);
                par.push(r.parallel_ms);
            }
            Err(e) => {
                println!("round {round}: {e}");
                return;
            }
        }
    }
    let (_, med, _) = summary(seq);
    let (_, pmed, _) = summary(par);
    println!(
        "-- all {rounds} rounds: pod+container median {med:.1} ms; {parallel} at once, median round {pmed:.0} ms"
    );
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crtb0"])
        .status();
}

/// Both runtimes, started once and measured in alternating rounds so a
/// machine that slows down mid-run weighs on both alike.
struct Runtimes {
    crius: Daemon,
    ctrd: Containerd,
}

impl Runtimes {
    fn start(extra: &str) -> Result<Runtimes, String> {
        let crius = start_crius(extra);
        let dir = std::env::temp_dir().join(format!("crius-bench-ctrd-{}", std::process::id()));
        let ctrd = Containerd::start(&dir, "crtb1", "10.196.0.0/16")
            .map_err(|e| format!("containerd 1.6: {e}"))?;
        Ok(Runtimes { crius, ctrd })
    }

    async fn crius(&self, n: usize, parallel: usize) -> Result<Report, String> {
        measure_crius(&self.crius, n, parallel).await
    }

    async fn containerd(&self, n: usize, parallel: usize) -> Result<Report, String> {
        let pid = self.ctrd.child.id() as i32;
        let dir = self.ctrd.dir.display().to_string();
        load(&self.ctrd.sock, n, parallel, "ctrd", || {
            (
                pid,
                pids_matching(|c| c.contains("containerd-shim") && c.contains(&dir)),
            )
        })
        .await
        .map_err(|e| {
            format!(
                "containerd 1.6: {e} (log in {})",
                self.ctrd.dir.join("containerd.log").display()
            )
        })
    }
}

impl Drop for Runtimes {
    /// containerd removes its own bridge; crius leaves its bridge, as CNI does.
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "crtb0"])
            .status();
    }
}

fn ratios(name: &str, r: &Report, c: &Report, parallel: usize) {
    let (_, med, _) = summary(r.sequential_ms.clone());
    let (_, cmed, _) = summary(c.sequential_ms.clone());
    println!(
        "ratio {name} / containerd: sequential median {:.2}, {parallel} at once {:.2}, daemon RSS {:.2} (idle {:.2}), per-pod RSS {:.2}",
        med / cmed,
        r.parallel_ms / c.parallel_ms,
        r.daemon_kib as f64 / c.daemon_kib.max(1) as f64,
        r.idle_kib as f64 / c.idle_kib.max(1) as f64,
        r.per_pod_kib / c.per_pod_kib.max(1.0)
    );
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("container benchmark: run it with `hack/bench.sh`");
        return;
    }
    let var = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, parallel) = (var("CRIUS_BENCH_PODS", 20), var("CRIUS_BENCH_PARALLEL", 20));
    if let Ok(endpoint) = std::env::var("CRIUS_BENCH_ENDPOINT") {
        let sock = endpoint.trim_start_matches("unix://").to_string();
        match load(Path::new(&sock), n, parallel, "endpoint", || {
            (0, Vec::new())
        })
        .await
        {
            Ok(r) => print(&sock, &r, n, parallel),
            Err(e) => println!("{sock}: {e}"),
        }
        return;
    }
    let rounds = var("CRIUS_BENCH_ROUNDS", 3).max(1);
    // Extra crius config, e.g. `[runtime]\ncgroup_favor_dynmods = true`.
    let extra = std::env::var("CRIUS_BENCH_CONFIG").unwrap_or_default();
    if std::env::var_os("CRIUS_BENCH_CRIUS_ONLY").is_some() {
        crius_only(&extra, rounds, n, parallel).await;
        return;
    }
    let rt = match Runtimes::start(&extra) {
        Ok(rt) => rt,
        Err(e) => {
            println!("{e}");
            return;
        }
    };
    println!(
        "cgroup {}; {rounds} rounds, crius then containerd in each",
        cgroup_version()
    );
    let mut all = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut idle = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (r, c) = match (
            rt.crius(n, parallel).await,
            rt.containerd(n, parallel).await,
        ) {
            (Ok(r), Ok(c)) => (r, c),
            (Err(e), _) | (_, Err(e)) => {
                println!("round {round}: {e}");
                return;
            }
        };
        println!("-- round {round}");
        print("crius", &r, n, parallel);
        print("containerd 1.6", &c, n, parallel);
        ratios("crius", &r, &c, parallel);
        all.0.extend(r.sequential_ms);
        all.1.extend(c.sequential_ms);
        all.2.push(r.parallel_ms);
        all.3.push(c.parallel_ms);
        idle.0.push(r.idle_kib as f64 / 1024.0);
        idle.1.push(c.idle_kib as f64 / 1024.0);
    }
    let (_, med, _) = summary(all.0);
    let (_, cmed, _) = summary(all.1);
    let (_, par, _) = summary(all.2);
    let (_, cpar, _) = summary(all.3);
    let (_, rss, _) = summary(idle.0);
    let (_, crss, _) = summary(idle.1);
    println!(
        "-- all {rounds} rounds: pod+container median {med:.1} ms vs {cmed:.1} ms (ratio {:.2}); {parallel} at once, median round {par:.0} ms vs {cpar:.0} ms (ratio {:.2}); idle daemon RSS median {rss:.1} MiB vs {crss:.1} MiB",
        med / cmed,
        par / cpar
    );
}
