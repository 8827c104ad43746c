//! The core's contracts: a monitor that hangs never wedges a stop, a
//! retried create gets the first call's container, a pod's stop and its
//! containers' creates are ordered.

mod common;

use std::time::{Duration, Instant};

use common::pod::*;
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[tokio::test]
async fn a_stopped_monitor_never_wedges_stop_container() {
    let mut e = env("hungmon").await;
    let id = e
        .run("c", "trap '' TERM; while true; do sleep 1; done")
        .await;
    let pid: i32 =
        std::fs::read_to_string(e.d.paths.runroot.join("containers").join(&id).join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let monitors = monitor_pids(&e.d.paths.runroot);
    assert_eq!(monitors.len(), 1);
    signal(monitors[0], nix::sys::signal::Signal::SIGSTOP);
    let t = Instant::now();
    let mut req = tonic::Request::new(StopContainerRequest {
        container_id: id.clone(),
        timeout: 30,
    });
    req.set_timeout(Duration::from_secs(20));
    let r = e.rt.stop_container(req).await;
    let took = t.elapsed();
    let err = r.expect_err("a clear error");
    println!(
        "StopContainer with a stopped monitor: {:?} after {took:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("does not answer"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // The container is gone all the same.
    wait_for(
        "the container's process to be gone",
        Duration::from_secs(5),
        || async {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .is_ok_and(|s| s.contains("State:\tZ")))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        e.status(&id).await.state,
        ContainerState::ContainerExited as i32
    );
    // The pod goes too; its stopped monitor is killed with it.
    let t = Instant::now();
    e.stop_and_remove_pod().await;
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "teardown took {:?}",
        t.elapsed()
    );
    assert!(monitor_pids(&e.d.paths.runroot).is_empty());
}

#[tokio::test]
async fn a_create_retried_after_the_client_gave_up_gets_the_same_container() {
    let mut e = env("retry").await;
    let cfg = e.config("retried", "sleep 100");
    let mut bare = bare_runtime(&e.d.paths.socket).await;
    let mut req = tonic::Request::new(CreateContainerRequest {
        pod_sandbox_id: e.pod.clone(),
        config: Some(cfg.clone()),
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_millis(1));
    let first = bare.create_container(req).await;
    assert_eq!(first.unwrap_err().code(), Code::DeadlineExceeded);
    // While the first call still runs, and after it finished: its container.
    let second = e.create(cfg.clone()).await.expect("retry");
    let third = e.create(cfg.clone()).await.expect("another retry");
    assert_eq!(second, third);
    let listed = e.list(ContainerFilter::default()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, second);
    // A new attempt is a new container.
    let mut next = cfg;
    next.metadata.as_mut().unwrap().attempt = 1;
    let fourth = e.create(next).await.unwrap();
    assert_ne!(fourth, second);
}

#[tokio::test]
async fn creates_racing_a_pod_stop_leave_no_running_container() {
    for round in 0..3 {
        let mut e = env(&format!("race{round}")).await;
        let mut tasks = Vec::new();
        for i in 0..5 {
            tasks.push(e.spawn_run(&format!("c{i}"), "sleep 100").await);
        }
        tokio::time::sleep(Duration::from_millis(10 * round)).await;
        e.rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: e.pod.clone(),
        })
        .await
        .unwrap();
        for t in tasks {
            if let Err(s) = t.await.unwrap() {
                assert!(
                    matches!(s.code(), Code::FailedPrecondition | Code::NotFound),
                    "{s}"
                );
            }
        }
        let running: Vec<_> = e
            .list(ContainerFilter::default())
            .await
            .into_iter()
            .filter(|c| c.state == ContainerState::ContainerRunning as i32)
            .collect();
        assert!(
            running.is_empty(),
            "round {round}: running in a stopped pod: {running:?}"
        );
    }
}

/// Every item of a `Stream*` list RPC's messages.
async fn streamed<T, I>(s: tonic::Streaming<T>, items: impl Fn(T) -> Vec<I>) -> Vec<I> {
    stream_batches(s, items)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test]
async fn list_streams_answer_what_the_lists_do() {
    let mut e = env("streams").await;
    for i in 0..3 {
        e.run(&format!("c{i}"), "sleep 100").await;
    }
    let filter = ContainerFilter {
        pod_sandbox_id: e.pod.clone(),
        ..Default::default()
    };
    let s =
        e.rt.stream_containers(StreamContainersRequest {
            filter: Some(filter.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<String> = streamed(s, |m| m.containers)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut want: Vec<String> = e.list(filter).await.into_iter().map(|c| c.id).collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), 3);
    assert_eq!(got, want);

    let s =
        e.rt.stream_pod_sandboxes(StreamPodSandboxesRequest { filter: None })
            .await
            .unwrap()
            .into_inner();
    let pods = streamed(s, |m| m.pod_sandboxes).await;
    assert!(pods.iter().any(|p| p.id == e.pod), "{pods:?}");

    let s =
        e.d.images()
            .await
            .stream_images(StreamImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner();
    let images = streamed(s, |m| m.images).await;
    assert!(
        images
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t.contains("busybox"))),
        "{images:?}"
    );
    let s =
        e.rt.stream_container_stats(StreamContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: e.pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut stats: Vec<String> = streamed(s, |m| m.container_stats)
        .await
        .into_iter()
        .filter_map(|c| c.attributes.map(|a| a.id))
        .collect();
    stats.sort();
    assert_eq!(
        stats, want,
        "StreamContainerStats covers the pod's containers"
    );
    let s =
        e.rt.stream_pod_sandbox_stats(StreamPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: e.pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(streamed(s, |m| m.pod_sandbox_stats).await.len(), 1);
    // A filter that matches nothing: EOF without a message.
    let s =
        e.rt.stream_containers(StreamContainersRequest {
            filter: Some(ContainerFilter {
                id: "0000".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(streamed(s, |m| m.containers).await.is_empty());
}
