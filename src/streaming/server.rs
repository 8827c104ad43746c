//! The HTTP side: `/{exec,attach,portforward}/{token}` on the streaming
//! listener, upgraded to WebSocket (SPDY is negotiated the same way).
//!
//! Nothing a client does may hold the daemon's resources for long: the
//! request head (and TLS handshake) must arrive within
//! `header_read_timeout`, a session ends after `idle_timeout` without
//! traffic, at most `max_connections` connections exist at once (sessions
//! included), and a failing `accept` backs off.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::Pending;
use super::Streaming;
use super::backoff::Backoff;
use super::websocket;
use crate::config::StreamingConfig;

type Reply = Response<Full<Bytes>>;

fn status(code: StatusCode, body: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r
}

/// Loads the PEM certificate chain and key for https streaming; ALPN
/// offers only http/1.1 (upgrades do not exist in HTTP/2).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What the server enforces, from `[streaming]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accept to a complete request head, TLS handshake included;
    /// also how long a kept-alive connection may wait for its next request.
    pub header_read_timeout: Duration,
    /// How long an upgraded session may go without traffic either way.
    pub idle_timeout: Duration,
    /// Connections at once, upgraded sessions included.
    pub max_connections: usize,
}

impl Limits {
    /// The limits `[streaming]` sets (validated positive at load).
    pub fn from_config(c: &StreamingConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(c.header_read_timeout),
            idle_timeout: Duration::from_secs(c.idle_timeout),
            max_connections: c.max_connections,
        }
    }
}

/// What an accepted connection hands its request handler and the session
/// its upgrade starts.
#[derive(Clone)]
struct Conn {
    streaming: Arc<Streaming>,
    idle_timeout: Duration,
    /// Its place under `max_connections`: released when the connection and
    /// any session it upgraded to have both ended.
    slot: Arc<OwnedSemaphorePermit>,
}

impl Conn {
    /// Runs an upgraded session on its own task, which holds the
    /// connection's slot until the session ends. (A task that only used
    /// `conn.rt` would capture just that field and free the slot early.)
    fn spawn_session(self, session: impl Future<Output = ()> + Send + 'static) {
        let slot = self.slot;
        tokio::spawn(async move {
            session.await;
            drop(slot);
        });
    }
}

/// Serves forever; one task per connection, inside TLS when an acceptor
/// is given. A connection over `max_connections` is closed at once,
/// unanswered: writing a 503 would be I/O on behalf of what is most likely
/// the flood, and closing a socket with its request unread resets it,
/// which can discard that answer anyway. Clients see the connection fail.
pub async fn serve(
    listener: TcpListener,
    streaming: Arc<Streaming>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Backoff::accept();
    let mut refusing = false;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) if gone_before_accept(&e) => {
                tracing::debug!(error = %e, "streaming connection gone before accept");
                continue;
            }
            Err(e) => {
                // One line per pause: nine in the first 1.3 s of a
                // shortage, then one a second while it lasts.
                let pause = backoff.next_pause();
                tracing::warn!(error = %e, retry_in = ?pause, "streaming server cannot accept");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let failures = backoff.reset();
        if failures > 0 {
            tracing::info!(failures, "streaming server accepting again");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refusing {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "streaming connection limit reached: closing new connections until one ends"
                );
                refusing = true;
            }
            drop(stream);
            continue;
        };
        if refusing {
            tracing::info!("streaming connections below the limit again");
            refusing = false;
        }
        let conn = Conn {
            streaming: streaming.clone(),
            idle_timeout: limits.idle_timeout,
            slot: Arc::new(slot),
        };
        tokio::spawn(connection(
            stream,
            peer,
            tls.clone(),
            limits.header_read_timeout,
            conn,
        ));
    }
}

/// Errors about one connection that died in the queue, not about the
/// listener: the next accept can follow at once.
fn gone_before_accept(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    )
}

/// One connection: the TLS handshake if configured, then HTTP/1.1 until
/// its requests are answered or one is upgraded. Handshake and request head
/// share one deadline, so neither can be dribbled out.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    head_timeout: Duration,
    conn: Conn,
) {
    let deadline = Instant::now() + head_timeout;
    let served = match tls {
        None => http(stream, deadline, conn).await,
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(s)) => http(s, deadline, conn).await,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "streaming TLS handshake");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "streaming TLS handshake timed out");
                return;
            }
        },
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "streaming connection");
    }
}

/// HTTP/1.1 on `io` with hyper's header-read timeout running to
/// `deadline`; hyper restarts it whenever a kept-alive connection waits
/// for its next request, so an idle connection is closed as surely as a
/// half-sent one. A request body the handler leaves unread is not waited
/// for: hyper drains what is already buffered, else closes.
async fn http<S>(io: S, deadline: Instant, conn: Conn) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(deadline.saturating_duration_since(Instant::now()))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
}

/// `101 Switching Protocols` to `upgrade`, with `headers`.
fn switching(upgrade: &'static str, headers: Vec<(&'static str, String)>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, header::HeaderValue::from_static(upgrade));
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    for (k, v) in headers {
        if let Ok(v) = header::HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    r
}

/// The WebSocket handshake answer; an empty `protocol` is not echoed.
fn websocket_accepted(key: &str, protocol: &str) -> Reply {
    let mut headers = vec![("sec-websocket-accept", websocket::accept_key(key))];
    if !protocol.is_empty() {
        headers.push(("sec-websocket-protocol", protocol.to_string()));
    }
    switching("websocket", headers)
}

/// The connection after the 101, as a WebSocket.
async fn upgraded_websocket(
    req: Request<Incoming>,
) -> Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    match hyper::upgrade::on(req).await {
        Ok(u) => Some(WebSocketStream::from_raw_socket(TokioIo::new(u), Role::Server, None).await),
        Err(e) => {
            tracing::warn!(error = %e, "websocket upgrade");
            None
        }
    }
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(req: Request<Incoming>, conn: Conn) -> Reply {
    let path = req.uri().path().trim_start_matches('/').to_string();
    let Some((route, token)) = path.split_once('/') else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let span = tracing::info_span!("stream", route, method = %req.method());
    let _enter = span.enter();
    // Spent on first use, before the upgrade: a failed upgrade burns it.
    let Some(pending) = conn.streaming.redeem(route, token) else {
        tracing::debug!("unknown, spent or expired token");
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let upgrade = header_str(&req, "upgrade")
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        return websocket_upgrade(req, conn, pending);
    }
    if upgrade.contains("spdy/3.1") {
        return spdy_upgrade(req, conn, pending);
    }
    status(
        StatusCode::BAD_REQUEST,
        "unable to upgrade: missing upgrade headers in request",
    )
}

const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// Port-forward's SPDY session carried in WebSocket binary messages: the
/// payloads form the SPDY byte stream (message boundaries mean nothing).
fn spdy_tunnel(req: Request<Incoming>, conn: Conn, pending: Pending, key: &str) -> Reply {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let idle = conn.idle_timeout;
    conn.spawn_session(async move {
        let Some(ws) = upgraded_websocket(req).await else {
            return;
        };
        let (mut ws_tx, mut ws_rx) = ws.split();
        let (session_io, tunnel) = tokio::io::duplex(256 * 1024);
        let (mut t_rd, mut t_wr) = tokio::io::split(tunnel);
        let inbound = async move {
            while let Some(Ok(m)) = ws_rx.next().await {
                match m {
                    Message::Binary(b) if t_wr.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = t_wr.shutdown().await;
        };
        let outbound = async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = t_rd.read(&mut buf).await {
                if n == 0
                    || ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            let _ = ws_tx.close().await;
        };
        tracing::info!("port-forward session (SPDY in WebSocket)");
        let mut pumps = tokio::spawn(async move {
            tokio::join!(inbound, outbound);
        });
        // The SPDY session's idle timer sees the tunnel's payload traffic.
        super::spdy_serve::serve(session_io, pending, "portforward.k8s.io", idle).await;
        // Its end (GOAWAY, EOF) reaches the client through the tunnel; a
        // client that neither reads it nor answers the Close is cut off.
        if tokio::time::timeout(websocket::CLOSE_GRACE, &mut pumps)
            .await
            .is_err()
        {
            pumps.abort();
        }
    });
    websocket_accepted(key, SPDY_TUNNEL)
}

fn spdy_upgrade(req: Request<Incoming>, conn: Conn, pending: Pending) -> Reply {
    let protocol = match super::spdy_serve::negotiate(req.headers(), &pending) {
        Ok(p) => p,
        Err((code, headers, body)) => {
            let mut r = status(code, &body);
            for (k, v) in headers {
                if let Ok(v) = header::HeaderValue::from_str(&v) {
                    r.headers_mut().append(k, v);
                }
            }
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return r;
        }
    };
    let connection = header_str(&req, "connection")
        .unwrap_or("")
        .to_ascii_lowercase();
    if !connection.contains("upgrade") {
        return status(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        );
    }
    tracing::info!(protocol, route = pending.route(), "SPDY session");
    let idle = conn.idle_timeout;
    conn.spawn_session(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                // hyper hands back bytes it read past the request as part
                // of the upgraded stream.
                let io = TokioIo::new(upgraded);
                super::spdy_serve::serve(io, pending, protocol, idle).await;
            }
            Err(e) => tracing::warn!(error = %e, "SPDY upgrade"),
        }
    });
    switching(
        "SPDY/3.1",
        vec![("x-stream-protocol-version", protocol.to_string())],
    )
}

fn websocket_upgrade(req: Request<Incoming>, conn: Conn, pending: Pending) -> Reply {
    let Some(key) = header_str(&req, "sec-websocket-key").map(str::to_string) else {
        return status(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let offered = header_str(&req, "sec-websocket-protocol");
    // crictl's WebSocket port-forward: SPDY tunnelled in WebSocket (form C).
    if matches!(pending, Pending::PortForward { .. })
        && offered.is_some_and(|o| o.split(',').any(|p| p.trim() == SPDY_TUNNEL))
    {
        return spdy_tunnel(req, conn, pending, &key);
    }
    let negotiated = match &pending {
        // Port-forward speaks only the channel forms here (no v5, which
        // is an exec/attach protocol).
        Pending::PortForward { .. } => websocket::negotiate(offered).filter(|p| !p.close_signal),
        _ => websocket::negotiate(offered),
    };
    let Some(proto) = negotiated else {
        return status(StatusCode::FORBIDDEN, "");
    };
    let (stdout, stderr) = match &pending {
        Pending::Exec { req: e, .. } => (e.stdout, e.stderr),
        Pending::Attach { req: a, .. } => (a.stdout, a.stderr),
        Pending::PortForward { .. } => (false, false),
    };
    let first = if stdout {
        1
    } else if stderr {
        2
    } else {
        3
    };
    let idle = conn.idle_timeout;
    conn.spawn_session(async move {
        let Some(ws) = upgraded_websocket(req).await else {
            return;
        };
        let started = match pending {
            Pending::Exec { req: exec, monitor } => {
                tracing::info!(container_id = %exec.container_id, cmd = ?exec.cmd, tty = exec.tty, "exec session (websocket)");
                super::remotecommand::start_exec(&monitor, &exec).await
            }
            Pending::Attach { req: a, monitor } => {
                tracing::info!(container_id = %a.container_id, "attach session (websocket)");
                super::remotecommand::start_attach(&monitor, &a).await
            }
            Pending::PortForward { req: pf, netns } => {
                tracing::info!(pod_id = %pf.pod_sandbox_id, ports = ?pf.port, "port-forward session (websocket)");
                let ports = pf
                    .port
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect();
                super::portforward::serve_websocket(ws, proto, netns, ports, idle).await;
                return;
            }
        };
        match started {
            Ok(process) => websocket::serve_exec(ws, proto, process, first, idle).await,
            Err(e) => websocket::fail(ws, proto, &e).await,
        }
    });
    websocket_accepted(&key, proto.name)
}
