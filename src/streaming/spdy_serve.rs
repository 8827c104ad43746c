//! Exec, attach and port-forward over SPDY/3.1: the upgrade handshake
//! (§1 of the protocol spec) and the remotecommand / port-forward stream
//! layouts (§3, §4) on top of [`super::spdy::Session`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use std::path::PathBuf;

use super::Pending;
use super::idle::Activity;
use super::remotecommand::{Process, STDERR, parse_resizes, status_message};
use super::spdy::{RST_CANCEL, Session, Stream, StreamWriter};

/// Exec/attach protocols crius speaks over SPDY, best first.
const REMOTECOMMAND: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
const PORTFORWARD: &str = "portforward.k8s.io";
/// How long the client may take to open its streams.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How an upgrade is refused: status, extra headers, body.
pub type Refusal = (StatusCode, Vec<(&'static str, String)>, String);

/// The outcome of protocol negotiation: the chosen protocol, or the
/// status and body to refuse with.
pub fn negotiate(headers: &HeaderMap, pending: &Pending) -> Result<&'static str, Refusal> {
    let offered: Vec<String> = headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if offered.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            Vec::new(),
            "unable to upgrade: header X-Stream-Protocol-Version is required".into(),
        ));
    }
    let ours: &[&'static str] = match pending {
        Pending::PortForward { .. } => &[PORTFORWARD],
        _ => REMOTECOMMAND,
    };
    if let Some(p) = offered
        .iter()
        .find_map(|o| ours.iter().find(|p| **p == o.as_str()))
    {
        return Ok(p);
    }
    Err((
        StatusCode::FORBIDDEN,
        ours.iter()
            .map(|p| ("x-accepted-stream-protocol-versions", p.to_string()))
            .collect(),
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {ours:?}\n"
        ),
    ))
}

/// How long an idle session gets to send GOAWAY before its connection is
/// closed regardless.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Drives one upgraded SPDY connection until the exec, attach or
/// port-forward ends, the client leaves, or no frame has been read or
/// written for `idle_timeout`: then GOAWAY and close, as kubelet's
/// spdystream does (SPDY has no place to say why).
pub async fn serve<T>(io: T, pending: Pending, protocol: &'static str, idle_timeout: Duration)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(idle_timeout));
    let session = Session::with_activity(io, Bytes::new(), activity.clone());
    let closer = session.closer();
    let work = async move {
        match pending {
            Pending::PortForward { req, netns } => {
                port_forward(session, req.pod_sandbox_id, netns).await
            }
            other => remotecommand(session, other, protocol).await,
        }
    };
    // On idle the work is dropped, which kills an exec like a hang-up.
    if activity.run(work).await.is_none() {
        tracing::info!(timeout = ?idle_timeout, "SPDY session idle: closing");
        closer.close_within(IDLE_CLOSE_GRACE).await;
    }
}

#[derive(Default)]
struct Streams {
    error: Option<StreamWriter>,
    stdin: Option<StreamWriter>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
    resize: Option<StreamWriter>,
    stdin_data: Option<tokio::sync::mpsc::Receiver<Bytes>>,
    resize_data: Option<tokio::sync::mpsc::Receiver<Bytes>>,
}

async fn remotecommand(mut session: Session, pending: Pending, protocol: &str) {
    let (stdin, stdout, stderr, tty) = match &pending {
        Pending::Exec { req: e, .. } => (e.stdin, e.stdout, e.stderr, e.tty),
        Pending::Attach { req: a, .. } => (a.stdin, a.stdout, a.stderr, a.tty),
        Pending::PortForward { .. } => return,
    };
    let v3 = protocol != "v2.channel.k8s.io";
    let expected = 1 + stdin as usize + stdout as usize + stderr as usize + (tty && v3) as usize;
    let mut s = Streams::default();
    let collected = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        let mut got = 0;
        while got < expected {
            let Some(stream) = session.accept().await else {
                return false;
            };
            // Reply to every stream, even unexpected ones (as kubelet).
            if stream.reply().await.is_err() {
                return false;
            }
            let w = Some(stream.writer.clone());
            match stream.header("streamtype").unwrap_or("") {
                "error" => s.error = w,
                "stdin" => {
                    s.stdin = w;
                    s.stdin_data = Some(stream.data);
                }
                "stdout" => s.stdout = w,
                "stderr" => s.stderr = w,
                "resize" => {
                    s.resize = w;
                    s.resize_data = Some(stream.data);
                }
                other => {
                    tracing::debug!(streamtype = other, "unexpected stream type");
                    continue;
                }
            }
            got += 1;
        }
        true
    })
    .await;
    if collected != Ok(true) {
        tracing::warn!("timed out waiting for client to create streams");
        return;
    }
    let started = match &pending {
        Pending::Exec { req, monitor } => super::remotecommand::start_exec(monitor, req).await,
        Pending::Attach { req, monitor } => super::remotecommand::start_attach(monitor, req).await,
        Pending::PortForward { .. } => return,
    };
    let exit = match started {
        Ok(process) => match pump(&mut session, process, &mut s).await {
            Some(exit) => exit,
            // The client left: dropping the process killed it.
            None => return,
        },
        Err(e) => Err(e),
    };
    let status_v4 = matches!(protocol, "v4.channel.k8s.io" | "v5.channel.k8s.io");
    finish(session, &s, &exit, status_v4).await;
}

async fn recv_opt(rx: &mut Option<tokio::sync::mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Moves bytes between the streams and the process until it has exited
/// and its output is drained (`Some(exit)`), or the client is gone (`None`).
async fn pump(
    session: &mut Session,
    mut p: Process,
    s: &mut Streams,
) -> Option<Result<i32, String>> {
    let mut stdin_tx = p.stdin.take();
    let mut resize_buf: Vec<u8> = Vec::new();
    let mut outputs_open = true;
    loop {
        tokio::select! {
            out = p.output.recv(), if outputs_open => match out {
                Some((ch, data)) => {
                    let w = if ch == STDERR { &s.stderr } else { &s.stdout };
                    if let Some(w) = w
                        && w.write(data).await.is_err()
                    {
                        return None;
                    }
                }
                None => outputs_open = false,
            },
            d = recv_opt(&mut s.stdin_data) => match d {
                Some(b) => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(b).await;
                    }
                }
                // stdin FIN (or reset): the process sees EOF.
                None => {
                    s.stdin_data = None;
                    stdin_tx = None;
                }
            },
            d = recv_opt(&mut s.resize_data) => match d {
                Some(b) => {
                    resize_buf.extend_from_slice(&b);
                    if let Some(end) = resize_buf.iter().rposition(|c| *c == b'\n') {
                        for (w, h) in parse_resizes(&resize_buf[..=end]) {
                            p.resize(w, h);
                        }
                        resize_buf.drain(..=end);
                    }
                }
                None => s.resize_data = None,
            },
            extra = session.accept() => match extra {
                Some(st) => {
                    let _ = st.reply().await;
                }
                None => return None,
            },
            exit = &mut p.exit, if !outputs_open => {
                return Some(exit.unwrap_or_else(|_| Err("exec ended without a status".into())));
            }
        }
    }
}

/// The graceful end (§3.5): stop input, write the status, FIN the
/// outputs, let the client close, then GOAWAY.
async fn finish(mut session: Session, s: &Streams, exit: &Result<i32, String>, status_v4: bool) {
    for w in [&s.stdin, &s.resize].into_iter().flatten() {
        let _ = w.reset(RST_CANCEL).await;
    }
    if let (Some(e), Some(status)) = (&s.error, status_message(exit, status_v4)) {
        let _ = e.write(Bytes::from(status)).await;
    }
    for w in [&s.stdout, &s.stderr, &s.error].into_iter().flatten() {
        let _ = w.fin().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(st) = session.accept().await {
            let _ = st.reply().await;
        }
    })
    .await;
    let _ = session.close().await;
}

/// One forwarded connection's two streams, paired by request id.
#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

async fn port_forward(mut session: Session, pod_id: String, netns: Option<PathBuf>) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = session.accept().await {
        let port = stream
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        let kind = stream.header("streamtype").unwrap_or("").to_string();
        let (Some(port), "error" | "data") = (port, kind.as_str()) else {
            let _ = stream.writer.reset(RST_CANCEL).await;
            continue;
        };
        if stream.reply().await.is_err() {
            break;
        }
        let request = stream
            .header("requestid")
            .map(str::to_string)
            .unwrap_or_else(|| {
                let id = if kind == "error" {
                    stream.id
                } else {
                    stream.id.saturating_sub(2)
                };
                id.to_string()
            });
        let pair = pairs.entry(request.clone()).or_default();
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            if let Some(e) = &pair.error {
                let msg = format!(
                    "error processing stream for request {request}: {kind} stream already assigned"
                );
                let _ = e.writer.write(Bytes::from(msg)).await;
            }
            let _ = stream.writer.reset(RST_CANCEL).await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair {
                error: Some(error),
                data: Some(data),
            }) = pairs.remove(&request)
        {
            let (pod, netns) = (pod_id.clone(), netns.clone());
            tokio::spawn(forward(pod, netns, port, error, data));
        }
    }
    let _ = session.close().await;
}

/// Copies one forwarded connection both ways.
async fn forward(
    pod_id: String,
    netns: Option<PathBuf>,
    port: u16,
    error: Stream,
    mut data: Stream,
) {
    let conn = match super::portforward::dial(netns.as_deref(), port).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod_id}, uid : {e}");
            let _ = error.writer.write(Bytes::from(msg)).await;
            let _ = data.writer.reset(RST_CANCEL).await;
            let _ = error.writer.reset(RST_CANCEL).await;
            return;
        }
    };
    let (mut r, mut w) = conn.into_split();
    let out = data.writer.clone();
    let to_client = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let to_pod = async move {
        while let Some(b) = data.data.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        // Client FIN: half-close towards the pod.
        let _ = w.shutdown().await;
    };
    tokio::pin!(to_client);
    tokio::pin!(to_pod);
    // When one direction ends, give the other a grace period.
    tokio::select! {
        _ = &mut to_client => {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut to_pod).await;
        }
        _ = &mut to_pod => {
            let _ = tokio::time::timeout(Duration::from_secs(30), &mut to_client).await;
        }
    }
    let _ = data.writer.fin().await;
    let _ = error.writer.fin().await;
}
