//! Faults a node sees besides a daemon crash (tests/churn.rs): a pod's
//! monitor killed, and what a user sees
//! after each: clear errors, nothing lost or stuck, nothing leaked.

mod common;

use std::path::Path;
use std::time::Duration;

use common::pod::*;
use common::*;
use k8s_cri::v1::*;

/// Reads a container's init pid from the file its monitor wrote.
fn init_pid(runroot: &Path, id: &str) -> i32 {
    read_trimmed(&runroot.join("containers").join(id).join("pid"))
        .parse()
        .expect("pid file")
}

/// Whether `pid` is gone (or only a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| s.contains("State:\tZ"))
}

async fn killed_monitor(pid_mode: NamespaceMode) {
    let mut e = env_with("deadmon", pid_mode, &[]).await;
    println!("pod PID namespace mode: {pid_mode:?}");
    let plain = e.run("plain", "sleep 1000").await;
    let stubborn = e
        .run("stubborn", "trap '' TERM; while true; do sleep 1; done")
        .await;
    let created = e.create(e.config("created", "sleep 1000")).await.unwrap();
    let runroot = e.d.paths.runroot.clone();
    let pids = [init_pid(&runroot, &plain), init_pid(&runroot, &stubborn)];
    let monitors = monitor_pids(&runroot);
    assert_eq!(monitors.len(), 1, "one monitor per pod");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitors[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = std::time::Instant::now();
    for id in [&plain, &stubborn, &created] {
        let s = e.wait_exit(id).await;
        println!(
            "{}: {:?} reason {:?} exit {} message {:?} after {:?}",
            &id[..12],
            ContainerState::try_from(s.state),
            s.reason,
            s.exit_code,
            s.message,
            t.elapsed()
        );
        assert_eq!(s.reason, "MonitorDied", "{s:?}");
        assert!(s.message.contains("monitor process died"), "{s:?}");
        assert_eq!(s.exit_code, 137, "{s:?}");
        assert!(s.finished_at > 0, "{s:?}");
    }
    // Never lost: all are listed, exited.
    let listed = e.list(ContainerFilter::default()).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|c| c.state == ContainerState::ContainerExited as i32)
    );
    for pid in pids {
        wait_for(
            "the container's process to go",
            Duration::from_secs(5),
            || async { gone(pid).then_some(()) },
        )
        .await;
    }
    // The pod stops and goes cleanly, its containers with it.
    e.stop_and_remove_pod().await;
    assert!(e.list(ContainerFilter::default()).await.is_empty());
    let leaks: Vec<_> = mounts_under(&e.d.paths.base)
        .into_iter()
        .map(|m| m.display().to_string())
        .chain(
            pod_cgroup_dirs(&e.pod)
                .into_iter()
                .filter(|d| d.exists())
                .map(|d| d.display().to_string()),
        )
        .chain(
            [
                runroot.join("pods"),
                runroot.join("containers"),
                runroot.join("m"),
            ]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string()),
        )
        .collect();
    assert!(leaks.is_empty(), "leaked: {leaks:?}");
    assert!(monitor_pids(&runroot).is_empty());
    assert!(
        e.d.logs().contains("the pod's monitor died"),
        "the daemon says what it did"
    );
}

#[tokio::test]
async fn a_killed_monitor_leaves_its_containers_exited_with_the_reason_and_the_pod_removable() {
    killed_monitor(NamespaceMode::Container).await;
}

#[tokio::test]
async fn a_killed_monitor_in_a_shared_pid_namespace_pod() {
    killed_monitor(NamespaceMode::Pod).await;
}
