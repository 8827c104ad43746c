//! Running an exec for a streaming client, independent of the transport
//! (WebSocket or SPDY): descriptors for the process, threads pumping its
//! output and input, its exit code, and the status message the error
//! channel carries (`metav1.Status` JSON, protocol v4+).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use k8s_cri::v1::{AttachRequest, ExecRequest};
use tokio::sync::{mpsc, oneshot};

use crate::monitor::client::Client;

/// Standard output's channel number (a remotecommand stream id).
pub const STDOUT: u8 = 1;
/// Standard error's channel number.
pub const STDERR: u8 = 2;

/// A running interactive process.
pub struct Process {
    /// `(channel, bytes)` as the process writes; closed when every output
    /// reached EOF.
    pub output: mpsc::Receiver<(u8, Bytes)>,
    /// Input; `None` (or dropping it) closes the process's stdin.
    pub stdin: Option<mpsc::Sender<Bytes>>,
    /// The pty master, for window size changes (TTY only).
    master: Option<Arc<OwnedFd>>,
    /// The exit code, or why the process could not run.
    pub exit: oneshot::Receiver<Result<i32, String>>,
    /// Dropping this hangs up on the monitor, which kills the process.
    _cancel: oneshot::Sender<()>,
}

impl Process {
    /// Applies a terminal size (from the resize channel).
    pub fn resize(&self, cols: u16, rows: u16) {
        if let Some(m) = &self.master
            && let Err(e) = crate::executor::sys::set_winsize(&**m, cols, rows)
        {
            // The process may be gone with its terminal; the session goes
            // on either way.
            tracing::debug!(error = %e, "resizing the exec's terminal");
        }
    }
}

fn dev_null() -> Result<OwnedFd, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| e.to_string())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    crate::executor::linux::pipe().map_err(|e| e.to_string())
}

/// Copies a descriptor's bytes to `tx` on a thread until EOF (EIO for a
/// pty whose process is gone).
fn pump_out(fd: OwnedFd, channel: u8, tx: mpsc::Sender<(u8, Bytes)>) {
    std::thread::spawn(move || {
        let mut f = File::from(fd);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .blocking_send((channel, Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

/// Writes what arrives on the returned sender into `fd`; closing the
/// sender closes `fd`.
fn pump_in(fd: OwnedFd) -> mpsc::Sender<Bytes> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    std::thread::spawn(move || {
        let mut f = File::from(fd);
        while let Some(b) = rx.blocking_recv() {
            if f.write_all(&b).is_err() {
                break;
            }
        }
    });
    tx
}

/// Starts `req` in its container with pipes (or a terminal made inside
/// the container) wired to the returned [`Process`].
pub async fn start_exec(monitor: &Client, req: &ExecRequest) -> Result<Process, String> {
    let (out_tx, output) = mpsc::channel(64);
    let mut stdin_tx = None;
    let (monitor, id) = (monitor.clone(), req.container_id.clone());
    let stdio = if req.tty {
        None
    } else {
        let stdin = if req.stdin {
            let (r, w) = pipe()?;
            stdin_tx = Some(pump_in(w));
            r
        } else {
            dev_null()?
        };
        let mut outs = Vec::new();
        for (wanted, channel) in [(req.stdout, STDOUT), (req.stderr, STDERR)] {
            if wanted {
                let (r, w) = pipe()?;
                pump_out(r, channel, out_tx.clone());
                outs.push(w);
            } else {
                outs.push(dev_null()?);
            }
        }
        let err = outs.pop().ok_or("no stderr")?;
        let out = outs.pop().ok_or("no stdout")?;
        Some([stdin, out, err])
    };
    let (cmd, tty) = (req.cmd.clone(), req.tty);
    let (master, wait) =
        tokio::task::spawn_blocking(move || monitor.start_stream(&id, cmd, tty, stdio))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let master = match master {
        Some(m) => {
            let m = Arc::new(m);
            pump_out(
                m.try_clone().map_err(|e| e.to_string())?,
                STDOUT,
                out_tx.clone(),
            );
            if req.stdin {
                stdin_tx = Some(pump_in(m.try_clone().map_err(|e| e.to_string())?));
            }
            Some(m)
        }
        None => None,
    };
    drop(out_tx);
    let (cancel_tx, cancel_rx) = oneshot::channel();
    let (exit_tx, exit) = oneshot::channel();
    tokio::spawn(async move {
        let r = wait.wait(cancel_rx).await.map_err(|e| e.to_string());
        let _ = exit_tx.send(r);
    });
    Ok(Process {
        output,
        stdin: stdin_tx,
        master,
        exit,
        _cancel: cancel_tx,
    })
}

/// Joins a running container's output (and stdin, if it was created
/// with one); ends when the container exits or the client leaves.
pub async fn start_attach(monitor: &Client, req: &AttachRequest) -> Result<Process, String> {
    let (out_tx, output) = mpsc::channel(64);
    let (monitor, id) = (monitor.clone(), req.container_id.clone());
    let mut outs = Vec::new();
    for (wanted, channel) in [(req.stdout, STDOUT), (req.stderr || req.tty, STDERR)] {
        let (r, w) = pipe()?;
        if wanted {
            // TTY containers have one output: it arrives on the first pipe.
            pump_out(r, if req.tty { STDOUT } else { channel }, out_tx.clone());
        }
        outs.push(w);
    }
    drop(out_tx);
    let err = outs.pop().ok_or("no stderr")?;
    let out = outs.pop().ok_or("no stdout")?;
    let stdin = tokio::task::spawn_blocking(move || monitor.attach(&id, [out, err]))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let stdin_tx = match (req.stdin, stdin) {
        (true, Some(fd)) => Some(pump_in(fd)),
        _ => None,
    };
    let (cancel_tx, _cancel_rx) = oneshot::channel();
    let (exit_tx, exit) = oneshot::channel();
    // Attach has no exit code of its own: it succeeds when the output ends.
    let _ = exit_tx.send(Ok(0));
    Ok(Process {
        output,
        stdin: stdin_tx,
        master: None,
        exit,
        _cancel: cancel_tx,
    })
}

/// The error-channel message: a JSON Status, always, for protocol v4 and
/// later (`json`); before that plain text and only on failure.
pub fn status_message(exit: &Result<i32, String>, json: bool) -> Option<String> {
    if json {
        return Some(status_json(exit));
    }
    match exit {
        Ok(0) => None,
        Ok(c) => Some(format!(
            "command terminated with non-zero exit code: exit status {c}"
        )),
        Err(e) => Some(e.clone()),
    }
}

/// The error-channel message for protocol v4 and later.
pub fn status_json(exit: &Result<i32, String>) -> String {
    match exit {
        Ok(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
        Ok(code) => {
            let code = (*code).clamp(1, 255);
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string()
        }
        Err(e) => {
            let msg = format!("error executing command in container: {e}");
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {msg}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": msg}]},
                "code": 500,
            })
            .to_string()
        }
    }
}

/// Parses resize events: whitespace-separated `{"Width":W,"Height":H}`.
pub fn parse_resizes(buf: &[u8]) -> Vec<(u16, u16)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    serde_json::Deserializer::from_slice(buf)
        .into_iter::<Size>()
        .map_while(Result::ok)
        .map(|s| (s.width, s.height))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_payloads_match_the_spec() {
        assert_eq!(status_json(&Ok(0)), r#"{"metadata":{},"status":"Success"}"#);
        let v: serde_json::Value = serde_json::from_str(&status_json(&Ok(7))).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        let v: serde_json::Value = serde_json::from_str(&status_json(&Err("boom".into()))).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
    }

    #[test]
    fn resize_events_parse_as_a_stream() {
        assert_eq!(
            parse_resizes(b"{\"Width\":80,\"Height\":24}\n{\"Width\":100,\"Height\":30}\n"),
            vec![(80, 24), (100, 30)]
        );
    }
}
