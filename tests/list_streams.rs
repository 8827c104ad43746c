//! The `Stream*` list RPCs against their List twins on one node state with
//! 1000 containers (created, not started, but for a few running ones):
//! the same items for the same filters, each item in exactly one message,
//! the messages bounded (so more than one for the big answers).

mod common;

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use common::pod::*;
use common::*;
use k8s_cri::v1::*;

/// Containers made, spread over `PODS` pods.
const CONTAINERS: usize = 1000;
const PODS: usize = 4;
/// Items per message the daemon promises at most (README: up to 256).
const CHUNK_MAX: usize = 256;
/// Containers started (the rest stay created).
const RUNNING: usize = 3;

/// The `group` label of container `k` of a pod: three groups.
fn group(k: usize) -> &'static str {
    ["a", "b", "c"][k % 3]
}

/// Checks a stream's messages (bounded, no item twice) and whether its
/// items equal the list's, compared in `key` order; the message count.
fn same<I: PartialEq + Debug>(
    what: &str,
    mut list: Vec<I>,
    batches: Vec<Vec<I>>,
    key: impl Fn(&I) -> String,
) -> Result<usize, String> {
    let messages = batches.len();
    for (i, b) in batches.iter().enumerate() {
        assert!(
            b.len() <= CHUNK_MAX,
            "{what}: message {i} holds {} items",
            b.len()
        );
    }
    let mut streamed: Vec<I> = batches.into_iter().flatten().collect();
    let keys: HashSet<String> = streamed.iter().map(&key).collect();
    assert_eq!(keys.len(), streamed.len(), "{what}: an item streamed twice");
    list.sort_by_key(&key);
    streamed.sort_by_key(&key);
    if list.len() != streamed.len() {
        return Err(format!(
            "{what}: list {} items, stream {}",
            list.len(),
            streamed.len()
        ));
    }
    match list.iter().zip(&streamed).find(|(l, s)| l != s) {
        Some((l, s)) => Err(format!("{what}: list has {l:?}\nstream has {s:?}")),
        None => Ok(messages),
    }
}

/// A host-network pod `i` labelled `tier=odd|even`.
async fn add_pod(e: &mut Env, i: usize) -> String {
    let mut cfg = host_pod(&format!("p{i}"), &e.logs, NamespaceMode::Container);
    let tier = if i.is_multiple_of(2) { "even" } else { "odd" };
    cfg.labels.insert("tier".into(), tier.into());
    e.rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(cfg),
        ..Default::default()
    })
    .await
    .expect("run pod")
    .into_inner()
    .pod_sandbox_id
}

/// `n` created containers `c0…` in `pod`, labelled by [`group`].
async fn fill(mut rt: Runtime, pod: String, image: String, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for k in 0..n {
        let mut cfg = container_config(&format!("c{k}"), &image, &["sleep", "1000"]);
        cfg.labels.insert("group".into(), group(k).into());
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: None,
            })
            .await
            .unwrap_or_else(|e| panic!("create c{k} in {pod}: {e:?}"))
            .into_inner()
            .container_id;
        ids.push(id);
    }
    ids
}

fn state(s: ContainerState) -> Option<ContainerStateValue> {
    Some(ContainerStateValue { state: s as i32 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_equal_lists_with_1000_containers() {
    // One stats sample per container for the whole test (the first stats
    // call takes it): List and Stream then answer from the same samples.
    let mut e = env_built("thousand", NamespaceMode::Container, |b| {
        b.config("[metrics]\nstats_interval = 3600\n")
    })
    .await;
    let mut pods = vec![e.pod.clone()];
    for i in 1..PODS {
        pods.push(add_pod(&mut e, i).await);
    }
    // One client per pod at once: each pod's monitor creates its own.
    let t = Instant::now();
    let mut jobs = Vec::new();
    for pod in &pods {
        let rt = e.d.runtime().await;
        jobs.push(tokio::spawn(fill(
            rt,
            pod.clone(),
            e.image.clone(),
            CONTAINERS / PODS,
        )));
    }
    let mut ids: Vec<Vec<String>> = Vec::new();
    for j in jobs {
        ids.push(j.await.expect("create task"));
    }
    let made = t.elapsed();
    println!(
        "{CONTAINERS} containers created in {PODS} pods in {:.1} s ({:.1} ms each)",
        made.as_secs_f64(),
        made.as_secs_f64() * 1000.0 / CONTAINERS as f64
    );
    for id in &ids[0][..RUNNING] {
        e.rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("start");
    }

    // Containers, by every filter field and a combination.
    let prefix = ids[1][7][..6].to_string();
    let filters: Vec<(&str, Option<ContainerFilter>)> = vec![
        ("no filter", None),
        (
            "pod",
            Some(ContainerFilter {
                pod_sandbox_id: pods[2].clone(),
                ..Default::default()
            }),
        ),
        (
            "created",
            Some(ContainerFilter {
                state: state(ContainerState::ContainerCreated),
                ..Default::default()
            }),
        ),
        (
            "running",
            Some(ContainerFilter {
                state: state(ContainerState::ContainerRunning),
                ..Default::default()
            }),
        ),
        (
            "label group=b",
            Some(ContainerFilter {
                label_selector: [("group".to_string(), "b".to_string())].into(),
                ..Default::default()
            }),
        ),
        (
            "id prefix",
            Some(ContainerFilter {
                id: prefix,
                ..Default::default()
            }),
        ),
        (
            "pod, label and state",
            Some(ContainerFilter {
                pod_sandbox_id: pods[0].clone(),
                state: state(ContainerState::ContainerCreated),
                label_selector: [("group".to_string(), "a".to_string())].into(),
                ..Default::default()
            }),
        ),
        (
            "nothing",
            Some(ContainerFilter {
                id: "0000000000".into(),
                ..Default::default()
            }),
        ),
    ];
    for (what, filter) in filters {
        let t = Instant::now();
        let list =
            e.rt.list_containers(ListContainersRequest {
                filter: filter.clone(),
            })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers;
        let listed = t.elapsed();
        let t = Instant::now();
        let s =
            e.rt.stream_containers(StreamContainersRequest { filter })
                .await
                .expect("StreamContainers")
                .into_inner();
        let batches = stream_batches(s, |m| m.containers).await;
        let streamed = t.elapsed();
        let n = list.len();
        let messages = same(&format!("containers, {what}"), list, batches, |c| {
            c.id.clone()
        })
        .unwrap_or_else(|m| panic!("{m}"));
        println!(
            "containers, {what}: {n} in {messages} messages (list {listed:?}, stream {streamed:?})"
        );
        match what {
            "no filter" => {
                assert_eq!(n, CONTAINERS);
                assert!(messages > 1, "{n} containers in one message");
            }
            "created" => {
                assert_eq!(n, CONTAINERS - RUNNING);
                assert!(messages > 1, "{n} containers in one message");
            }
            "running" => assert_eq!(n, RUNNING),
            "pod" => assert_eq!(n, CONTAINERS / PODS),
            "nothing" => assert_eq!(messages, 0, "EOF without a message"),
            _ => assert!(n > 0, "{what} matched nothing"),
        }
    }

    // Pods.
    let pod_filters: Vec<(&str, Option<PodSandboxFilter>)> = vec![
        ("no filter", None),
        (
            "label tier=odd",
            Some(PodSandboxFilter {
                label_selector: [("tier".to_string(), "odd".to_string())].into(),
                ..Default::default()
            }),
        ),
        (
            "id and ready",
            Some(PodSandboxFilter {
                id: pods[3].clone(),
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        ),
    ];
    for (what, filter) in pod_filters {
        let list =
            e.rt.list_pod_sandbox(ListPodSandboxRequest {
                filter: filter.clone(),
            })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        let s =
            e.rt.stream_pod_sandboxes(StreamPodSandboxesRequest { filter })
                .await
                .expect("StreamPodSandboxes")
                .into_inner();
        let batches = stream_batches(s, |m| m.pod_sandboxes).await;
        let n = list.len();
        same(&format!("pods, {what}"), list, batches, |p| p.id.clone())
            .unwrap_or_else(|m| panic!("{m}"));
        assert!(n > 0, "pods, {what}: none");
        println!("pods, {what}: {n}");
    }

    // Container stats come from the collector's latest samples (and the
    // writable layers' usage sampler, which refreshes on its own): a pair
    // of calls that straddles a new sample is asked again.
    let stats_filters: Vec<(&str, Option<ContainerStatsFilter>)> = vec![
        ("no filter", None),
        (
            "pod",
            Some(ContainerStatsFilter {
                pod_sandbox_id: pods[1].clone(),
                ..Default::default()
            }),
        ),
        (
            "label group=c",
            Some(ContainerStatsFilter {
                label_selector: [("group".to_string(), "c".to_string())].into(),
                ..Default::default()
            }),
        ),
        (
            "id",
            Some(ContainerStatsFilter {
                id: ids[0][0].clone(),
                ..Default::default()
            }),
        ),
    ];
    let key = |s: &ContainerStats| {
        s.attributes
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default()
    };
    for (what, filter) in stats_filters {
        let mut tries = 0;
        let (n, messages) = loop {
            tries += 1;
            let list =
                e.rt.list_container_stats(ListContainerStatsRequest {
                    filter: filter.clone(),
                })
                .await
                .expect("ListContainerStats")
                .into_inner()
                .stats;
            let s =
                e.rt.stream_container_stats(StreamContainerStatsRequest {
                    filter: filter.clone(),
                })
                .await
                .expect("StreamContainerStats")
                .into_inner();
            let batches = stream_batches(s, |m| m.container_stats).await;
            let n = list.len();
            match same(&format!("container stats, {what}"), list, batches, key) {
                Ok(m) => break (n, m),
                Err(m) if tries < 3 => println!("asking again: {}", m.lines().next().unwrap_or("")),
                Err(m) => panic!("{m}"),
            }
        };
        println!("container stats, {what}: {n} in {messages} messages ({tries} tries)");
        match what {
            "no filter" => {
                assert_eq!(n, CONTAINERS);
                assert!(messages > 1, "{n} stats in one message");
            }
            "pod" => assert_eq!(n, CONTAINERS / PODS),
            "id" => assert_eq!(n, 1),
            _ => assert!(n > 0, "{what} matched nothing"),
        }
    }

    // Images, whole and by reference.
    let mut images = e.d.images().await;
    for (what, filter) in [
        ("no filter", None),
        (
            "busybox",
            Some(ImageFilter {
                image: Some(ImageSpec {
                    image: e.image.clone(),
                    ..Default::default()
                }),
            }),
        ),
    ] {
        let list = images
            .list_images(ListImagesRequest {
                filter: filter.clone(),
            })
            .await
            .expect("ListImages")
            .into_inner()
            .images;
        let s = images
            .stream_images(StreamImagesRequest { filter })
            .await
            .expect("StreamImages")
            .into_inner();
        let batches = stream_batches(s, |m| m.images).await;
        let n = list.len();
        same(&format!("images, {what}"), list, batches, |i| i.id.clone())
            .unwrap_or_else(|m| panic!("{m}"));
        assert!(n > 0, "images, {what}: none");
        println!("images, {what}: {n}");
    }

    // Leave nothing running: the pods' removal takes their containers.
    for pod in pods {
        e.rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("stop pod");
        let mut req = tonic::Request::new(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        });
        req.set_timeout(Duration::from_secs(120));
        e.rt.remove_pod_sandbox(req).await.expect("remove pod");
    }
}
