//! The monitor process and its loop: one thread, `poll(2)` over the
//! listening socket, a SIGCHLD signalfd, every container output pipe and,
//! per exec, its pipes and the daemon connection whose hang-up kills it.
//!
//! [`run`] is the process: it sets up what only a real monitor needs
//! (child subreaper, pid file, the socket in its directory, `ready` to the
//! daemon, trimmed memory) and then [`serve`]s. [`serve`] is the loop alone,
//! over a listener, a signalfd and an [`Executor`] it is given, so tests run
//! it in a forked child against a fake executor. Each round it polls, moves
//! ready output, reaps on SIGCHLD, takes every queued connection (one
//! request each, see [`super::handlers`]) and fires due timers.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::SOCKET;
use super::handlers::{Monitor, error};
use super::io::{dev_null, read_request, respond, write_atomic};
use super::proto::request::Op;
use crate::executor::linux::become_subreaper;
use crate::executor::{Embedded, Executor, sys};

/// Runs the monitor for the pod directory `dir` until told to shut down.
/// Prints `ready` on stdout once the socket accepts connections.
pub fn run(dir: &Path) -> Result<(), String> {
    sys::cloexec_from(3);
    become_subreaper().map_err(|e| e.to_string())?;
    let sigchld = sys::sigchld_fd()?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let _ = write_atomic(
        &dir.join(super::PID_FILE),
        std::process::id().to_string().as_bytes(),
    );
    let sock = dir.join(SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(|e| format!("binding {}: {e}", sock.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"ready\n");
        let _ = out.flush();
    }
    // The daemon's pipe is done with: stdout becomes /dev/null.
    if let Ok(null) = dev_null() {
        sys::redirect_stdout(&null);
    }
    // Long-lived and one per pod: keep only the code it runs resident.
    sys::trim_text();
    let served = serve(&listener, &sigchld, Box::new(Embedded));
    let _ = std::fs::remove_file(&sock);
    served
}

/// What a polled descriptor past the first two (signalfd, listener) is.
enum Slot {
    /// A container's output `index`.
    Output { id: String, index: usize },
    /// An exec's daemon connection: readable or hung up means the client
    /// went away.
    ExecConn { job: usize },
    /// An exec's output pipe.
    ExecPipe { job: usize, pipe: usize },
}

/// The loop: serves requests on `listener` (non-blocking) with `executor`
/// until a Shutdown request. `sigchld` is a signalfd for SIGCHLD, which
/// the calling thread blocks.
pub(super) fn serve(
    listener: &UnixListener,
    sigchld: &OwnedFd,
    executor: Box<dyn Executor>,
) -> Result<(), String> {
    let mut m = Monitor::new(executor);
    while !m.shutdown {
        let mut fds = vec![
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut slots: Vec<Slot> = Vec::new();
        for (id, c) in &m.table.containers {
            for (index, o) in c.outputs.iter().enumerate() {
                let Some(fd) = &o.fd else { continue };
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push(Slot::Output {
                    id: id.clone(),
                    index,
                });
            }
        }
        for (job, j) in m.table.execs.iter().enumerate() {
            // The daemon holds the connection while it waits; its hang-up
            // means the client went away, and the exec ends with it.
            if j.status.is_none() {
                fds.push(libc::pollfd {
                    fd: j.conn.as_raw_fd(),
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                });
                slots.push(Slot::ExecConn { job });
            }
            for (pipe, (fd, _)) in j.pipes.iter().enumerate() {
                let Some(fd) = fd else { continue };
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push(Slot::ExecPipe { job, pipe });
            }
        }
        let timeout = m
            .table
            .next_deadline()
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(60_000) as i32
                    + 1
            })
            .unwrap_or(-1);
        let n = sys::poll(&mut fds, timeout);
        if n < 0 {
            continue;
        }
        let now = SystemTime::now();
        for (pfd, slot) in fds.iter().skip(2).zip(&slots) {
            if pfd.revents == 0 {
                continue;
            }
            match slot {
                Slot::Output { id, index } => {
                    if let Some(c) = m.table.containers.get_mut(id) {
                        c.pump(*index, now);
                    }
                }
                Slot::ExecConn { job } => {
                    if let Some(j) = m.table.execs.get(*job) {
                        // The daemon hung up: its client left.
                        sys::kill(j.pid, libc::SIGKILL);
                    }
                }
                Slot::ExecPipe { job, pipe } => {
                    if let Some(j) = m.table.execs.get_mut(*job) {
                        j.pump(*pipe);
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 128 * 8];
            let mut f = File::from(sigchld.try_clone().map_err(|e| e.to_string())?);
            while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
            m.table.reap();
        }
        if fds[1].revents != 0 {
            while let Ok((mut conn, _)) = listener.accept() {
                match read_request(&mut conn) {
                    Ok((req, fds)) => {
                        // Creating and exec'ing runs code an idle monitor
                        // never needs again: let it go afterwards.
                        let heavy = matches!(req.op, Some(Op::Create(_)) | Some(Op::Start(_)));
                        m.handle(req, conn, fds);
                        if heavy {
                            sys::trim_text();
                        }
                    }
                    Err(e) => respond(&mut conn, &error(format!("bad request: {e}"))),
                }
            }
        }
        m.table.timers(Instant::now());
    }
    Ok(())
}
