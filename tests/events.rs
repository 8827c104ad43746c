//! GetContainerEvents: every subscriber that keeps up sees each
//! container's CREATED, STARTED, STOPPED and DELETED in order, with the
//! pod's status and its containers' statuses; a subscriber that reads
//! nothing has its stream ended with an error and holds nobody up.

mod common;

use std::time::Duration;

use common::pod::*;
use k8s_cri::v1::*;
use tonic::Code;

const CONTAINERS: usize = 24;

type Seen = Vec<(String, i32)>;

/// Reads `n` events of a stream, checking each one's statuses.
async fn read(mut s: tonic::Streaming<ContainerEventResponse>, n: usize, pod: String) -> Seen {
    let mut seen = Vec::new();
    while seen.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(60), s.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("stream open");
        let status = ev.pod_sandbox_status.as_ref().expect("pod status");
        assert_eq!(status.id, pod);
        let mine = ev
            .containers_statuses
            .iter()
            .find(|c| c.id == ev.container_id);
        let kind = ContainerEventType::try_from(ev.container_event_type).unwrap();
        match kind {
            ContainerEventType::ContainerDeletedEvent => assert!(mine.is_none(), "{ev:?}"),
            ContainerEventType::ContainerStartedEvent => assert_eq!(
                mine.expect("own status").state,
                ContainerState::ContainerRunning as i32
            ),
            ContainerEventType::ContainerStoppedEvent => assert_eq!(
                mine.expect("own status").state,
                ContainerState::ContainerExited as i32
            ),
            ContainerEventType::ContainerCreatedEvent => assert_eq!(
                mine.expect("own status").state,
                ContainerState::ContainerCreated as i32
            ),
        }
        assert!(ev.created_at > 0);
        seen.push((ev.container_id, ev.container_event_type));
    }
    seen
}

#[tokio::test]
async fn events_reach_every_subscriber_in_order_and_a_slow_one_is_cut_off() {
    let mut env = env_built("events", NamespaceMode::Container, |b| {
        b.config("[runtime]\ncontainer_events_buffer = 8\n")
    })
    .await;
    let subscribe = |rt: &mut common::Runtime| {
        let mut rt = rt.clone();
        async move {
            rt.get_container_events(GetEventsRequest {})
                .await
                .expect("subscribe")
                .into_inner()
        }
    };
    let total = CONTAINERS * 4;
    let fast: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let s = subscribe(&mut env.rt).await;
            v.push(tokio::spawn(read(s, total, env.pod.clone())));
        }
        v
    };
    let slow = subscribe(&mut env.rt).await;

    // Big statuses (each event carries the pod's containers') fill the
    // transport's buffers before the slow subscriber's own.
    let mut ids = Vec::new();
    for i in 0..CONTAINERS {
        let mut cfg = env.config(&format!("c{i}"), "sleep 1000");
        cfg.annotations.insert("bulk".into(), "x".repeat(32 << 10));
        ids.push(env.run_config(cfg).await);
    }
    for id in &ids {
        env.stop(id, 0).await;
    }
    for id in &ids {
        env.remove(id).await;
    }

    let mut runs = Vec::new();
    for f in fast {
        runs.push(f.await.expect("fast reader"));
    }
    assert_eq!(runs[0], runs[1], "both subscribers see the same order");
    use ContainerEventType::*;
    for id in &ids {
        let kinds: Vec<i32> = runs[0]
            .iter()
            .filter(|(c, _)| c == id)
            .map(|(_, k)| *k)
            .collect();
        let want: Vec<i32> = [
            ContainerCreatedEvent,
            ContainerStartedEvent,
            ContainerStoppedEvent,
            ContainerDeletedEvent,
        ]
        .iter()
        .map(|k| *k as i32)
        .collect();
        assert_eq!(kinds, want, "events of {id}");
    }

    // The slow subscriber got a prefix of the same events, then an error.
    let mut slow = slow;
    let mut got = Vec::new();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "slow stream neither ended nor errored after {} events",
                    got.len()
                )
            }) {
            Ok(Some(ev)) => got.push((ev.container_id, ev.container_event_type)),
            Ok(None) => panic!("slow stream ended without an error after {}", got.len()),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(got.len() < total, "the slow one lost events");
    assert_eq!(got[..], runs[0][..got.len()], "what it got is in order");

    // A new subscriber works after that.
    let s = subscribe(&mut env.rt).await;
    let reader = tokio::spawn(read(s, 2, env.pod.clone()));
    let id = env.run("late", "sleep 1000").await;
    let seen = reader.await.unwrap();
    assert_eq!(
        seen,
        vec![
            (id.clone(), ContainerCreatedEvent as i32),
            (id, ContainerStartedEvent as i32)
        ]
    );
}
