//! RunPodSandbox latency: crius beside Debian's containerd 1.6 (CRI plugin,
//! pause image from the local registry), same bridge CNI config, 20+ pods
//! each, median and spread. Run with `hack/bench-pods.sh`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::testenv::testenv;
use common::{Daemon, Runtime, bridge_conflist, channel, pod_config};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use support::{Containerd, remove_pods, summary};

/// Runs `n` pods one after another, timing each RunPodSandbox; then
/// removes them (untimed).
async fn run_pods(rt: &mut Runtime, n: usize, tag: &str) -> Result<Vec<f64>, String> {
    let mut ms = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let cfg = pod_config(&format!("bench-{tag}-{i}"), "bench");
        let t = Instant::now();
        let id = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg),
                ..Default::default()
            })
            .await;
        let elapsed = t.elapsed().as_secs_f64() * 1000.0;
        match id {
            Ok(r) => ids.push(r.into_inner().pod_sandbox_id),
            Err(e) => {
                remove_pods(rt, ids).await;
                return Err(format!("RunPodSandbox: {}", e.message()));
            }
        }
        ms.push(elapsed);
    }
    remove_pods(rt, ids).await;
    Ok(ms)
}

async fn containerd(dir: &Path, n: usize) -> Result<Vec<f64>, String> {
    let env = testenv();
    let ctrd = Containerd::start(dir, "crtb1", "10.196.0.0/16")?;
    let sock = ctrd.sock.clone();
    let ch = channel(&sock).await;
    let mut images = ImageServiceClient::new(ch.clone());
    let pulled = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: env.image("pause:latest"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let result = match pulled {
        Err(e) => Err(format!("containerd could not pull the pause image: {e}")),
        Ok(_) => {
            let mut rt = RuntimeServiceClient::new(ch);
            // One warm-up pod, as for crius.
            match run_pods(&mut rt, 1, "ctrd-warm").await {
                Ok(_) => run_pods(&mut rt, n, "ctrd").await,
                Err(e) => Err(e),
            }
        }
    };
    drop(ctrd);
    result
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("pod benchmark: run it with `cargo bench --bench pods` (hack/bench-pods.sh)");
        return;
    }
    let n: usize = std::env::var("CRIUS_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let d = Daemon::start();
    d.install_cni_config(
        "10-bench.conflist",
        &bridge_conflist("crius-bench", "crtb0", "10.197.0.0/16"),
    );
    let mut rt = d.runtime().await;
    run_pods(&mut rt, 1, "warm")
        .await
        .expect("crius warm-up pod");
    let (min, med, p90) = summary(run_pods(&mut rt, n, "crius").await.expect("crius pods"));
    drop(d);
    let _ = Command::new("ip").args(["link", "del", "crtb0"]).status();
    println!("RunPodSandbox, bridge CNI, {n} pods one after another (ms: min / median / p90)");
    println!("crius:          {min:.2} / {med:.2} / {p90:.2}");

    let dir = std::env::temp_dir().join(format!("crius-bench-ctrd-{}", std::process::id()));
    match containerd(&dir, n).await {
        Ok(ms) => {
            let (cmin, cmed, cp90) = summary(ms);
            println!("containerd 1.6: {cmin:.2} / {cmed:.2} / {cp90:.2}");
            println!(
                "ratio: crius median is {:.2} of containerd's ({:.1}x faster)",
                med / cmed,
                cmed / med
            );
        }
        Err(e) => println!(
            "containerd 1.6: {e} (log in {})",
            dir.join("containerd.log").display()
        ),
    }
}
