//! The monitor's event loop: one thread, `poll(2)` over the socket, a
//! SIGCHLD signalfd and every output pipe.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use prost::Message;

use super::logs::{LogWriter, Stream};
use super::proto::{self, Request, Response, request::Op};
use super::{EXEC_OUTPUT_CAP, ExitRecord, MAX_FRAME, SOCKET, VERSION, files, now_nanos};
use crate::executor::linux::{become_subreaper, pipe};
use crate::executor::sys;
use crate::executor::{CreateOptions, Created, Embedded, Executor, Stdio};

/// Longest CRI log line before it is split into partial records.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Where a container's output records go.
enum Sink {
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

fn open_log(path: &str) -> std::io::Result<Sink> {
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

struct Output {
    /// None once the pipe hung up.
    fd: Option<OwnedFd>,
    log: LogWriter<Sink>,
}

struct Container {
    dir: PathBuf,
    spec: oci_spec::runtime::Spec,
    opts: CreateOptions,
    pid: i32,
    created: Option<Created>,
    outputs: Vec<Output>,
    /// Kept for attach; closing it would give the process EOF.
    /// The process's stdin (pipe write end or pty master), for attach.
    stdin: Option<OwnedFd>,
    /// The first attacher takes `stdin` over (CRI stdin_once).
    stdin_once: bool,
    log_path: String,
    exit: Option<ExitRecord>,
    /// Attached clients: (stdout, stderr) write ends; closed at exit.
    attachers: Vec<[OwnedFd; 2]>,
}

impl Container {
    /// The process spec of an exec: the container's (user, env, caps,
    /// cwd, rlimits) with other args.
    fn exec_process(
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
    fn tty_stdin(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }
}

/// Copies output to every attached client without blocking the monitor:
/// a client that cannot keep up loses data, a gone one is dropped.
fn fan_out(attachers: &mut Vec<[OwnedFd; 2]>, index: usize, bytes: &[u8]) {
    attachers.retain(|a| {
        let Some(fd) = a.get(index) else { return true };
        // One write on the non-blocking descriptor: no dup per chunk.
        !matches!(rustix::io::write(fd, bytes), Err(e) if e != rustix::io::Errno::AGAIN)
    });
}

struct ExecJob {
    pid: i32,
    /// (read end, is stdout); None once hung up.
    pipes: Vec<(Option<OwnedFd>, bool)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<i32>,
    deadline: Option<Instant>,
    timed_out: bool,
    /// The daemon's connection: the answer goes here, and its hang-up
    /// kills the process.
    conn: UnixStream,
}

struct Waiter {
    id: String,
    deadline: Instant,
    conn: UnixStream,
}

struct Monitor {
    executor: Embedded,
    containers: HashMap<String, Container>,
    execs: Vec<ExecJob>,
    waiters: Vec<Waiter>,
    /// Daemon connections that get an Event per container exit.
    subscribers: Vec<UnixStream>,
    shutdown: bool,
}

/// Reads what is available without blocking. `Ok(true)` at EOF.
fn drain(fd: RawFd, mut sink: impl FnMut(&[u8])) -> bool {
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

fn respond(conn: &mut UnixStream, resp: &Response) {
    let frame = super::frame(resp);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = conn.write_all(&frame);
}

/// `now + ms`, saturating: the daemon passes client timeouts through,
/// and `Instant` cannot hold 2^64 ms.
fn after_ms(ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A failed request: its message and who must act on it.
struct Failure {
    code: proto::Code,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            code: proto::Code::Internal,
            message,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        message.to_string().into()
    }
}

impl From<crate::executor::ExecutorError> for Failure {
    fn from(e: crate::executor::ExecutorError) -> Failure {
        use crate::executor::FailureKind;
        let code = match e.kind() {
            FailureKind::Internal => proto::Code::Internal,
            FailureKind::InvalidArgument => proto::Code::InvalidArgument,
            FailureKind::PermissionDenied => proto::Code::PermissionDenied,
            FailureKind::ExecFailed => proto::Code::ExecFailed,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn coded(code: proto::Code, message: String) -> Failure {
    Failure { code, message }
}

fn no_container(id: &str) -> Failure {
    coded(proto::Code::NotFound, format!("no container {id}"))
}

fn error(f: impl Into<Failure>) -> Response {
    let f = f.into();
    Response {
        error: f.message,
        code: f.code as i32,
        ..Default::default()
    }
}

/// Reads one request frame and the descriptors passed with it.
fn read_request(conn: &mut UnixStream) -> Result<(Request, Vec<OwnedFd>), String> {
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

/// Writes a file atomically (temp + rename), so a reader never sees half.
fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

fn dev_null() -> Result<OwnedFd, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| e.to_string())
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

fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

impl Monitor {
    fn handle(&mut self, req: Request, mut conn: UnixStream, fds: Vec<OwnedFd>) {
        if req.version != VERSION {
            respond(
                &mut conn,
                &error(format!(
                    "protocol version {} not spoken (want {VERSION})",
                    req.version
                )),
            );
            return;
        }
        let resp = match req.op {
            Some(Op::Ping(_)) => Response::default(),
            Some(Op::Create(c)) => self.create(c).unwrap_or_else(error),
            Some(Op::Start(c)) => self.start(&c.id).unwrap_or_else(error),
            Some(Op::Kill(k)) => self.kill(&k).unwrap_or_else(error),
            Some(Op::ReopenLog(c)) => self.reopen(&c.id).unwrap_or_else(error),
            Some(Op::Forget(c)) => {
                self.forget(&c.id);
                Response::default()
            }
            Some(Op::Shutdown(_)) => {
                self.shutdown = true;
                Response::default()
            }
            Some(Op::Subscribe(_)) => {
                self.subscribe(conn);
                return;
            }
            Some(Op::Wait(w)) => {
                match self.containers.get(&w.id) {
                    None => respond(&mut conn, &error(no_container(&w.id))),
                    Some(c) => match c.exit {
                        Some(e) => respond(&mut conn, &exited(e)),
                        None => self.waiters.push(Waiter {
                            id: w.id,
                            deadline: after_ms(w.timeout_ms),
                            conn,
                        }),
                    },
                }
                return;
            }
            Some(Op::Attach(a)) => {
                let resp = self.attach(&a.id, fds).unwrap_or_else(error);
                let frame = super::frame(&resp);
                // The container's stdin goes along, when it has one; with
                // stdin_once the client gets the only copy, so its close
                // is the process's EOF.
                let mut moved = None;
                let stdin = match self.containers.get_mut(&a.id) {
                    Some(c) if resp.error.is_empty() && c.stdin_once && !c.tty_stdin() => {
                        moved = c.stdin.take();
                        moved.as_ref().map(|f| f.as_raw_fd())
                    }
                    Some(c) if resp.error.is_empty() => c.stdin.as_ref().map(|f| f.as_raw_fd()),
                    _ => None,
                };
                let fds: Vec<i32> = stdin.into_iter().collect();
                let _ = sys::send_with_fds(conn.as_raw_fd(), &frame, &fds);
                drop(moved);
                return;
            }
            Some(Op::ExecStream(e)) => {
                // Answered when the process exits (see finish_execs).
                let dup = conn.try_clone().map_err(|e| Failure::from(e.to_string()));
                if let Err(f) = dup.and_then(|c| self.exec_stream(e, fds, c)) {
                    respond(&mut conn, &error(f));
                }
                return;
            }
            Some(Op::ExecSync(e)) => {
                if let Err(msg) = self.exec(e, conn.try_clone().map_err(|e| e.to_string())) {
                    respond(&mut conn, &error(msg));
                }
                return;
            }
            None => error("empty request"),
        };
        respond(&mut conn, &resp);
    }

    /// Keeps `conn` for exit events, after one for every container that
    /// has exited already.
    fn subscribe(&mut self, mut conn: UnixStream) {
        for (id, c) in &self.containers {
            if let Some(e) = c.exit
                && conn.write_all(&super::frame(&event(id, e))).is_err()
            {
                return;
            }
        }
        if conn.set_nonblocking(true).is_ok() {
            self.subscribers.push(conn);
        }
    }

    /// The mount namespace of a live container of this pod in the PID
    /// namespace `spec` joins (a target container's): the /proc of a new
    /// container there is cloned from it (`CreateOptions::pid_peer`).
    fn pid_peer(&self, spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let fresh_proc = spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.typ().as_deref() == Some("proc"));
        if !fresh_proc {
            return None;
        }
        let ns = spec.linux().as_ref()?.namespaces().as_ref()?;
        let joined = ns
            .iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid)?
            .path()
            .as_ref()?;
        let want = std::fs::metadata(joined).ok()?;
        self.containers
            .values()
            .filter(|c| c.exit.is_none() && c.pid > 0)
            .find(|c| {
                std::fs::metadata(format!("/proc/{}/ns/pid", c.pid))
                    .is_ok_and(|m| m.ino() == want.ino() && m.dev() == want.dev())
            })
            .map(|c| PathBuf::from(format!("/proc/{}/ns/mnt", c.pid)))
    }

    fn create(&mut self, c: proto::Create) -> Result<Response, Failure> {
        if self.containers.contains_key(&c.id) {
            return Err(coded(
                proto::Code::FailedPrecondition,
                format!("container {} already created", c.id),
            ));
        }
        let dir = PathBuf::from(&c.dir);
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).map_err(|e| format!("reading spec: {e}"))?,
        )
        .map_err(|e| format!("parsing spec: {e}"))?;
        let seccomp = std::fs::read(dir.join("seccomp.bpf")).ok();
        let opts = CreateOptions {
            cgroup_dirs: c.cgroup_dirs.iter().map(PathBuf::from).collect(),
            seccomp,
            pid_peer: self.pid_peer(&spec),
            clamp_oom_score_adj: c.clamp_oom_score_adj,
        };
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let (stdio, reads, stdin_w) = if terminal {
            let (master, slave) = sys::pty()?;
            let s2 = slave.try_clone().map_err(|e| e.to_string())?;
            let s3 = slave.try_clone().map_err(|e| e.to_string())?;
            let keep = master.try_clone().map_err(|e| e.to_string())?;
            (
                Stdio {
                    stdin: slave,
                    stdout: s2,
                    stderr: s3,
                    terminal: true,
                },
                vec![(master, Stream::Stdout)],
                Some(keep),
            )
        } else {
            let (out_r, out_w) = pipe().map_err(|e| e.to_string())?;
            let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
            let (stdin, stdin_w) = if c.stdin {
                let (r, w) = pipe().map_err(|e| e.to_string())?;
                (r, Some(w))
            } else {
                (dev_null()?, None)
            };
            (
                Stdio {
                    stdin,
                    stdout: out_w,
                    stderr: err_w,
                    terminal: false,
                },
                vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
                stdin_w,
            )
        };
        let mut outputs = Vec::new();
        for (fd, stream) in reads {
            sys::set_nonblocking(fd.as_raw_fd());
            let sink =
                open_log(&c.log_path).map_err(|e| format!("opening log {}: {e}", c.log_path))?;
            outputs.push(Output {
                fd: Some(fd),
                log: LogWriter::new(sink, stream, MAX_LOG_LINE),
            });
        }
        let created = self.executor.create(&spec, stdio, &opts)?;
        let pid = created.pid;
        let warnings = created.warnings.clone();
        for w in &warnings {
            eprintln!("container {}: {w}", c.id);
        }
        let _ = write_atomic(&dir.join(files::PID), pid.to_string().as_bytes());
        self.containers.insert(
            c.id.clone(),
            Container {
                dir,
                spec,
                opts,
                pid,
                created: Some(created),
                outputs,
                stdin: stdin_w,
                stdin_once: c.stdin_once,
                log_path: c.log_path,
                exit: None,
                attachers: Vec::new(),
            },
        );
        Ok(Response {
            pid,
            warnings,
            ..Default::default()
        })
    }

    fn start(&mut self, id: &str) -> Result<Response, Failure> {
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| no_container(id))?;
        let created = c.created.take().ok_or_else(|| {
            coded(
                proto::Code::FailedPrecondition,
                format!("container {id} already started"),
            )
        })?;
        let started = now_nanos();
        let _ = write_atomic(&c.dir.join(files::STARTED), started.to_string().as_bytes());
        self.executor.start(created)?;
        Ok(Response {
            pid: c.pid,
            started_at: started,
            ..Default::default()
        })
    }

    fn kill(&mut self, k: &proto::Kill) -> Result<Response, Failure> {
        let c = self
            .containers
            .get(&k.id)
            .ok_or_else(|| no_container(&k.id))?;
        if c.exit.is_none() {
            // Our unreaped child: its pid cannot have been reused.
            sys::kill(c.pid, k.signal);
        }
        if k.all {
            for d in &c.opts.cgroup_dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    sys::kill(pid, k.signal);
                }
            }
        }
        Ok(Response::default())
    }

    fn reopen(&mut self, id: &str) -> Result<Response, Failure> {
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| no_container(id))?;
        for o in &mut c.outputs {
            let sink = open_log(&c.log_path).map_err(|e| format!("reopening log: {e}"))?;
            o.log.reopen(sink);
        }
        Ok(Response::default())
    }

    fn forget(&mut self, id: &str) {
        if let Some(c) = self.containers.remove(id)
            && c.exit.is_none()
        {
            sys::kill(c.pid, libc::SIGKILL);
            sys::reap(c.pid);
        }
    }

    fn exec(&mut self, e: proto::Exec, conn: Result<UnixStream, String>) -> Result<(), Failure> {
        let conn = conn?;
        let c = self.running(&e.id)?;
        let process = c.exec_process(&e.cmd, false)?;
        let (out_r, out_w) = pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
        let stdio = Stdio {
            stdin: dev_null()?,
            stdout: out_w,
            stderr: err_w,
            terminal: false,
        };
        let pid = self
            .executor
            .exec(c.pid, &c.spec, &process, stdio, &c.opts)?;
        sys::set_nonblocking(out_r.as_raw_fd());
        sys::set_nonblocking(err_r.as_raw_fd());
        self.execs.push(ExecJob {
            pid,
            pipes: vec![(Some(out_r), true), (Some(err_r), false)],
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            deadline: (e.timeout_ms > 0).then(|| after_ms(e.timeout_ms)),
            timed_out: false,
            conn,
        });
        Ok(())
    }

    /// Adds a client's (stdout, stderr) pipes to a running container's
    /// output.
    fn attach(&mut self, id: &str, fds: Vec<OwnedFd>) -> Result<Response, Failure> {
        self.running(id)?;
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| no_container(id))?;
        let mut fds = fds.into_iter();
        let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
            return Err(coded(
                proto::Code::InvalidArgument,
                "attach needs two descriptors".into(),
            ));
        };
        sys::set_nonblocking(out.as_raw_fd());
        sys::set_nonblocking(err.as_raw_fd());
        c.attachers.push([out, err]);
        Ok(Response::default())
    }

    /// A started container that has not exited.
    fn running(&self, id: &str) -> Result<&Container, Failure> {
        let c = self.containers.get(id).ok_or_else(|| no_container(id))?;
        if c.exit.is_some() || c.created.is_some() {
            return Err(coded(
                proto::Code::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        Ok(c)
    }

    /// An interactive exec on the daemon's descriptors.
    fn exec_stream(
        &mut self,
        e: proto::ExecStream,
        fds: Vec<OwnedFd>,
        conn: UnixStream,
    ) -> Result<(), Failure> {
        let c = self.running(&e.id)?;
        let process = c.exec_process(&e.cmd, e.tty)?;
        let pid = if e.tty {
            // The terminal is made inside the container; its master goes
            // to the daemon with a first answer (the pid).
            let (pid, master) = self.executor.exec_tty(c.pid, &c.spec, &process, &c.opts)?;
            let first = Response {
                pid,
                ..Default::default()
            };
            let frame = super::frame(&first);
            if let Err(err) = sys::send_with_fds(conn.as_raw_fd(), &frame, &[master.as_raw_fd()]) {
                sys::kill(pid, libc::SIGKILL);
                return Err(format!("sending the terminal: {err}").into());
            }
            pid
        } else {
            let mut fds = fds.into_iter();
            let (Some(stdin), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next())
            else {
                return Err("exec stream needs three descriptors".into());
            };
            let stdio = Stdio {
                stdin,
                stdout,
                stderr,
                terminal: false,
            };
            self.executor
                .exec(c.pid, &c.spec, &process, stdio, &c.opts)?
        };
        self.execs.push(ExecJob {
            pid,
            pipes: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            deadline: None,
            timed_out: false,
            conn,
        });
        Ok(())
    }

    /// Reaps every exited child and settles containers and execs. A
    /// container's exit record is written while it is still a zombie, so a
    /// reader never sees it gone without a record.
    fn reap(&mut self) {
        while let Some((pid, status)) = sys::peek_exited() {
            self.settle(pid, status);
            sys::reap(pid);
        }
        self.finish_execs();
    }

    fn settle(&mut self, pid: i32, status: i32) {
        {
            if let Some((id, c)) = self.containers.iter_mut().find(|(_, c)| c.pid == pid) {
                let now = SystemTime::now();
                for (i, o) in c.outputs.iter_mut().enumerate() {
                    let log = &mut o.log;
                    let attachers = &mut c.attachers;
                    if let Some(fd) = &o.fd {
                        drain(fd.as_raw_fd(), |b| {
                            let _ = log.write(b, now);
                            fan_out(attachers, i, b);
                        });
                    }
                    let _ = o.log.close(now);
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
                    .retain_mut(|s| matches!(s.write(&ev), Ok(n) if n == ev.len()));
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
    }

    fn finish_execs(&mut self) {
        let mut i = 0;
        while i < self.execs.len() {
            if self.execs[i].status.is_none() {
                i += 1;
                continue;
            }
            let mut job = self.execs.swap_remove(i);
            for (fd, is_out) in &job.pipes {
                let buf = if *is_out {
                    &mut job.stdout
                } else {
                    &mut job.stderr
                };
                if let Some(fd) = fd {
                    drain(fd.as_raw_fd(), |b| append_capped(buf, b));
                }
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

    fn timers(&mut self, now: Instant) {
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

    fn next_deadline(&self) -> Option<Instant> {
        self.execs
            .iter()
            .filter(|j| !j.timed_out)
            .filter_map(|j| j.deadline)
            .chain(self.waiters.iter().map(|w| w.deadline))
            .min()
    }
}

fn append_capped(buf: &mut Vec<u8>, b: &[u8]) {
    let room = EXEC_OUTPUT_CAP.saturating_sub(buf.len());
    buf.extend_from_slice(&b[..b.len().min(room)]);
}

fn exited(e: ExitRecord) -> Response {
    Response {
        exited: true,
        exit_code: e.exit_code,
        finished_at: e.finished_at,
        oom_killed: e.oom_killed,
        ..Default::default()
    }
}

fn event(id: &str, e: ExitRecord) -> proto::Event {
    proto::Event {
        id: id.to_string(),
        exit_code: e.exit_code,
        finished_at: e.finished_at,
        oom_killed: e.oom_killed,
    }
}

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
    let mut m = Monitor {
        executor: Embedded,
        containers: HashMap::new(),
        execs: Vec::new(),
        waiters: Vec::new(),
        subscribers: Vec::new(),
        shutdown: false,
    };
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
        // (container id, output index) / (exec index, pipe index) per slot.
        let mut slots: Vec<(bool, String, usize, usize)> = Vec::new();
        for (id, c) in &m.containers {
            for (i, o) in c.outputs.iter().enumerate() {
                let Some(fd) = &o.fd else { continue };
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push((true, id.clone(), i, 0));
            }
        }
        for (j, job) in m.execs.iter().enumerate() {
            // The daemon holds the connection while it waits; its hang-up
            // means the client went away, and the exec ends with it.
            if job.status.is_none() {
                fds.push(libc::pollfd {
                    fd: job.conn.as_raw_fd(),
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                });
                slots.push((false, String::new(), j, usize::MAX));
            }
            for (p, (fd, _)) in job.pipes.iter().enumerate() {
                let Some(fd) = fd else { continue };
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push((false, String::new(), j, p));
            }
        }
        let timeout = m
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
        for (k, pfd) in fds.iter().enumerate().skip(2) {
            if pfd.revents == 0 {
                continue;
            }
            let (is_ctr, id, a, b) = &slots[k - 2];
            if *is_ctr {
                if let Some(c) = m.containers.get_mut(id)
                    && let Some(o) = c.outputs.get_mut(*a)
                {
                    let log = &mut o.log;
                    let attachers = &mut c.attachers;
                    let eof = o.fd.as_ref().is_some_and(|fd| {
                        drain(fd.as_raw_fd(), |bytes| {
                            let _ = log.write(bytes, now);
                            fan_out(attachers, *a, bytes);
                        })
                    });
                    if eof {
                        // Every writer is gone: finish the last line, stop polling.
                        let _ = o.log.close(now);
                        o.fd = None;
                    }
                }
            } else if let Some(job) = m.execs.get_mut(*a) {
                if *b == usize::MAX {
                    // The daemon hung up: its client left.
                    sys::kill(job.pid, libc::SIGKILL);
                    continue;
                }
                let is_out = job.pipes[*b].1;
                let Some(fd) = job.pipes[*b].0.as_ref().map(|f| f.as_raw_fd()) else {
                    continue;
                };
                let buf = if is_out {
                    &mut job.stdout
                } else {
                    &mut job.stderr
                };
                if drain(fd, |bytes| append_capped(buf, bytes)) {
                    job.pipes[*b].0 = None;
                }
            }
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 128 * 8];
            let mut f = File::from(sigchld.try_clone().map_err(|e| e.to_string())?);
            while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
            m.reap();
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
        m.timers(Instant::now());
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}
