//! Exec over the streaming server, spoken by a WebSocket client as
//! client-go does (`v5.channel.k8s.io`, base64 forms), end to end against
//! a real container.

mod common;

use std::time::Duration;

use common::stream::*;
use common::testenv::testenv;
use common::*;
use futures::{SinkExt, StreamExt};
use k8s_cri::v1::*;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

#[tokio::test]
async fn websocket_exec_output_exit_code_and_stdin() {
    let d = daemon();
    let (mut rt, id) = running_container(&d).await;

    let url = exec_url(
        &mut rt,
        &id,
        &["/bin/sh", "-c", "echo out; echo err >&2; exit 7"],
        false,
    )
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (mut ws, proto) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    assert_eq!(proto, "v5.channel.k8s.io");
    let (out, err, status) = collect(&mut ws, false).await;
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["reason"], "NonZeroExitCode");
    assert_eq!(v["details"]["causes"][0]["message"], "7");

    // The token was spent: a second connection gets 404.
    let again = connect(&url, "v5.channel.k8s.io").await.unwrap_err();
    assert!(again.contains("404"), "{again}");

    // stdin, ended by the v5 CLOSE signal; success status.
    let url = exec_url(&mut rt, &id, &["/bin/cat"], true).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::Binary(
        [&[0u8][..], b"hello stdin\n"].concat().into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    let (out, _, status) = collect(&mut ws, false).await;
    assert_eq!(out, "hello stdin\n");
    assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);

    // base64 framing (v4).
    let url = exec_url(&mut rt, &id, &["/bin/sh", "-c", "echo b64"], false).await;
    let (mut ws, proto) = connect(&url, "v4.base64.channel.k8s.io").await.unwrap();
    assert_eq!(proto, "v4.base64.channel.k8s.io");
    let (out, _, status) = collect(&mut ws, true).await;
    assert_eq!(out, "b64\n");
    assert!(status.contains("Success"));

    // Unsupported subprotocol only: 403.
    let url = exec_url(&mut rt, &id, &["true"], false).await;
    let e = connect(&url, "v9.nothing").await.unwrap_err();
    assert!(e.contains("403"), "{e}");
}

#[tokio::test]
async fn exec_requests_are_validated() {
    let d = daemon();
    let (mut rt, id) = running_container(&d).await;
    let bad = |r: ExecRequest| r;
    for (req, code) in [
        (
            bad(ExecRequest {
                container_id: String::new(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            bad(ExecRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                tty: true,
                stderr: true,
                stdout: true,
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            bad(ExecRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            bad(ExecRequest {
                container_id: "nope".into(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            }),
            Code::NotFound,
        ),
    ] {
        assert_eq!(rt.exec(req).await.unwrap_err().code(), code);
    }
}

#[tokio::test]
async fn websocket_exec_with_a_terminal_inside_the_container() {
    let d = daemon();
    let (mut rt, id) = running_container(&d).await;
    let url = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["/bin/sh".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::Binary(
        [&[4u8][..], br#"{"Width":100,"Height":40}"#, b"\n"]
            .concat()
            .into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(
        [&[0u8][..], b"tty; stty size; exit 4\n"].concat().into(),
    ))
    .await
    .unwrap();
    let (out, err, status) = collect(&mut ws, false).await;
    assert!(err.is_empty(), "a terminal has no separate stderr");
    assert!(
        out.contains("/dev/pts/0"),
        "terminal from the container's devpts: {out}"
    );
    assert!(out.contains("40 100"), "resize applied: {out}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["details"]["causes"][0]["message"], "4");
}

#[tokio::test]
async fn websocket_attach_joins_the_main_process() {
    let d = daemon();
    let (mut rt, _) = running_container(&d).await;
    // A second container whose main process echoes its stdin.
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    let mut cfg = container_config(
        "echo",
        &testenv().image("busybox:latest"),
        &[
            "/bin/sh",
            "-c",
            "echo started; while read l; do echo got $l; done",
        ],
    );
    cfg.log_path = String::new();
    cfg.stdin = true;
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pods[0].id.clone(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let url = rt
        .attach(AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await;
    assert_eq!(
        url.unwrap_err().code(),
        Code::FailedPrecondition,
        "not running yet"
    );
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let mut attachers = Vec::new();
    for _ in 0..2 {
        let url = rt
            .attach(AttachRequest {
                container_id: id.clone(),
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        attachers.push(connect(&url, "v5.channel.k8s.io").await.unwrap().0);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    attachers[0]
        .send(Message::Binary([&[0u8][..], b"hello\n"].concat().into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The container ends: every attach session ends with success.
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    for mut ws in attachers {
        let (out, _, status) = collect(&mut ws, false).await;
        assert!(
            out.contains("got hello"),
            "both attachers see the output: {out:?}"
        );
        assert!(status.contains("Success"), "{status}");
    }
}

#[tokio::test]
async fn websocket_port_forward_reaches_localhost_in_the_pod() {
    let d = daemon();
    // Its own network namespace with only loopback: localhost is the pod's.
    d.install_cni_config(
        "10-lo.conflist",
        r#"{"cniVersion":"1.0.0","name":"lo-only","plugins":[{"type":"loopback"}]}"#,
    );
    let image = pull_busybox(&d).await;
    let mut rt = d.runtime().await;
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config("pf", "streaming")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let cfg = container_config(
        "web",
        &image,
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /tmp/www; echo hello-pf > /tmp/www/index.html; exec httpd -f -p 7777 -h /tmp/www",
        ],
    );
    start_container(&mut rt, &pod, cfg).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not on the host: the port is only inside the pod.
    assert!(std::net::TcpStream::connect("127.0.0.1:7777").is_err());
    let url = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![7777],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.contains("/portforward/"), "{url}");
    let (mut ws, proto) = connect(&url, "v4.channel.k8s.io").await.unwrap();
    assert_eq!(proto, "v4.channel.k8s.io");
    // First on each channel: the port, little-endian.
    for ch in [0u8, 1] {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], &[ch, 0x61, 0x1e]),
            m => panic!("{m:?}"),
        }
    }
    ws.send(Message::Binary(
        [&[0u8][..], b"GET / HTTP/1.0\r\n\r\n"].concat().into(),
    ))
    .await
    .unwrap();
    let mut body = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match m {
            Message::Binary(b) if !b.is_empty() && b[0] == 0 => body.extend_from_slice(&b[1..]),
            Message::Binary(b) if !b.is_empty() && b[0] == 1 => {
                panic!("error: {}", String::from_utf8_lossy(&b[1..]))
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(
        String::from_utf8_lossy(&body).contains("hello-pf"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Validation.
    let e = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: String::new(),
            port: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn spdy_exec_streams_and_status() {
    use crius::streaming::spdy::Frame;
    let d = daemon();
    let (mut rt, id) = running_container(&d).await;
    let url = exec_url(
        &mut rt,
        &id,
        &["/bin/sh", "-c", "echo out; echo err >&2; exit 9"],
        false,
    )
    .await;
    let offered = [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ];
    let (mut c, proto) = spdy_client::connect(&url, &offered).await;
    assert_eq!(proto, "v5.channel.k8s.io");
    // client-go's order: error, stdout, stderr.
    c.open(1, "error").await;
    c.open(3, "stdout").await;
    c.open(5, "stderr").await;
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    let mut replies = 0;
    let mut error_done = false;
    while !error_done {
        let f = tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .unwrap()
            .expect("connection ended early");
        match f {
            Frame::SynReply { .. } => replies += 1,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                match stream_id {
                    1 => status.extend_from_slice(&data),
                    3 => out.extend_from_slice(&data),
                    5 => err.extend_from_slice(&data),
                    _ => {}
                }
                if stream_id == 1 && flags & 1 == 1 {
                    error_done = true;
                }
            }
            _ => {}
        }
    }
    assert_eq!(replies, 3);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    let v: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(v["details"]["causes"][0]["message"], "9");
    c.send(Frame::GoAway {
        last_good: 0,
        status: 0,
    })
    .await;

    // A client offering only protocols crius does not speak: 403.
    let url = exec_url(&mut rt, &id, &["true"], false).await;
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v9.nope\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
    let mut resp = vec![0u8; 1024];
    let n = s.read(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp[..n]);
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v5.channel.k8s.io"),
        "{resp}"
    );
}

#[tokio::test]
async fn streaming_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let d = Daemon::builder()
        .registries(&testenv().registries_conf())
        .config(&format!(
            "[streaming]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ))
        .start();
    let (mut rt, id) = running_container(&d).await;
    let url = exec_url(&mut rt, &id, &["/bin/sh", "-c", "echo tls"], false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let rest = url.trim_start_matches("https://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with the configured certificate");
    tls.write_all(format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tls.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Plain HTTP to the TLS port gets no upgrade.
    let url = exec_url(&mut rt, &id, &["true"], false).await;
    let host = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut plain = tokio::net::TcpStream::connect(&host).await.unwrap();
    plain
        .write_all(b"GET /exec/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64];
    let n = plain.read(&mut buf).await.unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
}

#[tokio::test]
async fn a_tty_exec_dies_when_its_client_goes_away() {
    let d = daemon();
    let (mut rt, id) = running_container(&d).await;
    let url = rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "sleep 4321".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    let running = |out: &str| out.contains("sleep 4321");
    let ps = |rt: &mut Runtime| {
        let id = id.clone();
        let mut rt = rt.clone();
        async move {
            let r = rt
                .exec_sync(ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["/bin/sh".into(), "-c".into(), "ps -o args".into()],
                    timeout: 10,
                })
                .await
                .unwrap()
                .into_inner();
            String::from_utf8_lossy(&r.stdout).into_owned()
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(running(&ps(&mut rt).await), "exec started");
    drop(ws);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = ps(&mut rt).await;
        if !running(&out) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
