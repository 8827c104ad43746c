//! The channel between the monitor and a process it is setting up: one
//! unix socket pair, so the waiting process holds a single descriptor that
//! a sibling container cannot reopen through `/proc/<pid>/fd` (sockets do
//! not reopen; pipes do).
//!
//! Messages from the children, each one `write` below the socket buffer so
//! they never interleave: `P<pid i32 le>` from the intermediate, `R` ready,
//! `W<u16 len><text>` warning, `E<kind u8><u16 len><text>` fatal error
//! (kind: [`FailureKind`]). The monitor
//! writes one byte to let a created container exec. The child's end is
//! close-on-exec: EOF after the start byte means execve succeeded.

use std::fs::File;
use std::io::Read;
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::sys;
use super::{ExecutorError, FailureKind};

/// How long a child may take to report back before it is killed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A close-on-exec socket pair `(monitor's end, child's end)`.
pub fn channel() -> Result<(OwnedFd, OwnedFd), ExecutorError> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| ExecutorError::Sys {
        op: "socketpair",
        source: e.into(),
    })
}

fn frame(head: &[u8], text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let len = bytes.len().min(2000);
    let mut msg = Vec::with_capacity(head.len() + 2 + len);
    msg.extend_from_slice(head);
    msg.extend_from_slice(&(len as u16).to_le_bytes());
    msg.extend_from_slice(&bytes[..len]);
    msg
}

/// Writes a warning; errors are ignored (the reader is gone, nothing left
/// to tell).
pub fn warn(fd: RawFd, text: &str) {
    sys::write_all(fd, &frame(b"W", text));
}

/// Reports a fatal error of `kind` and ends the (forked) process.
pub fn fail_as(fd: RawFd, kind: FailureKind, what: &str, e: impl std::fmt::Display) -> ! {
    sys::write_all(fd, &frame(&[b'E', kind.to_byte()], &format!("{what}: {e}")));
    sys::exit(127)
}

/// Reports a fatal fault and ends the (forked) process.
pub fn fail(fd: RawFd, what: &str, e: impl std::fmt::Display) -> ! {
    fail_as(fd, FailureKind::Internal, what, e)
}

/// What the monitor learnt from the children.
#[derive(Default)]
pub struct Report {
    pub pid: Option<i32>,
    pub ready: bool,
    pub error: Option<(FailureKind, String)>,
    pub warnings: Vec<String>,
    pub eof: bool,
}

/// Reads messages until `done(report)`, EOF or the deadline.
pub fn read_reports(
    chan: &OwnedFd,
    report: &mut Report,
    done: impl Fn(&Report) -> bool,
) -> Result<(), ExecutorError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut buf: Vec<u8> = Vec::new();
    let mut file = File::from(chan.try_clone().map_err(ExecutorError::sys("dup"))?);
    while !done(report) && !report.eof {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ExecutorError::Child("container setup timed out".into()));
        }
        let mut pfd = [sys::PollFd::new(chan, sys::PollFlags::IN)];
        let n = sys::poll(&mut pfd, Some(left.min(Duration::from_secs(60))))
            .map_err(ExecutorError::sys("poll"))?;
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        let got = match file.read(&mut chunk) {
            Ok(0) => {
                report.eof = true;
                0
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => {
                return Err(ExecutorError::Sys {
                    op: "read",
                    source: e,
                });
            }
        };
        buf.extend_from_slice(&chunk[..got]);
        while let Some(used) = parse_one(&buf, report) {
            buf.drain(..used);
        }
    }
    Ok(())
}

fn parse_one(buf: &[u8], report: &mut Report) -> Option<usize> {
    match *buf.first()? {
        b'P' if buf.len() >= 5 => {
            report.pid = Some(i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]));
            Some(5)
        }
        b'R' => {
            report.ready = true;
            Some(1)
        }
        b'W' if buf.len() >= 3 => {
            let len = u16::from_le_bytes([buf[1], buf[2]]) as usize;
            let text = buf.get(3..3 + len)?;
            report
                .warnings
                .push(String::from_utf8_lossy(text).into_owned());
            Some(3 + len)
        }
        b'E' if buf.len() >= 4 => {
            let kind = FailureKind::from_byte(buf[1]);
            let len = u16::from_le_bytes([buf[2], buf[3]]) as usize;
            let text = buf.get(4..4 + len)?;
            report.error = Some((kind, String::from_utf8_lossy(text).into_owned()));
            Some(4 + len)
        }
        b'P' | b'W' | b'E' => None,
        _ => Some(buf.len()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn messages_split_across_reads_are_reassembled() {
        let mut r = Report::default();
        let mut buf = vec![b'P', 7, 0, 0, 0, b'W', 2, 0, b'h'];
        while let Some(n) = parse_one(&buf, &mut r) {
            buf.drain(..n);
        }
        assert_eq!(r.pid, Some(7));
        assert!(r.warnings.is_empty(), "incomplete warning kept for later");
        buf.extend_from_slice(b"iR");
        while let Some(n) = parse_one(&buf, &mut r) {
            buf.drain(..n);
        }
        assert_eq!(r.warnings, vec!["hi".to_string()]);
        assert!(r.ready);
    }

    #[test]
    fn eof_ends_the_wait() {
        let (ours, theirs) = channel().unwrap();
        sys::write_all(theirs.as_raw_fd(), &frame(&[b'E', 3], "boom"));
        drop(theirs);
        let mut r = Report::default();
        read_reports(&ours, &mut r, |r| r.ready).unwrap();
        assert!(r.eof);
        assert_eq!(r.error, Some((FailureKind::ExecFailed, "boom".to_string())));
    }
}
