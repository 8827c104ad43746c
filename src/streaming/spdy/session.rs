//! The async half: a [`Session`] drives one upgraded connection and hands
//! the application a [`Stream`] for each stream the peer opens.
//!
//! Two tasks per connection. The reader task owns the [`Decoder`]: it
//! decodes frames, echoes pings, routes DATA to each stream's queue and
//! announces new streams. The writer task owns the only [`Encoder`]; every
//! [`StreamWriter`] and the session itself send it frames through one
//! queue, so the compressed header blocks go out in the order they were
//! compressed and what is sent on one stream arrives in order. There is no
//! flow control (§2.5): back-pressure is the bounded queues and TCP.
//! [`Closer`] ends a session from outside the task that owns it (the idle
//! timer in `spdy_serve`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use super::SpdyError;
use super::frame::{
    Decoder, Encoder, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, GOAWAY_OK, GOAWAY_PROTOCOL_ERROR,
    RST_PROTOCOL_ERROR,
};
use crate::streaming::idle::Activity;

/// Output is chunked into DATA frames of at most this size, like client-go does (§2.5).
pub const MAX_DATA_CHUNK: usize = 32 << 10;
/// Per-stream incoming buffer, in DATA frames. When full, the reader task
/// waits, which pauses the socket (TCP back-pressure, §2.5).
const STREAM_QUEUE: usize = 64;
/// Frames queued for the writer task before senders wait.
const WRITER_QUEUE: usize = 128;
/// New streams not yet taken by [`Session::accept`].
const ACCEPT_QUEUE: usize = 16;

/// What the writer task is asked to do.
enum WriterMsg {
    Frame(Frame),
    /// Flush, shut the write side down, then acknowledge.
    Shutdown(oneshot::Sender<()>),
}

/// A stream the peer opened with SYN_STREAM. The application inspects its
/// headers, then calls [`Stream::reply`] (or [`StreamWriter::reset`] to
/// refuse it) and uses `data` / `writer`.
pub struct Stream {
    /// Stream id (odd: client-initiated).
    pub id: u32,
    /// SYN_STREAM flags ([`FLAG_FIN`]: the peer will send nothing;
    /// [`FLAG_UNIDIRECTIONAL`]: we may not send).
    pub flags: u8,
    /// Headers from the SYN_STREAM, e.g. `streamtype`, `port`, `requestid`.
    pub headers: Vec<(String, String)>,
    /// Incoming DATA payloads; ends when the peer FINs or resets the stream,
    /// or when the connection ends.
    pub data: mpsc::Receiver<Bytes>,
    /// Handle for sending on this stream; cloneable.
    pub writer: StreamWriter,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("flags", &self.flags)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// The value of header `name`, matched case-insensitively, because
    /// client-go's names pass through Go's canonicalisation and lower-casing.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Accepts the stream with SYN_REPLY (empty header block). Must be done
    /// at once: the client waits for it before creating its next stream.
    pub async fn reply(&self) -> Result<(), SpdyError> {
        self.writer.reply().await
    }
}

/// Sending side of one stream. Frames go through the session's single writer
/// task, so everything sent on one handle arrives in order (SYN_REPLY before
/// DATA before FIN).
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<WriterMsg>,
    state: Arc<StreamState>,
}

/// Shared per-stream flags (FIN at most once, no RST after our FIN, notice a peer reset).
#[derive(Default)]
struct StreamState {
    unidirectional: bool,
    fin_sent: AtomicBool,
    reset: AtomicBool,
    peer_reset: AtomicBool,
}

impl StreamWriter {
    /// The stream id this handle writes to.
    pub fn id(&self) -> u32 {
        self.id
    }

    async fn send(&self, frame: Frame) -> Result<(), SpdyError> {
        self.tx
            .send(WriterMsg::Frame(frame))
            .await
            .map_err(|_| SpdyError::ConnectionClosed)
    }

    /// Sends SYN_REPLY with an empty header block (what kubelet sends).
    pub async fn reply(&self) -> Result<(), SpdyError> {
        self.send(Frame::SynReply {
            stream_id: self.id,
            flags: 0,
            headers: Vec::new(),
        })
        .await
    }

    /// Sends `data` as DATA frames of at most 32 KiB. No flow control: the
    /// peer never grants window, back-pressure comes from TCP.
    pub async fn write(&self, mut data: Bytes) -> Result<(), SpdyError> {
        if self.state.unidirectional && !data.is_empty() {
            return Err(SpdyError::Unencodable("DATA on a unidirectional stream"));
        }
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_CHUNK));
            self.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes our direction (empty DATA with FIN). Sent at most once,
    /// and not after a reset or on a unidirectional stream.
    pub async fn fin(&self) -> Result<(), SpdyError> {
        if self.state.unidirectional
            || self.state.reset.load(Ordering::Acquire)
            || self.state.fin_sent.swap(true, Ordering::AcqRel)
        {
            return Ok(());
        }
        self.send(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// Aborts the stream both ways with RST_STREAM (`status` normally
    /// [`RST_CANCEL`](super::RST_CANCEL)); also how a stream is refused
    /// instead of replied to. Sent at most once.
    pub async fn reset(&self, status: u32) -> Result<(), SpdyError> {
        if self.state.reset.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.send(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    /// Whether the peer reset this stream: stop producing output for it.
    pub fn is_reset_by_peer(&self) -> bool {
        self.state.peer_reset.load(Ordering::Acquire)
    }
}

/// One SPDY connection after the HTTP upgrade. Owns a reader task (decodes
/// frames, echoes pings, routes DATA, announces new streams) and a writer
/// task (the only encoder). Dropping the session stops the reader; call
/// [`Session::close`] for an orderly GOAWAY and shutdown.
pub struct Session {
    incoming: mpsc::Receiver<Stream>,
    tx: mpsc::Sender<WriterMsg>,
    last_accepted: Arc<AtomicU32>,
    goaway_sent: Arc<AtomicBool>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts driving `io`. Bytes the HTTP layer already read past the
    /// upgrade request belong to the SPDY stream: pass them as `initial`.
    /// Nothing is written until the application replies to a stream or the
    /// peer pings (§1.3: send nothing before the client's first frame).
    pub fn new<T>(io: T, initial: Bytes) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, initial, None)
    }

    /// [`Session::new`], with every read from and write to the connection
    /// recorded in `activity`, for an idle timer (see [`Session::closer`]).
    pub fn with_activity<T>(io: T, initial: Bytes, activity: Arc<Activity>) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, initial, Some(activity))
    }

    fn start<T>(io: T, initial: Bytes, activity: Option<Arc<Activity>>) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let (accept_tx, incoming) = mpsc::channel(ACCEPT_QUEUE);
        let last_accepted = Arc::new(AtomicU32::new(0));
        let goaway_sent = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(write_loop(wr, rx, activity.clone()));
        let reader = tokio::spawn(read_loop(
            rd,
            BytesMut::from(&initial[..]),
            tx.clone(),
            accept_tx,
            last_accepted.clone(),
            goaway_sent.clone(),
            activity,
        ));
        Self {
            incoming,
            tx,
            last_accepted,
            goaway_sent,
            reader,
            writer: Some(writer),
        }
    }

    /// The next stream the peer opened, or `None` once the connection has
    /// ended (EOF, GOAWAY, protocol error).
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Ends the connection: GOAWAY (status 0, last accepted stream id) as the
    /// very last frame, then shuts down the write side and stops reading.
    /// Frames already queued by stream writers are sent first, so this waits
    /// for a slow peer to read them; wrap it in a timeout if that matters.
    /// No second GOAWAY if one already went out after a protocol error.
    pub async fn close(mut self) -> Result<(), SpdyError> {
        let done = goaway_and_shutdown(&self.tx, &self.last_accepted, &self.goaway_sent).await;
        self.reader.abort();
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
        done
    }

    /// A handle that ends this session from outside the task that owns it
    /// (an idle timer). It holds the writer open until it is dropped.
    pub fn closer(&self) -> Closer {
        Closer {
            tx: self.tx.clone(),
            last_accepted: self.last_accepted.clone(),
            goaway_sent: self.goaway_sent.clone(),
            reader: self.reader.abort_handle(),
            writer: self.writer.as_ref().map(JoinHandle::abort_handle),
        }
    }
}

/// Ends a [`Session`] whose owner may be stuck or gone; see
/// [`Session::closer`].
pub struct Closer {
    tx: mpsc::Sender<WriterMsg>,
    last_accepted: Arc<AtomicU32>,
    goaway_sent: Arc<AtomicBool>,
    reader: AbortHandle,
    writer: Option<AbortHandle>,
}

impl Closer {
    /// Stops reading, sends GOAWAY after what is queued and shuts the
    /// write side down, if the peer takes it within `grace`; then stops the
    /// writer either way, so the connection is closed even when the peer
    /// reads nothing.
    pub async fn close_within(self, grace: std::time::Duration) {
        self.reader.abort();
        let _ = tokio::time::timeout(
            grace,
            goaway_and_shutdown(&self.tx, &self.last_accepted, &self.goaway_sent),
        )
        .await;
        if let Some(w) = self.writer {
            w.abort();
        }
    }
}

/// GOAWAY (status 0, the last accepted stream id) unless one went out
/// already, then a flushed shutdown of the write side.
async fn goaway_and_shutdown(
    tx: &mpsc::Sender<WriterMsg>,
    last_accepted: &AtomicU32,
    goaway_sent: &AtomicBool,
) -> Result<(), SpdyError> {
    let last_good = last_accepted.load(Ordering::Acquire);
    let goaway = if goaway_sent.swap(true, Ordering::AcqRel) {
        Ok(())
    } else {
        tx.send(WriterMsg::Frame(Frame::GoAway {
            last_good,
            status: GOAWAY_OK,
        }))
        .await
    };
    let (ack_tx, ack_rx) = oneshot::channel();
    let shutdown = tx.send(WriterMsg::Shutdown(ack_tx)).await;
    let acked = ack_rx.await;
    match (goaway, shutdown, acked) {
        (Ok(()), Ok(()), Ok(())) => Ok(()),
        _ => Err(SpdyError::ConnectionClosed),
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The writer task: encodes frames in arrival order with the connection's
/// one deflate context, batching whatever is queued into one write.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<WriterMsg>,
    activity: Option<Arc<Activity>>,
) {
    let mut enc = Encoder::new();
    let mut buf = BytesMut::with_capacity(64 << 10);
    while let Some(mut msg) = rx.recv().await {
        let mut ack = None;
        loop {
            match msg {
                WriterMsg::Frame(frame) => {
                    if let Err(e) = enc.encode(&frame, &mut buf) {
                        tracing::warn!(error = %e, "spdy: dropping unencodable frame");
                    }
                }
                WriterMsg::Shutdown(a) => {
                    ack = Some(a);
                    break;
                }
            }
            if buf.len() >= 256 << 10 {
                break;
            }
            match rx.try_recv() {
                Ok(m) => msg = m,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            let res = async {
                wr.write_all(&buf).await?;
                wr.flush().await
            }
            .await;
            buf.clear();
            if let Err(e) = res {
                tracing::debug!(error = %e, "spdy: write failed, stopping writer");
                return;
            }
            if let Some(a) = &activity {
                a.touch();
            }
        }
        if let Some(a) = ack {
            let _ = wr.shutdown().await;
            let _ = a.send(());
            return;
        }
    }
}

/// The reader task: decodes frames and dispatches them. Ends on EOF, read
/// error, GOAWAY or a protocol error (after sending GOAWAY status 1); the
/// dropped senders then end every stream's `data` and [`Session::accept`].
async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: BytesMut,
    tx: mpsc::Sender<WriterMsg>,
    accept_tx: mpsc::Sender<Stream>,
    last_accepted: Arc<AtomicU32>,
    goaway_sent: Arc<AtomicBool>,
    activity: Option<Arc<Activity>>,
) {
    let mut dec = Decoder::new();
    let mut streams: HashMap<u32, (Option<mpsc::Sender<Bytes>>, Arc<StreamState>)> = HashMap::new();
    loop {
        let frame = match dec.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => {
                buf.reserve(16 << 10);
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(a) = &activity {
                            a.touch();
                        }
                        continue;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "spdy: protocol error, closing connection");
                if goaway_sent.swap(true, Ordering::AcqRel) {
                    return;
                }
                let _ = tx
                    .send(WriterMsg::Frame(Frame::GoAway {
                        last_good: last_accepted.load(Ordering::Acquire),
                        status: GOAWAY_PROTOCOL_ERROR,
                    }))
                    .await;
                return;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let last = last_accepted.load(Ordering::Acquire);
                if stream_id <= last || stream_id % 2 == 0 {
                    // Backwards or server-parity id: refuse, like spdystream's validateStreamId.
                    let _ = tx
                        .send(WriterMsg::Frame(Frame::RstStream {
                            stream_id,
                            status: RST_PROTOCOL_ERROR,
                        }))
                        .await;
                    continue;
                }
                last_accepted.store(stream_id, Ordering::Release);
                if streams.len() >= 64 {
                    // Forget streams finished in both directions (or reset by us).
                    streams.retain(|_, (sender, st)| {
                        sender.is_some()
                            || !(st.fin_sent.load(Ordering::Acquire)
                                || st.reset.load(Ordering::Acquire))
                    });
                }
                let (data_tx, data) = mpsc::channel(STREAM_QUEUE);
                let state = Arc::new(StreamState {
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    ..StreamState::default()
                });
                let sender = (flags & FLAG_FIN == 0).then_some(data_tx);
                streams.insert(stream_id, (sender, state.clone()));
                let stream = Stream {
                    id: stream_id,
                    flags,
                    headers,
                    data,
                    writer: StreamWriter {
                        id: stream_id,
                        tx: tx.clone(),
                        state,
                    },
                };
                if accept_tx.send(stream).await.is_err() {
                    // Nobody accepts streams any more (session dropped).
                    return;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let Some((sender, state)) = streams.get_mut(&stream_id) else {
                    continue; // unknown or finished stream: drop quietly
                };
                if state.reset.load(Ordering::Acquire) {
                    // We reset it (e.g. stdin at the end of an exec); the
                    // client may still send: drop, and never block on it.
                    *sender = None;
                    continue;
                }
                if !data.is_empty()
                    && let Some(s) = sender
                    && s.send(data).await.is_err()
                {
                    // The application dropped the receiver: discard further data.
                    *sender = None;
                }
                if flags & FLAG_FIN != 0 {
                    *sender = None;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some((_, state)) = streams.remove(&stream_id) {
                    state.peer_reset.store(true, Ordering::Release);
                }
            }
            Frame::Ping { id } => {
                // Odd ids are the client's: echo. Even ids would answer ours (we send none).
                if id % 2 == 1 {
                    let _ = tx.send(WriterMsg::Frame(Frame::Ping { id })).await;
                }
            }
            Frame::GoAway { .. } => return,
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::spdy::RST_CANCEL;
    use crate::streaming::spdy::test_support::{h, hex};
    use tokio::io::DuplexStream;

    /// Fake client: its own encoder (C→S) and decoder (S→C) over a duplex pipe.
    struct Client {
        io: DuplexStream,
        enc: Encoder,
        dec: Decoder,
        buf: BytesMut,
    }

    impl Client {
        fn new(io: DuplexStream) -> Self {
            Self {
                io,
                enc: Encoder::new(),
                dec: Decoder::new(),
                buf: BytesMut::new(),
            }
        }
        async fn send(&mut self, f: Frame) {
            let mut out = BytesMut::new();
            self.enc.encode(&f, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }
        async fn send_raw(&mut self, b: &[u8]) {
            self.io.write_all(b).await.unwrap();
        }
        /// Next frame with its raw bytes, or None at EOF.
        async fn recv(&mut self) -> Option<(Frame, Vec<u8>)> {
            loop {
                let before = self.buf.clone();
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    let raw = before[..before.len() - self.buf.len()].to_vec();
                    return Some((f, raw));
                }
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    self.io.read_buf(&mut self.buf),
                )
                .await
                .expect("timed out waiting for a frame")
                .unwrap();
                if n == 0 {
                    return None;
                }
            }
        }
    }

    fn syn(id: u32, pairs: &[(&str, &str)]) -> Frame {
        Frame::SynStream {
            stream_id: id,
            assoc: 0,
            priority: 0,
            flags: 0,
            headers: h(pairs),
        }
    }

    #[tokio::test]
    async fn session_replies_streams_data_fin_and_pings() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut session = Session::new(a, Bytes::new());
        let mut client = Client::new(b);

        client.send(syn(1, &[("streamtype", "stdout")])).await;
        let stream = session.accept().await.unwrap();
        assert_eq!(stream.id, 1);
        assert_eq!(stream.header("StreamType"), Some("stdout"));
        stream.reply().await.unwrap();
        let (f, _) = client.recv().await.unwrap();
        assert_eq!(
            f,
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![]
            }
        );

        client
            .send_raw(&hex("80 03 00 06 00 00 00 04 00 00 00 01"))
            .await;
        let (f, raw) = client.recv().await.unwrap();
        assert_eq!(f, Frame::Ping { id: 1 });
        assert_eq!(raw, hex("80 03 00 06 00 00 00 04 00 00 00 01"));

        stream
            .writer
            .write(Bytes::from_static(b"hi\n"))
            .await
            .unwrap();
        stream.writer.fin().await.unwrap();
        stream.writer.fin().await.unwrap(); // at most once
        let (_, raw) = client.recv().await.unwrap();
        assert_eq!(raw, hex("00 00 00 01 00 00 00 03 68 69 0a"));
        let (_, raw) = client.recv().await.unwrap();
        assert_eq!(raw, hex("00 00 00 01 01 00 00 00"));

        // Second stream: client data then FIN reaches the application, then EOF.
        client.send(syn(3, &[("streamtype", "stdin")])).await;
        let mut stdin = session.accept().await.unwrap();
        assert_eq!(stdin.header("streamtype"), Some("stdin"));
        stdin.reply().await.unwrap();
        let (f, raw) = client.recv().await.unwrap();
        assert!(matches!(f, Frame::SynReply { stream_id: 3, .. }));
        assert_eq!(
            raw,
            hex("80 03 00 02 00 00 00 0c 00 00 00 03 02 01 00 00 00 00 ff ff")
        );
        client
            .send_raw(&hex(
                "00 00 00 03 00 00 00 02 6c 73 00 00 00 03 01 00 00 00",
            ))
            .await;
        assert_eq!(stdin.data.recv().await.unwrap(), Bytes::from_static(b"ls"));
        assert!(stdin.data.recv().await.is_none());

        session.close().await.unwrap();
        let (f, _) = client.recv().await.unwrap();
        assert_eq!(
            f,
            Frame::GoAway {
                last_good: 3,
                status: 0
            }
        );
        assert!(client.recv().await.is_none());
    }

    #[tokio::test]
    async fn session_ignores_flow_control_and_refuses_bad_ids() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let initial = {
            // The first frame arrives with the upgrade request's buffered bytes.
            let mut enc = Encoder::new();
            let mut out = BytesMut::new();
            enc.encode(&syn(1, &[("streamtype", "stdout")]), &mut out)
                .unwrap();
            let mut client = Client::new(b);
            client.enc = enc;
            (out.freeze(), client)
        };
        let (bytes, mut client) = initial;
        let mut session = Session::new(a, bytes);
        let stream = session.accept().await.unwrap();
        stream.reply().await.unwrap();
        assert!(matches!(
            client.recv().await.unwrap().0,
            Frame::SynReply { stream_id: 1, .. }
        ));

        client
            .send(Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 1024)],
            })
            .await;
        client
            .send(Frame::WindowUpdate {
                stream_id: 1,
                delta: 1,
            })
            .await;
        client
            .send(Frame::Headers {
                stream_id: 1,
                flags: 0,
                headers: h(&[("x", "y")]),
            })
            .await;
        // Backwards and even ids are refused with RST_STREAM 1.
        client.send(syn(1, &[("streamtype", "stdin")])).await;
        let (f, _) = client.recv().await.unwrap();
        assert_eq!(
            f,
            Frame::RstStream {
                stream_id: 1,
                status: RST_PROTOCOL_ERROR
            }
        );
        client.send(syn(4, &[("streamtype", "stdin")])).await;
        assert_eq!(
            client.recv().await.unwrap().0,
            Frame::RstStream {
                stream_id: 4,
                status: RST_PROTOCOL_ERROR
            }
        );
        // The header context is still in step: a later stream decodes.
        client.send(syn(5, &[("streamtype", "stderr")])).await;
        let s5 = session.accept().await.unwrap();
        assert_eq!(s5.header("streamtype"), Some("stderr"));

        // 1 MiB of output with no WINDOW_UPDATE, read concurrently.
        let payload = Bytes::from(vec![0x5a; 1 << 20]);
        let writer = stream.writer.clone();
        let p2 = payload.clone();
        let send = tokio::spawn(async move {
            writer.write(p2).await.unwrap();
            writer.fin().await.unwrap();
        });
        let mut got = 0;
        loop {
            match client.recv().await.unwrap().0 {
                Frame::Data { data, flags, .. } => {
                    assert!(data.len() <= MAX_DATA_CHUNK);
                    got += data.len();
                    if flags & FLAG_FIN != 0 {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        send.await.unwrap();
        assert_eq!(got, payload.len());

        // Client RST on a stream we already FINed: quietly accepted.
        client
            .send(Frame::RstStream {
                stream_id: 1,
                status: RST_CANCEL,
            })
            .await;
        // Client GOAWAY ends the session: accept yields None.
        client
            .send(Frame::GoAway {
                last_good: 0,
                status: 0,
            })
            .await;
        assert!(session.accept().await.is_none());
    }

    #[tokio::test]
    async fn session_sends_goaway_on_protocol_error() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut session = Session::new(a, Bytes::new());
        let mut client = Client::new(b);
        client
            .send_raw(&hex("80 03 00 07 00 00 00 04 00 00 00 00"))
            .await;
        assert!(session.accept().await.is_none());
        assert_eq!(
            client.recv().await.unwrap().0,
            Frame::GoAway {
                last_good: 0,
                status: GOAWAY_PROTOCOL_ERROR
            }
        );
        session.close().await.unwrap();
        assert!(client.recv().await.is_none(), "only one GOAWAY");
    }

    #[tokio::test]
    async fn unidirectional_and_fin_flags_on_syn_stream() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut session = Session::new(a, Bytes::new());
        let mut client = Client::new(b);
        client
            .send(Frame::SynStream {
                stream_id: 1,
                assoc: 0,
                priority: 0,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: h(&[("streamtype", "error")]),
            })
            .await;
        let mut s = session.accept().await.unwrap();
        assert_eq!(s.flags, FLAG_FIN | FLAG_UNIDIRECTIONAL);
        assert!(s.data.recv().await.is_none(), "FIN: peer sends nothing");
        assert!(s.writer.write(Bytes::from_static(b"x")).await.is_err());
        s.reply().await.unwrap();
        s.writer.fin().await.unwrap(); // no-op
        client
            .send(Frame::RstStream {
                stream_id: 1,
                status: RST_CANCEL,
            })
            .await;
        client.send(Frame::Ping { id: 3 }).await;
        assert!(matches!(
            client.recv().await.unwrap().0,
            Frame::SynReply { stream_id: 1, .. }
        ));
        assert_eq!(client.recv().await.unwrap().0, Frame::Ping { id: 3 });
        assert!(s.writer.is_reset_by_peer());
        session.close().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_sends_goaway_and_closes() {
        use std::time::Duration;
        let (a, b) = tokio::io::duplex(1 << 16);
        let activity = Arc::new(Activity::new(Duration::from_secs(3)));
        let mut session = Session::with_activity(a, Bytes::new(), activity.clone());
        let closer = session.closer();
        let mut client = Client::new(b);
        let t0 = tokio::time::Instant::now();
        client.send(syn(1, &[("streamtype", "error")])).await;
        let stream = session.accept().await.unwrap();
        stream.reply().await.unwrap();
        assert!(matches!(
            client.recv().await.unwrap().0,
            Frame::SynReply { stream_id: 1, .. }
        ));
        // A ping every 2 s for 8 s: never 3 s without a frame.
        for id in [1, 3, 5, 7] {
            tokio::time::sleep(Duration::from_secs(2)).await;
            client.send(Frame::Ping { id }).await;
            assert_eq!(client.recv().await.unwrap().0, Frame::Ping { id });
        }
        let app = async move {
            let _stream = stream;
            while session.accept().await.is_some() {}
        };
        assert!(activity.run(app).await.is_none(), "idle, not ended");
        assert_eq!(t0.elapsed(), Duration::from_secs(8 + 3));
        closer.close_within(Duration::from_secs(2)).await;
        assert_eq!(
            client.recv().await.unwrap().0,
            Frame::GoAway {
                last_good: 1,
                status: GOAWAY_OK
            }
        );
        assert!(client.recv().await.is_none(), "then EOF");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_closes_when_the_peer_reads_nothing() {
        use std::time::Duration;
        let (a, b) = tokio::io::duplex(4096);
        let activity = Arc::new(Activity::new(Duration::from_secs(3)));
        let mut session = Session::with_activity(a, Bytes::new(), activity.clone());
        let closer = session.closer();
        let mut client = Client::new(b);
        client.send(syn(1, &[("streamtype", "stdout")])).await;
        let stream = session.accept().await.unwrap();
        // Far more output than the pipe holds; the client never reads.
        let app = async move {
            let _ = stream.reply().await;
            while stream
                .writer
                .write(Bytes::from(vec![0u8; 64 << 10]))
                .await
                .is_ok()
            {}
            std::future::pending::<()>().await
        };
        assert!(activity.run(app).await.is_none());
        let t0 = tokio::time::Instant::now();
        closer.close_within(Duration::from_secs(2)).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(2),
            "GOAWAY could not go out"
        );
        // The server's end is gone: what was buffered, then EOF.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.io.read_to_end(&mut rest))
            .await
            .expect("EOF, not a hang")
            .unwrap();
        assert!(!rest.is_empty());
        assert!(client.io.write_all(b"x").await.is_err(), "nobody reads");
        drop(session);
    }
}
