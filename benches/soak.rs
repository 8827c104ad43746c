//! Soak: pod + container cycles (RunPodSandbox on a bridge CNI network,
//! CreateContainer, StartContainer, ExecSync, StopContainer,
//! RemoveContainer, StopPodSandbox, RemovePodSandbox) without pause for a
//! set time, beside two steady pods whose containers get an ExecSync every
//! cycle. Prints the daemon's RSS, threads and descriptors and the steady
//! pods' monitor RSS at the start, every few minutes and at the end, whether
//! memory stayed flat, then checks nothing leaked. Not a test (it runs for
//! half an hour); run with `hack/soak.sh`.
//!
//!   CRIUS_SOAK_MINUTES=30     how long the cycles run
//!   CRIUS_SOAK_REPORT_SECS=300  time between reports
//!   CRIUS_SOAK_WORKERS=2      clients cycling at once

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::Net;
use common::testenv::testenv;
use common::{Daemon, Runtime, container_config, env_number, leaks, monitor_pids, pod_config};
use k8s_cri::v1::*;
use support::rss_kib;

/// What the containers run: a marker argument finds leftover processes.
const MARKER: &str = "31339";

/// The daemon's and the steady monitors' figures at one moment.
struct Sample {
    at: Duration,
    cycles: u64,
    daemon_kib: u64,
    threads: usize,
    fds: usize,
    monitors_kib: Vec<u64>,
}

impl Sample {
    fn take(d: &Daemon, steady: &[i32], at: Duration, cycles: u64) -> Sample {
        let pid = d.pid();
        let count = |what: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{what}"))
                .map(|r| r.count())
                .unwrap_or(0)
        };
        Sample {
            at,
            cycles,
            daemon_kib: rss_kib(pid as i32),
            threads: count("task"),
            fds: count("fd"),
            monitors_kib: steady.iter().map(|p| rss_kib(*p)).collect(),
        }
    }

    fn print(&self, label: &str) {
        let monitors: Vec<String> = self
            .monitors_kib
            .iter()
            .map(|k| format!("{:.2}", *k as f64 / 1024.0))
            .collect();
        println!(
            "{label:<6} {:>6.1} min {:>7} cycles  daemon RSS {:>6.2} MiB, {} threads, {} fds; steady monitors RSS {} MiB",
            self.at.as_secs_f64() / 60.0,
            self.cycles,
            self.daemon_kib as f64 / 1024.0,
            self.threads,
            self.fds,
            monitors.join(" / ")
        );
    }
}

/// A pod with one running container on `rt`; (pod id, container id).
async fn pod_with_container(
    rt: &mut Runtime,
    name: &str,
    logs: &str,
    image: &str,
) -> Result<(String, String), tonic::Status> {
    let mut config = pod_config(name, "soak");
    config.log_directory = logs.to_string();
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let script = format!("trap 'exit 0' TERM; sleep {MARKER} & wait");
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("c", image, &["/bin/sh", "-c", &script])),
            sandbox_config: Some(config),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok((pod, id))
}

async fn exec(rt: &mut Runtime, id: &str) -> Result<(), tonic::Status> {
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.to_string(),
            cmd: vec!["echo".into(), "soak".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    if r.exit_code != 0 || r.stdout != b"soak\n" {
        return Err(tonic::Status::internal(format!("exec answered {r:?}")));
    }
    Ok(())
}

async fn remove(rt: &mut Runtime, pod: &str, id: &str) -> Result<(), tonic::Status> {
    rt.stop_container(StopContainerRequest {
        container_id: id.to_string(),
        timeout: 10,
    })
    .await?;
    rt.remove_container(RemoveContainerRequest {
        container_id: id.to_string(),
    })
    .await?;
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await?;
    Ok(())
}

/// One full cycle, with an exec into the cycle's container and one steady
/// container; the pod's id goes into `made` first.
async fn cycle(
    rt: &mut Runtime,
    name: &str,
    logs: &str,
    image: &str,
    steady: &str,
    made: &Mutex<Vec<String>>,
) -> Result<(), tonic::Status> {
    let (pod, id) = pod_with_container(rt, name, logs, image).await?;
    made.lock().expect("pods").push(pod.clone());
    exec(rt, &id).await?;
    exec(rt, steady).await?;
    remove(rt, &pod, &id).await
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: run it with `hack/soak.sh`");
        return;
    }
    let minutes = env_number("CRIUS_SOAK_MINUTES", 30);
    let report = Duration::from_secs(env_number("CRIUS_SOAK_REPORT_SECS", 300).max(1));
    let workers = env_number("CRIUS_SOAK_WORKERS", 2).max(1);
    println!(
        "soak: CRIUS_SOAK_MINUTES={minutes} CRIUS_SOAK_REPORT_SECS={} CRIUS_SOAK_WORKERS={workers}; cgroup {}",
        report.as_secs(),
        support::cgroup_version()
    );
    let net = Net::new(202);
    // The default log level, as on a node.
    let d = Daemon::builder()
        .registries(&testenv().registries_conf())
        .env("CRIUS_LOG_LEVEL", "info")
        .start();
    d.install_cni_config("10-soak.conflist", &net.conflist());
    let image = common::pull_busybox_at(&d.paths.socket)
        .await
        .expect("pull busybox");
    let logs = d.paths.base.join("logs").display().to_string();
    let mut rt = d.runtime().await;
    let mut steady = Vec::new();
    for i in 0..2 {
        let made = pod_with_container(&mut rt, &format!("steady-{i}"), &logs, &image).await;
        steady.push(made.expect("steady pod"));
    }
    let steady_monitors = monitor_pids(&d.paths.runroot);

    let start = Instant::now();
    let until = start + Duration::from_secs(minutes * 60);
    let first = Sample::take(&d, &steady_monitors, start.elapsed(), 0);
    first.print("start");
    let done = Arc::new(AtomicU64::new(0));
    let made = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut rt = d.runtime().await;
        let (logs, image) = (logs.clone(), image.clone());
        let (done, made) = (done.clone(), made.clone());
        let steady = steady[w as usize % steady.len()].1.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let name = format!("soak-{w}-{n}");
                cycle(&mut rt, &name, &logs, &image, &steady, &made)
                    .await
                    .map_err(|e| format!("{name}: {e:?}"))?;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    let mut next = start + report;
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() >= next && Instant::now() < until {
            let cycles = done.load(Ordering::Relaxed);
            Sample::take(&d, &steady_monitors, start.elapsed(), cycles).print("during");
            next += report;
        }
    }
    let mut failed = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.expect("worker") {
            failed.push(e);
        }
    }
    let cycles = done.load(Ordering::Relaxed);
    let last = Sample::take(&d, &steady_monitors, start.elapsed(), cycles);
    last.print("end");
    let grew = last.daemon_kib as f64 - first.daemon_kib as f64;
    let mon_first: u64 = first.monitors_kib.iter().sum();
    let mon_last: u64 = last.monitors_kib.iter().sum();
    println!(
        "soak: {cycles} cycles in {:.1} min ({:.0} ms per cycle per worker); daemon RSS {:+.2} MiB ({:+.1}%), steady monitors {:+.2} MiB, threads {} -> {}, fds {} -> {}",
        last.at.as_secs_f64() / 60.0,
        last.at.as_secs_f64() * 1000.0 * workers as f64 / cycles.max(1) as f64,
        grew / 1024.0,
        grew * 100.0 / first.daemon_kib.max(1) as f64,
        (mon_last as f64 - mon_first as f64) / 1024.0,
        first.threads,
        last.threads,
        first.fds,
        last.fds
    );
    for (pod, id) in &steady {
        remove(&mut rt, pod, id).await.expect("remove steady pod");
    }
    let mut pods = std::mem::take(&mut *made.lock().expect("pods"));
    pods.extend(steady.into_iter().map(|(pod, _)| pod));
    let leaked = leaks::after_removal(&d, &pods, &net, MARKER).await;
    if failed.is_empty() && leaked.is_empty() {
        println!("soak: every call succeeded; nothing leaked");
    } else {
        println!(
            "soak: failed calls: {failed:?}; leaked: {leaked:?}; daemon log and state kept in {}",
            d.paths.base.display()
        );
        std::process::exit(1);
    }
}
