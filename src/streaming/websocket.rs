//! Exec over WebSocket: the channel protocols `v5.channel.k8s.io`,
//! `v4.channel.k8s.io` and their base64 and pre-v4 forms. Each message
//! is one channel byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize,
//! 255 close) then the payload; base64 forms send text `'0'+channel`
//! followed by base64.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::idle::{Activity, idle_message};
use super::remotecommand::{Process, status_message};

/// How long ending a session may take: the status, the Close and the
/// client's Close in reply. A client that stopped reading is cut off then.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a negotiated subprotocol means on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// The subprotocol name as offered in `Sec-WebSocket-Protocol`, e.g. `v5.channel.k8s.io`.
    pub name: &'static str,
    /// Messages are text: the channel as an ASCII digit, then the payload in base64.
    pub base64: bool,
    /// The error channel carries a JSON Status, always (v4+).
    pub status_json: bool,
    /// The client may half-close a channel (v5).
    pub close_signal: bool,
}

const PROTOCOLS: &[Protocol] = &[
    Protocol {
        name: "v5.channel.k8s.io",
        base64: false,
        status_json: true,
        close_signal: true,
    },
    Protocol {
        name: "v4.channel.k8s.io",
        base64: false,
        status_json: true,
        close_signal: false,
    },
    Protocol {
        name: "v4.base64.channel.k8s.io",
        base64: true,
        status_json: true,
        close_signal: false,
    },
    Protocol {
        name: "channel.k8s.io",
        base64: false,
        status_json: false,
        close_signal: false,
    },
    Protocol {
        name: "base64.channel.k8s.io",
        base64: true,
        status_json: false,
        close_signal: false,
    },
];

/// The first offered subprotocol crius speaks (client order); no offer at
/// all means plain binary channels. `None`: nothing acceptable (403).
pub fn negotiate(offered: Option<&str>) -> Option<Protocol> {
    let Some(offered) = offered.filter(|o| !o.trim().is_empty()) else {
        return Some(Protocol {
            name: "",
            ..PROTOCOLS[3]
        });
    };
    offered
        .split(',')
        .map(str::trim)
        .find_map(|o| PROTOCOLS.iter().find(|p| p.name == o).copied())
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455).
pub fn accept_key(key: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

pub(super) fn frame(p: Protocol, channel: u8, data: &[u8]) -> Message {
    if p.base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + channel) as char);
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(s.into())
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

/// `(channel, payload)` of a client message; None for control or
/// malformed messages.
pub(super) fn unframe(p: Protocol, m: &Message) -> Option<(u8, Vec<u8>)> {
    match m {
        Message::Binary(b) if !b.is_empty() => Some((b[0], b[1..].to_vec())),
        Message::Text(t) if p.base64 && !t.is_empty() => {
            let ch = t.as_bytes()[0].checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&t.as_bytes()[1..])
                .ok()?;
            Some((ch, data))
        }
        _ => None,
    }
}

/// Serves one exec session until the process ends, the client leaves, or
/// no message has passed either way for `idle_timeout` (then the client
/// gets a Failure status naming the timeout, and Close).
pub async fn serve_exec<S>(
    mut ws: WebSocketStream<S>,
    p: Protocol,
    mut process: Process,
    first_channel: u8,
    idle_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new(idle_timeout);
    let pumped = activity
        .run(pump(&mut ws, p, &mut process, first_channel, &activity))
        .await;
    let exit = match pumped {
        Some(Some(exit)) => exit,
        // Client gone: dropping `process` kills it.
        Some(None) => return,
        None => {
            tracing::info!(timeout = ?idle_timeout, "exec session idle: closing");
            Err(idle_message(idle_timeout))
        }
    };
    close(ws, p, &exit).await;
}

/// Moves messages between the client and the process until it has exited
/// and its output is drained (`Some(exit)`), or the client is gone
/// (`None`). Every message either way is traffic for `activity`.
async fn pump<S>(
    ws: &mut WebSocketStream<S>,
    p: Protocol,
    process: &mut Process,
    first_channel: u8,
    activity: &Activity,
) -> Option<Result<i32, String>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // An empty message on the first output channel: "ready" to old clients.
    ws.send(frame(p, first_channel, &[])).await.ok()?;
    let mut stdin = process.stdin.take();
    let mut outputs_open = true;
    loop {
        tokio::select! {
            out = process.output.recv(), if outputs_open => match out {
                Some((ch, data)) => {
                    ws.send(frame(p, ch, &data)).await.ok()?;
                    activity.touch();
                }
                None => outputs_open = false,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(m)) => {
                    activity.touch();
                    match unframe(p, &m) {
                        Some((0, data)) => {
                            if let Some(tx) = &stdin {
                                let _ = tx.send(Bytes::from(data)).await;
                            }
                        }
                        Some((4, data)) => {
                            for (w, h) in super::remotecommand::parse_resizes(&data) {
                                process.resize(w, h);
                            }
                        }
                        Some((255, data)) if p.close_signal && data == [0] => stdin = None,
                        _ => {}
                    }
                }
            },
            exit = &mut process.exit, if !outputs_open => {
                return Some(exit.unwrap_or_else(|_| Err("exec ended without a status".into())));
            }
        }
    }
}

/// Ends a session: the status on channel 3 (if the protocol sends one for
/// `exit`), Close 1000, then the client's Close, all within
/// [`CLOSE_GRACE`].
async fn close<S>(mut ws: WebSocketStream<S>, p: Protocol, exit: &Result<i32, String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if let Some(s) = status_message(exit, p.status_json) {
            ws.send(frame(p, 3, s.as_bytes())).await?;
        }
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await?;
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    })
    .await;
}

/// Reports a session that could not start: the status on channel 3, then
/// Close 1000.
pub async fn fail<S>(ws: WebSocketStream<S>, p: Protocol, err: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    close(ws, p, &Err(err.to_string())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_client_order() {
        assert_eq!(
            negotiate(Some("v5.channel.k8s.io")).unwrap().name,
            "v5.channel.k8s.io"
        );
        assert_eq!(
            negotiate(Some("foo, v4.base64.channel.k8s.io, v5.channel.k8s.io"))
                .unwrap()
                .name,
            "v4.base64.channel.k8s.io"
        );
        assert!(negotiate(Some("nope")).is_none());
        assert_eq!(negotiate(None).unwrap().name, "");
    }

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn framing_binary_and_base64() {
        let v5 = negotiate(Some("v5.channel.k8s.io")).unwrap();
        assert_eq!(
            frame(v5, 1, b"hi\n"),
            Message::Binary(vec![1, b'h', b'i', b'\n'].into())
        );
        let b64 = negotiate(Some("base64.channel.k8s.io")).unwrap();
        assert_eq!(frame(b64, 1, b"hi\n"), Message::Text("1aGkK".into()));
        assert_eq!(
            unframe(b64, &Message::Text("0aGkK".into())),
            Some((0, b"hi\n".to_vec()))
        );
    }
}
