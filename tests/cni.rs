//! CNI handling against hostile or broken input, with the real plugins
//! (Debian's containernetworking-plugins) and small fake ones: `CNI_ARGS`
//! cannot be forged through pod metadata, a failed ADD or DEL releases the
//! pod's IP whatever one plugin says, bad port mappings never reach a plugin,
//! a hostPort is held by one pod at a time, and a plugin that fails or
//! hangs (bounded by `plugin_timeout`) leaves nothing and a retry works.
//!
//! Every test has its own bridge (`crtcf*`) and subnet (10.231.*.0/24).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::net::Net;
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

/// A temporary plugin directory for fake plugins (shell scripts).
struct Plugins {
    dir: tempfile::TempDir,
}

impl Plugins {
    fn new() -> Plugins {
        Plugins {
            dir: tempfile::tempdir().expect("plugin dir"),
        }
    }

    fn add(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod plugin");
    }

    /// A plugin that records each call (`COMMAND`) in `spy.log` and returns
    /// nothing, so it can sit first in a chain.
    fn add_spy(&self) {
        let log = self.spy_log();
        self.add(
            "spy",
            &format!("echo \"$CNI_COMMAND\" >> '{}'\n", log.display()),
        );
    }

    fn spy_log(&self) -> PathBuf {
        self.dir.path().join("spy.log")
    }

    fn spy_calls(&self) -> String {
        std::fs::read_to_string(self.spy_log()).unwrap_or_default()
    }

    /// A plugin failing the commands listed (space separated) with a CNI
    /// error JSON naming itself, while `<name>.off` does not exist; other
    /// commands succeed without output.
    fn add_failing(&self, name: &str, commands: &str) {
        let off = self.dir.path().join(format!("{name}.off"));
        self.add(
            name,
            &format!(
                "cat >/dev/null\n\
                 [ -e '{off}' ] && exit 0\n\
                 for c in {commands}; do\n\
                 \x20 if [ \"$CNI_COMMAND\" = \"$c\" ]; then\n\
                 \x20   printf '{{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"{name} refuses %s\"}}' \"$CNI_COMMAND\"\n\
                 \x20   exit 1\n\
                 \x20 fi\n\
                 done\n",
                off = off.display()
            ),
        );
    }

    fn switch_off(&self, name: &str) {
        std::fs::write(self.dir.path().join(format!("{name}.off")), "").expect("switch off");
    }

    /// A chained plugin that, while `<name>.fail` exists, fails ADD; while
    /// `<name>.hang` exists, hangs in ADD (a `sleep 7777` child it waits
    /// for); otherwise passes its prevResult on, as a working plugin does.
    fn add_broken(&self, name: &str) {
        let mode = self.dir.path().join(name);
        self.add(
            name,
            &format!(
                "input=$(cat)\n\
                 if [ \"$CNI_COMMAND\" = ADD ]; then\n\
                 \x20 [ -e '{m}.hang' ] && sleep 7777\n\
                 \x20 if [ -e '{m}.fail' ]; then\n\
                 \x20   printf '{{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"{name} refuses ADD\"}}'\n\
                 \x20   exit 1\n\
                 \x20 fi\n\
                 \x20 printf '%s' \"$input\" | jq -c .prevResult\n\
                 fi\n",
                m = mode.display()
            ),
        );
    }

    /// Sets `<name>.<mode>` (`fail`, `hang`) of an [`Plugins::add_broken`]
    /// plugin, or with `None` fixes it.
    fn set_mode(&self, name: &str, mode: Option<&str>) {
        for m in ["fail", "hang"] {
            let _ = std::fs::remove_file(self.dir.path().join(format!("{name}.{m}")));
        }
        if let Some(m) = mode {
            std::fs::write(self.dir.path().join(format!("{name}.{m}")), "").expect("set mode");
        }
    }

    /// A daemon searching this directory before the real plugins, with
    /// `plugins` as its network's chain.
    fn daemon(&self, net: &Net, plugins: serde_json::Value) -> Daemon {
        self.daemon_with(net, plugins, "")
    }

    /// [`Plugins::daemon`] with more `[network]` settings.
    fn daemon_with(&self, net: &Net, plugins: serde_json::Value, network: &str) -> Daemon {
        let d = Daemon::builder()
            .network(&format!(
                "plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n{network}",
                self.dir.path().display()
            ))
            .start();
        d.install_cni_config(
            "10-cf.conflist",
            &serde_json::json!({"cniVersion": "1.0.0", "name": net.name, "plugins": plugins})
                .to_string(),
        );
        d
    }
}

async fn run(rt: &mut Runtime, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn ip_of(rt: &mut Runtime, id: &str) -> String {
    rt.pod_sandbox_status(PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
    .network
    .unwrap()
    .ip
}

async fn stop(rt: &mut Runtime, id: &str) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn remove(rt: &mut Runtime, id: &str) {
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

async fn pod_ids(rt: &mut Runtime) -> Vec<String> {
    common::all_pods(rt)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect()
}

/// Nothing of a failed pod is left: no record, no pod dir, no pinned
/// namespace or shm mount.
async fn assert_no_pod_left(d: &Daemon, rt: &mut Runtime, keep: &[&str]) {
    let ids = pod_ids(rt).await;
    assert!(
        ids.iter().all(|id| keep.contains(&id.as_str())),
        "pods left: {ids:?}"
    );
    let dirs: Vec<_> = std::fs::read_dir(d.paths.runroot.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    assert!(dirs.is_empty(), "pod dirs left: {dirs:?}");
    let pods = format!("{}/", d.paths.runroot.join("pods").display());
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&pods) && !keep.iter().any(|k| l.contains(k)))
        .map(String::from)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
}

fn port(protocol: Protocol, container_port: i32, host_port: i32, host_ip: &str) -> PortMapping {
    PortMapping {
        protocol: protocol as i32,
        container_port,
        host_port,
        host_ip: host_ip.into(),
    }
}

fn pod_with_ports(name: &str, ns: &str, ports: Vec<PortMapping>) -> PodSandboxConfig {
    let mut c = pod_config(name, ns);
    c.port_mappings = ports;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_metadata_cannot_add_cni_args() {
    let net = Net::new(1);
    let plugins = Plugins::new();
    plugins.add_spy();
    let d = plugins.daemon(
        &net,
        serde_json::json!([{"type": "spy"}, net.bridge_plugin()]),
    );
    let mut rt = d.runtime().await;
    // host-local honours `IP=` in CNI_ARGS: each of these would pick the
    // pod's address if it reached the plugin.
    let forged = "10.231.1.250";
    let cases: Vec<(&str, PodSandboxConfig)> = vec![
        ("name", {
            let mut c = pod_config(&format!("x;IP={forged}"), "cf1");
            c.hostname = "x".into();
            c
        }),
        ("namespace", pod_config("y", &format!("cf1;IP={forged}"))),
        ("uid", {
            let mut c = pod_config("z", "cf1");
            c.metadata.as_mut().unwrap().uid = format!("u1;IP={forged}");
            c
        }),
        ("'=' in name", {
            let mut c = pod_config("IP=10.231.1.251", "cf1");
            c.hostname = "eq".into();
            c
        }),
        ("newline", pod_config("n", "cf1\nIP=10.231.1.252")),
        ("NUL", pod_config("nul", "cf1\0")),
        ("tab", pod_config("t", "cf1\tx")),
    ];
    for (what, cfg) in cases {
        let e = run(&mut rt, cfg).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        // Refused at the edge (metadata rules) or, failing that, where the
        // CNI arguments are built.
        assert!(
            e.message().contains("metadata") || e.message().contains("K8S_POD_"),
            "{what}: {e:?}"
        );
        // The hostile value is quoted at most as a short prefix.
        assert!(e.message().len() < 300, "{what}: {e:?}");
    }
    assert_eq!(plugins.spy_calls(), "", "a plugin ran for a refused pod");
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_no_pod_left(&d, &mut rt, &[]).await;

    // The chain itself works: an ordinary pod gets an ordinary address.
    let id = run(&mut rt, pod_config("ok", "cf1")).await.unwrap();
    let ip = ip_of(&mut rt, &id).await;
    assert!(ip.starts_with("10.231.1.") && ip != forged, "{ip}");
    assert_eq!(net.leases(), vec![ip]);
    remove(&mut rt, &id).await;
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_eq!(plugins.spy_calls(), "ADD\nDEL\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_port_mappings_are_refused_before_any_plugin_runs() {
    let net = Net::new(2);
    let plugins = Plugins::new();
    plugins.add_spy();
    let d = plugins.daemon(
        &net,
        serde_json::json!([
            {"type": "spy"},
            net.bridge_plugin(),
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]),
    );
    let mut rt = d.runtime().await;
    let cases = [
        ("container port 0", port(Protocol::Tcp, 0, 18421, "")),
        ("container port -1", port(Protocol::Tcp, -1, 18421, "")),
        (
            "container port 65536",
            port(Protocol::Tcp, 65536, 18421, ""),
        ),
        ("host port -1", port(Protocol::Tcp, 80, -1, "")),
        ("host port 65536", port(Protocol::Tcp, 80, 65536, "")),
        (
            "protocol",
            PortMapping {
                protocol: 7,
                ..port(Protocol::Tcp, 80, 18421, "")
            },
        ),
        ("host ip", port(Protocol::Tcp, 80, 18421, "not-an-ip;x")),
    ];
    for (what, p) in cases {
        let e = run(&mut rt, pod_with_ports("p", "cf2", vec![p]))
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains("port") || e.message().contains("host IP"),
            "{what}: {e:?}"
        );
    }
    assert_eq!(plugins.spy_calls(), "", "a plugin ran for a refused pod");
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_eq!(net.veths(), "");
    assert_no_pod_left(&d, &mut rt, &[]).await;

    // A container port without a host port is only informational.
    let id = run(
        &mut rt,
        pod_with_ports("q", "cf2", vec![port(Protocol::Tcp, 80, 0, "")]),
    )
    .await
    .unwrap();
    remove(&mut rt, &id).await;
    assert_eq!(net.leases(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_add_releases_the_ip_whatever_a_plugin_says() {
    let net = Net::new(3);
    let plugins = Plugins::new();
    // Fails ADD and, as a broken plugin may, DEL too.
    plugins.add_failing("fail", "ADD DEL");
    let d = plugins.daemon(
        &net,
        serde_json::json!([net.bridge_plugin(), {"type": "fail"}]),
    );
    let mut rt = d.runtime().await;
    for name in ["a", "b", "c"] {
        let e = run(&mut rt, pod_config(name, "cf3")).await.unwrap_err();
        assert!(e.message().contains("fail refuses ADD"), "{e:?}");
        assert_eq!(net.leases(), Vec::<String>::new(), "after {name}");
        assert_eq!(net.veths(), "", "after {name}");
    }
    assert_no_pod_left(&d, &mut rt, &[]).await;
}

/// Processes whose command line is `sleep 7777` (the hanging plugin's).
fn hanging_sleeps() -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x007777\x00")
        })
        .map(|p| p.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_plugin_fails_the_pod_cleanly_and_a_retry_after_the_fix_works() {
    let net = Net::new(7);
    let plugins = Plugins::new();
    plugins.add_broken("broken");
    let d = plugins.daemon_with(
        &net,
        serde_json::json!([net.bridge_plugin(), {"type": "broken"}]),
        "plugin_timeout = 2",
    );
    let mut rt = d.runtime().await;
    // kubelet retries the same pod (name, uid, attempt) until it runs.
    let pod = pod_config("retried", "cf7");

    plugins.set_mode("broken", Some("fail"));
    let t = std::time::Instant::now();
    let e = run(&mut rt, pod.clone()).await.unwrap_err();
    println!(
        "failing plugin: {:?} after {:?}: {}",
        e.code(),
        t.elapsed(),
        e.message()
    );
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("broken refuses ADD"), "{e:?}");
    assert_eq!(
        net.leases(),
        Vec::<String>::new(),
        "the bridge's lease is released"
    );
    assert_eq!(net.veths(), "");
    assert_no_pod_left(&d, &mut rt, &[]).await;

    plugins.set_mode("broken", Some("hang"));
    let t = std::time::Instant::now();
    let e = run(&mut rt, pod.clone()).await.unwrap_err();
    let took = t.elapsed();
    println!(
        "hanging plugin: {:?} after {took:?}: {}",
        e.code(),
        e.message()
    );
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(
        e.message().contains("broken ADD timed out after 2s"),
        "{e:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "bounded by plugin_timeout: {took:?}"
    );
    assert_eq!(
        hanging_sleeps(),
        Vec::<String>::new(),
        "the plugin's children are killed"
    );
    assert_eq!(
        net.leases(),
        Vec::<String>::new(),
        "the bridge's lease is released"
    );
    assert_eq!(net.veths(), "");
    assert_no_pod_left(&d, &mut rt, &[]).await;

    plugins.set_mode("broken", None);
    let id = run(&mut rt, pod).await.expect("the retry after the fix");
    let ip = ip_of(&mut rt, &id).await;
    assert!(ip.starts_with("10.231.7."), "{ip}");
    assert_eq!(net.leases(), vec![ip]);
    stop(&mut rt, &id).await.unwrap();
    remove(&mut rt, &id).await;
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_no_pod_left(&d, &mut rt, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_runs_the_whole_chain_and_reports_every_failure() {
    let net = Net::new(4);
    let plugins = Plugins::new();
    plugins.add_failing("faila", "DEL");
    plugins.add_failing("failb", "DEL");
    let d = plugins.daemon(
        &net,
        serde_json::json!([net.bridge_plugin(), {"type": "faila"}, {"type": "failb"}]),
    );
    let mut rt = d.runtime().await;
    let id = run(&mut rt, pod_config("d", "cf4")).await.unwrap();
    let ip = ip_of(&mut rt, &id).await;
    assert_eq!(net.leases(), vec![ip]);
    let e = stop(&mut rt, &id).await.unwrap_err();
    assert!(
        e.message().contains("faila refuses DEL") && e.message().contains("failb refuses DEL"),
        "{e:?}"
    );
    // bridge's DEL ran after both failures: the address is free.
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_eq!(net.veths(), "");
    // The pod keeps its attachment until DEL succeeds, so a retry runs it.
    plugins.switch_off("faila");
    let e = stop(&mut rt, &id).await.unwrap_err();
    assert!(
        !e.message().contains("faila") && e.message().contains("failb refuses DEL"),
        "{e:?}"
    );
    plugins.switch_off("failb");
    stop(&mut rt, &id).await.unwrap();
    remove(&mut rt, &id).await;
    assert_no_pod_left(&d, &mut rt, &[]).await;
}

/// A port-mapped HTTP server in a pod's netns; `None` when it does not answer.
fn http_via_host_port(d: &Daemon, id: &str, host_port: u16) -> Option<String> {
    let ns = d.paths.runroot.join("pods").join(id).join("ns/net");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), format!("pod {id}\n")).unwrap();
    let mut server = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
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
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", host_port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.contains("pod ") {
                answer = body.lines().last().map(String::from);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_belongs_to_one_pod_at_a_time() {
    let net = Net::new(5);
    let plugins = Plugins::new();
    let mut d = plugins.daemon(
        &net,
        serde_json::json!([
            net.bridge_plugin(),
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]),
    );
    let mut rt = d.runtime().await;
    let tcp = |host_port, host_ip| port(Protocol::Tcp, 8080, host_port, host_ip);
    let a = run(&mut rt, pod_with_ports("a", "cf5", vec![tcp(18451, "")]))
        .await
        .unwrap();
    let leases = net.leases();

    // The same port, protocol and (wildcard) address: refused before CNI.
    let e = run(&mut rt, pod_with_ports("b", "cf5", vec![tcp(18451, "")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("18451") && e.message().contains(&a[..12]),
        "{e:?}"
    );
    // A specific address overlaps the wildcard one.
    let e = run(
        &mut rt,
        pod_with_ports("b2", "cf5", vec![tcp(18451, "127.0.0.1")]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(net.leases(), leases, "the refused pods got no address");
    assert_no_pod_left(&d, &mut rt, &[&a]).await;
    // The first pod still serves on its port.
    assert_eq!(
        http_via_host_port(&d, &a, 18451).as_deref(),
        Some(format!("pod {a}").as_str())
    );

    // Another protocol, or other specific addresses, do not conflict.
    let udp = run(
        &mut rt,
        pod_with_ports("u", "cf5", vec![port(Protocol::Udp, 8080, 18451, "")]),
    )
    .await
    .unwrap();
    let ip1 = run(
        &mut rt,
        pod_with_ports("i1", "cf5", vec![tcp(18452, "127.0.0.1")]),
    )
    .await
    .unwrap();
    let ip2 = run(
        &mut rt,
        pod_with_ports("i2", "cf5", vec![tcp(18452, "127.0.0.2")]),
    )
    .await
    .unwrap();
    // But the wildcard overlaps them, also when a pod lists it beside a
    // free port (nothing of that pod is claimed).
    let e = run(
        &mut rt,
        pod_with_ports("w", "cf5", vec![tcp(18453, ""), tcp(18452, "")]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let w = run(&mut rt, pod_with_ports("w", "cf5", vec![tcp(18453, "")]))
        .await
        .unwrap();

    // A restarted daemon knows who holds what.
    d.terminate();
    d.restart();
    let mut rt = d.runtime().await;
    let e = run(&mut rt, pod_with_ports("c", "cf5", vec![tcp(18451, "")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Stopping frees the port (the DNAT rule goes with DEL); so does removing.
    stop(&mut rt, &udp).await.unwrap();
    let udp2 = run(
        &mut rt,
        pod_with_ports("u2", "cf5", vec![port(Protocol::Udp, 8080, 18451, "")]),
    )
    .await
    .unwrap();
    remove(&mut rt, &a).await;
    let c = run(&mut rt, pod_with_ports("c", "cf5", vec![tcp(18451, "")]))
        .await
        .unwrap();
    assert_eq!(
        http_via_host_port(&d, &c, 18451).as_deref(),
        Some(format!("pod {c}").as_str())
    );
    for id in [&udp, &udp2, &ip1, &ip2, &w, &c] {
        remove(&mut rt, id).await;
    }
    assert_no_pod_left(&d, &mut rt, &[]).await;
    assert_eq!(net.leases(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pods_asking_for_one_host_port_get_it_once() {
    let net = Net::new(6);
    let plugins = Plugins::new();
    let d = plugins.daemon(
        &net,
        serde_json::json!([
            net.bridge_plugin(),
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]),
    );
    let rt = d.runtime().await;
    let runs = (0..4).map(|i| {
        let mut rt = rt.clone();
        let cfg = pod_with_ports(
            &format!("r{i}"),
            "cf6",
            vec![port(Protocol::Tcp, 8080, 18461, "")],
        );
        async move { run(&mut rt, cfg).await }
    });
    let results = futures::future::join_all(runs).await;
    let won: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    }
    let mut rt = rt.clone();
    assert_eq!(net.leases().len(), 1);
    remove(&mut rt, won[0]).await;
    assert_no_pod_left(&d, &mut rt, &[]).await;
    assert_eq!(net.leases(), Vec::<String>::new());
}
