//! The monitor's requests (`proto/monitor.proto`), one function per op.
//!
//! [`Monitor::handle`] checks the protocol version and dispatches. Most ops
//! answer at once; Wait, ExecSync and ExecStream park their connection in
//! the [`Table`] and are answered by the exit settling there; Subscribe
//! keeps its connection for events; Attach answers with a descriptor.
//!
//! Failures carry a [`proto::Code`] so the daemon can tell who must act: an
//! unknown id is `NotFound`, a container in the wrong state
//! `FailedPrecondition`, and the executor's own failure kinds map one to
//! one (bad spec `InvalidArgument`, refused privilege `PermissionDenied`,
//! unrunnable program `ExecFailed`). Everything else is `Internal`.
//!
//! Here: the dispatch, the failure codes and the container lifecycle
//! (create, start, kill, wait, reopen-log, forget, subscribe); in [`exec`]
//! the ops that run something beside a container's process or hand out
//! its streams (ExecSync, ExecStream, Attach).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod exec;

use super::io::{dev_null, open_log, respond, write_atomic};
use super::logs::{LogWriter, Stream};
use super::proto::{self, Request, Response, request::Op};
use super::table::{Container, Output, Table, Waiter, event, exited};
use super::{VERSION, files, now_nanos};
use crate::executor::linux::pipe;
use crate::executor::oci::Oci;
use crate::executor::{CreateOptions, Executor, Stdio, sys};

/// Longest CRI log line before it is split into partial records.
const MAX_LOG_LINE: usize = 16 * 1024;

/// The monitor's state: the executor it runs processes with and the table
/// of what runs.
pub(super) struct Monitor {
    pub executor: Box<dyn Executor>,
    pub table: Table,
    /// Set by a Shutdown request: the loop ends after this round.
    pub shutdown: bool,
}

/// A failed request: its message and who must act on it.
pub(super) struct Failure {
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

/// The container `id`, or `NotFound`.
fn container<'t>(table: &'t Table, id: &str) -> Result<&'t Container, Failure> {
    table.containers.get(id).ok_or_else(|| no_container(id))
}

/// [`container`], to change.
fn container_mut<'t>(table: &'t mut Table, id: &str) -> Result<&'t mut Container, Failure> {
    table.containers.get_mut(id).ok_or_else(|| no_container(id))
}

/// The answer for a failure.
pub(super) fn error(f: impl Into<Failure>) -> Response {
    let f = f.into();
    Response {
        error: f.message,
        code: f.code as i32,
        ..Default::default()
    }
}

/// `now + ms`, saturating: the daemon passes client timeouts through,
/// and `Instant` cannot hold 2^64 ms.
fn after_ms(ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Monitor {
    pub fn new(executor: Box<dyn Executor>) -> Monitor {
        Monitor {
            executor,
            table: Table::default(),
            shutdown: false,
        }
    }

    /// What runs container `c`: its OCI runtime, or the monitor's executor.
    pub(super) fn executor_for<'a>(&'a self, c: &'a Container) -> &'a dyn Executor {
        self.runner(c.oci.as_ref())
    }

    /// The external OCI runtime `oci` when there is one, else the
    /// monitor's own executor.
    fn runner<'a>(&'a self, oci: Option<&'a Oci>) -> &'a dyn Executor {
        match oci {
            Some(oci) => oci,
            None => &*self.executor,
        }
    }

    /// Carries out one request. `fds` are the descriptors that came with
    /// it; `conn` gets the answer, now or (parked) later.
    pub fn handle(&mut self, req: Request, mut conn: UnixStream, fds: Vec<OwnedFd>) {
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
            Some(Op::Subscribe(_)) => return self.subscribe(conn),
            Some(Op::Wait(w)) => return self.wait(w, conn),
            Some(Op::Attach(a)) => return self.attach(&a.id, fds, conn),
            Some(Op::ExecStream(e)) => {
                // Answered when the process exits (see Table::reap).
                let dup = conn.try_clone().map_err(|e| Failure::from(e.to_string()));
                if let Err(f) = dup.and_then(|c| self.exec_stream(e, fds, c)) {
                    respond(&mut conn, &error(f));
                }
                return;
            }
            Some(Op::ExecSync(e)) => {
                if let Err(msg) = self.exec_sync(e, conn.try_clone().map_err(|e| e.to_string())) {
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
        use std::io::Write;
        for (id, c) in &mut self.table.containers {
            if let Some(e) = c.exit {
                if conn
                    .write_all(&super::frame(&event(id, e, !c.exit_told)))
                    .is_err()
                {
                    return;
                }
                c.exit_told = true;
            }
        }
        if conn.set_nonblocking(true).is_ok() {
            self.table.subscribers.push(conn);
        }
    }

    /// Answers at once for an exited container; parks the connection
    /// until the exit or the timeout otherwise.
    fn wait(&mut self, w: proto::Wait, mut conn: UnixStream) {
        match self.table.containers.get(&w.id) {
            None => respond(&mut conn, &error(no_container(&w.id))),
            Some(c) => match c.exit {
                Some(e) => respond(&mut conn, &exited(e)),
                None => self.table.waiters.push(Waiter {
                    id: w.id,
                    deadline: after_ms(w.timeout_ms),
                    conn,
                }),
            },
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
        self.table
            .containers
            .values()
            .filter(|c| c.exit.is_none() && c.pid > 0)
            .find(|c| {
                std::fs::metadata(format!("/proc/{}/ns/pid", c.pid))
                    .is_ok_and(|m| m.ino() == want.ino() && m.dev() == want.dev())
            })
            .map(|c| PathBuf::from(format!("/proc/{}/ns/mnt", c.pid)))
    }

    fn create(&mut self, c: proto::Create) -> Result<Response, Failure> {
        if self.table.containers.contains_key(&c.id) {
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
        let oci = c.oci_runtime.as_ref().map(|r| Oci {
            binary: PathBuf::from(&r.path),
            root: PathBuf::from(&r.root),
            id: c.id.clone(),
            bundle: dir.clone(),
        });
        let executor = self.runner(oci.as_ref());
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        // An executor that makes the terminal itself hands its master back
        // (Created::console); the process's own stdio is then unused.
        let runtime_terminal = terminal && executor.makes_terminal();
        let ContainerStdio {
            stdio,
            reads,
            stdin: mut stdin_w,
        } = if runtime_terminal {
            ContainerStdio {
                stdio: Stdio {
                    stdin: dev_null()?,
                    stdout: dev_null()?,
                    stderr: dev_null()?,
                    terminal: false,
                },
                reads: Vec::new(),
                stdin: None,
            }
        } else {
            container_stdio(terminal, c.stdin)?
        };
        let mut outputs = Vec::new();
        for (fd, stream) in reads {
            outputs.push(output(fd, stream, &c.log_path)?);
        }
        let mut created = executor.create(&spec, stdio, &opts)?;
        if let Some(master) = created.console.take() {
            let kept = master.try_clone().map_err(|e| e.to_string());
            let out =
                kept.and_then(|kept| Ok((kept, output(master, Stream::Stdout, &c.log_path)?)));
            match out {
                Ok((kept, out)) => {
                    stdin_w = Some(kept);
                    outputs.push(out);
                }
                Err(e) => {
                    // Our child until reaped (as a stranger, once dead).
                    let _ = sys::kill(created.pid, libc::SIGKILL);
                    let _ = executor.remove();
                    return Err(e.into());
                }
            }
        }
        let pid = created.pid;
        let warnings = created.warnings.clone();
        for w in &warnings {
            eprintln!("container {}: {w}", c.id);
        }
        let _ = write_atomic(&dir.join(files::PID), pid.to_string().as_bytes());
        self.table.containers.insert(
            c.id.clone(),
            Container {
                dir,
                spec,
                opts,
                oci,
                pid,
                created: Some(created),
                outputs,
                stdin: stdin_w,
                stdin_once: c.stdin_once,
                log_path: c.log_path,
                exit: None,
                exit_told: false,
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
        let c = container_mut(&mut self.table, id)?;
        let created = c.created.take().ok_or_else(|| {
            coded(
                proto::Code::FailedPrecondition,
                format!("container {id} already started"),
            )
        })?;
        let started = now_nanos();
        let _ = write_atomic(&c.dir.join(files::STARTED), started.to_string().as_bytes());
        let c = container(&self.table, id)?;
        self.executor_for(c).start(created)?;
        Ok(Response {
            pid: c.pid,
            started_at: started,
            ..Default::default()
        })
    }

    /// Signals the container's process and, with `all`, every process its
    /// cgroup lists. All are tried; the first refusal (a signal the kernel
    /// calls invalid, a process it will not let us signal) is the answer.
    /// A process that is already gone is no failure.
    fn kill(&mut self, k: &proto::Kill) -> Result<Response, Failure> {
        let c = container(&self.table, &k.id)?;
        let mut first_error = None;
        let mut signal = |pid: i32| {
            if let Err(e) = sys::kill(pid, k.signal) {
                first_error.get_or_insert((pid, e));
            }
        };
        if c.exit.is_none() {
            // Our unreaped child: its pid cannot have been reused.
            signal(c.pid);
        }
        if k.all {
            for d in &c.opts.cgroup_dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                // 0 stands for a process outside our PID namespace.
                let pids = procs.lines().filter_map(|l| l.trim().parse::<i32>().ok());
                pids.filter(|&pid| pid > 0).for_each(&mut signal);
            }
        }
        match first_error {
            None => Ok(Response::default()),
            Some((pid, e)) => {
                let code = match e.raw_os_error() {
                    Some(libc::EINVAL) => proto::Code::InvalidArgument,
                    Some(libc::EPERM) => proto::Code::PermissionDenied,
                    _ => proto::Code::Internal,
                };
                Err(coded(code, format!("signal {} to {pid}: {e}", k.signal)))
            }
        }
    }

    fn reopen(&mut self, id: &str) -> Result<Response, Failure> {
        let c = container_mut(&mut self.table, id)?;
        for o in &mut c.outputs {
            let sink = open_log(&c.log_path).map_err(|e| format!("reopening log: {e}"))?;
            o.log.reopen(sink);
        }
        Ok(Response::default())
    }

    /// Drops the container; one still running is killed and reaped first.
    /// If the kill fails (only a broken invariant could: it is our
    /// unreaped child) the reap is skipped rather than blocking the loop
    /// forever: the process is then reaped as a stranger when it exits.
    /// An external runtime's state of the container goes last.
    fn forget(&mut self, id: &str) {
        let Some(c) = self.table.containers.remove(id) else {
            return;
        };
        if c.exit.is_none() {
            let killed = sys::kill(c.pid, libc::SIGKILL).and_then(|()| sys::reap(c.pid));
            if let Err(e) = killed {
                eprintln!("monitor: forgetting {id} (pid {}): {e}", c.pid);
            }
        }
        if let Err(e) = self.executor_for(&c).remove() {
            eprintln!("monitor: removing {id} from its OCI runtime: {e}");
        }
    }
}

/// A container output read from `fd` into the log at `log_path`.
fn output(fd: OwnedFd, stream: Stream, log_path: &str) -> Result<Output, String> {
    sys::set_nonblocking(&fd).map_err(|e| format!("output pipe: {e}"))?;
    let sink = open_log(log_path).map_err(|e| format!("opening log {log_path}: {e}"))?;
    Ok(Output {
        fd: Some(fd),
        log: LogWriter::new(sink, stream, MAX_LOG_LINE),
    })
}

/// A new container's descriptors: a pty (whose master is both its output
/// and its stdin) for a terminal, else pipes, with stdin from /dev/null
/// unless asked for.
struct ContainerStdio {
    /// The process's ends.
    stdio: Stdio,
    /// The ends the monitor reads output from.
    reads: Vec<(OwnedFd, Stream)>,
    /// The end of the process's stdin the monitor keeps for attach.
    stdin: Option<OwnedFd>,
}

fn container_stdio(terminal: bool, stdin: bool) -> Result<ContainerStdio, Failure> {
    if terminal {
        let (master, slave) = sys::pty().map_err(|e| e.to_string())?;
        let s2 = slave.try_clone().map_err(|e| e.to_string())?;
        let s3 = slave.try_clone().map_err(|e| e.to_string())?;
        let keep = master.try_clone().map_err(|e| e.to_string())?;
        return Ok(ContainerStdio {
            stdio: Stdio {
                stdin: slave,
                stdout: s2,
                stderr: s3,
                terminal: true,
            },
            reads: vec![(master, Stream::Stdout)],
            stdin: Some(keep),
        });
    }
    let (out_r, out_w) = pipe().map_err(|e| e.to_string())?;
    let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
    let (stdin, stdin_w) = if stdin {
        let (r, w) = pipe().map_err(|e| e.to_string())?;
        (r, Some(w))
    } else {
        (dev_null()?, None)
    };
    Ok(ContainerStdio {
        stdio: Stdio {
            stdin,
            stdout: out_w,
            stderr: err_w,
            terminal: false,
        },
        reads: vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
        stdin: stdin_w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{ExecutorError, FailureKind};

    #[test]
    fn executor_failures_map_to_their_codes() {
        let code = |e: ExecutorError| error(e).code;
        let refused = |kind| ExecutorError::Refused {
            kind,
            message: "no".into(),
        };
        assert_eq!(
            code(refused(FailureKind::InvalidArgument)),
            proto::Code::InvalidArgument as i32
        );
        assert_eq!(
            code(refused(FailureKind::PermissionDenied)),
            proto::Code::PermissionDenied as i32
        );
        assert_eq!(
            code(refused(FailureKind::ExecFailed)),
            proto::Code::ExecFailed as i32
        );
        assert_eq!(
            code(ExecutorError::Spec("bad".into())),
            proto::Code::InvalidArgument as i32
        );
        assert_eq!(
            code(ExecutorError::Child("died".into())),
            proto::Code::Internal as i32
        );
        let r = error("plain");
        assert_eq!(
            (r.error.as_str(), r.code),
            ("plain", proto::Code::Internal as i32)
        );
    }

    #[test]
    fn client_timeouts_saturate() {
        assert!(after_ms(u64::MAX) > Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let soon = after_ms(10);
        assert!(soon <= Instant::now() + Duration::from_millis(10));
    }
}
