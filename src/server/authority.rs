//! Any gRPC client's `:authority` on the unix socket.
//!
//! gRPC C-core (the Python, Ruby, C++ and PHP clients) sends the
//! percent-encoded socket path as `:authority` on a unix socket
//! (`run%2Fcrius%2Fcrius.sock`), grpc-java and some Swift clients the raw
//! path. h2, under hyper and tonic, refuses both as malformed and resets the
//! stream with PROTOCOL_ERROR before any handler runs, and has no option to
//! accept them. On a unix socket the authority names nothing (the socket's
//! permissions are the access control), and containerd and cri-o (grpc-go
//! servers) ignore it, so crius accepts any: [`Conn`] sits between the
//! accepted stream and h2 and writes every request header block out again
//! with an `:authority` that is not a valid URI authority replaced by
//! `localhost`, what grpc-go sends. Every other frame passes byte for byte.
//!
//! A header block can only be read with the client's HPACK context (its
//! dynamic table), so each block is decoded with a decoder that follows the
//! client's, and re-encoded as literals that never enter h2's dynamic table:
//! h2's context stays empty and never disagrees with what it is sent.
//! Padding is dropped; the block is cut into frames of at most the
//! protocol's minimum frame size, so h2's frame size limit always holds.
//!
//! A gRPC client sets the authority per channel, so the connection's first
//! request decides: if its authority is already valid (grpc-go's
//! `localhost`, tonic's), that block and every later byte pass to h2
//! unchanged and nothing more is decoded; h2's HPACK context then is the
//! client's own. Decoding every request's headers twice (here, then in h2)
//! was a tenth of the daemon's time under kubelet's polling. A later
//! request with an invalid authority on such a connection is refused by
//! h2, as any would be without this module; clients do not do that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface h2 expects first (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: length (24 bits), type, flags, stream id.
const FRAME_HEADER_LEN: usize = 9;
/// h2's SETTINGS_MAX_FRAME_SIZE, which the server keeps at the protocol's
/// default (tonic's `max_frame_size` is unset): a longer HEADERS or
/// CONTINUATION frame is refused as h2 would refuse it, and re-encoded
/// blocks are cut to it.
const MAX_FRAME: usize = 16 * 1024;
/// Most bytes of one header block, encoded or decoded: four times hyper's
/// 16 KiB header list limit, so h2 still answers a large list as it would;
/// past this the connection is closed rather than buffered.
const MAX_BLOCK: usize = 64 * 1024;
/// The dynamic table size h2 advertises (the HPACK default, which the server
/// keeps): the client's table can never be larger.
const TABLE_SIZE: usize = 4096;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// An accepted connection whose request header blocks reach h2 with a valid
/// `:authority` (see the module docs). Writes go straight through.
pub(crate) struct Conn<S> {
    inner: S,
    rewriter: Rewriter,
    /// Bytes read from the client and not yet looked at.
    input: BytesMut,
    /// Bytes ready for h2.
    output: BytesMut,
    eof: bool,
}

impl<S> Conn<S> {
    /// Wraps an accepted stream, before any byte was read from it.
    pub(crate) fn new(inner: S) -> Self {
        Conn {
            inner,
            rewriter: Rewriter::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Inside a frame that passes unchanged (DATA, mostly): read it
            // straight into h2's buffer.
            if let Some(n) = this.rewriter.passing().filter(|_| this.input.is_empty()) {
                let room = buf.initialize_unfilled_to(n.min(buf.remaining()));
                let mut direct = ReadBuf::new(room);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let got = direct.filled().len();
                buf.advance(got);
                this.rewriter.passed(got);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // What is left is an incomplete frame: h2 sees the stream end.
                this.eof = true;
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.rewriter.feed(&mut this.input, &mut this.output)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Conn<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A header block being collected from a HEADERS frame and its
/// CONTINUATION frames.
struct Pending {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The block's frames as received, while the connection's mode is
    /// undecided (passed on unchanged if its authority is valid).
    raw: Vec<u8>,
}

/// What the connection's header blocks need (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// No request yet.
    Undecided,
    /// The first request's authority was invalid: every block re-encoded.
    Rewrite,
    /// The first request's authority was valid: every byte passes.
    Pass,
}

/// The client-to-server byte stream's frame parser and header block
/// re-encoder (sans I/O).
struct Rewriter {
    preface_left: usize,
    /// Bytes of the current pass-through frame's payload still to come.
    skip: usize,
    pending: Option<Pending>,
    decoder: loona_hpack::Decoder<'static>,
    mode: Mode,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2: {what}"))
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            preface_left: PREFACE_LEN,
            skip: 0,
            pending: None,
            decoder,
            mode: Mode::Undecided,
        }
    }

    /// How many bytes pass unchanged from here, if the parser is inside a
    /// pass-through frame's payload (or the whole connection passes).
    fn passing(&self) -> Option<usize> {
        if self.preface_left > 0 {
            None
        } else if self.mode == Mode::Pass {
            Some(usize::MAX)
        } else {
            (self.skip > 0).then_some(self.skip)
        }
    }

    /// `n` bytes of the pass-through payload went to h2 directly.
    fn passed(&mut self, n: usize) {
        if self.mode != Mode::Pass {
            self.skip -= n;
        }
    }

    /// Moves what it can from `input` to `output`: frames other than header
    /// blocks unchanged, header blocks re-encoded once complete. Leaves an
    /// incomplete frame header or header frame in `input`.
    fn feed(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> io::Result<()> {
        loop {
            if self.mode == Mode::Pass && self.preface_left == 0 {
                output.extend_from_slice(&input.split());
                return Ok(());
            }
            let passing = if self.preface_left > 0 {
                self.preface_left
            } else {
                self.skip
            };
            if passing > 0 {
                let n = passing.min(input.len());
                output.extend_from_slice(&input.split_to(n));
                if self.preface_left > 0 {
                    self.preface_left -= n;
                } else {
                    self.skip -= n;
                }
                if n < passing {
                    return Ok(());
                }
                continue;
            }
            if input.len() < FRAME_HEADER_LEN {
                return Ok(());
            }
            let len =
                usize::from(input[0]) << 16 | usize::from(input[1]) << 8 | usize::from(input[2]);
            let kind = input[3];
            if kind != HEADERS && kind != CONTINUATION {
                if self.pending.is_some() {
                    return Err(malformed("a frame inside a header block"));
                }
                output.extend_from_slice(&input.split_to(FRAME_HEADER_LEN));
                self.skip = len;
                continue;
            }
            if len > MAX_FRAME {
                return Err(malformed("header frame larger than the frame size limit"));
            }
            if input.len() < FRAME_HEADER_LEN + len {
                input.reserve(FRAME_HEADER_LEN + len - input.len());
                return Ok(());
            }
            let frame = input.split_to(FRAME_HEADER_LEN + len);
            self.header_frame(&frame, output)?;
        }
    }

    fn header_frame(&mut self, frame: &[u8], output: &mut BytesMut) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream: [u8; 4] = [frame[5] & 0x7f, frame[6], frame[7], frame[8]];
        let mut payload = &frame[FRAME_HEADER_LEN..];
        if kind == HEADERS {
            if self.pending.is_some() {
                return Err(malformed("HEADERS inside a header block"));
            }
            if flags & PADDED != 0 {
                let (&pad, rest) = payload
                    .split_first()
                    .ok_or_else(|| malformed("padded HEADERS without a pad length"))?;
                let len = rest
                    .len()
                    .checked_sub(usize::from(pad))
                    .ok_or_else(|| malformed("HEADERS padding longer than the frame"))?;
                payload = &rest[..len];
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (p, rest) = payload
                    .split_first_chunk::<5>()
                    .ok_or_else(|| malformed("HEADERS priority cut short"))?;
                priority = Some(*p);
                payload = rest;
            }
            self.pending = Some(Pending {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                block: Vec::new(),
                raw: Vec::new(),
            });
        }
        let undecided = self.mode == Mode::Undecided;
        let pending = self
            .pending
            .as_mut()
            .filter(|p| p.stream == stream)
            .ok_or_else(|| malformed("CONTINUATION outside its header block"))?;
        if pending.block.len() + payload.len() > MAX_BLOCK {
            return Err(malformed("header block too large"));
        }
        pending.block.extend_from_slice(payload);
        if undecided {
            pending.raw.extend_from_slice(frame);
        }
        if flags & END_HEADERS != 0
            && let Some(p) = self.pending.take()
        {
            let (block, rewritten) = self.reencode(&p.block)?;
            if undecided && !rewritten {
                output.extend_from_slice(&p.raw);
                self.mode = Mode::Pass;
            } else {
                self.mode = Mode::Rewrite;
                emit(&p, &block, output);
            }
        }
        Ok(())
    }

    /// The block decoded in the client's context and encoded again as
    /// literals without indexing, with a usable `:authority`; and whether
    /// an `:authority` had to be replaced.
    fn reencode(&mut self, block: &[u8]) -> io::Result<(Vec<u8>, bool)> {
        let mut out = Vec::with_capacity(block.len() * 2);
        let mut size = 0usize;
        let mut rewritten = false;
        self.decoder
            .decode_with_cb(block, |name, value| {
                size += name.len() + value.len() + 32;
                if size > MAX_BLOCK {
                    return;
                }
                let value: &[u8] = if &*name == b":authority"
                    && http::uri::Authority::try_from(&*value).is_err()
                {
                    rewritten = true;
                    b"localhost"
                } else {
                    &value
                };
                literal(&name, value, &mut out);
            })
            .map_err(|e| malformed(&format!("header block: {e}")))?;
        if size > MAX_BLOCK {
            return Err(malformed("header list too large"));
        }
        Ok((out, rewritten))
    }
}

/// One header as an HPACK literal without indexing, new name (RFC 7541
/// §6.2.2), strings not Huffman-coded.
fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for s in [name, value] {
        // Writing to a Vec cannot fail.
        let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// Writes `block` as a HEADERS frame and as many CONTINUATION frames as it
/// takes, each at most [`MAX_FRAME`].
fn emit(p: &Pending, block: &[u8], output: &mut BytesMut) {
    let mut rest = block;
    let mut first = true;
    loop {
        let prefix = if first {
            p.priority.map_or(0, |_| 5)
        } else {
            0
        };
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME - prefix));
        let mut flags = if tail.is_empty() { END_HEADERS } else { 0 };
        if first {
            flags |= if p.end_stream { END_STREAM } else { 0 };
            flags |= if p.priority.is_some() { PRIORITY } else { 0 };
        }
        let len = (chunk.len() + prefix).to_be_bytes();
        output.extend_from_slice(&len[len.len() - 3..]);
        output.extend_from_slice(&[if first { HEADERS } else { CONTINUATION }, flags]);
        output.extend_from_slice(&p.stream);
        if let (true, Some(priority)) = (first, p.priority) {
            output.extend_from_slice(&priority);
        }
        output.extend_from_slice(chunk);
        first = false;
        rest = tail;
        if rest.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len().to_be_bytes();
        let mut f = len[len.len() - 3..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The frames h2 would read, parsed back: (type, flags, stream, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        out
    }

    /// Feeds `input` one byte at a time (the worst split) and returns what
    /// h2 would read.
    fn run(rewriter: &mut Rewriter, input: &[u8]) -> io::Result<Vec<u8>> {
        let (mut pending, mut output) = (BytesMut::new(), BytesMut::new());
        for b in input {
            pending.extend_from_slice(&[*b]);
            rewriter.feed(&mut pending, &mut output)?;
        }
        assert!(pending.is_empty(), "whole frames were fed");
        Ok(output.to_vec())
    }

    fn request(authority: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/runtime.v1.RuntimeService/Version".to_vec()),
            (b":authority", authority.as_bytes().to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
        ]
    }

    fn encode(enc: &mut loona_hpack::Encoder<'_>, headers: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        enc.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    #[test]
    fn authorities_made_valid_across_the_clients_dynamic_table() {
        // The client's encoder indexes what it sends: the second request's
        // authority is a reference into its dynamic table.
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        let cases = [
            ("run%2Fcrius%2Fcrius.sock", "localhost"),
            ("run%2Fcrius%2Fcrius.sock", "localhost"),
            ("/run/crius/x.sock", "localhost"),
            ("localhost", "localhost"),
            ("example.com:10250", "example.com:10250"),
        ];
        for (i, (authority, _)) in cases.iter().enumerate() {
            let block = encode(&mut client, &request(authority));
            input.extend(frame(HEADERS, END_HEADERS, 2 * i as u32 + 1, &block));
            input.extend(frame(0x0, END_STREAM, 2 * i as u32 + 1, b"\0\0\0\0\0"));
        }
        let out = run(&mut Rewriter::new(), &input).expect("valid input");
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let parsed = frames(&out[PREFACE.len()..]);
        assert_eq!(parsed.len(), 1 + 2 * cases.len());
        let mut h2 = loona_hpack::Decoder::new();
        for (i, (_, want)) in cases.iter().enumerate() {
            let (kind, flags, stream, block) = &parsed[1 + 2 * i];
            assert_eq!(
                (*kind, *flags, *stream),
                (HEADERS, END_HEADERS, 2 * i as u32 + 1)
            );
            let got = h2.decode(block).expect("h2 can decode it");
            let want: Vec<(Vec<u8>, Vec<u8>)> = request(want)
                .into_iter()
                .map(|(n, v)| (n.to_vec(), v))
                .collect();
            assert_eq!(got, want, "request {i}");
            assert_eq!(parsed[2 + 2 * i].3, b"\0\0\0\0\0", "DATA unchanged");
        }
    }

    #[test]
    fn a_valid_first_authority_lets_the_connection_pass_unchanged() {
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        for (i, authority) in ["localhost", "localhost", "example.com:10250"]
            .iter()
            .enumerate()
        {
            let block = encode(&mut client, &request(authority));
            let stream = 2 * i as u32 + 1;
            // The first block split over a CONTINUATION, with padding.
            if i == 0 {
                let mut payload = vec![2];
                payload.extend_from_slice(&block[..10]);
                payload.extend_from_slice(&[0; 2]);
                input.extend(frame(HEADERS, PADDED, stream, &payload));
                input.extend(frame(CONTINUATION, END_HEADERS, stream, &block[10..]));
            } else {
                input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        let mut rewriter = Rewriter::new();
        let out = run(&mut rewriter, &input).expect("valid input");
        assert_eq!(out, input, "every byte as the client sent it");
        assert_eq!(rewriter.mode, Mode::Pass);
        assert_eq!(rewriter.passing(), Some(usize::MAX));
        // An invalid first authority keeps rewriting the connection.
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        for (i, authority) in ["run%2Fcrius.sock", "localhost"].iter().enumerate() {
            let block = encode(&mut client, &request(authority));
            input.extend(frame(HEADERS, END_HEADERS, 2 * i as u32 + 1, &block));
        }
        let mut rewriter = Rewriter::new();
        let out = run(&mut rewriter, &input).expect("valid input");
        assert_eq!(rewriter.mode, Mode::Rewrite);
        let mut h2 = loona_hpack::Decoder::new();
        for (_, _, _, block) in frames(&out[PREFACE.len()..]) {
            let got = h2.decode(&block).expect("h2 can decode it");
            assert_eq!(got[3], (b":authority".to_vec(), b"localhost".to_vec()));
        }
    }

    #[test]
    fn padding_priority_and_continuations() {
        let mut client = loona_hpack::Encoder::new();
        let mut headers = request("%2Ftmp%2Fs");
        headers.push((b"x-big", vec![b'a'; 20_000]));
        let block = encode(&mut client, &headers);
        // PADDED and PRIORITY on HEADERS, the block split over a CONTINUATION.
        let mut payload = vec![3];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block[..100]);
        payload.extend_from_slice(&[0; 3]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &payload));
        input.extend(frame(CONTINUATION, 0, 1, &block[100..10_000]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[10_000..]));
        let out = run(&mut Rewriter::new(), &input).expect("valid input");
        let parsed = frames(&out[PREFACE.len()..]);
        assert_eq!(parsed.len(), 2, "20 KiB re-encoded in two frames");
        assert_eq!(parsed[0].0, HEADERS);
        assert_eq!(parsed[0].1, PRIORITY | END_STREAM);
        assert_eq!(&parsed[0].3[..5], &[0, 0, 0, 0, 16]);
        assert_eq!(parsed[0].3.len(), MAX_FRAME);
        assert_eq!((parsed[1].0, parsed[1].1), (CONTINUATION, END_HEADERS));
        let mut block = parsed[0].3[5..].to_vec();
        block.extend_from_slice(&parsed[1].3);
        let got = loona_hpack::Decoder::new().decode(&block).expect("decodes");
        assert_eq!(got[3], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(got[5].1.len(), 20_000);
    }

    #[test]
    fn hostile_framing_closes_the_connection() {
        let cases: [(&str, Vec<u8>); 5] = [
            (
                "oversized",
                frame(HEADERS, END_HEADERS, 1, &vec![0; MAX_FRAME + 1]),
            ),
            (
                "bad hpack",
                frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff]),
            ),
            (
                "padding",
                frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]),
            ),
            (
                "stray continuation",
                frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            ),
            ("interleaved", {
                let mut f = frame(HEADERS, 0, 1, &[0x82]);
                f.extend(frame(0x0, 0, 1, &[]));
                f
            }),
        ];
        for (what, bytes) in cases {
            let mut input = PREFACE.to_vec();
            input.extend(bytes);
            assert!(run(&mut Rewriter::new(), &input).is_err(), "{what}");
        }
        // A header list that decodes past the limit from a small block: one
        // big indexed entry referenced over and over.
        let mut client = loona_hpack::Encoder::new();
        let mut block = encode(&mut client, &[(b"x-a", vec![b'a'; 4000])]);
        block.extend(std::iter::repeat_n(0x80 | 62, 100));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        assert!(run(&mut Rewriter::new(), &input).is_err(), "list too large");
    }
}
