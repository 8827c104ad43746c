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
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut len = [0u8; 4];
    // The first read collects descriptors sent with the frame (SCM_RIGHTS).
    let (got, fds) = sys::recv_with_fds(conn.as_raw_fd(), &mut len).map_err(|e| e.to_string())?;
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

/// Writes one answer frame.
pub(super) fn respond(conn: &mut UnixStream, resp: &Response) {
    let frame = super::frame(resp);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = conn.write_all(&frame);
}

/// Reads what is available without blocking. `true` at EOF.
pub(super) fn drain(fd: RawFd, mut sink: impl FnMut(&[u8])) -> bool {
    let mut buf = [0u8; 65536];
    loop {
        let e = match sys::read_some(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                sink(&buf[..n]);
                continue;
            }
            Err(e) => e,
        };
        return match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => false,
            // EIO: a pty whose slave side is closed everywhere.
            _ => true,
        };
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
