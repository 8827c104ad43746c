//! The HTTP side: `/{exec,attach,portforward}/{token}` on the streaming
//! listener, upgraded to WebSocket (SPDY is negotiated the same way).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::Pending;
use super::websocket;
use crate::runtime::Runtime;

type Reply = Response<Full<Bytes>>;

fn status(code: StatusCode, body: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r
}

/// Serves until the listener fails; one task per connection.
pub async fn serve(listener: TcpListener, rt: Arc<Runtime>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "streaming accept");
                continue;
            }
        };
        let rt = rt.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(handle(req, rt).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "streaming connection");
            }
        });
    }
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(req: Request<Incoming>, rt: Arc<Runtime>) -> Reply {
    let path = req.uri().path().trim_start_matches('/').to_string();
    let Some((route, token)) = path.split_once('/') else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let span = tracing::info_span!("stream", route, method = %req.method());
    let _enter = span.enter();
    // Spent on first use, before the upgrade: a failed upgrade burns it.
    let Some(pending) = rt.streaming.redeem(route, token) else {
        tracing::debug!("unknown, spent or expired token");
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let upgrade = header_str(&req, "upgrade")
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        return websocket_upgrade(req, rt, pending);
    }
    status(
        StatusCode::BAD_REQUEST,
        "only WebSocket upgrades are served yet",
    )
}

fn websocket_upgrade(req: Request<Incoming>, rt: Arc<Runtime>, pending: Pending) -> Reply {
    let Some(key) = header_str(&req, "sec-websocket-key").map(str::to_string) else {
        return status(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let offered = header_str(&req, "sec-websocket-protocol");
    let negotiated = match &pending {
        // Port-forward speaks only the channel forms here (no v5, which
        // is an exec/attach protocol).
        Pending::PortForward(_) => websocket::negotiate(offered).filter(|p| !p.close_signal),
        _ => websocket::negotiate(offered),
    };
    let Some(proto) = negotiated else {
        return status(StatusCode::FORBIDDEN, "");
    };
    let (stdout, stderr) = match &pending {
        Pending::Exec(e) => (e.stdout, e.stderr),
        Pending::Attach(a) => (a.stdout, a.stderr),
        Pending::PortForward(_) => (false, false),
    };
    let first = if stdout {
        1
    } else if stderr {
        2
    } else {
        3
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "websocket upgrade");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let started = match &pending {
            Pending::Exec(exec) => {
                tracing::info!(container_id = %exec.container_id, cmd = ?exec.cmd, tty = exec.tty, "exec session (websocket)");
                super::remotecommand::start_exec(&rt, exec).await
            }
            Pending::Attach(a) => {
                tracing::info!(container_id = %a.container_id, "attach session (websocket)");
                super::remotecommand::start_attach(&rt, a).await
            }
            Pending::PortForward(pf) => {
                tracing::info!(pod_id = %pf.pod_sandbox_id, ports = ?pf.port, "port-forward session (websocket)");
                let ports = pf
                    .port
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect();
                super::portforward::serve_websocket(
                    ws,
                    proto,
                    rt.clone(),
                    pf.pod_sandbox_id.clone(),
                    ports,
                )
                .await;
                return;
            }
        };
        match started {
            Ok(process) => websocket::serve_exec(ws, proto, process, first).await,
            Err(e) => websocket::fail(ws, proto, &e).await,
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&websocket::accept_key(&key)) {
        h.insert("sec-websocket-accept", v);
    }
    if !proto.name.is_empty() {
        h.insert(
            "sec-websocket-protocol",
            header::HeaderValue::from_static(proto.name),
        );
    }
    r
}
