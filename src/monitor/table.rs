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
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Instant, SystemTime};

use super::io::{Sink, append_capped, drain, fan_out, respond, write_atomic};
use super::logs::LogWriter;
use super::proto::{self, Response};
use super::{ExitRecord, files, now_nanos};
use crate::executor::oci::Oci;
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
    /// The external OCI runtime that runs it (a handler's); None: the
    /// monitor's own executor.
    pub oci: Option<Oci>,
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
    /// A subscriber was sent the exit event: false while no daemon has
    /// heard of the exit (it happened while the daemon was down).
    pub exit_told: bool,
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
            drain(fd, |bytes| {
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
    /// How it ended, once its process is reaped.
    pub status: Option<ExitStatus>,
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
            .is_some_and(|f| drain(f, |b| append_capped(buf, b)))
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
        self.reap_with(sys::peek_exited, sys::reap);
    }

    /// [`Table::reap`] over the given `peek` (an exited child, not reaped)
    /// and `reap`: the order of the two is what tests check.
    ///
    /// A failure of either ends this round (logged; the next SIGCHLD
    /// starts another): a child that cannot be reaped would otherwise be
    /// peeked at forever.
    fn reap_with(
        &mut self,
        mut peek: impl FnMut() -> std::io::Result<Option<(i32, ExitStatus)>>,
        mut reap: impl FnMut(i32) -> std::io::Result<()>,
    ) {
        loop {
            let (pid, status) = match peek() {
                Ok(Some(exited)) => exited,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("monitor: waitid: {e}");
                    break;
                }
            };
            self.settle(pid, status);
            if let Err(e) = reap(pid) {
                eprintln!("monitor: reaping {pid}: {e}");
                break;
            }
        }
        self.finish_execs();
    }

    /// Records how `pid` ended, before it is reaped.
    fn settle(&mut self, pid: i32, status: ExitStatus) {
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
                monitor_died: false,
            };
            if let Ok(json) = serde_json::to_vec(&rec) {
                let _ = write_atomic(&c.dir.join(files::EXIT), &json);
            }
            c.exit = Some(rec);
            let ev = super::frame(&event(id, rec, false));
            // A subscriber that cannot take a small frame at once is
            // stuck or gone: it resubscribes and gets the snapshot.
            self.subscribers
                .retain_mut(|s| matches!(std::io::Write::write(s, &ev), Ok(n) if n == ev.len()));
            c.exit_told = !self.subscribers.is_empty();
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
            let code = job.status.map_or(0, exit_code);
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
                // Our unreaped child: only a broken invariant can fail this.
                if let Err(e) = sys::kill(job.pid, libc::SIGKILL) {
                    eprintln!("monitor: killing exec {} at its timeout: {e}", job.pid);
                }
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

/// The CRI exit code: the process's own, or 128 + the signal that
/// killed it.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
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
pub(super) fn event(id: &str, e: ExitRecord, unseen: bool) -> proto::Event {
    proto::Event {
        id: id.to_string(),
        exit_code: e.exit_code,
        finished_at: e.finished_at,
        oom_killed: e.oom_killed,
        unseen,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use prost::Message;

    use super::*;
    use crate::monitor::logs::Stream;

    /// A started container with pid `pid` whose stdout pipe holds `left`
    /// (its writer gone), logging to `dir/log`.
    fn container(pid: i32, dir: &std::path::Path, left: &[u8]) -> Container {
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(left).unwrap();
        drop(w);
        let r = OwnedFd::from(r);
        sys::set_nonblocking(&r).unwrap();
        let log = super::super::io::open_log(&dir.join("log").display().to_string()).unwrap();
        Container {
            dir: dir.to_path_buf(),
            spec: Default::default(),
            opts: CreateOptions {
                cgroup_dirs: Vec::new(),
                seccomp: None,
                pid_peer: None,
                clamp_oom_score_adj: false,
            },
            oci: None,
            pid,
            created: None,
            outputs: vec![Output {
                fd: Some(r),
                log: LogWriter::new(log, Stream::Stdout, 1024),
            }],
            stdin: None,
            stdin_once: false,
            log_path: String::new(),
            exit: None,
            exit_told: false,
            attachers: Vec::new(),
        }
    }

    fn read_frame<M: Message + Default>(s: &mut UnixStream) -> M {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        M::decode(body.as_slice()).unwrap()
    }

    /// A process that exited with `code`.
    fn exited_with(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn killed_by(signal: i32) -> ExitStatus {
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn an_exit_is_settled_in_full_before_the_process_is_reaped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = Table::default();
        let mut c = container(4242, tmp.path(), b"last words\n");
        let (attached_out, out_w) = std::io::pipe().unwrap();
        let (_attached_err, err_w) = std::io::pipe().unwrap();
        c.attachers.push([out_w.into(), err_w.into()]);
        t.containers.insert("c".into(), c);
        let (mut waiter, conn) = UnixStream::pair().unwrap();
        t.waiters.push(Waiter {
            id: "c".into(),
            deadline: Instant::now() + Duration::from_secs(60),
            conn,
        });
        let (mut subscriber, conn) = UnixStream::pair().unwrap();
        conn.set_nonblocking(true).unwrap();
        t.subscribers.push(conn);

        let mut exits = vec![(4242, exited_with(3))];
        let mut reaped = Vec::new();
        t.reap_with(
            || Ok(exits.pop()),
            |pid| {
                // Everything a reader may look at is there while the pid
                // still belongs to the zombie.
                let json = std::fs::read(tmp.path().join(files::EXIT)).expect("exit.json");
                let rec: ExitRecord = serde_json::from_slice(&json).unwrap();
                assert_eq!((rec.exit_code, rec.oom_killed), (3, false));
                let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
                assert!(log.ends_with(" stdout F last words\n"), "{log}");
                reaped.push(pid);
                Ok(())
            },
        );
        assert_eq!(reaped, [4242]);
        let c = &t.containers["c"];
        assert_eq!(c.exit.map(|e| e.exit_code), Some(3));
        assert!(c.outputs.is_empty() && c.attachers.is_empty());
        let answer: Response = read_frame(&mut waiter);
        assert_eq!((answer.exited, answer.exit_code), (true, 3));
        assert!(t.waiters.is_empty());
        let ev: proto::Event = read_frame(&mut subscriber);
        assert_eq!((ev.id.as_str(), ev.exit_code), ("c", 3));
        assert_eq!(t.subscribers.len(), 1);
        // The attacher got the last output, then EOF.
        let mut seen = String::new();
        let mut attached_out = attached_out;
        attached_out.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "last words\n");
    }

    #[test]
    fn a_gone_subscriber_is_dropped_and_others_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = Table::default();
        t.containers
            .insert("c".into(), container(7, tmp.path(), b""));
        let (gone, conn) = UnixStream::pair().unwrap();
        drop(gone);
        t.subscribers.push(conn);
        let (_live, conn) = UnixStream::pair().unwrap();
        conn.set_nonblocking(true).unwrap();
        t.subscribers.push(conn);
        let mut exits = vec![(7, exited_with(0))];
        t.reap_with(|| Ok(exits.pop()), |_| Ok(()));
        assert_eq!(t.subscribers.len(), 1);
    }

    #[test]
    fn an_exec_is_answered_once_reaped_with_what_its_pipes_held() {
        let mut t = Table::default();
        let pipe_with = |bytes: &[u8]| {
            let (r, mut w) = std::io::pipe().unwrap();
            w.write_all(bytes).unwrap();
            let r = OwnedFd::from(r);
            sys::set_nonblocking(&r).unwrap();
            Some(r)
        };
        let (mut daemon, conn) = UnixStream::pair().unwrap();
        t.execs.push(ExecJob {
            pid: 77,
            pipes: vec![(pipe_with(b"out"), true), (pipe_with(b"err"), false)],
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            deadline: None,
            timed_out: true,
            conn,
        });
        // An unknown child (a failed set-up's) is reaped and ignored.
        let mut exits = vec![(77, killed_by(libc::SIGKILL)), (99, exited_with(1))];
        let mut reaped = Vec::new();
        t.reap_with(
            || Ok(exits.pop()),
            |pid| {
                reaped.push(pid);
                Ok(())
            },
        );
        assert_eq!(reaped, [99, 77]);
        assert!(t.execs.is_empty());
        let r: Response = read_frame(&mut daemon);
        assert_eq!((r.exit_code, r.timed_out), (137, true));
        assert_eq!(
            (r.stdout.as_slice(), r.stderr.as_slice()),
            (&b"out"[..], &b"err"[..])
        );
    }

    #[test]
    fn timers_kill_late_execs_and_answer_late_waiters() {
        let mut t = Table::default();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let now = Instant::now();
        let (_daemon, conn) = UnixStream::pair().unwrap();
        t.execs.push(ExecJob {
            pid: child.id() as i32,
            pipes: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            deadline: Some(now + Duration::from_millis(5)),
            timed_out: false,
            conn,
        });
        let (mut late, conn) = UnixStream::pair().unwrap();
        t.waiters.push(Waiter {
            id: "c".into(),
            deadline: now + Duration::from_millis(10),
            conn,
        });
        let (_early, conn) = UnixStream::pair().unwrap();
        let later = now + Duration::from_secs(60);
        t.waiters.push(Waiter {
            id: "c".into(),
            deadline: later,
            conn,
        });
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(5)));

        t.timers(now + Duration::from_millis(10));
        assert!(t.execs[0].timed_out);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        let r: Response = read_frame(&mut late);
        assert!(!r.exited && r.error.is_empty());
        assert_eq!(t.waiters.len(), 1);
        // A timed-out exec no longer sets the poll timeout.
        assert_eq!(t.next_deadline(), Some(later));
    }

    #[test]
    fn exit_codes_and_oom_verdicts() {
        assert_eq!(exit_code(exited_with(0)), 0);
        assert_eq!(exit_code(exited_with(255)), 255);
        assert_eq!(exit_code(killed_by(libc::SIGTERM)), 143);
        let tmp = tempfile::tempdir().unwrap();
        let (v2, v1) = (tmp.path().join("v2"), tmp.path().join("v1"));
        std::fs::create_dir(&v2).unwrap();
        std::fs::create_dir(&v1).unwrap();
        assert!(!oom_killed(&[
            v2.clone(),
            v1.clone(),
            tmp.path().join("none")
        ]));
        std::fs::write(v2.join("memory.events"), "oom 3\noom_kill 0\n").unwrap();
        std::fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert!(!oom_killed(std::slice::from_ref(&v2)));
        assert!(oom_killed(&[v2, v1]));
    }
}
