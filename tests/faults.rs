//! Faults a node sees besides a daemon crash (tests/churn.rs): a pod's
//! monitor killed, CNI plugins that fail or hang, and what a user sees
//! after each: clear errors, nothing lost or stuck, nothing leaked; and
//! startup reconciliation of what a crash left half done; and a full
//! state filesystem.

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

/// The `reconcile:` lines of a daemon log.
fn reconcile_lines(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains("reconcile:"))
        .map(String::from)
        .collect()
}

/// The live pod-init processes of the pods pinned under `runroot`: those
/// PID 1 of a pinned PID namespace.
fn pod_inits(runroot: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let pinned: Vec<u64> = std::fs::read_dir(runroot.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| std::fs::metadata(p.path().join("ns/pid")).ok())
        .map(|m| m.ino())
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmd = std::fs::read(p.path().join("cmdline")).ok()?;
            let ns = std::fs::metadata(p.path().join("ns/pid")).ok()?.ino();
            (cmd.split(|b| *b == 0).any(|a| a == b"pod-init") && pinned.contains(&ns))
                .then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reconciliation_repairs_what_a_crash_left_half_done() {
    use common::net::Net;
    let net = Net::new(8);
    let mut d = Daemon::builder()
        .registries(&common::testenv::testenv().registries_conf())
        .env(crius::fault::CRASH_AT_ENV, "pod-after-network")
        .start();
    d.install_cni_config("10-faults.conflist", &net.conflist());
    let image = pull_busybox_at(&d.paths.socket)
        .await
        .expect("pull busybox");
    let mut rt = d.runtime().await;

    // A pod whose records a crash (or a lost store write) will lose: host
    // network, so it gets through; a running container in it.
    let lost_pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_pod(
                "lost",
                &d.paths.base.join("logs"),
                NamespaceMode::Pod,
            )),
            ..Default::default()
        })
        .await
        .expect("run the lost pod")
        .into_inner()
        .pod_sandbox_id;
    let lost = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: lost_pod.clone(),
            config: Some(container_config("c", &image, &["sleep", "1000"])),
            sandbox_config: None,
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: lost.clone(),
    })
    .await
    .expect("start");
    let lost_pid = init_pid(&d.paths.runroot, &lost);

    // A pod with its own network and PID namespace; the daemon dies with
    // its network added, before it is ready.
    let mut halfway = pod_config("halfway", "faults");
    halfway.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(halfway.clone()),
            ..Default::default()
        })
        .await
        .expect_err("the daemon crashed");
    println!("RunPodSandbox at the crash point: {:?}", err.code());
    d.kill9();
    assert_eq!(
        net.leases().len(),
        1,
        "the crash left the pod's address held"
    );
    assert_ne!(net.veths(), "", "and its veth");
    let inits = pod_inits(&d.paths.runroot);
    assert_eq!(inits.len(), 2, "both pods' inits run");

    // The records of the first pod and its container are lost.
    let store = crius::store::Store::open(&d.paths.root).expect("open the store");
    assert!(
        store
            .delete(crius::store::Table::Containers, &lost)
            .unwrap()
    );
    assert!(store.delete(crius::store::Table::Pods, &lost_pod).unwrap());
    drop(store);

    d.unset_env(crius::fault::CRASH_AT_ENV);
    d.restart();
    // The socket takes connections from the start; answers come once
    // reconciliation is done.
    let mut rt = d.runtime().await;
    let pods = common::all_pods(&mut rt).await;
    let lines = reconcile_lines(&d.logs());
    println!("reconcile lines:\n{}", lines.join("\n"));
    assert_eq!(pods.len(), 1, "{pods:?}");
    let half = &pods[0];
    assert_eq!(half.state, PodSandboxState::SandboxNotready as i32);
    let said = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        said(&format!("reconcile: pod {} was left half set up", half.id)),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        said(&format!("reconcile: removed container {lost}")),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        said(&format!("reconcile: removed pod directory {lost_pod}")),
        1,
        "{lines:#?}"
    );
    assert_eq!(said("reconcile: retired the monitor"), 1, "{lines:#?}");
    assert_eq!(lines.len(), 4, "one line per action: {lines:#?}");

    // Repaired: the address, veth, pins, inits and the lost pod's
    // processes, monitor and cgroup are gone.
    assert_eq!(net.leases(), Vec::<String>::new());
    assert_eq!(net.veths(), "");
    assert!(
        mounts_under(
            &d.paths
                .runroot
                .join("pods")
                .join(&half.id)
                .join("ns")
                .join("net")
        )
        .is_empty()
    );
    assert!(mounts_under(&d.paths.runroot.join("pods").join(&lost_pod)).is_empty());
    assert!(mounts_under(&d.paths.root.join("containers")).is_empty());
    // The half-made pod keeps its (idle) monitor until it is removed.
    let runroot = d.paths.runroot.clone();
    wait_for(
        "the lost pod's monitor to go",
        Duration::from_secs(5),
        || async { (monitor_pids(&runroot).len() == 1).then_some(()) },
    )
    .await;
    wait_for(
        "the lost container's process to go",
        Duration::from_secs(5),
        || async { gone(lost_pid).then_some(()) },
    )
    .await;
    for pid in inits {
        wait_for("the pod inits to go", Duration::from_secs(5), || async {
            gone(pid).then_some(())
        })
        .await;
    }
    assert!(pod_cgroup_dirs(&lost_pod).iter().all(|d| !d.exists()));

    // The half-made pod is removed cleanly, and kubelet's retry works.
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: half.id.clone(),
    })
    .await
    .expect("remove");
    assert!(
        mounts_under(&d.paths.base).is_empty(),
        "{:?}",
        mounts_under(&d.paths.base)
    );
    assert!(monitor_pids(&runroot).is_empty());
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(halfway),
            ..Default::default()
        })
        .await
        .expect("the retry")
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(net.leases().len(), 1);
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    assert_eq!(net.leases(), Vec::<String>::new());
    // A clean restart has nothing to reconcile.
    d.terminate();
    d.restart();
    let mut rt = d.runtime().await;
    rt.list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap();
    assert_eq!(
        reconcile_lines(&d.logs()).len(),
        4,
        "nothing more to repair"
    );
}

/// Fills the filesystem `dir` is on with `dir/fill`; returns the bytes written.
fn fill(dir: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fill")).expect("fill file");
    let chunk = vec![0x5au8; 1 << 20];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(w) => n += w as u64,
        }
    }
    n
}

async fn container_ids(rt: &mut Runtime) -> Vec<String> {
    let mut ids: Vec<String> = rt
        .list_containers(ListContainersRequest::default())
        .await
        .expect("list containers")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

async fn pod_ids(rt: &mut Runtime) -> Vec<String> {
    let mut ids: Vec<String> = common::all_pods(rt)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_filesystem_gives_a_clear_error_and_service_resumes() {
    // root and runroot each on a 64 MiB tmpfs, mounted before the daemon
    // starts (and kept across its restarts).
    let mut e = env_built("full", NamespaceMode::Container, |b| {
        b.wrap(
            "for d in \"$5\" \"$7\"; do mkdir -p \"$d\"; \
             mountpoint -q \"$d\" || mount -t tmpfs -o size=64m,mode=0711 tmpfs \"$d\" || exit 1; \
             done; exec \"$@\"",
        )
    })
    .await;
    let before = e.run("before", "sleep 1000").await;
    let (root, runroot) = (e.d.paths.root.clone(), e.d.paths.runroot.clone());
    println!(
        "filled root with {} MiB, runroot with {} MiB",
        fill(&root) >> 20,
        fill(&runroot) >> 20
    );
    let err = e
        .create(e.config("during", "sleep 1000"))
        .await
        .expect_err("no space for a container");
    println!(
        "CreateContainer on a full disk: {:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("No space left on device"), "{err:?}");
    let err =
        e.rt.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_pod("full2", &e.logs, NamespaceMode::Container)),
            ..Default::default()
        })
        .await
        .expect_err("no space for a pod");
    println!(
        "RunPodSandbox on a full disk: {:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let listed = container_ids(&mut e.rt).await;
    assert_eq!(
        listed,
        vec![before.clone()],
        "the failed create left nothing listed"
    );

    let pods = pod_ids(&mut e.rt).await;
    assert_eq!(
        pods,
        vec![e.pod.clone()],
        "the failed run left nothing listed"
    );

    // The store is whole: a restart (still full) lists the same objects.
    e.d.terminate();
    e.d.restart();
    e.rt = e.d.runtime().await;
    assert_eq!(container_ids(&mut e.rt).await, listed);
    assert_eq!(pod_ids(&mut e.rt).await, pods);
    assert_eq!(
        e.status(&before).await.state,
        ContainerState::ContainerRunning as i32
    );

    // Space returns: service resumes.
    std::fs::remove_file(root.join("fill")).unwrap();
    std::fs::remove_file(runroot.join("fill")).unwrap();
    let after = e.run("after", "sleep 1000").await;
    assert_eq!(
        e.status(&after).await.state,
        ContainerState::ContainerRunning as i32
    );
    for id in [&before, &after] {
        e.stop(id, 0).await;
        e.remove(id).await;
    }
    e.stop_and_remove_pod().await;
}
