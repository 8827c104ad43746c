//! The frame codec (§2.2): the [`Frame`] type and the two halves of a
//! sans-I/O codec, [`Decoder`] (bytes to frames) and [`Encoder`] (frames to
//! bytes), so the same code runs over a TCP stream or the WebSocket tunnel.
//!
//! What is here is the fixed 8-byte frame header and each control type's
//! fixed fields. The header blocks inside SYN_STREAM, SYN_REPLY and HEADERS
//! are `header`'s: each codec half owns one of the connection's zlib
//! contexts from there, which is why the halves are values that live as
//! long as the connection. The wire constants (frame types, flags, status
//! codes) live here, next to the code that matches on and writes them; the
//! session uses a few of them. The `spdy_frames` fuzz target and the test
//! client in `tests/common` drive these types directly.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::header::{Deflater, Inflater, write_header_block};
use super::{MAX_PAYLOAD, SpdyError, be32};

/// Control frame type SYN_STREAM (client opens a stream).
pub const TYPE_SYN_STREAM: u16 = 1;
/// Control frame type SYN_REPLY (server accepts a stream).
pub const TYPE_SYN_REPLY: u16 = 2;
/// Control frame type RST_STREAM (abort a stream, both directions).
pub const TYPE_RST_STREAM: u16 = 3;
/// Control frame type SETTINGS (never sent by crius, ignored on receipt).
pub const TYPE_SETTINGS: u16 = 4;
/// Control frame type PING (echoed when the peer sends it).
pub const TYPE_PING: u16 = 6;
/// Control frame type GOAWAY (connection shutdown).
pub const TYPE_GOAWAY: u16 = 7;
/// Control frame type HEADERS (never sent: it would block spdystream's worker).
pub const TYPE_HEADERS: u16 = 8;
/// Control frame type WINDOW_UPDATE (no flow control: ignored).
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FIN flag on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender is done.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag on SYN_STREAM: the receiver may not send on it.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status PROTOCOL_ERROR, used for bad or backwards stream ids.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status CANCEL, what spdystream and kubelet use in every normal case.
pub const RST_CANCEL: u32 = 5;
/// GOAWAY status OK.
pub const GOAWAY_OK: u32 = 0;
/// GOAWAY status PROTOCOL_ERROR (sent before dropping a connection we cannot parse).
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// The only SPDY version spoken (the first two bytes of a control frame are `80 03`).
const VERSION: u16 = 3;
/// Frame header length, control and data alike.
const HEADER_LEN: usize = 8;

fn malformed(frame: &'static str, reason: impl Into<String>) -> SpdyError {
    SpdyError::Malformed {
        frame,
        reason: reason.into(),
    }
}

/// One SPDY/3.1 frame (§2.2). Stream ids are 31-bit; header names are
/// lower-case and unique, several values of one name joined by a `0` byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Peer opens a stream; `headers` carry e.g. `streamtype`, `port`, `requestid`.
    SynStream {
        /// New stream id (odd from a client).
        stream_id: u32,
        /// Associated-to stream id (0 from client-go).
        assoc: u32,
        /// Priority byte as on the wire (`pri << 5`).
        priority: u8,
        /// [`FLAG_FIN`] / [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// Decompressed header block.
        headers: Vec<(String, String)>,
    },
    /// Accepts a stream; crius always sends an empty header block.
    SynReply {
        /// The accepted stream.
        stream_id: u32,
        /// [`FLAG_FIN`] or 0.
        flags: u8,
        /// Header block (empty from crius).
        headers: Vec<(String, String)>,
    },
    /// Aborts a stream in both directions.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Non-zero status ([`RST_CANCEL`] normally).
        status: u32,
    },
    /// SPDY settings; ignored by both ends here, kept for completeness.
    Settings {
        /// Frame flags (0x01 = clear settings).
        flags: u8,
        /// `(flags, id, value)` entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness probe; a peer's (odd) id is echoed verbatim.
    Ping {
        /// Non-zero ping id.
        id: u32,
    },
    /// Connection shutdown.
    GoAway {
        /// Highest peer stream id accepted.
        last_good: u32,
        /// 0 OK, 1 PROTOCOL_ERROR, 2 INTERNAL_ERROR.
        status: u32,
    },
    /// Extra headers on a stream; inflated (to keep zlib in step) and ignored.
    Headers {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`] or 0.
        flags: u8,
        /// Decompressed header block.
        headers: Vec<(String, String)>,
    },
    /// Flow-control credit; ignored (spdystream has no flow control).
    WindowUpdate {
        /// The stream (0 = session).
        stream_id: u32,
        /// Credit in bytes.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`] or 0.
        flags: u8,
        /// Payload (may be empty, typically with FIN).
        data: Bytes,
    },
    /// A control frame of a type not in §2.2; its payload was skipped.
    Unknown {
        /// The control frame type.
        kind: u16,
    },
}

/// Incoming half of the codec: frame parsing plus the connection's single
/// inflate context (client→server header blocks), kept for the whole
/// connection because every block depends on the history of the previous ones.
pub struct Decoder {
    inflate: Inflater,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for a fresh connection (the zlib context starts empty).
    pub fn new() -> Self {
        Self {
            inflate: Inflater::new(),
        }
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)`
    /// (leaving `buf` untouched) until enough bytes are buffered. Errors are
    /// connection-fatal.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = be32(&buf[0..4]);
        let flags = buf[4];
        let len = (be32(&buf[4..8]) & 0x00ff_ffff) as usize;
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        if word & 0x8000_0000 == 0 {
            let stream_id = word & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(malformed("DATA", "stream id 0"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion(version));
        }
        let kind = (word & 0xffff) as u16;
        self.control(kind, flags, &payload).map(Some)
    }

    fn control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Frame, SpdyError> {
        let stream_of = |frame: &'static str, p: &[u8]| -> Result<u32, SpdyError> {
            let id = be32(p) & 0x7fff_ffff;
            if id == 0 {
                return Err(malformed(frame, "stream id 0"));
            }
            Ok(id)
        };
        match kind {
            TYPE_SYN_STREAM => {
                if p.len() < 10 {
                    return Err(malformed("SYN_STREAM", format!("length {} < 10", p.len())));
                }
                let stream_id = stream_of("SYN_STREAM", p)?;
                let headers = self.inflate.header_block(&p[10..])?;
                Ok(Frame::SynStream {
                    stream_id,
                    assoc: be32(&p[4..8]) & 0x7fff_ffff,
                    priority: p[8],
                    flags,
                    headers,
                })
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let name = if kind == TYPE_SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                if p.len() < 4 {
                    return Err(malformed(name, format!("length {} < 4", p.len())));
                }
                let stream_id = stream_of(name, p)?;
                let headers = self.inflate.header_block(&p[4..])?;
                Ok(if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                })
            }
            TYPE_RST_STREAM => {
                if p.len() != 8 {
                    return Err(malformed("RST_STREAM", format!("length {} != 8", p.len())));
                }
                let stream_id = stream_of("RST_STREAM", p)?;
                let status = be32(&p[4..8]);
                if status == 0 {
                    return Err(malformed("RST_STREAM", "status 0"));
                }
                Ok(Frame::RstStream { stream_id, status })
            }
            TYPE_SETTINGS => {
                if p.len() < 4 {
                    return Err(malformed("SETTINGS", format!("length {} < 4", p.len())));
                }
                let n = be32(p) as usize;
                if p.len() - 4 != n.saturating_mul(8) {
                    return Err(malformed(
                        "SETTINGS",
                        format!("{n} entries do not fill {} bytes", p.len()),
                    ));
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| (e[0], be32(e) & 0x00ff_ffff, be32(&e[4..8])))
                    .collect();
                Ok(Frame::Settings { flags, entries })
            }
            TYPE_PING => {
                if p.len() != 4 {
                    return Err(malformed("PING", format!("length {} != 4", p.len())));
                }
                let id = be32(p);
                if id == 0 {
                    return Err(malformed("PING", "id 0"));
                }
                Ok(Frame::Ping { id })
            }
            TYPE_GOAWAY => {
                if p.len() != 8 {
                    return Err(malformed("GOAWAY", format!("length {} != 8", p.len())));
                }
                Ok(Frame::GoAway {
                    last_good: be32(p) & 0x7fff_ffff,
                    status: be32(&p[4..8]),
                })
            }
            TYPE_WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(malformed(
                        "WINDOW_UPDATE",
                        format!("length {} != 8", p.len()),
                    ));
                }
                Ok(Frame::WindowUpdate {
                    stream_id: be32(p) & 0x7fff_ffff,
                    delta: be32(&p[4..8]) & 0x7fff_ffff,
                })
            }
            kind => Ok(Frame::Unknown { kind }),
        }
    }
}

/// Outgoing half of the codec: frame serialisation plus the connection's
/// single deflate context (server→client header blocks). Each block ends
/// with a zlib SYNC flush so the peer can inflate it from this frame alone
/// plus history; the stream is never finished or reset.
pub struct Encoder {
    deflate: Deflater,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder for a fresh connection; the dictionary is set lazily on the
    /// first header block (zlib emits `78 f9 e3 c6 a7 c2` there).
    pub fn new() -> Self {
        Self {
            deflate: Deflater::new(),
        }
    }

    /// Appends the wire form of `frame` to `out`. On error nothing is appended.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        let control = |out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]| {
            out.reserve(HEADER_LEN + payload.len());
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u32(((flags as u32) << 24) | payload.len() as u32);
            out.put_slice(payload);
        };
        let mut p = Vec::with_capacity(16);
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                check_stream_id(*stream_id)?;
                if data.len() > MAX_PAYLOAD {
                    return Err(SpdyError::FrameTooLarge(data.len()));
                }
                out.reserve(HEADER_LEN + data.len());
                out.put_u32(*stream_id);
                out.put_u32(((*flags as u32) << 24) | data.len() as u32);
                out.put_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                assoc,
                priority,
                flags,
                headers,
            } => {
                check_stream_id(*stream_id)?;
                p.put_u32(*stream_id);
                p.put_u32(*assoc & 0x7fff_ffff);
                p.put_u8(*priority);
                p.put_u8(0);
                self.deflate
                    .deflate_block(&write_header_block(headers)?, &mut p)?;
                check_len(p.len())?;
                control(out, TYPE_SYN_STREAM, *flags, &p);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                check_stream_id(*stream_id)?;
                p.put_u32(*stream_id);
                self.deflate
                    .deflate_block(&write_header_block(headers)?, &mut p)?;
                check_len(p.len())?;
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                control(out, kind, *flags, &p);
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id(*stream_id)?;
                if *status == 0 {
                    return Err(SpdyError::Unencodable("RST_STREAM status 0"));
                }
                p.put_u32(*stream_id);
                p.put_u32(*status);
                control(out, TYPE_RST_STREAM, 0, &p);
            }
            Frame::Settings { flags, entries } => {
                check_len(4 + entries.len().saturating_mul(8))?;
                p.put_u32(entries.len() as u32);
                for (f, id, value) in entries {
                    p.put_u32(((*f as u32) << 24) | (id & 0x00ff_ffff));
                    p.put_u32(*value);
                }
                control(out, TYPE_SETTINGS, *flags, &p);
            }
            Frame::Ping { id } => {
                if *id == 0 {
                    return Err(SpdyError::Unencodable("PING id 0"));
                }
                p.put_u32(*id);
                control(out, TYPE_PING, 0, &p);
            }
            Frame::GoAway { last_good, status } => {
                p.put_u32(*last_good & 0x7fff_ffff);
                p.put_u32(*status);
                control(out, TYPE_GOAWAY, 0, &p);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                p.put_u32(*stream_id & 0x7fff_ffff);
                p.put_u32(*delta & 0x7fff_ffff);
                control(out, TYPE_WINDOW_UPDATE, 0, &p);
            }
            Frame::Unknown { .. } => {
                return Err(SpdyError::Unencodable(
                    "unknown control types are fatal to the Go client",
                ));
            }
        }
        Ok(())
    }
}

fn check_stream_id(id: u32) -> Result<(), SpdyError> {
    if id == 0 || id > 0x7fff_ffff {
        return Err(SpdyError::Unencodable("stream id must be in 1..=2^31-1"));
    }
    Ok(())
}

fn check_len(len: usize) -> Result<(), SpdyError> {
    if len > MAX_PAYLOAD {
        return Err(SpdyError::FrameTooLarge(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::spdy::HEADER_DICTIONARY;
    use crate::streaming::spdy::test_support::{BLOCK_ERROR, h, hex, raw_block};
    use flate2::{Compress, Compression, FlushCompress};

    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        frames
    }

    fn decode_err(bytes: &[u8]) -> SpdyError {
        let mut buf = BytesMut::from(bytes);
        Decoder::new().decode(&mut buf).unwrap_err()
    }

    fn encode(enc: &mut Encoder, f: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        enc.encode(f, &mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn decodes_exec_syn_streams_sequence_a() {
        // §7.2 A rows 3, 5, 7, fed as one byte stream, plus PING and GOAWAY.
        let mut wire = hex("80 03 00 01 00 00 00 2a 00 00 00 01 00 00 00 00 00 00");
        wire.extend(hex(BLOCK_ERROR));
        wire.extend(hex("80 03 00 01 00 00 00 19 00 00 00 03 00 00 00 00 00 00 c2 2a c5 56 5c 92 92 5f 5a 02 00 00 00 ff ff"));
        wire.extend(hex("80 03 00 06 00 00 00 04 00 00 00 01"));
        wire.extend(hex("80 03 00 01 00 00 00 15 00 00 00 05 00 00 00 00 00 00 c2 29 97 5a 54 04 00 00 00 ff ff"));
        wire.extend(hex("80 03 00 03 00 00 00 08 00 00 00 01 00 00 00 05"));
        wire.extend(hex("80 03 00 07 00 00 00 08 00 00 00 00 00 00 00 00"));
        let frames = decode_all(&mut Decoder::new(), &wire);
        let syn = |id, t| Frame::SynStream {
            stream_id: id,
            assoc: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", t)]),
        };
        assert_eq!(
            frames,
            vec![
                syn(1, "error"),
                syn(3, "stdout"),
                Frame::Ping { id: 1 },
                syn(5, "stderr"),
                Frame::RstStream {
                    stream_id: 1,
                    status: RST_CANCEL
                },
                Frame::GoAway {
                    last_good: 0,
                    status: 0
                },
            ]
        );
    }

    #[test]
    fn decodes_stdin_syn_stream_sequence_b() {
        let mut wire = hex("80 03 00 01 00 00 00 2a 00 00 00 01 00 00 00 00 00 00");
        wire.extend(hex(BLOCK_ERROR));
        wire.extend(hex("80 03 00 01 00 00 00 17 00 00 00 03 00 00 00 00 00 00 c2 2e 55 5c 92 92 99 07 00 00 00 ff ff"));
        wire.extend(hex("00 00 00 07 00 00 00 19"));
        wire.extend(b"{\"Width\":80,\"Height\":24}\n");
        wire.extend(hex("00 00 00 03 01 00 00 00"));
        let frames = decode_all(&mut Decoder::new(), &wire);
        assert_eq!(frames.len(), 4);
        assert!(
            matches!(&frames[1], Frame::SynStream { stream_id: 3, headers, .. } if headers == &h(&[("streamtype", "stdin")]))
        );
        assert_eq!(
            frames[2],
            Frame::Data {
                stream_id: 7,
                flags: 0,
                data: Bytes::from_static(b"{\"Width\":80,\"Height\":24}\n")
            }
        );
        assert_eq!(
            frames[3],
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::new()
            }
        );
    }

    #[test]
    fn decode_is_incremental() {
        let mut wire = hex("80 03 00 01 00 00 00 2a 00 00 00 01 00 00 00 00 00 00");
        wire.extend(hex(BLOCK_ERROR));
        wire.extend(hex("00 00 00 03 00 00 00 03 68 69 0a"));
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in wire {
            buf.put_u8(b);
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert!(buf.is_empty());
        assert_eq!(
            frames[1],
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"hi\n")
            }
        );
    }

    #[test]
    fn encodes_server_frames_byte_exact() {
        let mut enc = Encoder::new();
        let reply = |id| Frame::SynReply {
            stream_id: id,
            flags: 0,
            headers: vec![],
        };
        assert_eq!(
            encode(&mut enc, &reply(1)),
            hex(
                "80 03 00 02 00 00 00 14 00 00 00 01 78 f9 e3 c6 a7 c2 02 a6 23 06 00 00 00 00 ff ff"
            )
        );
        for id in [3u32, 5, 7] {
            let mut want = hex("80 03 00 02 00 00 00 0c 00 00 00");
            want.push(id as u8);
            want.extend(hex("02 01 00 00 00 00 ff ff"));
            assert_eq!(encode(&mut enc, &reply(id)), want);
        }
        let data = |id, flags, d: &'static [u8]| Frame::Data {
            stream_id: id,
            flags,
            data: Bytes::from_static(d),
        };
        assert_eq!(
            encode(&mut enc, &data(3, 0, b"hi\n")),
            hex("00 00 00 03 00 00 00 03 68 69 0a")
        );
        let status = br#"{"metadata":{},"status":"Success"}"#;
        let mut want = hex("00 00 00 01 00 00 00 22");
        want.extend(status);
        assert_eq!(encode(&mut enc, &data(1, 0, status)), want);
        assert_eq!(
            encode(&mut enc, &data(3, FLAG_FIN, b"")),
            hex("00 00 00 03 01 00 00 00")
        );
        assert_eq!(
            encode(
                &mut enc,
                &Frame::RstStream {
                    stream_id: 3,
                    status: RST_CANCEL
                }
            ),
            hex("80 03 00 03 00 00 00 08 00 00 00 03 00 00 00 05")
        );
        assert_eq!(
            encode(&mut enc, &Frame::Ping { id: 1 }),
            hex("80 03 00 06 00 00 00 04 00 00 00 01")
        );
        assert_eq!(
            encode(
                &mut enc,
                &Frame::GoAway {
                    last_good: 0,
                    status: 0
                }
            ),
            hex("80 03 00 07 00 00 00 08 00 00 00 00 00 00 00 00")
        );
    }

    #[test]
    fn every_frame_type_round_trips_with_shared_contexts() {
        let big = "v".repeat(100_000);
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                assoc: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::SynStream {
                stream_id: 3,
                assoc: 0,
                priority: 3 << 5,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: vec![("x-big".into(), big), ("multi".into(), "a\0b".into())],
            },
            Frame::SynReply {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: h(&[("status", "200")]),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![(1, 7, 65536), (0, 4, 100)],
            },
            Frame::Settings {
                flags: 0,
                entries: vec![],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good: 3,
                status: 2,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 65536,
            },
            Frame::Data {
                stream_id: 5,
                flags: 0,
                data: Bytes::from(vec![7u8; 70_000]),
            },
            Frame::SynStream {
                stream_id: 5,
                assoc: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "stdout")]),
            },
        ];
        let mut enc = Encoder::new();
        let mut wire = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        assert_eq!(decode_all(&mut Decoder::new(), &wire), frames);
    }

    #[test]
    fn rejects_malformed_control_frames() {
        let cases = [
            // GOAWAY with length 4 and 12
            "80 03 00 07 00 00 00 04 00 00 00 00",
            "80 03 00 07 00 00 00 0c 00 00 00 00 00 00 00 00 00 00 00 00",
            // RST_STREAM status 0, stream 0, length 4
            "80 03 00 03 00 00 00 08 00 00 00 01 00 00 00 00",
            "80 03 00 03 00 00 00 08 00 00 00 00 00 00 00 05",
            "80 03 00 03 00 00 00 04 00 00 00 01",
            // PING id 0, length 8
            "80 03 00 06 00 00 00 04 00 00 00 00",
            "80 03 00 06 00 00 00 08 00 00 00 01 00 00 00 00",
            // WINDOW_UPDATE length 4
            "80 03 00 09 00 00 00 04 00 00 00 01",
            // SETTINGS count does not match length
            "80 03 00 04 00 00 00 0c 00 00 00 02 00 00 00 07 00 01 00 00",
            // SYN_STREAM too short, SYN_STREAM stream 0, SYN_REPLY too short
            "80 03 00 01 00 00 00 04 00 00 00 01",
            "80 03 00 02 00 00 00 02 00 00",
            // DATA on stream 0
            "00 00 00 00 00 00 00 01 41",
        ];
        for c in cases {
            let e = decode_err(&hex(c));
            assert!(matches!(e, SpdyError::Malformed { .. }), "{c}: {e}");
        }
        let mut syn0 = hex("80 03 00 01 00 00 00 2a 00 00 00 00 00 00 00 00 00 00");
        syn0.extend(hex(BLOCK_ERROR));
        assert!(matches!(decode_err(&syn0), SpdyError::Malformed { .. }));
        assert!(matches!(
            decode_err(&hex("80 02 00 06 00 00 00 04 00 00 00 01")),
            SpdyError::UnsupportedVersion(2)
        ));
    }

    #[test]
    fn skips_unknown_control_types() {
        // NOOP (5) and CREDENTIAL (10) with payloads, then a PING.
        let wire = hex(
            "80 03 00 05 00 00 00 03 01 02 03 80 03 00 0a 00 00 00 00 80 03 00 06 00 00 00 04 00 00 00 03",
        );
        assert_eq!(
            decode_all(&mut Decoder::new(), &wire),
            vec![
                Frame::Unknown { kind: 5 },
                Frame::Unknown { kind: 10 },
                Frame::Ping { id: 3 }
            ]
        );
        let mut out = BytesMut::new();
        assert!(
            Encoder::new()
                .encode(&Frame::Unknown { kind: 5 }, &mut out)
                .is_err()
        );
        assert!(out.is_empty());
    }

    #[test]
    fn upper_case_name_in_compressed_block_is_fatal() {
        let mut enc = Compress::new(Compression::best(), true);
        enc.set_dictionary(HEADER_DICTIONARY).unwrap();
        let mut block = Vec::with_capacity(256);
        enc.compress_vec(
            &raw_block(1, &[(b"Streamtype", b"error")]),
            &mut block,
            FlushCompress::Sync,
        )
        .unwrap();
        let mut frame = hex("80 03 00 01 00 00 00");
        frame.push(10 + block.len() as u8);
        frame.extend(hex("00 00 00 01 00 00 00 00 00 00"));
        frame.extend(block);
        assert!(matches!(decode_err(&frame), SpdyError::HeaderBlock(_)));
    }

    #[test]
    fn refuses_oversized_frames() {
        let mut out = BytesMut::new();
        let e = Encoder::new()
            .encode(
                &Frame::Data {
                    stream_id: 1,
                    flags: 0,
                    data: Bytes::from(vec![0u8; MAX_PAYLOAD + 1]),
                },
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(e, SpdyError::FrameTooLarge(_)));
        // A maximal DATA frame is just buffered until complete.
        let mut buf = BytesMut::from(&hex("00 00 00 01 00 ff ff ff 00")[..]);
        assert!(Decoder::new().decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 9);
    }
}
