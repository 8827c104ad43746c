//! CNI handling against hostile or broken input, with the real plugins
//! (Debian's containernetworking-plugins) and small fake ones: `CNI_ARGS`
//! cannot be forged through pod metadata.
//!
//! Every test has its own bridge (`crtcf*`) and subnet (10.231.*.0/24).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use k8s_cri::v1::*;
use tonic::Code;

/// A test's own network: name, bridge and /24 in 10.231.0.0/16.
struct Net {
    name: String,
    bridge: String,
    subnet: String,
}

impl Net {
    fn new(tag: u8) -> Net {
        let net = Net {
            name: format!("crius-cf-{tag}"),
            bridge: format!("crtcf{tag}"),
            subnet: format!("10.231.{tag}.0/24"),
        };
        // Leases a failed earlier run left would read as this run's leak.
        let _ = std::fs::remove_dir_all(net.lease_dir());
        net
    }

    fn lease_dir(&self) -> PathBuf {
        Path::new("/var/lib/cni/networks").join(&self.name)
    }

    /// The addresses host-local has handed out in this network.
    fn leases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.lease_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// The bridge plugin's config for this network.
    fn bridge_plugin(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]]}
        })
    }
}

impl Drop for Net {
    /// The bridge plugin never deletes its bridge; portmap's rules of pods a
    /// failed test left running go too.
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let saved = Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ours = format!("dnat name: \\\"{}\\\"", self.name);
        for line in saved.lines() {
            let Some(rule) = line.strip_prefix("-A CNI-HOSTPORT-DNAT ") else {
                continue;
            };
            if !line.contains(&ours) {
                continue;
            }
            let Some(chain) = rule.split(' ').find(|w| w.starts_with("CNI-DN-")) else {
                continue;
            };
            // iptables-save quotes the comment as a shell would.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("iptables -t nat -D CNI-HOSTPORT-DNAT {rule}"))
                .status();
            for op in ["-F", "-X"] {
                let _ = Command::new("iptables")
                    .args(["-t", "nat", op, chain])
                    .status();
            }
        }
    }
}

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

    /// A daemon searching this directory before the real plugins, with
    /// `plugins` as its network's chain.
    fn daemon(&self, net: &Net, plugins: serde_json::Value) -> Daemon {
        let d = Daemon::builder()
            .network(&format!(
                "plugin_dirs = [\"{}\", \"/usr/lib/cni\"]",
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

async fn remove(rt: &mut Runtime, id: &str) {
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

async fn pod_ids(rt: &mut Runtime) -> Vec<String> {
    rt.list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
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
        assert!(e.message().contains("K8S_POD_"), "{what}: {e:?}");
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
