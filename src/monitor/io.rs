//! The monitor's byte plumbing, apart from what the bytes mean: request
//! and response frames on the daemon's connections, non-blocking drains of
//! output pipes, the fan-out of a container's output to attached clients,
//! the sink a container's CRI log is written to, and small file helpers.
//!
//! Nothing here knows about containers or requests beyond their encoding:
//! [`super::table`] decides where drained bytes go, [`super::handlers`]
//! what to answer. Kept apart so the rules that keep a single-threaded
//! monitor responsive (never block on a container's pipe or on an attached
//! client; bound what one request may make it read) sit in one place.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use prost::Message;

use super::proto::{Request, Response};
use super::{EXEC_OUTPUT_CAP, MAX_FRAME};
use crate::executor::sys;

/// Where a container's output records go.
pub(super) enum Sink {
    File(File),
    Discard,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(b),
            Sink::Discard => Ok(b.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The CRI log file at `path` (appended to, never through a symlink), or
/// nowhere when the daemon gave no path.
pub(super) fn open_log(path: &str) -> std::io::Result<Sink> {
    if path.is_empty() {
        return Ok(Sink::Discard);
    }
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    Ok(Sink::File(f))
}

/// Reads one request frame and the descriptors passed with it.
pub(super) fn read_request(conn: &mut UnixStream) -> Result<(Request, Vec<OwnedFd>), String> {
    // A client that sends less than it announced must not hold the loop.
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("setting a read timeout: {e}"))?;
    let mut len = [0u8; 4];
    // The first read collects descriptors sent with the frame (SCM_RIGHTS).
    let (got, fds) = sys::recv_with_fds(&*conn, &mut len).map_err(|e| e.to_string())?;
    if got == 0 {
        return Err("connection closed".into());
    }
    conn.read_exact(&mut len[got..])
        .map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes"));
    }
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).map_err(|e| e.to_string())?;
    let req = Request::decode(buf.as_slice()).map_err(|e| e.to_string())?;
    Ok((req, fds))
}

/// Writes one answer frame. Errors are dropped: they mean the daemon hung
/// up or stopped reading for 30 s, and there is no one else to tell; the
/// connection closes when `conn` is dropped. Without the timeout (which
/// cannot fail on a unix socket) a daemon that stopped reading could hold
/// the monitor, so no write is tried then.
pub(super) fn respond(conn: &mut UnixStream, resp: &Response) {
    let frame = super::frame(resp);
    if conn
        .set_write_timeout(Some(Duration::from_secs(30)))
        .is_ok()
    {
        let _ = conn.write_all(&frame);
    }
}

/// Reads what is available from a non-blocking `fd` into `sink`. `true`
/// when nothing more will come: EOF, or an error, which ends the stream
/// the same way (EIO: a pty whose slave side is closed everywhere).
pub(super) fn drain(fd: impl AsFd, mut sink: impl FnMut(&[u8])) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => sink(&buf[..n]),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return false,
            Err(_) => return true,
        }
    }
}

/// Copies output to every attached client without blocking the monitor:
/// a client that cannot keep up loses data, a gone one is dropped.
pub(super) fn fan_out(attachers: &mut Vec<[OwnedFd; 2]>, index: usize, bytes: &[u8]) {
    attachers.retain(|a| {
        let Some(fd) = a.get(index) else { return true };
        // One write on the non-blocking descriptor: no dup per chunk.
        !matches!(rustix::io::write(fd, bytes), Err(e) if e != rustix::io::Errno::AGAIN)
    });
}

/// Appends what fits under [`EXEC_OUTPUT_CAP`]; the rest is dropped.
pub(super) fn append_capped(buf: &mut Vec<u8>, b: &[u8]) {
    let room = EXEC_OUTPUT_CAP.saturating_sub(buf.len());
    buf.extend_from_slice(&b[..b.len().min(room)]);
}

/// Writes a file atomically (temp + rename), so a reader never sees half.
pub(super) fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

pub(super) fn dev_null() -> Result<OwnedFd, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = std::io::pipe().unwrap();
        let (r, w) = (OwnedFd::from(r), OwnedFd::from(w));
        sys::set_nonblocking(&r).unwrap();
        sys::set_nonblocking(&w).unwrap();
        (r, w)
    }

    #[test]
    fn drain_takes_what_is_there_and_tells_eof_from_nothing_yet() {
        let (r, w) = nonblocking_pipe();
        rustix::io::write(&w, b"abc").unwrap();
        let mut got = Vec::new();
        assert!(!drain(&r, |b| got.extend_from_slice(b)));
        assert_eq!(got, b"abc");
        drop(w);
        assert!(drain(&r, |_| panic!("nothing left")));
    }

    #[test]
    fn fan_out_drops_gone_clients_and_keeps_slow_ones() {
        let (gone_r, gone_w) = nonblocking_pipe();
        drop(gone_r);
        let (full_r, full_w) = nonblocking_pipe();
        // Fill the slow client's pipe.
        while rustix::io::write(&full_w, &[0u8; 4096]).is_ok() {}
        let (ok_r, ok_w) = nonblocking_pipe();
        let (_err_r, err_w) = nonblocking_pipe();
        let spare = |fd: &OwnedFd| fd.try_clone().unwrap();
        let mut attachers = vec![
            [gone_w, spare(&err_w)],
            [full_w, spare(&err_w)],
            [ok_w, err_w],
        ];
        fan_out(&mut attachers, 0, b"out");
        assert_eq!(
            attachers.len(),
            2,
            "the gone client is dropped, the slow one kept"
        );
        let mut buf = [0u8; 8];
        assert_eq!(rustix::io::read(&ok_r, &mut buf).unwrap(), 3);
        drop(full_r);
    }

    #[test]
    fn exec_output_stops_at_the_cap() {
        let mut buf = vec![0u8; EXEC_OUTPUT_CAP - 2];
        append_capped(&mut buf, b"abcd");
        assert_eq!(buf.len(), EXEC_OUTPUT_CAP);
        assert_eq!(&buf[EXEC_OUTPUT_CAP - 2..], b"ab");
        append_capped(&mut buf, b"more");
        assert_eq!(buf.len(), EXEC_OUTPUT_CAP);
    }

    #[test]
    fn a_request_brings_its_descriptors_and_oversized_frames_are_refused() {
        let (mut daemon, mut monitor) = UnixStream::pair().unwrap();
        let req = Request {
            version: super::super::VERSION,
            op: Some(super::super::proto::request::Op::Ping(Default::default())),
        };
        let (r, _w) = std::io::pipe().unwrap();
        let r = OwnedFd::from(r);
        sys::send_with_fds(&daemon, &super::super::frame(&req), &[r.as_fd()]).unwrap();
        let (got, fds) = read_request(&mut monitor).unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 1);

        daemon
            .write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
            .unwrap();
        let e = read_request(&mut monitor).unwrap_err();
        assert!(e.starts_with("frame of"), "{e}");
        drop(daemon);
        assert_eq!(read_request(&mut monitor).unwrap_err(), "connection closed");
    }
}
