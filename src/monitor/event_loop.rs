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

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::SOCKET;
use super::handlers::{Monitor, error};
use super::io::{dev_null, read_request, respond, write_atomic};
use super::proto::request::Op;
use crate::executor::linux::become_subreaper;
use crate::executor::sys::{self, PollFd, PollFlags, SigChld};
use crate::executor::{Embedded, Executor};

/// Runs the monitor for the pod directory `dir` until told to shut down.
/// Prints `ready` on stdout once the socket accepts connections.
pub fn run(dir: &Path) -> Result<(), String> {
    // Belt and braces (the daemon starts it with nothing but stdio open):
    // without it, nothing is lost but that guarantee, so it only warns.
    if let Err(e) = sys::cloexec_from(3) {
        eprintln!("monitor: marking inherited descriptors close-on-exec: {e}");
    }
    become_subreaper().map_err(|e| e.to_string())?;
    let sigchld = SigChld::block().map_err(|e| e.to_string())?;
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
    // The daemon's pipe is done with: stdout becomes /dev/null. If that
    // fails the pipe stays open as stdout, which is harmless: nothing is
    // written to it after `ready`, which the daemon has read.
    let null = dev_null().and_then(|null| sys::redirect_stdout(null).map_err(|e| e.to_string()));
    if let Err(e) = null {
        eprintln!("monitor: stdout to /dev/null: {e}");
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
/// until a Shutdown request. `sigchld` must be the only way SIGCHLD reaches
/// this process (see [`SigChld`]).
pub(super) fn serve(
    listener: &UnixListener,
    sigchld: &SigChld,
    executor: Box<dyn Executor>,
) -> Result<(), String> {
    let mut m = Monitor::new(executor);
    let mut poll_failing = false;
    while !m.shutdown {
        let (ready, slots) = match wait_for_work(&m, sigchld, listener) {
            Ok(got) => {
                poll_failing = false;
                got
            }
            Err(e) => {
                // Out of memory for the set, say: try again shortly, and
                // say so once rather than spin or give up the containers.
                if !poll_failing {
                    eprintln!("monitor: poll: {e}");
                }
                poll_failing = true;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let now = SystemTime::now();
        for (slot, _) in slots.iter().zip(&ready[2..]).filter(|(_, r)| **r) {
            match slot {
                Slot::Output { id, index } => {
                    if let Some(c) = m.table.containers.get_mut(id) {
                        c.pump(*index, now);
                    }
                }
                Slot::ExecConn { job } => {
                    if let Some(j) = m.table.execs.get(*job)
                        && let Err(e) = sys::kill(j.pid, libc::SIGKILL)
                    {
                        // Our unreaped child: only a broken invariant
                        // fails here, and its exit still answers the job.
                        eprintln!("monitor: killing exec {}: {e}", j.pid);
                    }
                }
                Slot::ExecPipe { job, pipe } => {
                    if let Some(j) = m.table.execs.get_mut(*job) {
                        j.pump(*pipe);
                    }
                }
            }
        }
        if ready[0] {
            // A failed read leaves the signal queued and the descriptor
            // readable: the next round tries again. Reaping looks at every
            // child whatever was read.
            if let Err(e) = sigchld.clear() {
                eprintln!("monitor: reading the SIGCHLD signalfd: {e}");
            }
            m.table.reap();
        }
        if ready[1] {
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

/// Polls the signalfd, the listener and every [`Slot`] until one is ready
/// or the table's next deadline; which are ready (in that order), and the
/// slots.
fn wait_for_work(
    m: &Monitor,
    sigchld: &SigChld,
    listener: &UnixListener,
) -> std::io::Result<(Vec<bool>, Vec<Slot>)> {
    let mut fds = vec![
        PollFd::new(sigchld, PollFlags::IN),
        PollFd::new(listener, PollFlags::IN),
    ];
    let mut slots: Vec<Slot> = Vec::new();
    for (id, c) in &m.table.containers {
        for (index, o) in c.outputs.iter().enumerate() {
            let Some(fd) = &o.fd else { continue };
            fds.push(PollFd::new(fd, PollFlags::IN));
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
            fds.push(PollFd::new(&j.conn, PollFlags::IN | PollFlags::RDHUP));
            slots.push(Slot::ExecConn { job });
        }
        for (pipe, (fd, _)) in j.pipes.iter().enumerate() {
            let Some(fd) = fd else { continue };
            fds.push(PollFd::new(fd, PollFlags::IN));
            slots.push(Slot::ExecPipe { job, pipe });
        }
    }
    // Rounded up, so a deadline is never woken for early; capped, so a
    // clock oddity costs a spare round at worst.
    let timeout = m.table.next_deadline().map(|d| {
        d.saturating_duration_since(Instant::now())
            .min(Duration::from_secs(60))
            + Duration::from_millis(1)
    });
    sys::poll(&mut fds, timeout)?;
    let ready = fds.iter().map(|p| !p.revents().is_empty()).collect();
    Ok((ready, slots))
}
