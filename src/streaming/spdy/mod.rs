//! SPDY/3.1 as spoken by Go's `moby/spdystream`, the transport client-go
//! (crictl, critest, kubelet's proxy) uses for exec, attach and port-forward.
//!
//! Two layers, following the streaming wire specification
//! (`streaming-protocol.md`, §2 framing, §9 implementation notes):
//!
//! * a sans-I/O codec ([`Decoder`], [`Encoder`], [`Frame`]) that owns the two
//!   zlib header-compression contexts of one connection, so the same code can
//!   run over a TCP stream or over the WebSocket tunnel;
//! * a small async [`Session`] that drives one upgraded connection: a reader
//!   task that decodes frames, echoes pings and hands new streams to the
//!   application, and a single writer task (one encoder, so the compressed
//!   header blocks go out in the order they were compressed).
//!
//! There is deliberately no flow control (spdystream implements none, §2.5),
//! and crius never opens streams itself (§2.3).
//!
//! The submodules follow those layers: `frame` is the codec (the frame
//! header and each control frame's fields, with the wire constants),
//! `header` the header blocks inside SYN_STREAM, SYN_REPLY and HEADERS and
//! the zlib contexts the codec owns for them, and `session` the tasks and
//! stream handles. This file holds what more than one of them needs
//! ([`SpdyError`], [`MAX_PAYLOAD`], a byte helper) and re-exports the
//! public items, so they keep their `spdy::` paths for the rest of the
//! crate, the integration tests and the fuzz targets.

#![warn(missing_docs)]

mod frame;
mod header;
mod session;

pub use frame::{
    Decoder, Encoder, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, GOAWAY_OK, GOAWAY_PROTOCOL_ERROR,
    RST_CANCEL, RST_PROTOCOL_ERROR, TYPE_GOAWAY, TYPE_HEADERS, TYPE_PING, TYPE_RST_STREAM,
    TYPE_SETTINGS, TYPE_SYN_REPLY, TYPE_SYN_STREAM, TYPE_WINDOW_UPDATE,
};
pub use header::{
    DICTIONARY_ADLER, HEADER_DICTIONARY, MAX_HEADER_FIELD, MAX_HEADER_PAIRS, MAX_INFLATED_BLOCK,
    parse_header_block, write_header_block,
};
pub use session::{Closer, MAX_DATA_CHUNK, Session, Stream, StreamWriter};

// Here rather than in `frame` because `header` needs it too (a header
// block must fit in one frame), and `header` does not depend on `frame`.
/// Largest payload a 24-bit length can describe (spdystream's read limit too).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// Everything that can go wrong on a SPDY connection. Codec errors are
/// connection-fatal (§2.2): the zlib contexts cannot be resynchronised.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A control frame announced a version other than 3.
    #[error("unsupported SPDY version {0} (only SPDY/3 is spoken)")]
    UnsupportedVersion(u16),
    /// A frame whose fixed fields are inconsistent (wrong length, id 0, …).
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// Frame type name.
        frame: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A frame payload does not fit the 24-bit length field.
    #[error("frame payload of {0} bytes exceeds the SPDY limit of 16 MiB - 1")]
    FrameTooLarge(usize),
    /// A header block violates the rules of §2.4 (names, counts, lengths).
    #[error("invalid header block: {0}")]
    HeaderBlock(String),
    /// The zlib stream of header blocks is corrupt or uses another dictionary.
    #[error("header compression: {0}")]
    Compression(String),
    /// The frame cannot or must not be encoded.
    #[error("cannot encode frame: {0}")]
    Unencodable(&'static str),
    /// Reading or writing the connection failed.
    #[error("SPDY connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The session's writer has stopped (connection closed or failed).
    #[error("SPDY connection closed")]
    ConnectionClosed,
}

/// Parses a big-endian u32 from 4 bytes the caller has length-checked.
/// Frame fields and header-block lengths alike.
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Test fixtures shared by the codec and session tests of the submodules.
#[cfg(test)]
mod test_support {
    /// "80 03 00 01" → bytes.
    pub(super) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    pub(super) fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A raw (uncompressed) header block from (name, value) byte pairs and a claimed count.
    pub(super) fn raw_block(count: u32, pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = count.to_be_bytes().to_vec();
        for (n, v) in pairs {
            b.extend((n.len() as u32).to_be_bytes());
            b.extend(*n);
            b.extend((v.len() as u32).to_be_bytes());
            b.extend(*v);
        }
        b
    }

    // §2.4 client header blocks (client-go, Go compress/flate level 9).
    pub(super) const BLOCK_ERROR: &str = "78 f9 e3 c6 a7 c2 62 60 60 60 04 a7 b3 92 a2 d4 c4 5c 68 51 c2 9a 5a 54 94 5f 04 00 00 00 ff ff";
    pub(super) const BLOCK_STDOUT_AFTER_ERROR: &str =
        "c2 2a c5 56 5c 92 92 5f 5a 02 00 00 00 ff ff";
    pub(super) const BLOCK_STDIN_AFTER_ERROR: &str = "c2 2e 55 5c 92 92 99 07 00 00 00 ff ff";
    pub(super) const BLOCK_STDERR_AFTER_ERROR_STDOUT: &str = "c2 29 97 5a 54 04 00 00 00 ff ff";
}
