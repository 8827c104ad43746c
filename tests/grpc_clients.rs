//! Any gRPC client on the CRI socket, whatever `:authority` it sends: gRPC
//! C-core's Python client (grpcio from PyPI) with its default unix channel
//! (the percent-encoded socket path), the raw socket path as grpc-java
//! sends it, and grpc-go's `localhost`; a ListContainers answer larger than
//! the client's initial flow-control window (64 KiB) arrives whole.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::pod::*;
use common::*;
use k8s_cri::v1::*;
use prost::Message;

/// The grpcio release the test installs (pinned so a run is repeatable).
const GRPCIO: &str = "grpcio==1.85.4";

/// A venv with grpcio, made once under the target directory and reused.
fn python_with_grpcio() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grpcio-venv");
    let python = venv.join("bin/python");
    let ready = |p: &PathBuf| {
        Command::new(p)
            .args(["-c", "import grpc; print(grpc.__version__)"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&python) {
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("spawn");
            assert!(
                out.status.success(),
                "{cmd:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", GRPCIO]));
        assert!(ready(&python), "grpcio importable after install");
    }
    python
}

/// Calls Version and ListPodSandbox with `grpc.insecure_channel("unix:SOCKET")`
/// and the given `grpc.default_authority` (none: the client's default) and
/// prints each response, serialized, as hex.
const CLIENT: &str = r#"
import sys, grpc
sock, authority = sys.argv[1], sys.argv[2]
options = [("grpc.default_authority", authority)] if authority else []
with grpc.insecure_channel("unix:" + sock, options=options) as ch:
    for rpc in ("Version", "ListPodSandbox", "ListContainers"):
        call = ch.unary_unary("/runtime.v1.RuntimeService/" + rpc)
        print(rpc, call(b"", timeout=10).hex())
"#;

#[tokio::test]
async fn python_grpcio_and_any_authority_are_answered() {
    let python = python_with_grpcio();
    let version = Command::new(&python)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output()
        .expect("python");
    println!("grpcio {}", String::from_utf8_lossy(&version.stdout).trim());

    let d = Daemon::builder()
        .registries(&testenv::testenv().registries_conf())
        .start();
    let mut rt = d.runtime().await;
    let logs = d.paths.base.join("logs");
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_pod("py", &logs, NamespaceMode::Container)),
            ..Default::default()
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;

    // Containers whose listing is larger than C-core's initial 64 KiB
    // stream window: the answer needs the client's WINDOW_UPDATEs.
    let image = pull_busybox_at(&d.paths.socket).await.expect("pull");
    let mut containers = Vec::new();
    for i in 0..4 {
        let mut cfg = container_config(&format!("big{i}"), &image, &["sleep", "60"]);
        cfg.annotations
            .insert("big".into(), format!("{i}").repeat(30 * 1024));
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(host_pod("py", &logs, NamespaceMode::Container)),
            })
            .await
            .expect("create container")
            .into_inner()
            .container_id;
        containers.push(id);
    }
    containers.sort();

    let socket = d.paths.socket.to_str().expect("utf-8 path");
    for authority in ["", socket, "localhost"] {
        let out = Command::new(&python)
            .args(["-c", CLIENT, socket, authority])
            .output()
            .expect("python client");
        let what = if authority.is_empty() {
            "default channel (percent-encoded path)"
        } else {
            authority
        };
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let answer = |rpc: &str| {
            let hex = stdout
                .lines()
                .find_map(|l| l.strip_prefix(rpc)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{what}: no {rpc} answer in {stdout}"));
            hex::decode(hex).expect("hex")
        };
        let v = VersionResponse::decode(&*answer("Version")).expect("VersionResponse");
        assert_eq!(v.runtime_name, "crius", "{what}");
        let pods = ListPodSandboxResponse::decode(&*answer("ListPodSandbox"))
            .expect("ListPodSandboxResponse");
        let ids: Vec<_> = pods.items.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, [pod.as_str()], "{what}");
        let listed = answer("ListContainers");
        assert!(listed.len() > 100 * 1024, "{what}: {} bytes", listed.len());
        let listed = ListContainersResponse::decode(&*listed).expect("ListContainersResponse");
        let mut ids: Vec<_> = listed.containers.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, containers, "{what}");
        for c in &listed.containers {
            let name = &c.metadata.as_ref().expect("metadata").name;
            let want = name.trim_start_matches("big").repeat(30 * 1024);
            assert_eq!(c.annotations.get("big"), Some(&want), "{what}: {name}");
        }
        println!(
            "{what}: Version {}, ListPodSandbox and ListContainers ({} containers) answered",
            v.runtime_version,
            listed.containers.len()
        );
    }
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
}
