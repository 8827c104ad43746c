//! A runtime handler that names an external OCI runtime (runc), beside the
//! default (embedded) one: lifecycle, exit codes, CRI logs, ExecSync, a
//! daemon crash, and proof through `runc list` that runc, not the embedded
//! executor, runs the handler's containers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::pod::*;
use common::stream::{collect, connect};
use common::*;
use futures::SinkExt;
use k8s_cri::v1::*;
use tokio_tungstenite::tungstenite::Message;

const RUNC: &str = "/usr/sbin/runc";

/// Installs runc when missing (as hack/deps.sh does): the tests need it.
fn ensure_runc() {
    if Path::new(RUNC).exists() {
        return;
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "runc"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && Path::new(RUNC).exists(),
        "runc is needed: apt-get install runc"
    );
}

/// The ids runc has in state directory `root`, with their status.
fn runc_list(root: &Path) -> Vec<(String, String)> {
    let out = Command::new(RUNC)
        .arg("--root")
        .arg(root)
        .args(["list", "--format", "json"])
        .output()
        .expect("runc list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn status_in(list: &[(String, String)], id: &str) -> Option<String> {
    list.iter().find(|(i, _)| i == id).map(|(_, s)| s.clone())
}

/// A daemon with handler `runc` → /usr/sbin/runc (state in `root`), its
/// default pod (embedded), and the runc pod's id.
async fn runc_env(name: &str, root: &Path) -> (Env, String) {
    ensure_runc();
    let config = format!(
        "[runtime.handlers.runc]\nruntime_type = \"oci\"\nruntime_path = \"{RUNC}\"\nruntime_root = \"{}\"\n",
        root.display()
    );
    let mut e = env_built(name, NamespaceMode::Container, |b| b.config(&config)).await;
    let pod =
        e.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_pod(
                &format!("{name}-runc"),
                &e.logs,
                NamespaceMode::Container,
            )),
            runtime_handler: "runc".into(),
        })
        .await
        .expect("run pod with handler runc")
        .into_inner()
        .pod_sandbox_id;
    (e, pod)
}

#[tokio::test]
async fn runc_handler_runs_containers_beside_the_embedded_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().join("runc-root");
    let (mut e, runc_pod) = runc_env("rh", &root).await;
    let embedded_pod = e.pod.clone();

    // Status lists the handler with what runc 1.1 does.
    let st =
        e.rt.status(StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner();
    let h = st
        .runtime_handlers
        .iter()
        .find(|h| h.name == "runc")
        .expect("runc handler listed");
    let f = h.features.expect("features");
    assert!(!f.recursive_read_only_mounts && !f.user_namespaces, "{f:?}");

    // One container in each pod.
    let embedded = e.run("emb", "echo embedded; sleep 1000").await;
    e.pod = runc_pod.clone();
    let id = e
        .run("long", "echo started; echo warn >&2; sleep 1000")
        .await;
    let listed = runc_list(&root);
    assert_eq!(
        status_in(&listed, &id).as_deref(),
        Some("running"),
        "{listed:?}"
    );
    assert_eq!(status_in(&listed, &embedded), None, "{listed:?}");
    let s = e.status(&id).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32);
    wait_for("the runc container's log", Duration::from_secs(10), || {
        let log = e.log("long");
        async move {
            (log.contains(" stdout F started\n") && log.contains(" stderr F warn\n")).then_some(())
        }
    })
    .await;

    // ExecSync through runc: output and exit code.
    assert_eq!(
        e.sh(&id, "echo exec ok; echo to err >&2; exit 4").await,
        ("exec ok\n".to_string(), 4)
    );
    let r = e
        .exec(&id, &["/bin/sh", "-c", "echo $$; cat /proc/1/cmdline"], 10)
        .await;
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("sleep") || out.contains("sh"), "{out}");
    // An ExecSync past its timeout is killed.
    let r = e.exec(&id, &["sleep", "30"], 1).await;
    assert!(r.exit_code != 0, "{r:?}");

    // An interactive exec with a terminal runc makes inside the container.
    let url =
        e.rt.exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["/bin/sh".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.expect("connect");
    for msg in [
        [&[4u8][..], br#"{"Width":100,"Height":40}"#, b"\n"].concat(),
        [&[0u8][..], b"tty; stty size; exit 5\n"].concat(),
    ] {
        ws.send(Message::Binary(msg.into())).await.expect("send");
    }
    let (out, _, status) = collect(&mut ws, false).await;
    assert!(out.contains("/dev/pts/") && out.contains("40 100"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(v["details"]["causes"][0]["message"], "5", "{status}");

    // A crash of the daemon: the container, runc's state and exec stay.
    e.d.kill9();
    e.d.restart();
    e.rt = e.d.runtime().await;
    let s = e.status(&id).await;
    assert_eq!(s.state, ContainerState::ContainerRunning as i32);
    assert_eq!(
        e.sh(&id, "echo after restart").await,
        ("after restart\n".to_string(), 0)
    );
    assert_eq!(
        status_in(&runc_list(&root), &id).as_deref(),
        Some("running")
    );

    // Stop (the shell as PID 1 ignores SIGTERM: SIGKILL after 1 s), remove.
    e.stop(&id, 1).await;
    let s = e.status(&id).await;
    assert_eq!(
        (s.state, s.exit_code),
        (ContainerState::ContainerExited as i32, 137)
    );
    e.remove(&id).await;
    assert_eq!(status_in(&runc_list(&root), &id), None);

    // A container that exits by itself: code, reason, logs.
    let life = e.run("life", "echo out; echo err >&2; exit 3").await;
    let s = e.wait_exit(&life).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    let log = e.log("life");
    assert!(
        log.contains(" stdout F out\n") && log.contains(" stderr F err\n"),
        "{log}"
    );
    assert_eq!(
        status_in(&runc_list(&root), &life).as_deref(),
        Some("stopped")
    );
    e.remove(&life).await;

    // A terminal container: runc makes the pty and sends its master to the
    // monitor, which logs what comes out of it.
    let mut cfg = e.config("tty", "test -t 0 && test -t 1 && echo on a tty; sleep 1000");
    cfg.tty = true;
    cfg.stdin = true;
    let tty = e.run_config(cfg).await;
    wait_for("the tty container's log", Duration::from_secs(10), || {
        let log = e.log("tty");
        async move { log.contains("on a tty").then_some(()) }
    })
    .await;
    assert_eq!(
        status_in(&runc_list(&root), &tty).as_deref(),
        Some("running")
    );
    e.stop(&tty, 0).await;
    e.remove(&tty).await;

    // A program missing from the image fails the create or the start,
    // never silently.
    let cfg = container_config("nope", &e.image, &["/no/such/program"]);
    let failed = match e.create(cfg).await {
        Err(s) => Some(s),
        Ok(id) => {
            e.rt.start_container(StartContainerRequest { container_id: id })
                .await
                .err()
        }
    };
    let failed = failed.expect("a missing program fails");
    assert_ne!(failed.code(), tonic::Code::Internal, "{failed:?}");

    // The embedded pod's container ran beside, untouched by runc.
    e.pod = embedded_pod;
    assert_eq!(
        e.status(&embedded).await.state,
        ContainerState::ContainerRunning as i32
    );
    assert_eq!(e.sh(&embedded, "echo emb").await, ("emb\n".to_string(), 0));
    e.stop_and_remove_pod().await;
    e.pod = runc_pod;
    e.stop_and_remove_pod().await;
    assert!(runc_list(&root).is_empty(), "{:?}", runc_list(&root));
}
