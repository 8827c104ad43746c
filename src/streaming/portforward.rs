//! Port-forward: connections to `localhost:<port>` inside a pod's network
//! namespace. Served over WebSocket channels here (form D of the spec:
//! `v4.channel.k8s.io`, base64, or no subprotocol), ports from the request.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::idle::Activity;
use super::websocket::{CLOSE_GRACE, Protocol, frame};
use std::path::{Path, PathBuf};

/// Opens a connection to `port` in the network namespace pinned at
/// `netns` (the host's when `None`).
pub async fn dial(netns: Option<&Path>, port: u16) -> Result<tokio::net::TcpStream, String> {
    let netns = netns.map(Path::to_path_buf);
    let std_stream = tokio::task::spawn_blocking(move || {
        crate::executor::sys::connect_in_netns(netns.as_deref(), port)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("connecting to localhost:{port} in the pod: {e}"))?;
    std_stream
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

/// Serves the request's ports on one WebSocket: channel 2i carries data
/// of port i both ways, 2i+1 its errors; each starts with the port number
/// (2 bytes, little-endian). Ends when every port's connection has ended,
/// the client leaves, or no message has passed either way for
/// `idle_timeout`.
pub async fn serve_websocket<S>(
    mut ws: WebSocketStream<S>,
    p: Protocol,
    netns: Option<PathBuf>,
    ports: Vec<u16>,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new(idle_timeout);
    let forwarded = activity
        .run(forward(&mut ws, p, netns.as_deref(), &ports, &activity))
        .await;
    let reason = match forwarded {
        Some(true) => "",
        // Client gone.
        Some(false) => return,
        None => {
            tracing::info!(timeout = ?idle_timeout, "port-forward session idle: closing");
            "idle timeout"
        }
    };
    let _ = tokio::time::timeout(
        CLOSE_GRACE,
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: reason.into(),
        }))),
    )
    .await;
}

/// Dials the ports and copies until every connection has ended (`true`)
/// or the client is gone (`false`).
async fn forward<S>(
    ws: &mut WebSocketStream<S>,
    p: Protocol,
    netns: Option<&Path>,
    ports: &[u16],
    activity: &Activity,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for (i, port) in ports.iter().enumerate() {
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            if ws.send(frame(p, ch, &port.to_le_bytes())).await.is_err() {
                return false;
            }
        }
    }
    let (to_ws, mut from_conns) = mpsc::channel::<(u8, Vec<u8>)>(64);
    let mut writers = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = (2 * i as u8, 2 * i as u8 + 1);
        match dial(netns, port).await {
            Ok(conn) => {
                let (mut r, w) = conn.into_split();
                writers.push(Some(w));
                let tx = to_ws.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 || tx.send((data_ch, buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                    let _ = tx.send((255, vec![data_ch])).await;
                });
            }
            Err(e) => {
                writers.push(None);
                let _ = to_ws.send((err_ch, e.into_bytes())).await;
                let _ = to_ws.send((255, vec![data_ch])).await;
            }
        }
    }
    drop(to_ws);
    let mut open = ports.len();
    while open > 0 {
        tokio::select! {
            out = from_conns.recv() => match out {
                Some((255, _)) => open -= 1,
                Some((ch, data)) => {
                    if ws.send(frame(p, ch, &data)).await.is_err() {
                        return false;
                    }
                    activity.touch();
                }
                None => break,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                Some(Ok(m)) => {
                    activity.touch();
                    let Some((ch, data)) = super::websocket::unframe(p, &m) else {
                        continue;
                    };
                    if ch % 2 == 0
                        && let Some(Some(w)) = writers.get_mut(ch as usize / 2)
                        && w.write_all(&data).await.is_err()
                    {
                        writers[ch as usize / 2] = None;
                    }
                }
            },
        }
    }
    true
}
