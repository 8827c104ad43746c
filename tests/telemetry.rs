//! The daemon's Prometheus endpoint (`[metrics] address`): RPC results by
//! code, latency histograms, image pulls, node counts and the stats
//! collector's cost; off by default.

mod common;

use std::time::Duration;

use common::pod::*;
use k8s_cri::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample line starting with `series `.
fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_endpoint_counts_calls_pulls_and_the_node() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = env_built("telemetry", NamespaceMode::Container, |b| {
        b.config(&format!(
            "[metrics]\naddress = \"{addr}\"\nstats_interval = 1\n"
        ))
    })
    .await;
    let id = env.run("c", "sleep 1000").await;
    for _ in 0..3 {
        let e = env
            .rt
            .container_status(ContainerStatusRequest {
                container_id: "f".repeat(64),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    env.rt
        .list_container_stats(ListContainerStatsRequest::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let page = get(&addr, "/metrics").await;
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            "crius_grpc_requests_total{method=\"ContainerStatus\",code=\"NotFound\"}"
        ),
        3.0
    );
    assert!(
        value(
            &page,
            "crius_grpc_request_duration_seconds_count{method=\"StartContainer\"}"
        ) >= 1.0
    );
    assert!(value(&page, "crius_image_pulled_bytes_total") > 100_000.0);
    assert!(
        value(
            &page,
            "crius_image_pull_duration_seconds_count{outcome=\"ok\"}"
        ) >= 1.0
    );
    assert_eq!(value(&page, "crius_pods{state=\"ready\"}"), 1.0);
    assert_eq!(value(&page, "crius_containers{state=\"running\"}"), 1.0);
    assert!(value(&page, "crius_stats_collector_rounds_total") >= 1.0);
    assert!(value(&page, "crius_stats_collector_targets") >= 2.0);
    assert!(value(&page, "crius_stats_collector_cpu_seconds_total") >= 0.0);
    println!(
        "{}",
        page.lines()
            .filter(|l| l.starts_with("crius_stats")
                || l.starts_with("crius_pods")
                || l.starts_with("crius_monitors"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let missing = get(&addr, "/other").await;
    assert!(missing.contains(" 404 "), "{missing}");
    env.stop(&id, 0).await;
}

#[tokio::test]
async fn no_endpoint_by_default() {
    let d = common::Daemon::start();
    let logs = d.logs();
    assert!(!logs.contains("metrics endpoint"), "{logs}");
}
