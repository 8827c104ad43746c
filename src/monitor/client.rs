//! The daemon's side of the monitor protocol, and starting a monitor.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::proto::{Request, Response, request::Op};
use super::{MAX_FRAME, SOCKET, VERSION};

/// Why talking to a monitor failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Creating the monitor's directory, or connecting to, writing to or reading from its socket
    /// failed.
    #[error("monitor {path}: {source}")]
    Io {
        /// The monitor's directory or socket.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The monitor hung up mid-answer or sent bytes that are not a valid response.
    #[error("monitor answer malformed: {0}")]
    Decode(String),
    /// The monitor carried out the request and reports a failure.
    #[error("{message}")]
    Remote {
        /// Who must act on it.
        code: super::proto::Code,
        /// The monitor's description of the failure.
        message: String,
    },
    /// The caller gave up on the call (its client went away).
    #[error("{0} cancelled")]
    Cancelled(&'static str),
    /// The monitor took the request but did not answer in time: stopped or
    /// hung (a dead one refuses the connection instead).
    #[error("the pod's monitor did not answer within {0:?} (stopped or hung?)")]
    Timeout(Duration),
    /// The monitor process could not be spawned or did not report itself ready in time.
    #[error("starting the monitor: {0}")]
    Spawn(String),
}

/// How long a retired monitor may take to exit after its Shutdown answer
/// (it finishes the round it is in), and to die after a SIGKILL.
pub const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// What a ping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answers.
    Alive,
    /// Nothing listens: it exited or was killed.
    Dead,
    /// It takes the connection but answers nothing in time.
    Hung,
}

/// A pod's monitor, addressed by its directory.
#[derive(Debug, Clone)]
pub struct Client {
    dir: PathBuf,
}

/// Whether the process behind the pidfd `process` exits within `within`
/// (a pidfd is readable once its process has exited, reaped or not).
/// Blocks.
fn exited(process: &OwnedFd, within: Duration) -> bool {
    use crate::executor::sys::{PollFd, PollFlags, poll};
    let end = std::time::Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let mut fds = [PollFd::new(process, PollFlags::IN)];
        // 0 ready: the time is up, or a signal cut the wait short.
        match poll(&mut fds, Some(left)) {
            Ok(0) if !left.is_zero() => continue,
            Ok(n) => return n > 0,
            Err(_) => return false,
        }
    }
}

impl Client {
    /// The monitor living in `dir` (whether or not it runs).
    pub fn new(dir: &Path) -> Client {
        Client {
            dir: dir.to_path_buf(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// Whether a monitor answers on the socket.
    pub async fn alive(&self) -> bool {
        self.call(Op::Ping(Default::default())).await.is_ok()
    }

    /// Whether the monitor answers, is dead (nothing listens on its
    /// socket) or hung (it takes requests but answers none in time).
    pub async fn probe(&self) -> Probe {
        match self.call(Op::Ping(Default::default())).await {
            Ok(_) => Probe::Alive,
            Err(MonitorError::Timeout(_)) => Probe::Hung,
            Err(_) => Probe::Dead,
        }
    }

    /// Starts the monitor unless one already answers. It runs detached from
    /// the daemon (own session), so it outlives a daemon crash. Gives the
    /// pid of a monitor it started (the caller moves it out of the
    /// daemon's cgroup), `None` when one already ran.
    pub async fn ensure_running(&self) -> Result<Option<u32>, MonitorError> {
        if self.alive().await {
            return Ok(None);
        }
        let log = crate::sync::blocking(|| {
            std::fs::create_dir_all(&self.dir).map_err(|e| MonitorError::Io {
                path: self.dir.clone(),
                source: e,
            })?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("monitor.log"))
                .map_err(|e| MonitorError::Spawn(e.to_string()))
        })?;
        // No host path on its command line: a container that sees a
        // process forked from it reads that. The directory is its cwd.
        let mut cmd =
            crate::helper::command(&["monitor"]).map_err(|e| MonitorError::Spawn(e.to_string()))?;
        cmd.current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(false);
        // SAFETY-free: setsid through the std API (process_group) keeps it
        // out of the daemon's process group and terminal signals.
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| MonitorError::Spawn(e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| MonitorError::Spawn("no stdout".into()))?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(_)) if line.trim() == "ready") {
            // One that did not say it is ready is not left to come up
            // later beside the next attempt's, a monitor nobody retires.
            let _ = child.start_kill();
        }
        let pid = child.id();
        // Reap it in the background when it eventually exits.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match read {
            Ok(Ok(_)) if line.trim() == "ready" => Ok(pid),
            Ok(Ok(_)) => Err(MonitorError::Spawn(format!(
                "monitor did not start (see {}/monitor.log)",
                self.dir.display()
            ))),
            Ok(Err(e)) => Err(MonitorError::Spawn(e.to_string())),
            Err(_) => Err(MonitorError::Spawn("monitor start timed out".into())),
        }
    }

    /// Shuts the monitor down (if it runs; a hung one is killed), waits
    /// for its process to be gone, and removes its directory: once a pod is
    /// removed, nothing of it runs or stays under the runroot. A monitor
    /// still there [`RETIRE_GRACE`] after it answered the Shutdown is
    /// killed too: a removed pod's monitor is never left behind.
    pub async fn retire(&self) {
        // Found before it goes: the pid file is what names it.
        let process = crate::sync::blocking(|| self.process());
        let hung = matches!(
            self.call(Op::Shutdown(Default::default())).await,
            Err(MonitorError::Timeout(_))
        );
        if let Some(process) = process {
            self.see_gone(process, hung).await;
        } else if hung {
            crate::sync::blocking(|| self.kill_hung());
        }
        let dir = self.dir.clone();
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(dir = %self.dir.display(), error = %e, "removing the monitor's directory");
        }
    }

    /// Waits for the monitor's process (`pid`, its pidfd `process`) to
    /// exit: SIGKILLs it at once when `hung`, or when it is still there
    /// [`RETIRE_GRACE`] after its Shutdown answer; says so if even that
    /// does not end it. Polls on a blocking thread (at most twice the
    /// grace).
    async fn see_gone(&self, (pid, process): (i32, OwnedFd), hung: bool) {
        let dir = self.dir.clone();
        let waited = tokio::task::spawn_blocking(move || {
            if !hung && exited(&process, RETIRE_GRACE) {
                return;
            }
            let why = if hung {
                "does not answer"
            } else {
                "did not exit after its shutdown"
            };
            tracing::warn!(pid, dir = %dir.display(), "killing a monitor that {why}");
            let killed = rustix::process::pidfd_send_signal(&process, rustix::process::Signal::KILL);
            if let Err(e) = killed {
                tracing::warn!(pid, error = %e, "killing the monitor");
            }
            if !exited(&process, RETIRE_GRACE) {
                tracing::warn!(pid, dir = %dir.display(), "the monitor is still there after SIGKILL");
            }
        })
        .await;
        if let Err(e) = waited {
            tracing::warn!(pid, error = %e, "waiting for the monitor to exit");
        }
    }

    /// The monitor's pid and process (a pidfd): the pid it wrote, opened,
    /// then checked to run in this directory, so a reused pid is never
    /// taken for it. None when no monitor of this directory runs.
    fn process(&self) -> Option<(i32, OwnedFd)> {
        let pid = std::fs::read_to_string(self.dir.join(super::PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())?;
        let fd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid)?,
            rustix::process::PidfdFlags::empty(),
        )
        .ok()?;
        let ours = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == self.dir);
        ours.then_some((pid, fd))
    }

    /// SIGKILLs a monitor that does not answer, found by the pid it wrote
    /// and checked to be the monitor of this directory.
    fn kill_hung(&self) {
        let Some(pid) = std::fs::read_to_string(self.dir.join(super::PID_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        let ours = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == self.dir);
        if ours {
            tracing::warn!(pid, dir = %self.dir.display(), "killing a monitor that does not answer");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Subscribes to the exits of the pod's containers: the monitor first
    /// sends one event per container that has exited already.
    pub async fn subscribe(&self) -> Result<Events, MonitorError> {
        let path = self.socket();
        let mut s = UnixStream::connect(&path).await.map_err(io_error(&path))?;
        s.write_all(&super::frame(&request(Op::Subscribe(Default::default()))))
            .await
            .map_err(io_error(&path))?;
        Ok(Events { stream: s, path })
    }

    /// Sends one request and waits for its answer, within a deadline that
    /// suits the request (see [`deadline`]): a stopped or hung monitor
    /// never holds a caller forever.
    pub async fn call(&self, op: Op) -> Result<Response, MonitorError> {
        match deadline(&op) {
            Some(d) => tokio::time::timeout(d, self.call_unbounded(op))
                .await
                .unwrap_or(Err(MonitorError::Timeout(d))),
            None => self.call_unbounded(op).await,
        }
    }

    async fn call_unbounded(&self, op: Op) -> Result<Response, MonitorError> {
        let path = self.socket();
        let io = io_error(&path);
        let mut s = UnixStream::connect(&path).await.map_err(&io)?;
        s.write_all(&super::frame(&request(op)))
            .await
            .map_err(&io)?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.map_err(&io)?;
        answer(read_body(&mut s, len, &io).await?)
    }

    /// One request with descriptors attached, on a blocking socket; the
    /// answer and any descriptors sent with it. The socket stays open for
    /// a second answer (an interactive exec's exit).
    fn call_with_fds(
        &self,
        op: Op,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Response, Vec<OwnedFd>, std::os::unix::net::UnixStream), MonitorError> {
        use std::io::Read as _;
        let path = self.socket();
        let io = io_error(&path);
        let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(&io)?;
        crate::executor::sys::send_with_fds(&stream, &super::frame(&request(op)), fds)
            .map_err(&io)?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut len = [0u8; 4];
        let (got, fds) = crate::executor::sys::recv_with_fds(&stream, &mut len).map_err(&io)?;
        if got == 0 {
            return Err(MonitorError::Decode("monitor hung up".into()));
        }
        stream.read_exact(&mut len[got..]).map_err(&io)?;
        let mut buf = vec![0u8; frame_len(len)?];
        stream.read_exact(&mut buf).map_err(&io)?;
        let resp =
            Response::decode(buf.as_slice()).map_err(|e| MonitorError::Decode(e.to_string()))?;
        let _ = stream.set_read_timeout(None);
        Ok((answer(resp)?, fds, stream))
    }

    /// Starts an interactive process. Without tty it runs on `stdio`
    /// (stdin, stdout, stderr); with tty the monitor makes a terminal inside
    /// the container and its master is returned.
    pub fn start_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdio: Option<[OwnedFd; 3]>,
    ) -> Result<(Option<OwnedFd>, StreamWait), MonitorError> {
        let op = Op::ExecStream(super::proto::ExecStream {
            id: id.to_string(),
            cmd,
            tty,
        });
        let passed: Vec<BorrowedFd<'_>> = stdio.iter().flatten().map(|f| f.as_fd()).collect();
        let (stream, master) = if tty {
            // First answer: the pid, with the terminal's master attached.
            let (_, mut fds, stream) = self.call_with_fds(op, &passed)?;
            let master = fds
                .pop()
                .ok_or_else(|| MonitorError::Decode("no terminal from the monitor".into()))?;
            (stream, Some(master))
        } else {
            let path = self.socket();
            let io = io_error(&path);
            let stream = std::os::unix::net::UnixStream::connect(&path).map_err(&io)?;
            crate::executor::sys::send_with_fds(&stream, &super::frame(&request(op)), &passed)
                .map_err(&io)?;
            (stream, None)
        };
        // The monitor has its own copies now.
        drop(stdio);
        let path = self.socket();
        stream.set_nonblocking(true).map_err(io_error(&path))?;
        let stream = UnixStream::from_std(stream).map_err(io_error(&path))?;
        Ok((master, StreamWait { stream, path }))
    }

    /// Attaches `(stdout, stderr)` write ends to a running container's
    /// output; returns the container's stdin, if it has one.
    pub fn attach(&self, id: &str, outputs: [OwnedFd; 2]) -> Result<Option<OwnedFd>, MonitorError> {
        let op = Op::Attach(super::proto::ContainerRef { id: id.to_string() });
        let passed: Vec<BorrowedFd<'_>> = outputs.iter().map(|f| f.as_fd()).collect();
        let (_, mut fds, _) = self.call_with_fds(op, &passed)?;
        Ok(fds.pop())
    }
}

/// A quick request's deadline; a monitor is single-threaded and answers
/// these in microseconds unless it is stopped or hung.
pub const QUICK: Duration = Duration::from_secs(5);

/// How long a monitor may take over `op`: container set-up and start wait
/// for the container's own process (bounded by the executor's 30 s), Wait
/// and ExecSync for their timeouts; an ExecSync without a timeout has no
/// deadline (its caller hanging up ends it).
pub fn deadline(op: &Op) -> Option<Duration> {
    let ms = |ms: u64| Duration::from_millis(ms).checked_add(QUICK);
    match op {
        Op::Create(_) | Op::Start(_) => Some(Duration::from_secs(40)),
        Op::Wait(w) => ms(w.timeout_ms),
        Op::ExecSync(e) if e.timeout_ms > 0 => ms(e.timeout_ms),
        Op::ExecSync(_) | Op::ExecStream(_) | Op::Subscribe(_) => None,
        _ => Some(QUICK),
    }
}

fn request(op: Op) -> Request {
    Request {
        version: VERSION,
        op: Some(op),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> MonitorError + '_ {
    move |source| MonitorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn frame_len(len: [u8; 4]) -> Result<usize, MonitorError> {
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(MonitorError::Decode(format!("frame of {n} bytes")));
    }
    Ok(n)
}

/// A monitor's answer, its error field turned into an error.
fn answer(resp: Response) -> Result<Response, MonitorError> {
    if resp.error.is_empty() {
        Ok(resp)
    } else {
        Err(MonitorError::Remote {
            code: super::proto::Code::try_from(resp.code).unwrap_or(super::proto::Code::Internal),
            message: resp.error,
        })
    }
}

async fn read_body(
    s: &mut UnixStream,
    len: [u8; 4],
    io: &impl Fn(std::io::Error) -> MonitorError,
) -> Result<Response, MonitorError> {
    let mut buf = vec![0u8; frame_len(len)?];
    s.read_exact(&mut buf).await.map_err(io)?;
    Response::decode(buf.as_slice()).map_err(|e| MonitorError::Decode(e.to_string()))
}

/// The exit events of a pod's containers ([`Client::subscribe`]).
pub struct Events {
    stream: UnixStream,
    path: PathBuf,
}

impl Events {
    /// The next exit; `None` when the monitor is gone.
    pub async fn next(&mut self) -> Result<Option<super::proto::Event>, MonitorError> {
        let io = io_error(&self.path);
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let mut buf = vec![0u8; frame_len(len)?];
        self.stream.read_exact(&mut buf).await.map_err(&io)?;
        super::proto::Event::decode(buf.as_slice())
            .map(Some)
            .map_err(|e| MonitorError::Decode(e.to_string()))
    }
}

/// An interactive process started by [`Client::start_stream`].
pub struct StreamWait {
    stream: UnixStream,
    path: PathBuf,
}

impl StreamWait {
    /// Waits for the exit code. If `cancel` fires (its sender dropped)
    /// first, hangs up, which makes the monitor kill the process.
    pub async fn wait(
        mut self,
        cancel: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<i32, MonitorError> {
        let io = io_error(&self.path);
        let mut len = [0u8; 4];
        tokio::select! {
            r = self.stream.read_exact(&mut len) => { r.map_err(&io)?; }
            _ = cancel => return Err(MonitorError::Cancelled("exec")),
        }
        let resp = answer(read_body(&mut self.stream, len, &io).await?)?;
        Ok(resp.exit_code)
    }
}
