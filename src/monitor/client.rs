//! The daemon's side of the monitor protocol, and starting a monitor.

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
    #[error("monitor {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("monitor answer malformed: {0}")]
    Decode(String),
    /// The monitor carried out the request and reports a failure.
    #[error("{0}")]
    Remote(String),
    #[error("starting the monitor: {0}")]
    Spawn(String),
}

/// A pod's monitor, addressed by its directory.
#[derive(Debug, Clone)]
pub struct Client {
    dir: PathBuf,
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

    /// Starts the monitor unless one already answers. It runs detached from
    /// the daemon (own session), so it outlives a daemon crash.
    pub async fn ensure_running(&self, exe: &Path) -> Result<(), MonitorError> {
        if self.alive().await {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| MonitorError::Io {
            path: self.dir.clone(),
            source: e,
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("monitor.log"))
            .map_err(|e| MonitorError::Spawn(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("monitor")
            .arg("--dir")
            .arg(&self.dir)
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
        // Reap it in the background when it eventually exits.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        match read {
            Ok(Ok(_)) if line.trim() == "ready" => Ok(()),
            Ok(Ok(_)) => Err(MonitorError::Spawn(format!(
                "monitor did not start (see {}/monitor.log)",
                self.dir.display()
            ))),
            Ok(Err(e)) => Err(MonitorError::Spawn(e.to_string())),
            Err(_) => Err(MonitorError::Spawn("monitor start timed out".into())),
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn call(&self, op: Op) -> Result<Response, MonitorError> {
        let path = self.socket();
        let io = |source| MonitorError::Io {
            path: path.clone(),
            source,
        };
        let mut s = UnixStream::connect(&path).await.map_err(io)?;
        let req = Request {
            version: VERSION,
            op: Some(op),
        };
        let body = req.encode_to_vec();
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        s.write_all(&frame).await.map_err(io)?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(MonitorError::Decode(format!("frame of {len} bytes")));
        }
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await.map_err(io)?;
        let resp =
            Response::decode(buf.as_slice()).map_err(|e| MonitorError::Decode(e.to_string()))?;
        if !resp.error.is_empty() {
            return Err(MonitorError::Remote(resp.error));
        }
        Ok(resp)
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
        let path = self.path.clone();
        let io = |source| MonitorError::Io {
            path: path.clone(),
            source,
        };
        let mut len = [0u8; 4];
        tokio::select! {
            r = self.stream.read_exact(&mut len) => { r.map_err(io)?; }
            _ = cancel => return Err(MonitorError::Remote("exec cancelled".into())),
        }
        let resp = read_body(&mut self.stream, len, &io).await?;
        if !resp.error.is_empty() {
            return Err(MonitorError::Remote(resp.error));
        }
        Ok(resp.exit_code)
    }
}

async fn read_body(
    s: &mut UnixStream,
    len: [u8; 4],
    io: &impl Fn(std::io::Error) -> MonitorError,
) -> Result<Response, MonitorError> {
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(MonitorError::Decode(format!("frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(io)?;
    Response::decode(buf.as_slice()).map_err(|e| MonitorError::Decode(e.to_string()))
}

impl Client {
    /// Starts an interactive process. Without tty it runs on `stdio`
    /// (stdin, stdout, stderr); with tty the monitor makes a terminal inside
    /// the container and its master is returned.
    pub fn start_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdio: Option<[std::os::fd::OwnedFd; 3]>,
    ) -> Result<(Option<std::os::fd::OwnedFd>, StreamWait), MonitorError> {
        use std::io::Read as _;
        use std::os::fd::AsRawFd;
        let path = self.socket();
        let io = |source| MonitorError::Io {
            path: path.clone(),
            source,
        };
        let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(io)?;
        let req = Request {
            version: VERSION,
            op: Some(Op::ExecStream(super::proto::ExecStream {
                id: id.to_string(),
                cmd,
                tty,
            })),
        };
        let body = req.encode_to_vec();
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let raw: Vec<i32> = stdio.iter().flatten().map(|f| f.as_raw_fd()).collect();
        crate::executor::sys::send_with_fds(stream.as_raw_fd(), &frame, &raw).map_err(io)?;
        // The monitor has its own copies now.
        drop(stdio);
        let mut master = None;
        if tty {
            // First answer: the pid, with the terminal's master attached.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut len = [0u8; 4];
            let (got, mut fds) =
                crate::executor::sys::recv_with_fds(stream.as_raw_fd(), &mut len).map_err(io)?;
            if got == 0 {
                return Err(MonitorError::Decode("monitor hung up".into()));
            }
            stream.read_exact(&mut len[got..]).map_err(io)?;
            let n = u32::from_be_bytes(len) as usize;
            if n > MAX_FRAME {
                return Err(MonitorError::Decode(format!("frame of {n} bytes")));
            }
            let mut buf = vec![0u8; n];
            stream.read_exact(&mut buf).map_err(io)?;
            let resp = Response::decode(buf.as_slice())
                .map_err(|e| MonitorError::Decode(e.to_string()))?;
            if !resp.error.is_empty() {
                return Err(MonitorError::Remote(resp.error));
            }
            master = Some(
                fds.pop()
                    .ok_or_else(|| MonitorError::Decode("no terminal from the monitor".into()))?,
            );
            let _ = stream.set_read_timeout(None);
        }
        stream.set_nonblocking(true).map_err(io)?;
        let stream = UnixStream::from_std(stream).map_err(io)?;
        Ok((
            master,
            StreamWait {
                stream,
                path: path.clone(),
            },
        ))
    }
}

impl Client {
    /// Attaches `(stdout, stderr)` write ends to a running container's
    /// output; returns the container's stdin, if it has one.
    pub fn attach(
        &self,
        id: &str,
        outputs: [std::os::fd::OwnedFd; 2],
    ) -> Result<Option<std::os::fd::OwnedFd>, MonitorError> {
        use std::io::Read as _;
        use std::os::fd::AsRawFd;
        let path = self.socket();
        let io = |source| MonitorError::Io {
            path: path.clone(),
            source,
        };
        let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(io)?;
        let req = Request {
            version: VERSION,
            op: Some(Op::Attach(super::proto::ContainerRef {
                id: id.to_string(),
            })),
        };
        let body = req.encode_to_vec();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let raw: Vec<i32> = outputs.iter().map(|f| f.as_raw_fd()).collect();
        crate::executor::sys::send_with_fds(stream.as_raw_fd(), &frame, &raw).map_err(io)?;
        drop(outputs);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut len = [0u8; 4];
        let (got, mut fds) =
            crate::executor::sys::recv_with_fds(stream.as_raw_fd(), &mut len).map_err(io)?;
        if got == 0 {
            return Err(MonitorError::Decode("monitor hung up".into()));
        }
        stream.read_exact(&mut len[got..]).map_err(io)?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(MonitorError::Decode(format!("frame of {n} bytes")));
        }
        let mut buf = vec![0u8; n];
        stream.read_exact(&mut buf).map_err(io)?;
        let resp =
            Response::decode(buf.as_slice()).map_err(|e| MonitorError::Decode(e.to_string()))?;
        if !resp.error.is_empty() {
            return Err(MonitorError::Remote(resp.error));
        }
        Ok(fds.pop())
    }
}
