//! Pull throughput: crius beside Debian's containerd 1.6, same image, same
//! local registry, cold caches every run. Run with `hack/bench-pull.sh`.
//! Prints MB/s (compressed image bytes over wall time, download + unpack).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::testenv::testenv;
use common::{Daemon, wait_timeout};
use k8s_cri::v1::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn bench_crius(reference: &str, runs: usize) -> (u64, Vec<f64>) {
    let env = testenv();
    let d = Daemon::builder().registries(&env.registries_conf()).start();
    let mut images = d.images().await;
    let mut secs = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let t = Instant::now();
        images
            .pull_image(PullImageRequest {
                image: spec(reference),
                ..Default::default()
            })
            .await
            .expect("crius pull");
        secs.push(t.elapsed().as_secs_f64());
        size = images
            .image_status(ImageStatusRequest {
                image: spec(reference),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .image
            .expect("pulled image")
            .size;
        images
            .remove_image(RemoveImageRequest {
                image: spec(reference),
            })
            .await
            .expect("remove");
    }
    (size, secs)
}

/// One cold pull by a fresh containerd (new root each run).
fn containerd_pull(reference: &str, dir: &Path) -> Option<f64> {
    let root = dir.join("root");
    let sock = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    std::fs::create_dir_all(dir).ok()?;
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = \"{}\"\n",
            root.display(),
            dir.join("state").display(),
            sock.display()
        ),
    )
    .ok()?;
    let mut daemon = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let ok = Command::new("ctr")
        .arg("--address")
        .arg(&sock)
        .args(["-n", "bench", "images", "pull", "--plain-http", reference])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let secs = t.elapsed().as_secs_f64();
    let _ = daemon.kill();
    let _ = wait_timeout(&mut daemon, Duration::from_secs(10));
    // Snapshots are overlay dirs; unmount nothing (ctr pull mounts none).
    let _ = std::fs::remove_dir_all(dir);
    ok.then_some(secs)
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs benches once in test mode: skip there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pull benchmark: run it with `cargo bench --bench pull` (hack/bench-pull.sh)");
        return;
    }
    let runs: usize = std::env::var("CRIUS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let env = testenv();
    let reference = env.image("big:latest");
    let (size, crius) = bench_crius(&reference, runs).await;
    let mb = size as f64 / 1e6;
    let crius_s = median(crius);
    println!("image {reference}: {mb:.1} MB compressed, {runs} cold pulls each (median)");
    println!("crius:          {crius_s:.3} s  {:.1} MB/s", mb / crius_s);

    let have_containerd = Command::new("ctr").arg("--version").output().is_ok();
    if !have_containerd {
        println!("containerd:     not installed (hack/bench-pull.sh installs it)");
        return;
    }
    let mut times = Vec::new();
    for i in 0..runs {
        let dir =
            std::env::temp_dir().join(format!("crius-bench-containerd-{}-{i}", std::process::id()));
        match containerd_pull(&reference, &dir) {
            Some(s) => times.push(s),
            None => {
                println!("containerd:     pull failed");
                return;
            }
        }
    }
    let c = median(times);
    println!("containerd 1.6: {c:.3} s  {:.1} MB/s", mb / c);
    println!(
        "ratio: crius is {:.2}x containerd's throughput",
        c / crius_s
    );
}
