//! The fleet the read-path benchmarks (list, stream) build: host-network
//! pods of created (not started) containers with kubelet's labels and
//! annotations, grown to a count, and the numbers they print.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{self, Runtime, channel, pod_config};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;

/// The pods and containers a runtime holds for the bench.
#[derive(Default)]
pub struct Fleet {
    /// Pod ids, in creation order.
    pub pods: Vec<String>,
    /// (container id, index of its pod).
    pub containers: Vec<(String, usize)>,
}

pub async fn client(sock: &Path) -> Runtime {
    RuntimeServiceClient::new(channel(sock).await)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A host-network pod `prefix-i` with kubelet's labels and annotations.
pub fn bench_pod(prefix: &str, i: usize) -> PodSandboxConfig {
    let name = format!("{prefix}-{i}");
    let mut p = pod_config(&name, "bench-list");
    // kubelet sends no hostname for a host-network pod (runc refuses one
    // without a private UTS namespace).
    p.hostname = String::new();
    let uid = p
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    p.labels.extend([
        ("io.kubernetes.pod.name".to_string(), name.clone()),
        ("io.kubernetes.pod.namespace".into(), "bench-list".into()),
        ("io.kubernetes.pod.uid".into(), uid),
    ]);
    p.annotations = HashMap::from([
        (
            "kubernetes.io/config.seen".to_string(),
            "2025-01-01T00:00:00.000000000Z".to_string(),
        ),
        ("kubernetes.io/config.source".into(), "api".into()),
    ]);
    common::host_network(&mut p);
    p
}

/// Container `k` of a pod: `sleep 3600`, kubelet's labels and annotations.
pub fn bench_container(pod: &PodSandboxConfig, image: &str, k: usize) -> ContainerConfig {
    let name = format!("c{k}");
    let mut c = common::container_config(&name, image, &["sleep", "3600"]);
    c.log_path = String::new();
    let meta = pod.metadata.clone().unwrap_or_default();
    c.labels = HashMap::from([
        ("io.kubernetes.container.name".to_string(), name),
        ("io.kubernetes.pod.name".into(), meta.name),
        ("io.kubernetes.pod.namespace".into(), meta.namespace),
        ("io.kubernetes.pod.uid".into(), meta.uid),
    ]);
    c.annotations = HashMap::from([
        (
            "io.kubernetes.container.hash".to_string(),
            "8a3c2b1d".to_string(),
        ),
        ("io.kubernetes.container.restartCount".into(), "0".into()),
        (
            "io.kubernetes.container.terminationMessagePath".into(),
            "/dev/termination-log".into(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".into(),
            "File".into(),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".into(),
            "30".into(),
        ),
    ]);
    c
}

/// How [`grow`] makes a fleet.
pub struct Plan<'a> {
    /// The runtime's name in progress lines.
    pub name: &'a str,
    /// Pod names are `prefix-i`.
    pub prefix: &'a str,
    /// The containers' image.
    pub image: &'a str,
    /// Containers per pod.
    pub per_pod: usize,
    /// How long set-up may take in all.
    pub setup_limit: Duration,
}

/// Adds pods of `per_pod` created containers until the fleet holds `n`
/// (the last pod may hold fewer), printing progress. Returns false if it
/// stopped short (an error or the time limit), having said why.
pub async fn grow(rt: &mut Runtime, fleet: &mut Fleet, plan: &Plan<'_>, n: usize) -> bool {
    let Plan {
        name,
        prefix,
        image,
        per_pod,
        setup_limit,
    } = *plan;
    let start = Instant::now();
    let from = fleet.containers.len();
    let mut batch = (Instant::now(), fleet.containers.len());
    while fleet.containers.len() < n {
        if start.elapsed() > setup_limit {
            println!(
                "{name}: set-up stopped at {} containers: {} s set-up limit reached",
                fleet.containers.len(),
                setup_limit.as_secs()
            );
            return false;
        }
        let i = fleet.pods.len();
        let pod_cfg = bench_pod(prefix, i);
        let pod = match rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_cfg.clone()),
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => {
                println!(
                    "{name}: set-up stopped at {} containers: RunPodSandbox: {}",
                    fleet.containers.len(),
                    e.message()
                );
                return false;
            }
        };
        fleet.pods.push(pod.clone());
        for k in 0..per_pod.min(n - fleet.containers.len()) {
            let id = match rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(bench_container(&pod_cfg, image, k)),
                    sandbox_config: Some(pod_cfg.clone()),
                })
                .await
            {
                Ok(r) => r.into_inner().container_id,
                Err(e) => {
                    println!(
                        "{name}: set-up stopped at {} containers: CreateContainer: {}",
                        fleet.containers.len(),
                        e.message()
                    );
                    return false;
                }
            };
            fleet.containers.push((id, i));
            let made = fleet.containers.len();
            if made.is_multiple_of(50) || made == n {
                let per = batch.0.elapsed().as_secs_f64() * 1000.0 / (made - batch.1) as f64;
                println!(
                    "{name}: {made}/{n} containers in {} pods ({per:.0} ms per container incl. its pod's share, last {})",
                    fleet.pods.len(),
                    made - batch.1
                );
                batch = (Instant::now(), made);
            }
        }
    }
    println!(
        "{name}: {} containers made in {:.1} s",
        n - from,
        start.elapsed().as_secs_f64()
    );
    true
}

/// The load averages, for the rounds' lines.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
