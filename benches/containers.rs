//! Pod + container start: a CRI load generator that takes any endpoint.
//! Times RunPodSandbox → CreateContainer → StartContainer (container
//! running) one pod after another, then N pods at once, and reports the
//! runtime's daemon and per-pod monitor/shim memory. Without an endpoint it
//! runs crius and Debian's containerd 1.6 side by side on the same bridge
//! CNI config and prints the ratios. Run with `hack/bench.sh`.
//!
//!   CRIUS_BENCH_ENDPOINT=/run/containerd/containerd.sock  any CRI runtime
//!   CRIUS_BENCH_PODS=20        sequential pods (default 20)
//!   CRIUS_BENCH_PARALLEL=20    pods started at once (default 20)

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::Instant;

use common::testenv::testenv;
use common::{Daemon, Runtime, bridge_conflist, channel, container_config, pod_config};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use support::{Containerd, pids_matching, remove_pods, rss_kib, summary};

/// What one runtime measured.
struct Report {
    /// CreateContainer + StartContainer of `sh -c true` in a warm pod.
    create_start_ms: Vec<f64>,
    sequential_ms: Vec<f64>,
    parallel_ms: f64,
    daemon_kib: u64,
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
    let image = testenv().image("busybox:latest");
    let ch = channel(sock).await;
    ImageServiceClient::new(ch.clone())
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("pull: {}", e.message()))?;
    let mut rt = RuntimeServiceClient::new(ch);
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
    Ok(Report {
        create_start_ms,
        sequential_ms,
        parallel_ms,
        daemon_kib,
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
        "{name:<15} {parallel} pods at once: {:.0} ms; daemon RSS {:.1} MiB; per-pod monitor/shim RSS {:.2} MiB",
        r.parallel_ms,
        r.daemon_kib as f64 / 1024.0,
        r.per_pod_kib / 1024.0
    );
}

/// crius on a private root with `extra` config, under the load.
async fn crius_load(n: usize, parallel: usize, extra: &str) -> Result<Report, String> {
    let d = Daemon::builder()
        .registries(&testenv().registries_conf())
        .config(extra)
        .start();
    d.install_cni_config(
        "10-bench.conflist",
        &bridge_conflist("crius-bench", "crtb0", "10.197.0.0/16"),
    );
    let daemon_pid = d.pid() as i32;
    let runroot = d.paths.runroot.display().to_string();
    let r = load(&d.paths.socket, n, parallel, "crius", || {
        (
            daemon_pid,
            pids_matching(|c| c.contains(" monitor ") && c.contains(&runroot)),
        )
    })
    .await;
    drop(d);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "crtb0"])
        .status();
    r
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
    let crius = match crius_load(n, parallel, "").await {
        Ok(r) => r,
        Err(e) => {
            println!("crius: {e}");
            return;
        }
    };
    print("crius", &crius, n, parallel);
    // The same with the kernel's favordynmods (an opt-in setting).
    let favor = match crius_load(n, parallel, "[runtime]\ncgroup_favor_dynmods = true").await {
        Ok(r) => {
            print("crius+favordyn", &r, n, parallel);
            Some(r)
        }
        Err(e) => {
            println!("crius+favordyn: {e}");
            None
        }
    };

    let dir = std::env::temp_dir().join(format!("crius-bench-ctrd-{}", std::process::id()));
    let ctrd = match Containerd::start(&dir, "crtb1", "10.196.0.0/16") {
        Ok(c) => c,
        Err(e) => {
            println!("containerd 1.6: {e}");
            return;
        }
    };
    let ctrd_pid = ctrd.child.id() as i32;
    let ctrd_dir = dir.display().to_string();
    let result = load(&ctrd.sock, n, parallel, "ctrd", || {
        (
            ctrd_pid,
            pids_matching(|c| c.contains("containerd-shim") && c.contains(&ctrd_dir)),
        )
    })
    .await;
    drop(ctrd);
    match result {
        Ok(c) => {
            print("containerd 1.6", &c, n, parallel);
            for (name, r) in [("crius", Some(&crius)), ("crius+favordyn", favor.as_ref())] {
                let Some(r) = r else { continue };
                let (_, med, _) = summary(r.sequential_ms.clone());
                let (_, cmed, _) = summary(c.sequential_ms.clone());
                println!(
                    "ratio {name} / containerd: sequential median {:.2}, {parallel} at once {:.2}, daemon RSS {:.2}, per-pod RSS {:.2}",
                    med / cmed,
                    r.parallel_ms / c.parallel_ms,
                    r.daemon_kib as f64 / c.daemon_kib.max(1) as f64,
                    r.per_pod_kib / c.per_pod_kib.max(1.0)
                );
            }
        }
        Err(e) => println!(
            "containerd 1.6: {e} (log in {})",
            dir.join("containerd.log").display()
        ),
    }
}
