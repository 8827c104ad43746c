//! Streaming throughput: 100 MB through exec stdout (WebSocket v5 and
//! SPDY are the same pipe behind the transport; WebSocket here), 100 MB
//! through port-forward from an HTTP server inside a pod, and 20 exec
//! sessions at once. Every byte is counted: a short count is a failure.
//! Run with `hack/bench-streaming.sh`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::testenv::testenv;
use common::{Daemon, Runtime, container_config, pod_config};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BIG: usize = 100_000_000;

async fn ws(
    url: &str,
    protocol: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol.parse().map_err(|_| "bad protocol")?,
    );
    Ok(tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?
        .0)
}

/// Bytes on `channel` until the server closes.
async fn count(
    url: &str,
    protocol: &str,
    channel: u8,
    send: Option<Vec<u8>>,
) -> Result<usize, String> {
    let mut s = ws(url, protocol).await?;
    if let Some(m) = send {
        s.send(Message::Binary(m.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut n = 0;
    while let Some(m) = s.next().await {
        match m.map_err(|e| e.to_string())? {
            Message::Binary(b) if !b.is_empty() && b[0] == channel => n += b.len() - 1,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(n)
}

async fn exec_url(rt: &mut Runtime, id: &str, script: &str) -> String {
    rt.exec(ExecRequest {
        container_id: id.into(),
        cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdout: true,
        ..Default::default()
    })
    .await
    .expect("Exec")
    .into_inner()
    .url
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

async fn start(rt: &mut Runtime, pod: &str, name: &str, script: &str) -> String {
    let mut cfg = container_config(
        name,
        &testenv().image("busybox:latest"),
        &["/bin/sh", "-c", script],
    );
    cfg.log_path = String::new();
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .expect("create")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start");
    id
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("streaming benchmark: run it with `hack/bench-streaming.sh`");
        return;
    }
    let d = Daemon::builder()
        .registries(&testenv().registries_conf())
        .start();
    d.install_cni_config(
        "10-lo.conflist",
        r#"{"cniVersion":"1.0.0","name":"lo-only","plugins":[{"type":"loopback"}]}"#,
    );
    d.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: testenv().image("busybox:latest"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
    let mut rt = d.runtime().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("stream-bench", "bench")),
            ..Default::default()
        })
        .await
        .expect("pod")
        .into_inner()
        .pod_sandbox_id;
    let app = start(&mut rt, &pod, "app", "sleep 3600").await;
    let _web = start(
        &mut rt,
        &pod,
        "web",
        &format!("mkdir -p /tmp/www; head -c {BIG} /dev/zero > /tmp/www/big; exec httpd -f -p 8080 -h /tmp/www"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 100 MB through exec stdout.
    let url = exec_url(&mut rt, &app, &format!("head -c {BIG} /dev/zero")).await;
    let t = Instant::now();
    let got = count(&url, "v5.channel.k8s.io", 1, None)
        .await
        .expect("exec");
    let el = t.elapsed();
    println!(
        "exec stdout:   {got} of {BIG} bytes in {:.2} s = {:.0} MB/s {}",
        el.as_secs_f64(),
        mbps(got, el),
        if got == BIG { "(no loss)" } else { "LOSS" }
    );

    // 100 MB through port-forward (HTTP body plus headers).
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let t = Instant::now();
    let got = count(
        &url,
        "v4.channel.k8s.io",
        0,
        Some([&[0u8][..], b"GET /big HTTP/1.0\r\n\r\n"].concat()),
    )
    .await
    .expect("port-forward");
    let el = t.elapsed();
    // The first message is the 2-byte port prefix.
    let body = got.saturating_sub(2);
    println!(
        "port-forward:  {body} bytes (body {BIG} + headers) in {:.2} s = {:.0} MB/s {}",
        el.as_secs_f64(),
        mbps(body, el),
        if body >= BIG { "(no loss)" } else { "LOSS" }
    );

    // 20 exec sessions at once, 5 MB each.
    let each = 5_000_000;
    let mut urls = Vec::new();
    for _ in 0..20 {
        urls.push(exec_url(&mut rt, &app, &format!("head -c {each} /dev/zero")).await);
    }
    let t = Instant::now();
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|u| tokio::spawn(async move { count(&u, "v5.channel.k8s.io", 1, None).await }))
        .collect();
    let mut total = 0;
    let mut short = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(n)) => {
                total += n;
                if n != each {
                    short += 1;
                }
            }
            _ => short += 1,
        }
    }
    let el = t.elapsed();
    println!(
        "20 concurrent: {total} bytes in {:.2} s = {:.0} MB/s aggregate, {short} sessions short",
        el.as_secs_f64(),
        mbps(total, el)
    );
}
