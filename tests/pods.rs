//! Pod sandboxes with the real CNI plugins (Debian's containernetworking-plugins):
//! pinned namespaces, pod-to-pod traffic, pod files, stop/remove cleanup, restart.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use tonic::Code;

/// A daemon with its own bridge and subnet, so tests can run side by side.
fn daemon(tag: u8) -> (Daemon, String, String) {
    let net = format!("crius-test-{tag}");
    let bridge = format!("crt{tag}");
    let d = Daemon::start();
    d.install_cni_config(
        "10-test.conflist",
        &bridge_conflist(&net, &bridge, &format!("10.199.{tag}.0/24")),
    );
    (d, net, bridge)
}

/// Removes the bridge the plugin made (the bridge plugin never deletes it).
fn drop_bridge(bridge: &str) {
    let _ = Command::new("ip").args(["link", "del", bridge]).status();
}

async fn run(rt: &mut Runtime, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn list_all(rt: &mut Runtime) -> Vec<PodSandbox> {
    common::all_pods(rt).await
}

async fn remove(rt: &mut Runtime, id: &str) {
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
}

async fn status(rt: &mut Runtime, id: &str) -> PodSandboxStatus {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

fn netns(d: &Daemon, id: &str) -> std::path::PathBuf {
    d.paths.runroot.join("pods").join(id).join("ns/net")
}

fn in_netns(ns: &Path, cmd: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(cmd)
        .output()
        .expect("nsenter")
}

fn mounted(needle: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_reach_each_other_and_leave_nothing_behind() {
    let (d, net, bridge) = daemon(11);
    let mut rt = d.runtime().await;
    let mut a_cfg = pod_config("a", "ns1");
    a_cfg.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["ns1.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    a_cfg.hostname = "pod-a".into();
    let a = run(&mut rt, a_cfg.clone()).await.unwrap();
    let b = run(&mut rt, pod_config("b", "ns1")).await.unwrap();
    let (sa, sb) = (status(&mut rt, &a).await, status(&mut rt, &b).await);
    assert_eq!(sa.state, PodSandboxState::SandboxReady as i32);
    let ip_a = sa.network.unwrap().ip;
    let ip_b = sb.network.unwrap().ip;
    assert!(ip_a.starts_with("10.199.11."), "{ip_a}");
    assert_ne!(ip_a, ip_b);
    assert!(sa.created_at > 0);
    assert_eq!(sa.labels["app"], "a");

    let ping = in_netns(&netns(&d, &a), &["ping", "-c", "1", "-W", "2", &ip_b]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let lo = in_netns(&netns(&d, &a), &["ip", "-o", "addr", "show", "lo"]);
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains("127.0.0.1"),
        "loopback up"
    );

    // The pod files.
    let dir = d.paths.runroot.join("pods").join(&a);
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search ns1.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        "pod-a\n"
    );
    assert!(
        std::fs::read_to_string(dir.join("hosts"))
            .unwrap()
            .contains(&format!("{ip_a}\tpod-a"))
    );
    // The UTS namespace carries the hostname.
    let uts = Command::new("nsenter")
        .arg(format!("--uts={}", dir.join("ns/uts").display()))
        .arg("hostname")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&uts.stdout).trim(), "pod-a");

    // Same pod again (a kubelet retry): same id.
    assert_eq!(run(&mut rt, a_cfg).await.unwrap(), a);

    // Stop: IP released, netns gone; twice is fine.
    let lease_dir = Path::new("/var/lib/cni/networks").join(&net);
    assert!(lease_dir.join(&ip_a).exists());
    for _ in 0..2 {
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: a.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        status(&mut rt, &a).await.state,
        PodSandboxState::SandboxNotready as i32
    );
    assert!(!lease_dir.join(&ip_a).exists());
    assert!(!mounted(&format!("{a}/ns/net")));

    for id in [&a, &b] {
        for _ in 0..2 {
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap();
        }
        assert!(!mounted(id.as_str()), "a pin of {id} is still mounted");
        assert!(!d.paths.runroot.join("pods").join(id).exists());
    }
    assert!(!lease_dir.join(&ip_b).exists());
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: a.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    drop_bridge(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_bad_input() {
    let (d, _net, bridge) = daemon(12);
    let mut rt = d.runtime().await;
    let a = run(&mut rt, pod_config("a", "ns2")).await.unwrap();
    let b = run(&mut rt, pod_config("b", "ns2")).await.unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: b.clone(),
    })
    .await
    .unwrap();
    let list = |filter: PodSandboxFilter| {
        let mut rt = rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(PodSandboxFilter::default()).await, both);
    assert_eq!(
        list(PodSandboxFilter {
            id: a[..8].to_string(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32
            }),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(PodSandboxFilter {
            label_selector: HashMap::from([("app".to_string(), "b".to_string())]),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    // Short ids work like crictl's.
    assert_eq!(status(&mut rt, &a[..12]).await.id, a);

    let e = run(&mut rt, PodSandboxConfig::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut bad = pod_config("c", "ns2");
    bad.hostname = "no spaces allowed".into();
    assert_eq!(
        run(&mut rt, bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // CRI: stopping an unknown pod succeeds (critest's idempotence test).
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: "doesnotexist".into(),
    })
    .await
    .unwrap();
    for id in [a, b] {
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
    drop_bridge(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_skip_cni() {
    let d = Daemon::start(); // no CNI config at all: host network needs none
    let mut rt = d.runtime().await;
    let mut cfg = pod_config("h", "ns3");
    cfg.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run(&mut rt, cfg).await.unwrap();
    let s = status(&mut rt, &id).await;
    assert_eq!(s.network.unwrap().ip, "");
    assert!(!netns(&d, &id).exists());
    assert_eq!(
        s.linux
            .unwrap()
            .namespaces
            .unwrap()
            .options
            .unwrap()
            .network,
        NamespaceMode::Node as i32
    );
    // A pod network without a CNI config is refused, and leaves nothing.
    let e = run(&mut rt, pod_config("n", "ns3")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let pods = list_all(&mut rt).await;
    assert_eq!(pods.len(), 1);
    remove(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_daemon_crash() {
    let (mut d, net, bridge) = daemon(13);
    let id = run(&mut d.runtime().await, pod_config("r", "ns4"))
        .await
        .unwrap();
    let ip = status(&mut d.runtime().await, &id)
        .await
        .network
        .unwrap()
        .ip;
    d.kill9();
    d.restart();
    let mut rt = d.runtime().await;
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(s.network.unwrap().ip, ip);
    assert!(in_netns(&netns(&d, &id), &["true"]).status.success());
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(
        !Path::new("/var/lib/cni/networks")
            .join(&net)
            .join(&ip)
            .exists()
    );
    assert!(!mounted(&id));
    drop_bridge(&bridge);
}

fn cgroup_dir(rel: &str) -> std::path::PathBuf {
    // v2 if /sys/fs/cgroup is cgroup2, else the v1 memory hierarchy.
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if unified {
        Path::new("/sys/fs/cgroup").join(rel)
    } else {
        Path::new("/sys/fs/cgroup/memory").join(rel)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysctls_cgroup_and_shm_belong_to_the_pod() {
    let (d, _net, bridge) = daemon(14);
    let mut rt = d.runtime().await;
    let mut cfg = pod_config("s", "ns5");
    // A parent in the driver's own form, as kubelet gives it.
    let systemd = test_cgroup_driver().as_deref() == Some("systemd");
    let (parent, pod_dir) = if systemd {
        (
            "crius_test-pod_s.slice",
            "crius_test.slice/crius_test-pod_s.slice",
        )
    } else {
        ("/crius-test/pod-s", "crius-test/pod-s")
    };
    cfg.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: parent.into(),
        sysctls: HashMap::from([
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string(),
            ),
            ("kernel.shmmni".to_string(), "1234".to_string()),
        ]),
        // What kubelet sends: the containers' sum and the sandbox overhead.
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }),
        overhead: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run(&mut rt, cfg).await.unwrap();
    let dir = d.paths.runroot.join("pods").join(&id);
    let net = in_netns(
        &netns(&d, &id),
        &["cat", "/proc/sys/net/ipv4/ping_group_range"],
    );
    assert_eq!(
        String::from_utf8_lossy(&net.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "2147483647"]
    );
    let ipc = Command::new("nsenter")
        .arg(format!("--ipc={}", dir.join("ns/ipc").display()))
        .args(["cat", "/proc/sys/kernel/shmmni"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ipc.stdout).trim(), "1234");
    // The host's values are untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/shmmni")
            .unwrap()
            .trim(),
        "1234"
    );

    let pod_cgroup = if systemd {
        format!("{pod_dir}/crius_test-pod_s-crius_pod_{}.slice", &id[..12])
    } else {
        format!("{pod_dir}/crius-pod-{}", &id[..12])
    };
    let cg = cgroup_dir(&pod_cgroup);
    let version = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    };
    println!("cgroup {version}: pod cgroup {}", cg.display());
    assert!(cg.is_dir(), "{}", cg.display());
    // The pod's resources plus overhead limit the pod cgroup from the start.
    let limit = if version == "v2" {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    assert_eq!(
        std::fs::read_to_string(cg.join(limit)).unwrap().trim(),
        (288u64 << 20).to_string()
    );

    let shm = dir.join("shm").display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(&shm))
        .expect("shm mounted");
    assert!(
        line.contains("tmpfs") && line.contains("size=65536k"),
        "{line}"
    );

    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!cg.exists());
    assert!(!mounted(&id));
    // The parents belong to kubelet; the test made them (systemd: the
    // slices the pod's slice pulled in).
    if systemd {
        stop_unit("crius_test-pod_s.slice");
        stop_unit("crius_test.slice");
    }
    let top = pod_dir.split('/').next().unwrap_or(pod_dir);
    for rel in [pod_dir, top] {
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ = std::fs::remove_dir(h.path().join(rel));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(rel));
    }

    // Sysctls that are not the pod's own are refused.
    for (k, host_net) in [
        ("vm.swappiness", false),
        ("kernel.hostname", false),
        ("net.core.somaxconn", true),
    ] {
        let mut cfg = pod_config("bad", "ns5");
        cfg.linux = Some(LinuxPodSandboxConfig {
            sysctls: HashMap::from([(k.to_string(), "1".to_string())]),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: if host_net {
                        NamespaceMode::Node as i32
                    } else {
                        0
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = run(&mut rt, cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{k}: {e:?}");
    }
    drop_bridge(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_reaches_the_pod_from_localhost() {
    let (d, _net, bridge) = daemon(15);
    let mut rt = d.runtime().await;
    let mut cfg = pod_config("web", "ns6");
    cfg.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 18081,
        host_ip: String::new(),
    }];
    let id = run(&mut rt, cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "hello from the pod\n").unwrap();
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", netns(&d, &id).display()))
        .args([
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:18081") {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut body);
            if body.contains("hello from the pod") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(body.contains("hello from the pod"), "{body}");
    remove(&mut rt, &id).await;
    // The port mapping went with the pod.
    assert!(std::net::TcpStream::connect("127.0.0.1:18081").is_err());
    drop_bridge(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_client_gave_up_on_completes_and_serves_the_retry() {
    let (d, _net, bridge) = daemon(16);
    let mut rt = d.runtime().await;
    let cfg = pod_config("g", "ns7");
    // The client's deadline expires long before the pod is ready.
    let mut req = tonic::Request::new(RunPodSandboxRequest {
        config: Some(cfg.clone()),
        ..Default::default()
    });
    req.set_timeout(std::time::Duration::from_millis(1));
    assert!(rt.run_pod_sandbox(req).await.is_err());
    let id = run(&mut rt, cfg).await.unwrap();
    let pods = list_all(&mut rt).await;
    assert_eq!(pods.len(), 1, "{pods:?}\n{}", d.logs());
    assert_eq!(pods[0].id, id);
    assert_eq!(pods[0].state, PodSandboxState::SandboxReady as i32);
    remove(&mut rt, &id).await;
    drop_bridge(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_works_after_the_cni_config_changed_and_the_netns_vanished() {
    let (d, net, bridge) = daemon(17);
    let mut rt = d.runtime().await;
    let id = run(&mut rt, pod_config("v", "ns8")).await.unwrap();
    let ip = status(&mut rt, &id).await.network.unwrap().ip;
    // The operator replaces the network config, and the netns pin is gone.
    std::fs::remove_file(d.paths.cni_dir.join("10-test.conflist")).unwrap();
    d.install_cni_config(
        "20-other.conflist",
        &bridge_conflist("other", "crt99", "10.198.0.0/24"),
    );
    let ns = netns(&d, &id);
    Command::new("umount").arg(&ns).status().unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    // DEL ran against the network the pod was attached to.
    assert!(
        !Path::new("/var/lib/cni/networks")
            .join(&net)
            .join(&ip)
            .exists()
    );
    remove(&mut rt, &id).await;
    drop_bridge(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_error_reaches_the_caller_and_nothing_is_left() {
    let d = Daemon::start();
    d.install_cni_config(
        "10-broken.conflist",
        &serde_json::json!({
            "cniVersion": "1.0.0", "name": "broken",
            "plugins": [{"type": "bridge", "bridge": "crt18",
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": "not-a-subnet"}]]}}]
        })
        .to_string(),
    );
    let mut rt = d.runtime().await;
    let e = run(&mut rt, pod_config("x", "ns9")).await.unwrap_err();
    assert!(e.message().contains("bridge"), "{e:?}");
    assert!(e.message().to_lowercase().contains("subnet"), "{e:?}");
    let pods = list_all(&mut rt).await;
    assert!(pods.is_empty(), "{pods:?}");
    assert_eq!(
        std::fs::read_dir(d.paths.runroot.join("pods"))
            .unwrap()
            .count(),
        0
    );
    drop_bridge("crt18");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_plugin_times_out_and_the_pod_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let plugins = tempfile::tempdir().unwrap();
    let hang = plugins.path().join("hang");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::builder()
        .network(&format!(
            "plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nplugin_timeout = 2",
            plugins.path().display()
        ))
        .start();
    d.install_cni_config(
        "10-hang.conflist",
        &serde_json::json!({"cniVersion": "1.0.0", "name": "hang", "plugins": [{"type": "hang"}]})
            .to_string(),
    );
    let mut rt = d.runtime().await;
    let started = std::time::Instant::now();
    let e = run(&mut rt, pod_config("h", "ns10")).await.unwrap_err();
    assert!(e.message().contains("timed out"), "{e:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let pods = list_all(&mut rt).await;
    assert!(pods.is_empty(), "{pods:?}");
}

/// `PPid` and state of a process, from /proc.
fn proc_status(pid: u32) -> Option<(u32, String, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Some((
        field("PPid:").parse().ok()?,
        field("State:"),
        field("NSpid:"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_pid_namespace_has_an_init_that_reaps_orphans() {
    let (d, _net, bridge) = daemon(19);
    let mut rt = d.runtime().await;
    let id = run(&mut rt, pod_config("p", "ns11")).await.unwrap();
    let info = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let init = v["pid"].as_u64().unwrap() as u32;
    let (_, _, nspid) = proc_status(init).expect("init runs");
    assert!(
        nspid.ends_with("\t1") || nspid.ends_with(" 1"),
        "PID 1 in its namespace: {nspid:?}"
    );

    // Orphan a short-lived process inside the pod: the init must reap it.
    let pin = d.paths.runroot.join("pods").join(&id).join("ns/pid");
    let st = Command::new("nsenter")
        .arg(format!("--pid={}", pin.display()))
        .args(["sh", "-c", "sleep 0.3 & echo $!"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    assert!(
        children.trim().is_empty(),
        "init left children (zombies): {children:?}"
    );

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let gone = proc_status(init).is_none_or(|(_, state, _)| state.starts_with('Z'));
    assert!(gone, "init still running after stop");
    remove(&mut rt, &id).await;
    drop_bridge(&bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_status_runs_cni_check() {
    let (d, _net, bridge) = daemon(20);
    let mut rt = d.runtime().await;
    let id = run(&mut rt, pod_config("c", "ns12")).await.unwrap();
    let check = |rt: &mut Runtime, id: String| {
        let mut rt = rt.clone();
        async move {
            let info = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await
                .unwrap()
                .into_inner()
                .info;
            let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
            v["networkCheck"].clone()
        }
    };
    assert_eq!(check(&mut rt, id.clone()).await, "ok");
    // Someone removes the pod's interface: CHECK says so.
    let del = in_netns(&netns(&d, &id), &["ip", "link", "del", "eth0"]);
    assert!(del.status.success());
    let broken = check(&mut rt, id.clone()).await;
    assert!(
        broken.as_str().is_some_and(|m| m.contains("CHECK")),
        "{broken}"
    );
    remove(&mut rt, &id).await;
    drop_bridge(&bridge);
}

/// Where a pod's and a container's cgroups are, as the driver under test
/// names them (the default parent): systemd units, or directories.
enum Cgroup {
    Unit(String),
    Dir(std::path::PathBuf),
}

impl Cgroup {
    fn of_pod(id: &str) -> Cgroup {
        match test_cgroup_driver().as_deref() {
            Some("systemd") => Cgroup::Unit(format!("crius-crius_pod_{}.slice", &id[..12])),
            _ => Cgroup::Dir(cgroup_dir(&format!("crius/crius-pod-{}", &id[..12]))),
        }
    }

    fn of_container(pod: &str, id: &str) -> Cgroup {
        match test_cgroup_driver().as_deref() {
            Some("systemd") => Cgroup::Unit(format!("crius-{}.scope", &id[..12])),
            _ => Cgroup::Dir(cgroup_dir(&format!(
                "crius/crius-pod-{}/crius-{}",
                &pod[..12],
                &id[..12]
            ))),
        }
    }

    /// systemd: the unit is active (and its cgroup a directory of
    /// systemd's tree); cgroupfs: the directory exists.
    fn alive(&self) -> bool {
        match self {
            Cgroup::Unit(u) => unit_active_state(u) == "active",
            Cgroup::Dir(d) => d.is_dir(),
        }
    }

    /// systemd: stopped (not failed), so `systemctl list-units` no longer
    /// lists it; cgroupfs: the directory is gone.
    fn gone(&self) -> bool {
        match self {
            Cgroup::Unit(u) => unit_active_state(u) == "inactive",
            Cgroup::Dir(d) => !d.exists(),
        }
    }
}

impl std::fmt::Display for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cgroup::Unit(u) => write!(f, "unit {u}"),
            Cgroup::Dir(d) => write!(f, "directory {}", d.display()),
        }
    }
}

/// The pod's and the container's cgroups exist while they live and are gone
/// after RemovePodSandbox, also when the daemon was killed (-9) and
/// restarted in between. With the systemd driver they are a transient
/// slice and a scope, seen through systemctl; with cgroupfs, directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_and_container_cgroups_live_and_go_with_them() {
    let driver = test_cgroup_driver().unwrap_or_else(|| "cgroupfs".into());
    let mut env = common::pod::env("units").await;
    println!("cgroup {}, driver {driver}", common::pod::cgroup_version());
    for crash in [false, true] {
        if crash {
            let pod = env
                .rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(common::pod::host_pod(
                        "units-2",
                        &env.logs,
                        NamespaceMode::Container,
                    )),
                    ..Default::default()
                })
                .await
                .expect("second pod")
                .into_inner()
                .pod_sandbox_id;
            env.pod = pod;
        }
        let c = env.run("c", "sleep 1000").await;
        let (pod_cg, ctr_cg) = (Cgroup::of_pod(&env.pod), Cgroup::of_container(&env.pod, &c));
        println!("pod: {pod_cg}; container: {ctr_cg}");
        assert!(pod_cg.alive(), "{pod_cg} while the pod lives");
        assert!(ctr_cg.alive(), "{ctr_cg} while the container runs");
        // The container's processes, and only they, are in its cgroup;
        // with systemd also the scope's seed (`crius-helper hold`), which
        // stays until the container's exit is recorded (so the OOM verdict
        // can still be read from the scope).
        let systemd = driver == "systemd";
        let dir = env.container_cgroup(&c, "memory");
        let procs = wait_for(
            "the container (and the scope's seed) in its cgroup",
            Duration::from_secs(10),
            || {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<String> = procs.lines().map(String::from).collect();
                let cmdlines: Vec<Vec<u8>> = pids
                    .iter()
                    .map(|p| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default())
                    .collect();
                let seed = |c: &Vec<u8>| {
                    let mut argv = c.split(|b| *b == 0);
                    argv.next().is_some_and(|a| a.ends_with(b"crius-helper"))
                        && argv.next() == Some(b"hold".as_slice())
                };
                let sleeps = cmdlines.iter().filter(|c| c.starts_with(b"sleep")).count();
                let seeds = cmdlines.iter().filter(|c| seed(c)).count();
                let expected =
                    sleeps > 0 && seeds == usize::from(systemd) && sleeps + seeds == cmdlines.len();
                std::future::ready(expected.then_some(pids))
            },
        )
        .await;
        println!("{} holds {procs:?}", dir.display());
        // The stats count the container's process, not the seed.
        let processes = wait_for(
            "container_processes to count the sleep alone",
            Duration::from_secs(10),
            || {
                let (mut rt, pod, c) = (env.rt.clone(), env.pod.clone(), c.clone());
                async move {
                    let all = rt
                        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
                        .await
                        .ok()?
                        .into_inner()
                        .pod_metrics;
                    let p = all.into_iter().find(|m| m.pod_sandbox_id == pod)?;
                    let m = p
                        .container_metrics
                        .into_iter()
                        .find(|m| m.container_id == c)?
                        .metrics
                        .into_iter()
                        .find(|m| m.name == "container_processes")?;
                    let n = m.value.map_or(0, |v| v.value);
                    (n == 1).then_some(n)
                }
            },
        )
        .await;
        println!("container_processes: {processes}");
        if crash {
            env.d.kill9();
            env.d.restart();
            env.rt = env.d.runtime().await;
            assert!(ctr_cg.alive(), "{ctr_cg} after the daemon's restart");
        }
        if systemd && !crash {
            // The seed leaves once the exit is recorded, and systemd ends
            // the scope then, before any removal.
            env.stop(&c, 0).await;
            wait_for(
                "the stopped container's scope to end",
                Duration::from_secs(10),
                || std::future::ready(ctr_cg.gone().then_some(())),
            )
            .await;
            println!("{ctr_cg} ended with the container");
        }
        env.stop_and_remove_pod().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !(pod_cg.gone() && ctr_cg.gone()) {
            if std::time::Instant::now() > deadline {
                let units = Command::new("systemctl")
                    .args(["list-units", "--all", "--no-pager", "crius*"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "after removal (crash: {crash}): pod {pod_cg} gone: {}, container {ctr_cg} gone: {}\n{units}\n{}",
                    pod_cg.gone(),
                    ctr_cg.gone(),
                    env.d.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("after removal (crash: {crash}): {pod_cg} and {ctr_cg} are gone");
    }
}

/// The cgroup of process `pid` (its unified or name=systemd line).
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with("0::") || l.contains(":name=systemd:"))
        .unwrap_or_default();
    line.rsplit(':').next().unwrap_or_default().to_string()
}

/// crius runs as a service on a systemd node, and stopping or restarting
/// the service kills every process in its cgroup. With the systemd driver
/// each pod's monitor has a scope of its own (as cri-o's conmon), so its
/// containers keep running through that and the restarted daemon finds
/// them; the pod's init (PID 1 of its PID namespace) likewise. With
/// cgroupfs the monitor stays in the daemon's cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_survive_a_stop_of_the_daemons_unit() {
    let systemd = test_cgroup_driver().as_deref() == Some("systemd");
    println!("driver {}", if systemd { "systemd" } else { "cgroupfs" });
    // On systemd the daemon runs in a unit of its own, as under
    // crius.service; `$$` names it uniquely per start.
    let builder = Daemon::builder().registries(&testenv::testenv().registries_conf());
    let mut d = if systemd {
        builder
            .wrap("exec systemd-run --quiet --scope --unit=crius-test-svc-$$ \"$@\"")
            .start()
    } else {
        builder.start()
    };
    let image = pull_busybox_at(&d.paths.socket).await.unwrap();
    let mut rt = d.runtime().await;
    let mut cfg = pod_config("svc", "ns21");
    host_network(&mut cfg);
    let pod = run(&mut rt, cfg.clone()).await.unwrap();
    let ctr = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("sleeper", &image, &["sleep", "3600"])),
            sandbox_config: Some(cfg),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap();
    let monitors = monitor_pids(&d.paths.runroot);
    assert_eq!(monitors.len(), 1, "one monitor for the pod");
    let monitor = monitors[0] as u32;
    let (daemon_cg, monitor_cg) = (cgroup_of(d.pid()), cgroup_of(monitor));
    println!("daemon in {daemon_cg}, monitor in {monitor_cg}");
    if !systemd {
        assert_eq!(monitor_cg, daemon_cg);
        remove(&mut rt, &pod).await;
        return;
    }
    assert_eq!(
        monitor_cg,
        format!("/system.slice/crius-monitor-{}.scope", &pod[..12])
    );
    // The pod's PID 1 too: its death would end the pod's containers.
    assert_eq!(
        unit_active_state(&format!("crius-init-{}.scope", &pod[..12])),
        "active"
    );
    // `systemctl stop crius`: everything in the daemon's unit dies.
    let unit = daemon_cg.rsplit('/').next().unwrap().to_string();
    assert!(unit.starts_with("crius-test-svc-"), "{unit}");
    stop_unit(&unit);
    d.reap();
    assert!(
        Path::new(&format!("/proc/{monitor}")).exists(),
        "the monitor died with the daemon's unit"
    );
    d.restart();
    let mut rt = d.runtime().await;
    let st = rt
        .container_status(ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        st.state,
        ContainerState::ContainerRunning as i32,
        "{st:?}\n{}",
        d.logs()
    );
    remove(&mut rt, &pod).await;
    // The monitor's scope went with it.
    wait_for(
        "the monitor's scope to go",
        Duration::from_secs(10),
        || async {
            (unit_active_state(&format!("crius-monitor-{}.scope", &pod[..12])) == "inactive")
                .then_some(())
        },
    )
    .await;
    let svc = cgroup_of(d.pid()).rsplit('/').next().unwrap().to_string();
    d.terminate();
    stop_unit(&svc);
}
