//! Hostile and faulty input against a real daemon, as a compromised
//! kubelet plugin or a buggy client would send it: bad input answers a
//! clear status (never Internal), limits hold, nothing hangs or leaks.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::pod::*;
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

/// Checks every case before failing, so a run shows each wrong answer.
#[derive(Default)]
struct Verdicts(Vec<String>);

impl Verdicts {
    fn check(&mut self, what: &str, got: Code, want: Code) {
        println!("{what:<40} {got:?}");
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    fn assert_all(self) {
        assert!(self.0.is_empty(), "wrong answers:\n{}", self.0.join("\n"));
    }
}

/// The code of a call's answer (Ok for success); a long message is a
/// wrong answer of its own (it echoes the input).
fn answer<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) if s.message().len() >= 1024 => Code::ResourceExhausted,
        Err(s) => s.code(),
    }
}

/// The code of a failed call (Ok for success).
fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => {
            assert!(
                s.message().len() < 1024,
                "the message echoes the input: {} bytes",
                s.message().len()
            );
            s.code()
        }
    }
}

async fn run_pod(rt: &mut Runtime, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

/// A host-network pod (no CNI) with `f` applied to its config.
fn pod_with(name: &str, f: impl FnOnce(&mut PodSandboxConfig)) -> PodSandboxConfig {
    let mut p = host_pod(
        name,
        std::path::Path::new("/tmp/crius-hostile-logs"),
        NamespaceMode::Container,
    );
    f(&mut p);
    p
}

#[tokio::test]
async fn bad_pod_input_is_invalid_argument_never_internal() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    let mib = "a".repeat(1 << 20);
    let cases: Vec<(&str, PodSandboxConfig)> = vec![
        ("name with CNI_ARGS", pod_with("x;IP=10.88.250.250", |_| {})),
        ("name with NUL", pod_with("a\0b", |_| {})),
        ("1 MiB name", pod_with(&mib, |_| {})),
        (
            "namespace with =",
            pod_with("ok", |p| {
                p.metadata.as_mut().unwrap().namespace = "a=b".into()
            }),
        ),
        (
            "uid with newline",
            pod_with("ok", |p| p.metadata.as_mut().unwrap().uid = "a\nb".into()),
        ),
        (
            "log directory /proc/1",
            pod_with("ok", |p| p.log_directory = "/proc/1".into()),
        ),
        (
            "relative log directory",
            pod_with("ok", |p| p.log_directory = "logs".into()),
        ),
        (
            "label value of 1 MiB",
            pod_with("ok", |p| {
                p.labels = HashMap::from([("k".into(), mib.clone())]);
            }),
        ),
        (
            "10k labels",
            pod_with("ok", |p| {
                p.labels = (0..10_000)
                    .map(|i| (format!("l{i}"), "v".repeat(60)))
                    .collect();
            }),
        ),
        (
            "annotations over 256 KiB",
            pod_with("ok", |p| {
                p.annotations = (0..10)
                    .map(|i| (format!("a{i}"), "v".repeat(30 << 10)))
                    .collect();
            }),
        ),
        (
            "port 0",
            pod_with("ok", |p| {
                p.port_mappings = vec![PortMapping {
                    container_port: 0,
                    host_port: 8080,
                    ..Default::default()
                }];
            }),
        ),
        (
            "port -1",
            pod_with("ok", |p| {
                p.port_mappings = vec![PortMapping {
                    container_port: -1,
                    ..Default::default()
                }];
            }),
        ),
        (
            "port 65536",
            pod_with("ok", |p| {
                p.port_mappings = vec![PortMapping {
                    container_port: 80,
                    host_port: 65536,
                    ..Default::default()
                }];
            }),
        ),
        (
            "unknown protocol",
            pod_with("ok", |p| {
                p.port_mappings = vec![PortMapping {
                    container_port: 80,
                    protocol: 7,
                    ..Default::default()
                }];
            }),
        ),
        (
            "host IP that is not an IP",
            pod_with("ok", |p| {
                p.port_mappings = vec![PortMapping {
                    container_port: 80,
                    host_ip: "localhost".into(),
                    ..Default::default()
                }];
            }),
        ),
        (
            "malformed sysctl",
            pod_with("ok", |p| {
                p.linux.as_mut().unwrap().sysctls =
                    HashMap::from([("net/../../x".into(), "1".into())]);
            }),
        ),
        (
            "unknown sysctl",
            pod_with("ok", |p| {
                let l = p.linux.as_mut().unwrap();
                l.security_context
                    .as_mut()
                    .unwrap()
                    .namespace_options
                    .as_mut()
                    .unwrap()
                    .network = NamespaceMode::Pod as i32;
                l.sysctls = HashMap::from([("net.ipv4.no_such_knob".into(), "1".into())]);
            }),
        ),
        (
            "DNS server that is not an IP",
            pod_with("ok", |p| {
                p.dns_config = Some(DnsConfig {
                    servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
                    ..Default::default()
                });
            }),
        ),
    ];
    let mut v = Verdicts::default();
    for (what, config) in cases {
        v.check(
            what,
            answer(run_pod(&mut rt, config).await),
            Code::InvalidArgument,
        );
    }
    v.assert_all();
    // Nothing of the refused pods is listed or left behind.
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}

#[tokio::test]
async fn bad_container_input_is_invalid_argument_never_internal() {
    let mut e = env("badctr").await;
    let mib = "a".repeat(1 << 20);
    let base = e.config("c", "sleep 100");
    let with = |f: &dyn Fn(&mut ContainerConfig)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let with_resources = |r: LinuxContainerResources| {
        with(&|c| {
            c.linux = Some(LinuxContainerConfig {
                resources: Some(r.clone()),
                ..Default::default()
            })
        })
    };
    let cases: Vec<(&str, ContainerConfig, Code)> = vec![
        (
            "name with NUL",
            with(&|c| c.metadata.as_mut().unwrap().name = "a\0b".into()),
            Code::InvalidArgument,
        ),
        (
            "1 MiB name",
            with(&|c| c.metadata.as_mut().unwrap().name = mib.clone()),
            Code::InvalidArgument,
        ),
        (
            "arg with NUL",
            with(&|c| c.args = vec!["a\0b".into()]),
            Code::InvalidArgument,
        ),
        (
            "2 MiB of args",
            with(&|c| c.args = vec![mib.clone(), mib.clone()]),
            Code::InvalidArgument,
        ),
        (
            "env key with NUL",
            with(&|c| {
                c.envs = vec![KeyValue {
                    key: "A\0".into(),
                    value: "1".into(),
                }]
            }),
            Code::InvalidArgument,
        ),
        (
            "env key with =",
            with(&|c| {
                c.envs = vec![KeyValue {
                    key: "A=B".into(),
                    value: "1".into(),
                }]
            }),
            Code::InvalidArgument,
        ),
        (
            "10k env entries",
            with(&|c| {
                c.envs = (0..10_000)
                    .map(|i| KeyValue {
                        key: format!("E{i}"),
                        value: "v".into(),
                    })
                    .collect()
            }),
            Code::InvalidArgument,
        ),
        (
            "mount at /",
            with(&|c| {
                c.mounts = vec![Mount {
                    container_path: "/".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
        ),
        (
            "mount via /proc/self/root/..",
            with(&|c| {
                c.mounts = vec![Mount {
                    container_path: "/proc/self/root/..".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
        ),
        (
            "mount in /proc/sys",
            with(&|c| {
                c.mounts = vec![Mount {
                    container_path: "/proc/sys/kernel".into(),
                    host_path: "/tmp".into(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
        ),
        (
            "recursive read-only mount that is read-write",
            with(&|c| {
                c.mounts = vec![Mount {
                    container_path: "/data".into(),
                    host_path: "/tmp".into(),
                    readonly: false,
                    recursive_read_only: true,
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
        ),
        (
            "2000 mounts",
            with(&|c| {
                c.mounts = (0..2000)
                    .map(|i| Mount {
                        container_path: format!("/m{i}"),
                        host_path: "/tmp".into(),
                        ..Default::default()
                    })
                    .collect()
            }),
            Code::InvalidArgument,
        ),
        (
            "image reference of 1 MiB",
            with(&|c| {
                c.image = Some(ImageSpec {
                    image: mib.clone(),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "working dir with NUL",
            with(&|c| c.working_dir = "/a\0".into()),
            Code::InvalidArgument,
        ),
        (
            "unknown capability",
            with(&|c| {
                c.linux = Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        capabilities: Some(Capability {
                            add_capabilities: vec!["FLY".into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "negative cpu shares",
            with_resources(LinuxContainerResources {
                cpu_shares: -2,
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            "negative cpu period",
            with_resources(LinuxContainerResources {
                cpu_period: -100_000,
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            "negative memory",
            with_resources(LinuxContainerResources {
                memory_limit_in_bytes: -1,
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            "1 byte of memory",
            with_resources(LinuxContainerResources {
                memory_limit_in_bytes: 1,
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
    ];
    let mut v = Verdicts::default();
    for (what, config, want) in cases {
        let t = Instant::now();
        let got = answer(e.create(config).await);
        v.check(what, got, want);
        if t.elapsed() > Duration::from_secs(5) {
            v.0.push(format!("{what} took {:?}", t.elapsed()));
        }
    }
    // Whatever was accepted goes again.
    for c in e.list(ContainerFilter::default()).await {
        e.remove(&c.id).await;
    }
    // Ids: NUL, 1 MiB and path characters are bad input; unknown
    // well-formed ids keep their CRI meaning.
    for (what, id) in [
        ("id with NUL", "a\0b".to_string()),
        ("1 MiB id", mib.clone()),
        ("id with a path", "../../etc".into()),
    ] {
        let r =
            e.rt.container_status(ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await;
        v.check(what, answer(r), Code::InvalidArgument);
    }
    let r =
        e.rt.stop_container(StopContainerRequest {
            container_id: "5e8b33a4-8d1c-4b0e-9a43-0c2f6c4d7a51".into(),
            timeout: 0,
        })
        .await;
    v.check("stop of an unknown UUID id", answer(r), Code::Ok);
    let r =
        e.rt.stop_container(StopContainerRequest {
            container_id: "abc".into(),
            timeout: -1,
        })
        .await;
    v.check("negative stop timeout", answer(r), Code::InvalidArgument);
    let r =
        e.rt.exec_sync(ExecSyncRequest {
            container_id: "abc".into(),
            cmd: vec!["a\0".into()],
            timeout: 1,
        })
        .await;
    v.check("exec argument with NUL", answer(r), Code::InvalidArgument);
    let mut images = e.d.images().await;
    let r = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: mib.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    v.check("1 MiB image reference", answer(r), Code::InvalidArgument);
    // Within the length limit, but malformed twice over (found by
    // tests/fuzz.rs): the message quotes neither whole.
    let r = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: format!("{}x:{}", "../".repeat(330), "!".repeat(20)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    v.check(
        "1000-byte malformed image reference",
        answer(r),
        Code::InvalidArgument,
    );
    v.assert_all();
}

#[tokio::test]
async fn list_answers_stay_within_a_clients_message_limit() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    // Each pod carries ~250 KiB of annotations (just under the limit per
    // object): about 64 of them fill a 16 MiB answer.
    let annotations: HashMap<String, String> = (0..5)
        .map(|i| (format!("a{i}"), "v".repeat(50 << 10)))
        .collect();
    let mut made = Vec::new();
    let mut refused = None;
    for i in 0..80 {
        let cfg = pod_with(&format!("big{i}"), |p| p.annotations = annotations.clone());
        match run_pod(&mut rt, cfg).await {
            Ok(id) => made.push(id),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, err) = refused.expect("the node refused a pod before its list passed 16 MiB");
    println!("pod {i} refused: {err}");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let resp = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("the list answers");
    let size = prost::Message::encoded_len(resp.get_ref());
    assert!(size <= 16 << 20, "{size} bytes");
    assert_eq!(resp.into_inner().items.len(), made.len());
    // Removing one makes room again.
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: made.pop().unwrap(),
    })
    .await
    .unwrap();
    let cfg = pod_with("again", |p| p.annotations = annotations.clone());
    run_pod(&mut rt, cfg).await.expect("room after a removal");
}

#[tokio::test]
async fn removed_pods_leave_no_monitor_directory() {
    let mut e = env("mondir").await;
    let id = e.run("c", "sleep 100").await;
    let mdir = e.d.paths.runroot.join("m");
    assert_eq!(std::fs::read_dir(&mdir).unwrap().count(), 1);
    let _ = id;
    e.stop_and_remove_pod().await;
    let left: Vec<_> = std::fs::read_dir(&mdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A container that ignores SIGTERM (only SIGKILL ends it).
async fn stubborn(e: &mut Env, name: &str) -> String {
    e.run(name, "trap '' TERM; while true; do sleep 1; done")
        .await
}

fn stop_req(
    id: &str,
    timeout: i64,
    client_deadline: Duration,
) -> tonic::Request<StopContainerRequest> {
    let mut r = tonic::Request::new(StopContainerRequest {
        container_id: id.into(),
        timeout,
    });
    r.set_timeout(client_deadline);
    r
}

#[tokio::test]
async fn a_later_stop_takes_over_one_with_a_huge_timeout() {
    let mut e = env("stoptake").await;
    let id = stubborn(&mut e, "stubborn").await;
    // The client gives up after a second; the stop goes on detached with
    // a timeout of 2^63-1 seconds.
    let mut bare = bare_runtime(&e.d.paths.socket).await;
    let r = bare
        .stop_container(stop_req(&id, i64::MAX, Duration::from_secs(1)))
        .await;
    assert_eq!(code(r), Code::DeadlineExceeded);
    assert_eq!(
        e.status(&id).await.state,
        ContainerState::ContainerRunning as i32
    );
    // kubelet's force delete: a zero grace period takes over at once.
    let t = Instant::now();
    e.stop(&id, 0).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let s = e.status(&id).await;
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137);
    // Teardown is not held up either.
    let other = stubborn(&mut e, "other").await;
    let r = bare
        .stop_container(stop_req(&other, 1 << 62, Duration::from_secs(1)))
        .await;
    assert_eq!(code(r), Code::DeadlineExceeded);
    // 2^62 s must not wrap to zero and kill at once.
    assert_eq!(
        e.status(&other).await.state,
        ContainerState::ContainerRunning as i32
    );
    let t = Instant::now();
    e.remove(&other).await;
    e.stop_and_remove_pod().await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "teardown took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn working_directory_and_exec_failures_are_the_requests_problem() {
    let mut e = env("workdir").await;
    let mut cfg = e.config("file-cwd", "sleep 100");
    cfg.working_dir = "/bin/sh/below-a-file".into();
    let r = e.create(cfg).await;
    assert_eq!(code(r), Code::InvalidArgument);
    // A working directory the image lacks is made (as Docker and runc do).
    let mut cfg = e.config("new-cwd", "pwd; sleep 100");
    cfg.working_dir = "/srv/made/for/it".into();
    let id = e.run_config(cfg).await;
    let (out, _) = e.sh(&id, "pwd").await;
    assert_eq!(out.trim(), "/srv/made/for/it");
    // A program missing from the image: the exec failed, the runtime is fine.
    let r =
        e.rt.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["/no/such/tool".into()],
            timeout: 5,
        })
        .await;
    let err = r.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("/no/such/tool"), "{err}");
}

#[tokio::test]
async fn an_exec_ends_when_its_client_goes_away_and_deadlines_say_so() {
    let mut e = env("execgone").await;
    let id = e.run("c", "sleep 1000").await;
    // No timeout of its own: only the client's going away can end it.
    let mut req = tonic::Request::new(ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["/bin/sh".into(), "-c".into(), "sleep 777".into()],
        timeout: 0,
    });
    req.set_timeout(Duration::from_millis(500));
    let r = bare_runtime(&e.d.paths.socket).await.exec_sync(req).await;
    assert_eq!(
        code(r),
        Code::DeadlineExceeded,
        "an expired deadline is DEADLINE_EXCEEDED"
    );
    let gone = async {
        loop {
            let (ps, _) = e
                .sh(&id, "ps -o args | grep 'sleep 777' | grep -v grep")
                .await;
            if ps.trim().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the exec outlived its client");
    // A client that just drops the call (no deadline) ends it too.
    let mut rt = e.d.runtime().await;
    let dropped = tokio::time::timeout(
        Duration::from_millis(500),
        rt.exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "sleep 778".into()],
            timeout: 0,
        }),
    )
    .await;
    assert!(dropped.is_err());
    drop(rt);
    let gone = async {
        loop {
            let (ps, _) = e
                .sh(&id, "ps -o args | grep 'sleep 778' | grep -v grep")
                .await;
            if ps.trim().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the exec outlived its dropped client");
}

#[tokio::test]
async fn removing_a_pod_while_containers_are_created_ends_consistent() {
    let mut e = env("racepod").await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(e.spawn_run(&format!("c{i}"), "sleep 100").await);
    }
    tokio::time::sleep(Duration::from_millis(15)).await;
    e.rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: e.pod.clone(),
    })
    .await
    .expect("removal succeeds while creates run");
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(s) => assert!(
                matches!(s.code(), Code::NotFound | Code::FailedPrecondition),
                "a racing create or start: {s}"
            ),
        }
    }
    // Whatever won, the pod is gone and nothing of it is listed or left.
    let pods =
        e.rt.list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
    assert!(pods.is_empty(), "{pods:?}");
    let left = e.list(ContainerFilter::default()).await;
    assert!(left.is_empty(), "{left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let runroot = e.d.paths.runroot.display().to_string();
    let root = e.d.paths.root.display().to_string();
    let held: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&runroot) || l.contains(&root))
        .collect();
    assert!(held.is_empty(), "mounts left: {held:?}");
    assert!(monitor_pids(&e.d.paths.runroot).is_empty());
}

#[tokio::test]
async fn a_set_up_killed_midway_is_reported_at_once() {
    let mut e = env("killsetup").await;
    // Kill whatever appears in a container cgroup of this pod while a
    // create runs: the set-up's intermediate or init, whichever is there.
    let version = cgroup_version();
    let pod_cgroups: Vec<std::path::PathBuf> = if version == "v2" {
        vec![std::path::PathBuf::from("/sys/fs/cgroup")]
    } else {
        vec![std::path::PathBuf::from("/sys/fs/cgroup/memory")]
    };
    let pattern = format!("crius-pod-{}", &e.pod[..12]);
    let pod_dir = pod_cgroups
        .iter()
        .find_map(|b| find_dir(&b.join("crius"), &pattern))
        .expect("the pod's cgroup");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut killed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for d in std::fs::read_dir(&pod_dir).into_iter().flatten().flatten() {
                    if !d.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let procs =
                        std::fs::read_to_string(d.path().join("cgroup.procs")).unwrap_or_default();
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        killed += 1;
                    }
                }
            }
            killed
        })
    };
    let mut reported = 0;
    for i in 0..20 {
        let t = Instant::now();
        let r = e.create(e.config(&format!("k{i}"), "sleep 100")).await;
        let took = t.elapsed();
        match r {
            Ok(id) => {
                // The killer was late: the init died after set-up.
                let _ = id;
            }
            Err(s) => {
                assert!(
                    took < Duration::from_secs(5),
                    "a killed set-up took {took:?}: {s}"
                );
                assert!(
                    s.message().contains("signal 9") || s.message().contains("killed"),
                    "{s}"
                );
                reported += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.join().unwrap();
    println!(
        "cgroup {version}: {reported} of 20 creates were killed midway and reported; {killed} kills"
    );
    assert!(reported > 0, "the killer never caught a set-up");
}

#[tokio::test]
async fn descriptors_the_daemon_inherited_reach_no_child() {
    // A descriptor left open (not close-on-exec) by whatever starts crius.
    let marker = tempfile::NamedTempFile::new().unwrap();
    let path = marker.path().display().to_string();
    let mut b = Daemon::builder().registries(&common::testenv::testenv().registries_conf());
    b = b.wrap(&format!("exec 251<>{path}; exec \"$@\""));
    let d = b.start();
    let daemon_fds = std::fs::read_link(format!("/proc/{}/fd/251", d.pid()));
    assert!(daemon_fds.is_ok(), "the daemon inherited fd 251");
    let mut e = env_on(d, "inherit", NamespaceMode::Pod).await;
    let id = e.run("c", "sleep 100").await;
    let _ = id;
    let mut holders = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == e.d.pid() as i32 || pid == std::process::id() as i32 {
            continue;
        }
        for fd in std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.display().to_string() == path) {
                holders.push(std::fs::read(p.path().join("cmdline")).unwrap_or_default());
            }
        }
    }
    let holders: Vec<String> = holders
        .iter()
        .map(|c| String::from_utf8_lossy(c).replace('\0', " "))
        .collect();
    assert!(
        holders.is_empty(),
        "children holding the daemon's inherited descriptor: {holders:?}"
    );
}
