//! What the monitor holds for the pod's processes, and what happens when
//! one of them exits.
//!
//! The [`Table`] has the containers (their spec, pid, output pipes and log
//! writers, stdin, attached clients, exit record), the running execs (their
//! pipes, captured output, deadline and the daemon connection that gets the
//! answer), the parked Wait requests and the exit-event subscribers.
//!
//! Settling an exit is the part the daemon relies on most, so it lives
//! here, away from the request handlers and the poll loop: a container's
//! last output is drained into its log, its attachers see EOF, its exit
//! record (`exit.json`, with the OOM verdict) is written *while the process
//! is still a zombie* (so a reader never finds the pid gone without a
//! record), then subscribers get an event and parked waiters their answer,
//! and only then is the process reaped. An exec's answer goes to its
//! connection once its process is reaped and its pipes drained.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use super::io::{Sink, append_capped, drain, fan_out, respond, write_atomic};
use super::logs::LogWriter;
use super::proto::{self, Response};
use super::{ExitRecord, files, now_nanos};
use crate::executor::{CreateOptions, Created, sys};

/// One output stream of a container (stdout, stderr, or a pty master).
pub(super) struct Output {
    /// None once the pipe hung up.
    pub fd: Option<OwnedFd>,
    pub log: LogWriter<Sink>,
}

pub(super) struct Container {
    pub dir: PathBuf,
    pub spec: oci_spec::runtime::Spec,
    pub opts: CreateOptions,
    pub pid: i32,
    /// Until started: what the executor needs to let the process run.
    pub created: Option<Created>,
    pub outputs: Vec<Output>,
    /// The process's stdin (pipe write end or pty master), for attach.
    /// Kept: closing it would give the process EOF.
    pub stdin: Option<OwnedFd>,
    /// The first attacher takes `stdin` over (CRI stdin_once).
    pub stdin_once: bool,
    pub log_path: String,
    pub exit: Option<ExitRecord>,
    /// Attached clients: (stdout, stderr) write ends; closed at exit.
    pub attachers: Vec<[OwnedFd; 2]>,
}

impl Container {
    /// The process spec of an exec: the container's (user, env, caps,
    /// cwd, rlimits) with other args.
    pub fn exec_process(
        &self,
        cmd: &[String],
        tty: bool,
    ) -> Result<oci_spec::runtime::Process, String> {
        if cmd.is_empty() {
            return Err("empty command".into());
        }
        let mut process = self
            .spec
            .process()
            .clone()
            .ok_or("container has no process")?;
        process.set_args(Some(cmd.to_vec()));
        process.set_terminal(Some(tty));
        Ok(process)
    }

    /// A TTY container's stdin is its pty master, which also carries its
    /// output: never hand that one away.
    pub fn tty_stdin(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    /// Moves what output `index` has into its log and to the attached
    /// clients. At EOF (every writer gone) the last line is finished and
    /// the pipe is no longer polled.
    pub fn pump(&mut self, index: usize, now: SystemTime) {
        let Some(o) = self.outputs.get_mut(index) else {
            return;
        };
        let log = &mut o.log;
        let attachers = &mut self.attachers;
        let eof = o.fd.as_ref().is_some_and(|fd| {
            drain(fd.as_raw_fd(), |bytes| {
                let _ = log.write(bytes, now);
                fan_out(attachers, index, bytes);
            })
        });
        if eof {
            let _ = o.log.close(now);
            o.fd = None;
        }
    }
}

/// An exec whose answer is owed to the daemon.
pub(super) struct ExecJob {
    pub pid: i32,
    /// (read end, is stdout); None once hung up. Empty for an exec on the
    /// daemon's own descriptors (ExecStream).
    pub pipes: Vec<(Option<OwnedFd>, bool)>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The wait status, once the process is reaped.
    pub status: Option<i32>,
    pub deadline: Option<Instant>,
    pub timed_out: bool,
    /// The daemon's connection: the answer goes here, and its hang-up
    /// kills the process.
    pub conn: UnixStream,
}

impl ExecJob {
    /// Moves what pipe `index` has into the captured output (capped); at
    /// EOF the pipe is no longer polled.
    pub fn pump(&mut self, index: usize) {
        let Some((fd, is_out)) = self.pipes.get_mut(index) else {
            return;
        };
        let buf = if *is_out {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        if fd
            .as_ref()
            .is_some_and(|f| drain(f.as_raw_fd(), |b| append_capped(buf, b)))
        {
            *fd = None;
        }
    }
}

/// A Wait request parked until its container exits or its deadline.
pub(super) struct Waiter {
    pub id: String,
    pub deadline: Instant,
    pub conn: UnixStream,
}

/// Everything the monitor keeps about the pod's processes.
#[derive(Default)]
pub(super) struct Table {
    pub containers: HashMap<String, Container>,
    pub execs: Vec<ExecJob>,
    pub waiters: Vec<Waiter>,
    /// Daemon connections that get an Event per container exit.
    pub subscribers: Vec<UnixStream>,
}

impl Table {
    /// Reaps every exited child and settles containers and execs. A
    /// container's exit record is written while it is still a zombie, so a
    /// reader never sees it gone without a record.
    pub fn reap(&mut self) {
        while let Some((pid, status)) = sys::peek_exited() {
            self.settle(pid, status);
            sys::reap(pid);
        }
        self.finish_execs();
    }

    /// Records how `pid` ended, before it is reaped.
    fn settle(&mut self, pid: i32, status: i32) {
        if let Some((id, c)) = self.containers.iter_mut().find(|(_, c)| c.pid == pid) {
            let now = SystemTime::now();
            for i in 0..c.outputs.len() {
                c.pump(i, now);
                let _ = c.outputs[i].log.close(now);
            }
            c.outputs.clear();
            // Attached clients see EOF: the container is gone.
            c.attachers.clear();
            let code = exit_code(status);
            // Any OOM kill in its cgroup counts, as with containerd and
            // cri-o: a shell init reports its killed child as exit 137.
            let oom = code != 0 && oom_killed(&c.opts.cgroup_dirs);
            let rec = ExitRecord {
                exit_code: code,
                finished_at: now_nanos(),
                oom_killed: oom,
            };
            if let Ok(json) = serde_json::to_vec(&rec) {
                let _ = write_atomic(&c.dir.join(files::EXIT), &json);
            }
            c.exit = Some(rec);
            let ev = super::frame(&event(id, rec));
            // A subscriber that cannot take a small frame at once is
            // stuck or gone: it resubscribes and gets the snapshot.
            self.subscribers
                .retain_mut(|s| matches!(std::io::Write::write(s, &ev), Ok(n) if n == ev.len()));
            c.created = None;
            let id = id.clone();
            let (done, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
                .into_iter()
                .partition(|w| w.id == id);
            self.waiters = keep;
            for mut w in done {
                respond(&mut w.conn, &exited(rec));
            }
        } else if let Some(job) = self.execs.iter_mut().find(|j| j.pid == pid) {
            job.status = Some(status);
        }
    }

    /// Answers every exec whose process has been reaped, with what its
    /// pipes still held.
    fn finish_execs(&mut self) {
        let mut i = 0;
        while i < self.execs.len() {
            if self.execs[i].status.is_none() {
                i += 1;
                continue;
            }
            let mut job = self.execs.swap_remove(i);
            for p in 0..job.pipes.len() {
                job.pump(p);
            }
            let code = exit_code(job.status.unwrap_or(0));
            let resp = Response {
                exited: true,
                exit_code: code,
                stdout: std::mem::take(&mut job.stdout),
                stderr: std::mem::take(&mut job.stderr),
                timed_out: job.timed_out,
                ..Default::default()
            };
            respond(&mut job.conn, &resp);
        }
    }

    /// Kills execs past their deadline (their answer follows when they are
    /// reaped) and answers waiters past theirs with `exited` false.
    pub fn timers(&mut self, now: Instant) {
        for job in &mut self.execs {
            if let Some(d) = job.deadline
                && d <= now
                && !job.timed_out
            {
                job.timed_out = true;
                sys::kill(job.pid, libc::SIGKILL);
            }
        }
        let (due, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.waiters = keep;
        for mut w in due {
            respond(&mut w.conn, &Response::default());
        }
    }

    /// When [`Table::timers`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.execs
            .iter()
            .filter(|j| !j.timed_out)
            .filter_map(|j| j.deadline)
            .chain(self.waiters.iter().map(|w| w.deadline))
            .min()
    }
}

/// Whether the memory cgroup recorded an OOM kill.
fn oom_killed(cgroup_dirs: &[PathBuf]) -> bool {
    for d in cgroup_dirs {
        for (file, key) in [
            ("memory.events", "oom_kill"),
            ("memory.oom_control", "oom_kill"),
        ] {
            if let Ok(text) = std::fs::read_to_string(d.join(file)) {
                let n = text
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                if n > 0 {
                    return true;
                }
            }
        }
    }
    false
}

/// The CRI exit code of a wait status: the code, or 128 + the signal.
fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// A Wait answer for an exited container.
pub(super) fn exited(e: ExitRecord) -> Response {
    Response {
        exited: true,
        exit_code: e.exit_code,
        finished_at: e.finished_at,
        oom_killed: e.oom_killed,
        ..Default::default()
    }
}

/// The exit event subscribers get.
pub(super) fn event(id: &str, e: ExitRecord) -> proto::Event {
    proto::Event {
        id: id.to_string(),
        exit_code: e.exit_code,
        finished_at: e.finished_at,
        oom_killed: e.oom_killed,
    }
}
