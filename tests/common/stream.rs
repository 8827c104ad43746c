//! Streaming clients for the streaming tests: a running container to exec
//! in, the WebSocket client as client-go speaks it, a minimal SPDY client,
//! and what the daemon holds on its streaming port.

use std::time::Duration;

use futures::StreamExt;
use k8s_cri::v1::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::testenv::testenv;
use super::*;

/// A daemon that can pull from the test registries.
pub fn daemon() -> Daemon {
    daemon_with("")
}

/// [`daemon`] with extra config, e.g. `"[streaming]\nidle_timeout = 2"`.
pub fn daemon_with(config: &str) -> Daemon {
    Daemon::builder()
        .registries(&testenv().registries_conf())
        .config(config)
        .start()
}

/// `host:port` of the daemon's streaming server, from its start-up line
/// (logged just after the CRI socket answers).
pub fn streaming_addr(d: &Daemon) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = d.logs();
        let addr = logs
            .lines()
            .filter(|l| l.contains("crius serving CRI"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("streaming="))
            })
            .and_then(|url| url.split_once("://").map(|(_, a)| a.to_string()));
        if let Some(addr) = addr {
            return addr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no streaming address in the log:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Descriptors the daemon has open.
pub fn open_fds(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// TCP connections on the daemon's streaming port that the daemon holds a
/// descriptor for (its sockets' inodes in /proc/net/tcp, listener excluded).
pub fn held_connections(d: &Daemon) -> usize {
    held_connection_inodes(d).len()
}

/// The socket inodes [`held_connections`] counts.
pub fn held_connection_inodes(d: &Daemon) -> std::collections::HashSet<String> {
    let port = streaming_addr(d)
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("streaming port");
    let ours: std::collections::HashSet<String> =
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')
                    .map(str::to_string)
            })
            .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN.
            local_port == Some(port)
                && f.get(3) != Some(&"0A")
                && f.get(9).is_some_and(|ino| ours.contains(*ino))
        })
        .filter_map(|l| l.split_whitespace().nth(9).map(str::to_string))
        .collect()
}

/// Pulls busybox into `d`.
pub async fn pull_busybox(d: &Daemon) -> String {
    pull_busybox_at(&d.paths.socket).await.unwrap()
}

/// Creates and starts `cfg` in `pod`.
pub async fn start_container(rt: &mut Runtime, pod: &str, mut cfg: ContainerConfig) -> String {
    cfg.log_path = String::new();
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(cfg),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    id
}

pub async fn running_container(d: &Daemon) -> (Runtime, String) {
    let image = pull_busybox(d).await;
    let mut rt = d.runtime().await;
    let mut pod = pod_config("stream", "streaming");
    host_network(&mut pod);
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let cfg = container_config("app", &image, &["/bin/sh", "-c", "sleep 1000"]);
    let id = start_container(&mut rt, &pod_id, cfg).await;
    (rt, id)
}

pub async fn exec_url(rt: &mut Runtime, id: &str, cmd: &[&str], stdin: bool) -> String {
    rt.exec(ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout: true,
        stderr: true,
        tty: false,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(url: &str, protocol: &str) -> Result<(Ws, String), String> {
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((ws, chosen))
}

/// Collects (stdout, stderr, error-channel) until the server closes.
pub async fn collect(ws: &mut Ws, base64: bool) -> (String, String, String) {
    use base64::Engine as _;
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .map(|m| m.and_then(Result::ok))
    {
        let (ch, data) = match m {
            Message::Binary(b) if !b.is_empty() => (b[0], b[1..].to_vec()),
            Message::Text(t) if base64 && !t.is_empty() => (
                t.as_bytes()[0] - b'0',
                base64::engine::general_purpose::STANDARD
                    .decode(&t.as_bytes()[1..])
                    .unwrap(),
            ),
            Message::Close(_) => break,
            _ => continue,
        };
        match ch {
            1 => out.extend(data),
            2 => err.extend(data),
            3 => status.extend(data),
            _ => {}
        }
    }
    let s = |v: Vec<u8>| String::from_utf8(v).unwrap();
    (s(out), s(err), s(status))
}

/// A minimal SPDY client: the HTTP upgrade, then frames through crius's
/// own codec (its encoder/decoder work for either direction).
pub mod spdy_client {
    use bytes::BytesMut;
    use crius::streaming::spdy::{Decoder, Encoder, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub struct Client {
        pub sock: TcpStream,
        enc: Encoder,
        dec: Decoder,
        buf: BytesMut,
    }

    /// Upgrades `url` with the offered protocols; returns the client and
    /// the protocol the server chose.
    pub async fn connect(url: &str, protocols: &[&str]) -> (Client, String) {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap();
        let mut sock = TcpStream::connect(host).await.unwrap();
        let mut req = format!(
            "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        );
        for p in protocols {
            req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        req.push_str("\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(
                sock.read(&mut b).await.unwrap(),
                1,
                "{}",
                String::from_utf8_lossy(&head)
            );
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let chosen = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-stream-protocol-version:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        (
            Client {
                sock,
                enc: Encoder::new(),
                dec: Decoder::new(),
                buf: BytesMut::new(),
            },
            chosen,
        )
    }

    impl Client {
        pub async fn send(&mut self, f: Frame) {
            let mut out = BytesMut::new();
            self.enc.encode(&f, &mut out).unwrap();
            self.sock.write_all(&out).await.unwrap();
        }

        pub async fn open(&mut self, id: u32, streamtype: &str) {
            self.send(Frame::SynStream {
                stream_id: id,
                assoc: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), streamtype.into())],
            })
            .await;
        }

        pub async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                let mut b = [0u8; 65536];
                let n = self.sock.read(&mut b).await.ok()?;
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&b[..n]);
            }
        }
    }
}
