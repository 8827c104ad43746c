//! Container and pod stats against the cgroup files and workloads of known
//! size: memory held, a busy loop, a file written to the writable layer,
//! traffic between two pods.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pod::*;
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

async fn stats(env: &mut Env, id: &str) -> ContainerStats {
    env.rt
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats")
}

fn v(x: &Option<UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).unwrap_or(0)
}

/// A daemon sampling every second, with busybox and one host-network pod.
async fn fast_env(name: &str) -> Env {
    env_built(name, NamespaceMode::Container, |b| {
        b.config("[metrics]\nstats_interval = 1\n")
    })
    .await
}

#[tokio::test]
async fn container_stats_follow_workloads_and_cgroup_files() {
    let mut env = fast_env("stats-work").await;
    // 64 MiB of anonymous memory: one awk string, held while awk waits.
    let mem = env
        .run(
            "mem",
            "awk 'BEGIN { s = sprintf(\"%67108864s\", \"x\"); system(\"sleep 1000\"); print length(s) }'",
        )
        .await;
    let busy = env.run("busy", "while :; do :; done").await;
    let idle = env.run("idle", "sleep 1000").await;

    // Memory: the working set holds the 64 MiB, and matches the files.
    let s = wait_for(
        "64 MiB working set and RSS",
        Duration::from_secs(30),
        || {
            let mut env2 = env.rt.clone();
            let mem = mem.clone();
            async move {
                let s = env2
                    .container_stats(ContainerStatsRequest { container_id: mem })
                    .await
                    .ok()?
                    .into_inner()
                    .stats?;
                // Both, from one sample: under emulation (the VM lane) awk
                // may still be faulting its string in when the first passes.
                let m = s.memory.as_ref()?;
                (v(&m.working_set_bytes) >= 60 * MIB && v(&m.rss_bytes) >= 60 * MIB).then_some(s)
            }
        },
    )
    .await;
    let m = s.memory.unwrap();
    assert!(v(&m.rss_bytes) >= 60 * MIB, "{m:?}");
    assert!(v(&m.usage_bytes) >= v(&m.working_set_bytes), "{m:?}");
    assert!(m.timestamp > 0 && v(&m.page_faults) > 0, "{m:?}");
    let attrs = s.attributes.clone().unwrap();
    assert_eq!(attrs.id, mem);
    assert_eq!(attrs.metadata.unwrap().name, "mem");
    assert_eq!(attrs.labels["container"], "mem");
    if cgroup_version() == "v1" {
        // awk's peak (a copy of the string while it is made) passes; once
        // usage settles, a fresh sample and the file agree.
        let file = env
            .container_cgroup(&mem, "memory")
            .join("memory.usage_in_bytes");
        wait_for(
            "RPC usage close to the file",
            Duration::from_secs(20),
            || {
                let mut rt = env.rt.clone();
                let (mem, file) = (mem.clone(), file.clone());
                async move {
                    let s = rt
                        .container_stats(ContainerStatsRequest { container_id: mem })
                        .await
                        .ok()?
                        .into_inner()
                        .stats?;
                    let rpc = v(&s.memory?.usage_bytes);
                    let usage = read_u64(&file);
                    (usage.abs_diff(rpc) < 4 * MIB).then_some(())
                }
            },
        )
        .await;
    }

    // CPU: a busy loop uses about one core (the machine is shared: wide
    // bounds), and the cumulative time lies between two reads of the file.
    let cpu_file = |env: &Env| {
        if cgroup_version() == "v1" {
            read_u64(&env.container_cgroup(&busy, "cpuacct").join("cpuacct.usage"))
        } else {
            let stat =
                std::fs::read_to_string(env.container_cgroup(&busy, "").join("cpu.stat")).unwrap();
            let us: u64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .unwrap()
                .parse()
                .unwrap();
            us * 1000
        }
    };
    let cores = wait_for(
        "nano-cores of the busy loop",
        Duration::from_secs(30),
        || {
            let mut rt = env.rt.clone();
            let busy = busy.clone();
            async move {
                let s = rt
                    .container_stats(ContainerStatsRequest { container_id: busy })
                    .await
                    .ok()?
                    .into_inner()
                    .stats?;
                s.cpu?.usage_nano_cores.map(|v| v.value)
            }
        },
    )
    .await;
    // Let it run a few more samples so one is not a start-up artefact.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = cpu_file(&env);
    let s = stats(&mut env, &busy).await;
    let after = cpu_file(&env);
    let cpu = s.cpu.unwrap();
    let cores2 = v(&cpu.usage_nano_cores);
    println!("busy loop: {cores} then {cores2} nano-cores");
    assert!(
        (300_000_000..=1_300_000_000).contains(&cores2),
        "busy loop at {cores2} nano-cores"
    );
    // The sample is at most one interval (and a round) old.
    let total = v(&cpu.usage_core_nano_seconds);
    assert!(
        total <= after && total + 3_000_000_000 >= before,
        "{before} ≤ {total} ≤ {after}"
    );
    let idle_cpu = stats(&mut env, &idle).await.cpu.unwrap();
    assert!(v(&idle_cpu.usage_nano_cores) < 100_000_000, "{idle_cpu:?}");

    // The writable layer grows by a file's size.
    let before = wait_for("writable layer measured", Duration::from_secs(30), || {
        let mut rt = env.rt.clone();
        let idle = idle.clone();
        async move {
            rt.container_stats(ContainerStatsRequest { container_id: idle })
                .await
                .ok()?
                .into_inner()
                .stats?
                .writable_layer
        }
    })
    .await;
    let (_, code) = env
        .sh(&idle, "dd if=/dev/zero of=/grown bs=1M count=8 2>/dev/null")
        .await;
    assert_eq!(code, 0);
    let after = wait_for("writable layer grew", Duration::from_secs(40), || {
        let mut rt = env.rt.clone();
        let idle = idle.clone();
        let before = v(&before.used_bytes);
        async move {
            let l = rt
                .container_stats(ContainerStatsRequest { container_id: idle })
                .await
                .ok()?
                .into_inner()
                .stats?
                .writable_layer?;
            (v(&l.used_bytes) >= before + 8 * MIB).then_some(l)
        }
    })
    .await;
    assert!(
        v(&after.used_bytes) < v(&before.used_bytes) + 9 * MIB,
        "{after:?}"
    );
    assert!(v(&after.inodes_used) > v(&before.inodes_used), "{after:?}");
    assert!(!after.fs_id.unwrap().mountpoint.is_empty());

    // The pod's numbers cover its containers'.
    let pod = env
        .rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: env.pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod.linux.unwrap();
    assert_eq!(linux.containers.len(), 3);
    assert!(v(&linux.memory.unwrap().working_set_bytes) >= 60 * MIB);
    assert!(v(&linux.process.unwrap().process_count) >= 3);
    assert!(linux.network.is_none(), "host network: no pod interfaces");
}

#[tokio::test]
async fn stats_filters_and_unknown_ids() {
    let mut env = fast_env("stats-filter").await;
    let a = env.run("a", "sleep 1000").await;
    let b = env.run("b", "sleep 1000").await;
    let list = |f: ContainerStatsFilter| {
        let mut rt = env.rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_container_stats(ListContainerStatsRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(ContainerStatsFilter::default()).await, both);
    assert_eq!(
        list(ContainerStatsFilter {
            id: a[..10].into(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(ContainerStatsFilter {
            label_selector: [("container".to_string(), "b".to_string())].into(),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    assert_eq!(
        list(ContainerStatsFilter {
            pod_sandbox_id: env.pod.clone(),
            ..Default::default()
        })
        .await,
        both
    );
    assert!(
        list(ContainerStatsFilter {
            pod_sandbox_id: "f".repeat(64),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let err = env
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: "f".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = env
        .rt
        .container_stats(ContainerStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = env
        .rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "f".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let pods = env
        .rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                label_selector: [("app".to_string(), "stats-filter".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].attributes.as_ref().unwrap().id, env.pod);
    // Every container has CPU and memory from its first call on.
    let s = stats(&mut env, &a).await;
    assert!(s.cpu.is_some() && s.memory.is_some(), "{s:?}");
}

/// A bridge network of its own for the traffic test.
struct Bridge;

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all("/var/lib/cni/networks/crius-stats");
        let _ = Command::new("ip").args(["link", "del", "crtst0"]).status();
    }
}

async fn pod_stats(rt: &mut Runtime, id: &str) -> PodSandboxStats {
    rt.pod_sandbox_stats(PodSandboxStatsRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stats
    .unwrap()
}

fn eth0(s: &PodSandboxStats) -> (u64, u64) {
    let net = s.linux.as_ref().and_then(|l| l.network.as_ref());
    let i = net
        .and_then(|n| n.interfaces.iter().find(|i| i.name == "eth0"))
        .unwrap_or_else(|| panic!("no eth0 in {net:?}"));
    (v(&i.rx_bytes), v(&i.tx_bytes))
}

#[tokio::test]
async fn traffic_between_two_pods_shows_in_both() {
    let _bridge = Bridge;
    let d = Daemon::builder()
        .registries(&common::testenv::testenv().registries_conf())
        .config("[metrics]\nstats_interval = 1\n")
        .start();
    d.install_cni_config(
        "10-stats.conflist",
        &bridge_conflist("crius-stats", "crtst0", "10.232.0.0/24"),
    );
    let mut env = env_on(d, "stats-host", NamespaceMode::Container).await;
    let pod = |name: &str| {
        let mut c = pod_config(name, "stats");
        c.log_directory = env.logs.display().to_string();
        c
    };
    let (server_cfg, client_cfg) = (pod("server"), pod("client"));
    let run = |cfg: PodSandboxConfig| {
        let mut rt = env.rt.clone();
        async move {
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
        }
    };
    let server = run(server_cfg).await;
    let client = run(client_cfg).await;
    let ip = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: server.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    let (s0, c0) = (
        eth0(&pod_stats(&mut env.rt, &server).await),
        eth0(&pod_stats(&mut env.rt, &client).await),
    );
    let start = |pod_id: String, name: &str, script: &str| {
        let cfg = env.config(name, script);
        let mut rt = env.rt.clone();
        async move {
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id,
                    config: Some(cfg),
                    sandbox_config: None,
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
            id
        }
    };
    // stdin kept open: busybox nc stops reading once its stdin ends.
    start(
        server.clone(),
        "listen",
        "sleep 1000 | nc -l -p 7000 > /dev/null",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = 16 * MIB;
    start(
        client.clone(),
        "send",
        &format!("head -c {sent} /dev/zero | nc -w 5 {ip} 7000"),
    )
    .await;
    let (s1, c1) = wait_for(
        "16 MiB counted on both sides",
        Duration::from_secs(40),
        || {
            let mut rt = env.rt.clone();
            let (server, client) = (server.clone(), client.clone());
            async move {
                let s = eth0(&pod_stats(&mut rt, &server).await);
                let c = eth0(&pod_stats(&mut rt, &client).await);
                (s.0 >= s0.0 + sent && c.1 >= c0.1 + sent).then_some((s, c))
            }
        },
    )
    .await;
    println!("server rx {s0:?}→{s1:?}, client tx {c0:?}→{c1:?}");
    // The same counters as KEP-2371 metrics.
    let metrics = env
        .rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let server_metrics = metrics.iter().find(|m| m.pod_sandbox_id == server).unwrap();
    let rx = server_metrics
        .metrics
        .iter()
        .find(|m| {
            m.name == "container_network_receive_bytes_total"
                && m.label_values.last().is_some_and(|i| i == "eth0")
        })
        .expect("receive bytes metric");
    assert!(v(&rx.value) >= s0.0 + sent, "{rx:?}");
    // TCP and IP headers add a few percent, not more.
    assert!(s1.0 - s0.0 < sent + sent / 10, "{s0:?} {s1:?}");
    assert!(c1.1 - c0.1 < sent + sent / 10, "{c0:?} {c1:?}");
}

#[tokio::test]
async fn metrics_match_descriptors_and_stats() {
    let mut env = fast_env("stats-metrics").await;
    let id = env
        .run(
            "mem",
            "awk 'BEGIN { s = sprintf(\"%33554432s\", \"x\"); system(\"sleep 1000\"); print length(s) }'",
        )
        .await;
    let descs = env
        .rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let keys: std::collections::HashMap<String, usize> = descs
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.len()))
        .collect();
    for name in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_network_receive_bytes_total",
        "container_fs_usage_bytes",
    ] {
        assert!(keys.contains_key(name), "no descriptor {name}");
    }
    let working_set = wait_for("32 MiB in the metrics", Duration::from_secs(30), || {
        let mut rt = env.rt.clone();
        let (pod, id, keys) = (env.pod.clone(), id.clone(), keys.clone());
        async move {
            let all = rt
                .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
                .await
                .ok()?
                .into_inner()
                .pod_metrics;
            let p = all.iter().find(|m| m.pod_sandbox_id == pod)?;
            let c = p.container_metrics.iter().find(|c| c.container_id == id)?;
            let ws = c
                .metrics
                .iter()
                .find(|m| m.name == "container_memory_working_set_bytes")?;
            (v(&ws.value) >= 30 * MIB).then_some(())?;
            for m in p
                .metrics
                .iter()
                .chain(p.container_metrics.iter().flat_map(|c| c.metrics.iter()))
            {
                assert_eq!(keys.get(&m.name), Some(&m.label_values.len()), "{m:?}");
                assert!(m.timestamp > 0, "{m:?}");
            }
            assert_eq!(ws.label_values[0], id);
            assert_eq!(ws.label_values[1], "mem");
            Some(v(&ws.value))
        }
    })
    .await;
    let s = stats(&mut env, &id).await;
    let stat_ws = v(&s.memory.unwrap().working_set_bytes);
    assert!(
        working_set.abs_diff(stat_ws) < 4 * MIB,
        "{working_set} vs {stat_ws}"
    );
}
