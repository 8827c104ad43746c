//! Header blocks (§2.4): the uncompressed name/value format, and the two
//! zlib contexts of a connection that carry it, one per direction, both
//! primed with the SPDY/3 dictionary.
//!
//! This is the part of the codec with state that outlives a frame: every
//! block is compressed against the history of all earlier blocks on the
//! connection, so the one inflate context ([`Inflater`], owned by the
//! [`Decoder`](super::Decoder)) and the one deflate context ([`Deflater`],
//! owned by the [`Encoder`](super::Encoder)) live as long as the connection,
//! and an error in either is connection-fatal. The framing around the
//! blocks is in `frame`; the parser alone is what the `spdy_header_block`
//! fuzz target drives.

use std::collections::HashSet;

use bytes::BufMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{MAX_PAYLOAD, SpdyError, be32};

/// At most this many name/value pairs per header block (spdystream's limit).
pub const MAX_HEADER_PAIRS: usize = 1000;
/// Each header name and value at most this long (spdystream's limit).
pub const MAX_HEADER_FIELD: usize = 1 << 20;
/// Upper bound on one inflated header block, so a zlib bomb cannot eat memory:
/// the pair count and field limits are only checked after inflating.
pub const MAX_INFLATED_BLOCK: usize = 16 << 20;
/// Adler-32 of [`HEADER_DICTIONARY`]; the peer's zlib header names it.
pub const DICTIONARY_ADLER: u32 = 0xE3C6_A7C2;

/// The SPDY/3 header-compression dictionary (SPDY draft 3 §2.6.10.1): both
/// zlib contexts of a connection are primed with it, and Go's reader rejects
/// any other dictionary id.
#[rustfmt::skip]
pub const HEADER_DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\
    \x00\x00\x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05trace\
    \x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\
    \x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\
    \x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\
    \x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\
    \x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\
    \x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-location\
    \x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\
    \x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\
    \x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\
    \x00\x00\x00\x04host\x00\x00\x00\x08if-match\
    \x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\
    \x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since\
    \x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\
    \x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\
    \x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\
    \x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\
    \x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\
    \x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\
    \x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\
    \x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\
    \x00\x00\x00\x06200 OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\
    \x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\x0aset-cookie\
    \x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin\
    1001012012022052063003023033043053063074024054064074084094104114\
    12413414415416417502504505203 Non-Authoritative Information204 N\
    o Content301 Moved Permanently400 Bad Request401 Unauthorized403\
    \x20Forbidden404 Not Found500 Internal Server Error501 Not Implemen\
    ted503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept O\
    ct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunke\
    d,text/html,image/png,image/jpg,image/gif,application/xml,applic\
    ation/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=\
    gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.\
";

/// Parses an uncompressed header block (§2.4): `u32 N`, then N × (`u32 len`,
/// name, `u32 len`, value). Enforces spdystream's limits and its fatal cases
/// (upper-case or duplicate names) and requires the block to be used exactly.
pub fn parse_header_block(mut b: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], SpdyError> {
        if b.len() < n {
            return Err(SpdyError::HeaderBlock(format!("truncated {what}")));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn field(b: &mut &[u8], what: &str) -> Result<String, SpdyError> {
        let len = be32(take(b, 4, what)?) as usize;
        if len > MAX_HEADER_FIELD {
            return Err(SpdyError::HeaderBlock(format!(
                "{what} of {len} bytes exceeds {MAX_HEADER_FIELD}"
            )));
        }
        let bytes = take(b, len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| SpdyError::HeaderBlock(format!("{what} is not UTF-8")))
    }
    let n = be32(take(&mut b, 4, "pair count")?) as usize;
    if n > MAX_HEADER_PAIRS {
        return Err(SpdyError::HeaderBlock(format!(
            "{n} pairs exceed {MAX_HEADER_PAIRS}"
        )));
    }
    let mut seen = HashSet::with_capacity(n);
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let name = field(&mut b, "name")?;
        check_name(&name)?;
        if !seen.insert(name.clone()) {
            return Err(SpdyError::HeaderBlock(format!("duplicate name {name:?}")));
        }
        let value = field(&mut b, "value")?;
        pairs.push((name, value));
    }
    if !b.is_empty() {
        return Err(SpdyError::HeaderBlock(format!(
            "{} bytes after the last pair",
            b.len()
        )));
    }
    Ok(pairs)
}

/// Header names must be non-empty and free of upper case (spdystream rejects
/// upper-case names as fatal).
fn check_name(name: &str) -> Result<(), SpdyError> {
    if name.is_empty() {
        return Err(SpdyError::HeaderBlock("empty name".into()));
    }
    if name.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(SpdyError::HeaderBlock(format!("upper-case name {name:?}")));
    }
    Ok(())
}

/// Serialises an uncompressed header block (§2.4), checking the same rules
/// the Go client enforces on receipt.
pub fn write_header_block(pairs: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
    if pairs.len() > MAX_HEADER_PAIRS {
        return Err(SpdyError::HeaderBlock(format!(
            "{} pairs exceed {MAX_HEADER_PAIRS}",
            pairs.len()
        )));
    }
    let mut seen = HashSet::with_capacity(pairs.len());
    let mut out = Vec::with_capacity(
        4 + pairs
            .iter()
            .map(|(n, v)| 8 + n.len() + v.len())
            .sum::<usize>(),
    );
    out.put_u32(pairs.len() as u32);
    for (name, value) in pairs {
        check_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(SpdyError::HeaderBlock(format!("duplicate name {name:?}")));
        }
        for f in [name, value] {
            if f.len() > MAX_HEADER_FIELD {
                return Err(SpdyError::HeaderBlock(format!(
                    "field of {} bytes exceeds {MAX_HEADER_FIELD}",
                    f.len()
                )));
            }
            out.put_u32(f.len() as u32);
            out.put_slice(f.as_bytes());
        }
    }
    Ok(out)
}

/// The connection's inflate context for the peer's header blocks.
pub(super) struct Inflater {
    inflate: Decompress,
}

impl Inflater {
    /// A context for a fresh connection: zlib starts empty, and the
    /// dictionary is set when the first block asks for it.
    pub(super) fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    /// Inflates one header block (all of `compressed` must be used) and parses it.
    pub(super) fn header_block(
        &mut self,
        compressed: &[u8],
    ) -> Result<Vec<(String, String)>, SpdyError> {
        let raw = self.inflate_block(compressed)?;
        parse_header_block(&raw)
    }

    fn inflate_block(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out =
            Vec::with_capacity(input.len().saturating_mul(4).clamp(256, MAX_INFLATED_BLOCK));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_INFLATED_BLOCK {
                    return Err(SpdyError::HeaderBlock(format!(
                        "inflates to more than {MAX_INFLATED_BLOCK} bytes"
                    )));
                }
                out.reserve(out.len().min(MAX_INFLATED_BLOCK - out.len()));
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let res = self
                .inflate
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - in_before) as usize;
            pos += consumed;
            match res {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Compression(
                        "peer ended the header zlib stream".into(),
                    ));
                }
                Ok(_) => {
                    // Done once all input is used and zlib had room to spare,
                    // i.e. it holds no pending output.
                    if pos == input.len() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if consumed == 0 && out.len() == out_before && out.len() < out.capacity() {
                        return Err(SpdyError::Compression("stalled header block".into()));
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ADLER) => {
                        self.inflate
                            .set_dictionary(HEADER_DICTIONARY)
                            .map_err(|e| SpdyError::Compression(e.to_string()))?;
                    }
                    Some(other) => {
                        return Err(SpdyError::Compression(format!(
                            "peer wants dictionary {other:#010x}, not the SPDY/3 one"
                        )));
                    }
                    None => return Err(SpdyError::Compression(e.to_string())),
                },
            }
        }
    }
}

/// The connection's deflate context for our header blocks.
pub(super) struct Deflater {
    deflate: Compress,
    primed: bool,
}

impl Deflater {
    /// A context for a fresh connection; the dictionary is set lazily on the
    /// first header block (zlib emits `78 f9 e3 c6 a7 c2` there).
    pub(super) fn new() -> Self {
        Self {
            deflate: Compress::new(Compression::best(), true),
            primed: false,
        }
    }

    /// Compresses `block` into `out` with a SYNC flush. Oversized blocks
    /// are refused before touching the zlib context, so a refused frame does
    /// not desynchronise the peer's inflater.
    pub(super) fn deflate_block(
        &mut self,
        block: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SpdyError> {
        // Worst-case deflate growth (stored blocks) plus frame fields and flush.
        let worst = block.len() + block.len() / 1000 + 64;
        if worst > MAX_PAYLOAD {
            return Err(SpdyError::FrameTooLarge(worst));
        }
        if !self.primed {
            let adler = self
                .deflate
                .set_dictionary(HEADER_DICTIONARY)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            if adler != DICTIONARY_ADLER {
                return Err(SpdyError::Compression(format!(
                    "dictionary Adler-32 {adler:#010x}, expected {DICTIONARY_ADLER:#010x}"
                )));
            }
            self.primed = true;
        }
        let mut pos = 0;
        loop {
            out.reserve(block.len() - pos + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&block[pos..], out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            pos += (self.deflate.total_in() - before) as usize;
            if pos == block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::spdy::test_support::{
        BLOCK_ERROR, BLOCK_STDERR_AFTER_ERROR_STDOUT, BLOCK_STDIN_AFTER_ERROR,
        BLOCK_STDOUT_AFTER_ERROR, h, hex, raw_block,
    };

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &c in data {
            a = (a + c as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_length_and_adler() {
        assert_eq!(HEADER_DICTIONARY.len(), 1423);
        assert_eq!(adler32(HEADER_DICTIONARY), DICTIONARY_ADLER);
        assert!(HEADER_DICTIONARY.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(HEADER_DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
    }

    #[test]
    fn inflates_client_blocks_with_one_context() {
        let mut dec = Inflater::new();
        let raw = dec.inflate_block(&hex(BLOCK_ERROR)).unwrap();
        assert_eq!(
            raw,
            hex("00 00 00 01 00 00 00 0a 73 74 72 65 61 6d 74 79 70 65 00 00 00 05 65 72 72 6f 72")
        );
        let b2 = dec.header_block(&hex(BLOCK_STDOUT_AFTER_ERROR)).unwrap();
        assert_eq!(b2, h(&[("streamtype", "stdout")]));
        let b3 = dec
            .header_block(&hex(BLOCK_STDERR_AFTER_ERROR_STDOUT))
            .unwrap();
        assert_eq!(b3, h(&[("streamtype", "stderr")]));

        let mut dec = Inflater::new();
        assert_eq!(
            dec.header_block(&hex(BLOCK_ERROR)).unwrap(),
            h(&[("streamtype", "error")])
        );
        assert_eq!(
            dec.header_block(&hex(BLOCK_STDIN_AFTER_ERROR)).unwrap(),
            h(&[("streamtype", "stdin")])
        );
    }

    #[test]
    fn empty_blocks_deflate_as_spec() {
        // §7.3: deflate `00 00 00 00` twice.
        let mut enc = Deflater::new();
        let mut first = Vec::new();
        enc.deflate_block(&[0, 0, 0, 0], &mut first).unwrap();
        assert_eq!(
            first,
            hex("78 f9 e3 c6 a7 c2 02 a6 23 06 00 00 00 00 ff ff")
        );
        let mut second = Vec::new();
        enc.deflate_block(&[0, 0, 0, 0], &mut second).unwrap();
        assert_eq!(second, hex("02 01 00 00 00 00 ff ff"));
    }

    #[test]
    fn header_block_rules() {
        assert_eq!(
            parse_header_block(&raw_block(2, &[(b"port", b"80"), (b"requestid", b"1")])).unwrap(),
            h(&[("port", "80"), ("requestid", "1")])
        );
        let bad = [
            raw_block(1, &[(b"StreamType", b"error")]),
            raw_block(2, &[(b"port", b"80"), (b"port", b"81")]),
            raw_block(1, &[(b"", b"x")]),
            raw_block(2, &[(b"port", b"80")]),
            raw_block(1, &[(b"port", b"\xff")]),
            raw_block(1001, &[]),
            {
                let mut b = raw_block(0, &[]);
                b.push(0);
                b
            },
            // name length claims more than 1 MiB
            hex("00 00 00 01 00 10 00 01 61"),
            vec![0, 0],
        ];
        for b in bad {
            assert!(
                matches!(parse_header_block(&b), Err(SpdyError::HeaderBlock(_))),
                "{b:?}"
            );
        }
        let mut too_many = Vec::new();
        for i in 0..1001 {
            too_many.push((format!("n{i}"), String::new()));
        }
        assert!(write_header_block(&too_many).is_err());
        assert!(write_header_block(&h(&[("Upper", "x")])).is_err());
        assert!(write_header_block(&h(&[("a", "x"), ("a", "y")])).is_err());
    }

    #[test]
    fn rejects_bad_compression() {
        // Another preset dictionary.
        let mut enc = Compress::new(Compression::best(), true);
        enc.set_dictionary(b"not the spdy dictionary").unwrap();
        let mut block = Vec::with_capacity(256);
        enc.compress_vec(&raw_block(0, &[]), &mut block, FlushCompress::Sync)
            .unwrap();
        let mut dec = Inflater::new();
        assert!(matches!(
            dec.header_block(&block),
            Err(SpdyError::Compression(_))
        ));
        // Garbage, and a block cut short (needs the next frame's bytes).
        assert!(matches!(
            Inflater::new().header_block(&hex("12 34 56 78")),
            Err(SpdyError::Compression(_))
        ));
        let full = hex(BLOCK_ERROR);
        assert!(
            Inflater::new()
                .header_block(&full[..full.len() - 6])
                .is_err()
        );
    }
}
