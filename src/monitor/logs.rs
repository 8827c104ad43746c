//! The CRI log format kubelet reads (`kubectl logs`): one record per line,
//! `<RFC3339Nano> <stdout|stderr> <P|F> <content>`, where a line longer
//! than the buffer is split into `P` (partial) records ended by an `F`.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The process's standard output (`stdout` in the log line).
    Stdout,
    /// The process's standard error (`stderr` in the log line).
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Turns a byte stream into CRI log records on `out`.
pub struct LogWriter<W: Write> {
    out: W,
    stream: Stream,
    pending: Vec<u8>,
    max_line: usize,
}

impl<W: Write> LogWriter<W> {
    /// `max_line` bounds memory: a longer line is written as `P` records.
    pub fn new(out: W, stream: Stream, max_line: usize) -> Self {
        LogWriter {
            out,
            stream,
            pending: Vec::new(),
            max_line: max_line.max(1),
        }
    }

    /// Consumes output as it arrives, stamped with `now`.
    pub fn write(&mut self, mut data: &[u8], now: SystemTime) -> io::Result<()> {
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let (line, rest) = data.split_at(i);
                    self.push(line, now)?;
                    let full = std::mem::take(&mut self.pending);
                    self.record(&full, b'F', now)?;
                    data = &rest[1..];
                }
                None => {
                    self.push(data, now)?;
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// Adds bytes of an unfinished line, emitting `P` records when full.
    fn push(&mut self, mut bytes: &[u8], now: SystemTime) -> io::Result<()> {
        while self.pending.len() + bytes.len() > self.max_line {
            let take = self.max_line - self.pending.len();
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let part = std::mem::take(&mut self.pending);
            self.record(&part, b'P', now)?;
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// At the end of the stream: a last line without newline is written as
    /// a full record, so readers do not wait for a continuation.
    pub fn close(&mut self, now: SystemTime) -> io::Result<()> {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.record(&last, b'F', now)?;
        }
        self.out.flush()
    }

    /// Replaces the output (after `ReopenContainerLog`).
    pub fn reopen(&mut self, out: W) -> W {
        std::mem::replace(&mut self.out, out)
    }

    fn record(&mut self, content: &[u8], tag: u8, now: SystemTime) -> io::Result<()> {
        let mut rec = Vec::with_capacity(content.len() + 48);
        rec.extend_from_slice(rfc3339_nano(now).as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(self.stream.name().as_bytes());
        rec.push(b' ');
        rec.push(tag);
        rec.push(b' ');
        rec.extend_from_slice(content);
        rec.push(b'\n');
        self.out.write_all(&rec)
    }
}

/// `2016-10-06T00:17:09.669794202Z`, as Go's time.RFC3339Nano in UTC but
/// with all nine digits (kubelet's parser accepts both).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nano(at(1_475_713_029, 669_794_202)),
            "2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(
            rfc3339_nano(at(951_782_400, 1)),
            "2000-02-29T00:00:00.000000001Z"
        );
    }

    #[test]
    fn lines_partials_and_close() {
        let t = at(1_475_713_029, 5);
        let mut w = LogWriter::new(Vec::new(), Stream::Stderr, 4);
        w.write(b"ab\ncdefgh", t).unwrap();
        w.write(b"ij\n\nlast", t).unwrap();
        w.close(t).unwrap();
        let out = String::from_utf8(w.reopen(Vec::new())).unwrap();
        let ts = "2016-10-06T00:17:09.000000005Z";
        let want = [
            format!("{ts} stderr F ab"),
            format!("{ts} stderr P cdef"),
            // The rest of the line fits the buffer: it closes with F.
            format!("{ts} stderr F ghij"),
            // An empty line is a record of its own.
            format!("{ts} stderr F "),
            format!("{ts} stderr F last"),
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), want);
    }
}
