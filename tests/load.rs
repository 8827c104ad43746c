//! Load: `CRIUS_LOAD_PODS` (100) pods of two busybox containers each, on a
//! real CNI network, run, created and started by `CRIUS_LOAD_CLIENTS` (20)
//! clients at once while a kubelet-like poller calls, every second,
//! ListPodSandbox, ListContainers, PodSandboxStatus and ContainerStatus of
//! everything listed, ListContainerStats and ListPodSandboxStats. Every call
//! succeeds; the test prints p50/p99 per RPC, then the same clients stop and
//! remove everything and nothing leaks (see `common::leaks`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::net::Net;
use common::testenv::testenv;
use common::*;
use k8s_cri::v1::*;

/// What the containers run: a marker argument finds leftover processes.
const MARKER: &str = "31338";

/// Latencies (ms) by RPC, and the calls that failed.
#[derive(Default)]
struct Record {
    ms: BTreeMap<&'static str, Vec<f64>>,
    failed: Vec<String>,
}

#[derive(Clone, Default)]
struct Timings(Arc<Mutex<Record>>);

impl Timings {
    /// Awaits one RPC, recording its latency under `rpc`, or its failure
    /// (with `what` it was called on).
    async fn call<T>(
        &self,
        rpc: &'static str,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<T> {
        let t = Instant::now();
        let r = call.await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let mut rec = self.0.lock().expect("timings");
        match r {
            Ok(r) => {
                rec.ms.entry(rpc).or_default().push(ms);
                Some(r.into_inner())
            }
            Err(e) => {
                rec.failed.push(format!("{rpc} {what}: {e:?}"));
                None
            }
        }
    }

    fn failures(&self) -> Vec<String> {
        self.0.lock().expect("timings").failed.clone()
    }

    fn print(&self, title: &str) {
        println!("{title}");
        println!(
            "{:<22} {:>6} {:>8} {:>8} {:>8}",
            "rpc", "calls", "p50 ms", "p99 ms", "max ms"
        );
        for (rpc, ms) in &self.0.lock().expect("timings").ms {
            let (_, p50, _, p99, max) = percentiles(ms);
            println!("{rpc:<22} {:>6} {p50:>8.2} {p99:>8.2} {max:>8.2}", ms.len());
        }
    }
}

/// Pod `i` of the load, its containers logging under `logs`.
fn load_pod(i: usize, logs: &str) -> PodSandboxConfig {
    let mut p = pod_config(&format!("load-{i}"), "load");
    p.log_directory = logs.to_string();
    p
}

/// Runs pod `i`, creates and starts its two containers.
async fn run_pod(rt: &mut Runtime, t: &Timings, i: usize, logs: &str, image: &str) {
    let config = load_pod(i, logs);
    let what = format!("pod {i}");
    let Some(pod) = t
        .call(
            "RunPodSandbox",
            &what,
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                ..Default::default()
            }),
        )
        .await
    else {
        return;
    };
    let script = format!("trap 'exit 0' TERM; sleep {MARKER} & wait");
    for name in ["c0", "c1"] {
        let create = rt.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.pod_sandbox_id.clone(),
            config: Some(container_config(name, image, &["/bin/sh", "-c", &script])),
            sandbox_config: Some(config.clone()),
        });
        let Some(c) = t.call("CreateContainer", &what, create).await else {
            continue;
        };
        let start = rt.start_container(StartContainerRequest {
            container_id: c.container_id,
        });
        t.call("StartContainer", &what, start).await;
    }
}

/// Stops and removes pod `id` as kubelet does: its containers first.
async fn remove_pod(rt: &mut Runtime, t: &Timings, id: String, containers: Vec<String>) {
    for c in &containers {
        let stop = rt.stop_container(StopContainerRequest {
            container_id: c.clone(),
            timeout: 10,
        });
        t.call("StopContainer", c, stop).await;
    }
    for c in &containers {
        let remove = rt.remove_container(RemoveContainerRequest {
            container_id: c.clone(),
        });
        t.call("RemoveContainer", c, remove).await;
    }
    let stop = rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    });
    t.call("StopPodSandbox", &id, stop).await;
    let remove = rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    });
    t.call("RemovePodSandbox", &id, remove).await;
}

/// One kubelet-like poll: the lists, each listed pod's and container's
/// status, the stats of all.
async fn poll(rt: &mut Runtime, t: &Timings) {
    let pods = t
        .call(
            "ListPodSandbox",
            "",
            rt.list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .await
        .map(|r| r.items)
        .unwrap_or_default();
    let containers = t
        .call(
            "ListContainers",
            "",
            rt.list_containers(ListContainersRequest::default()),
        )
        .await
        .map(|r| r.containers)
        .unwrap_or_default();
    for p in pods {
        let status = rt.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: p.id.clone(),
            verbose: false,
        });
        t.call("PodSandboxStatus", &p.id, status).await;
    }
    for c in containers {
        let status = rt.container_status(ContainerStatusRequest {
            container_id: c.id.clone(),
            verbose: false,
        });
        t.call("ContainerStatus", &c.id, status).await;
    }
    let stats = rt.list_container_stats(ListContainerStatsRequest::default());
    t.call("ListContainerStats", "", stats).await;
    let stats = rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default());
    t.call("ListPodSandboxStats", "", stats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_made_by_concurrent_clients_under_polling_all_succeed_and_leave_nothing() {
    let n = env_number("CRIUS_LOAD_PODS", 100) as usize;
    let clients = (env_number("CRIUS_LOAD_CLIENTS", 20) as usize).clamp(1, n.max(1));
    println!("load: CRIUS_LOAD_PODS={n} CRIUS_LOAD_CLIENTS={clients}, 2 containers per pod");

    let net = Net::new(201);
    let d = Daemon::builder()
        .registries(&testenv().registries_conf())
        // 100 pods at debug level would be mostly logging.
        .env("CRIUS_LOG_LEVEL", "info")
        .start();
    d.install_cni_config("10-load.conflist", &net.conflist());
    let image = pull_busybox_at(&d.paths.socket)
        .await
        .expect("pull busybox");
    let logs = d.paths.base.join("logs").display().to_string();

    // The poller runs from before the first pod until all are running.
    let polls = Timings::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (mut rt, polls, done) = (d.runtime().await, polls.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rounds = 0;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                poll(&mut rt, &polls).await;
                rounds += 1;
            }
            rounds
        })
    };

    let made = Timings::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (mut rt, made) = (d.runtime().await, made.clone());
        let (logs, image) = (logs.clone(), image.clone());
        tasks.push(tokio::spawn(async move {
            for i in (k..n).step_by(clients) {
                run_pod(&mut rt, &made, i, &logs, &image).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let make_time = started.elapsed();
    // Two more polls with everything running.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    done.store(true, Ordering::Relaxed);
    let rounds = poller.await.expect("poller");
    println!(
        "load: {n} pods, {} containers run by {clients} clients in {make_time:.1?}; {rounds} polls meanwhile",
        2 * n
    );
    made.print("-- create and start (per call)");
    polls.print("-- kubelet-like polling, every second (per call)");
    let failed: Vec<String> = made
        .failures()
        .into_iter()
        .chain(polls.failures())
        .collect();
    assert!(failed.is_empty(), "failed calls:\n{}", failed.join("\n"));
    assert!(rounds >= 3, "only {rounds} polls ran");

    // What a user sees with everything up: every pod ready, every
    // container running, stats for all.
    let mut rt = d.runtime().await;
    let pods = common::all_pods(&mut rt).await;
    let containers = common::all_containers(&mut rt).await;
    assert_eq!(pods.len(), n, "pods listed");
    assert!(
        pods.iter()
            .all(|p| p.state == PodSandboxState::SandboxReady as i32),
        "a pod not ready"
    );
    assert_eq!(containers.len(), 2 * n, "containers listed");
    let not_running: Vec<&str> = containers
        .iter()
        .filter(|c| c.state != ContainerState::ContainerRunning as i32)
        .map(|c| c.id.as_str())
        .collect();
    assert!(not_running.is_empty(), "not running: {not_running:?}");
    let stats = rt
        .list_container_stats(ListContainerStatsRequest::default())
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 2 * n, "container stats");
    let pod_stats = rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
        .await
        .expect("ListPodSandboxStats")
        .into_inner()
        .stats;
    assert_eq!(pod_stats.len(), n, "pod stats");

    // The same clients stop and remove it all.
    let removed = Timings::default();
    let started = Instant::now();
    let mut by_pod: BTreeMap<String, Vec<String>> =
        pods.iter().map(|p| (p.id.clone(), Vec::new())).collect();
    for c in &containers {
        by_pod
            .entry(c.pod_sandbox_id.clone())
            .or_default()
            .push(c.id.clone());
    }
    let pod_ids: Vec<String> = by_pod.keys().cloned().collect();
    let by_pod = Arc::new(Mutex::new(by_pod));
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (mut rt, removed, by_pod) = (d.runtime().await, removed.clone(), by_pod.clone());
        let mine: Vec<String> = pod_ids.iter().skip(k).step_by(clients).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for id in mine {
                let containers = by_pod.lock().expect("pods").remove(&id).unwrap_or_default();
                remove_pod(&mut rt, &removed, id, containers).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    println!("load: all stopped and removed in {:.1?}", started.elapsed());
    removed.print("-- stop and remove (per call)");
    let failed = removed.failures();
    assert!(failed.is_empty(), "failed calls:\n{}", failed.join("\n"));

    let leaks = leaks::after_removal(&d, &pod_ids, &net, MARKER).await;
    assert!(leaks.is_empty(), "leaked:\n{}", leaks.join("\n"));
}
