//! The requests that run something beside a container's own process or
//! hand its streams out: ExecSync (output captured, answered at the exit or
//! the timeout), ExecStream (on the daemon's descriptors or a terminal;
//! answered at the exit, killed when the daemon hangs up) and Attach. All
//! need a running container; the answers owed are [`ExecJob`]s in the table.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use super::{Failure, Monitor, after_ms, coded, container, container_mut, error};
use crate::executor::linux::pipe;
use crate::executor::{Stdio, sys};
use crate::monitor::frame;
use crate::monitor::io::dev_null;
use crate::monitor::proto::{self, Response};
use crate::monitor::table::{Container, ExecJob};

impl Monitor {
    /// Runs a command in a running container and answers (when it has been
    /// reaped, see the table) with its captured output, or at its timeout.
    pub(super) fn exec_sync(
        &mut self,
        e: proto::Exec,
        conn: Result<UnixStream, String>,
    ) -> Result<(), Failure> {
        let conn = conn?;
        let c = self.running(&e.id)?;
        let process = c.exec_process(&e.cmd, false)?;
        let (out_r, out_w) = pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
        for r in [&out_r, &err_r] {
            sys::set_nonblocking(r).map_err(|e| format!("exec output pipe: {e}"))?;
        }
        let stdio = Stdio {
            stdin: dev_null()?,
            stdout: out_w,
            stderr: err_w,
            terminal: false,
        };
        let pid = self
            .executor_for(c)
            .exec(c.pid, &c.spec, &process, stdio, &c.opts)?;
        self.table.execs.push(ExecJob {
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
    /// output and answers with the container's stdin, when it has one;
    /// with stdin_once the client gets the only copy, so its close is the
    /// process's EOF.
    pub(super) fn attach(&mut self, id: &str, fds: Vec<OwnedFd>, conn: UnixStream) {
        let resp = self.add_attacher(id, fds).unwrap_or_else(error);
        let frame = frame(&resp);
        let mut moved = None;
        let stdin = match self.table.containers.get_mut(id) {
            Some(c) if resp.error.is_empty() && c.stdin_once && !c.tty_stdin() => {
                moved = c.stdin.take();
                moved.as_ref()
            }
            Some(c) if resp.error.is_empty() => c.stdin.as_ref(),
            _ => None,
        };
        let fds: Vec<_> = stdin.iter().map(|f| f.as_fd()).collect();
        // An error means the daemon hung up and needs no answer; the pipes
        // it attached stay until a write to them fails (see `fan_out`).
        let _ = sys::send_with_fds(&conn, &frame, &fds);
        drop(moved);
    }

    fn add_attacher(&mut self, id: &str, fds: Vec<OwnedFd>) -> Result<Response, Failure> {
        self.running(id)?;
        let c = container_mut(&mut self.table, id)?;
        let mut fds = fds.into_iter();
        let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
            return Err(coded(
                proto::Code::InvalidArgument,
                "attach needs two descriptors".into(),
            ));
        };
        for fd in [&out, &err] {
            sys::set_nonblocking(fd).map_err(|e| format!("attach descriptors: {e}"))?;
        }
        c.attachers.push([out, err]);
        Ok(Response::default())
    }

    /// A started container that has not exited.
    fn running(&self, id: &str) -> Result<&Container, Failure> {
        let c = container(&self.table, id)?;
        if c.exit.is_some() || c.created.is_some() {
            return Err(coded(
                proto::Code::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        Ok(c)
    }

    /// An interactive exec on the daemon's descriptors.
    pub(super) fn exec_stream(
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
            let (pid, master) = self
                .executor_for(c)
                .exec_tty(c.pid, &c.spec, &process, &c.opts)?;
            let first = Response {
                pid,
                ..Default::default()
            };
            let frame = frame(&first);
            if let Err(err) = sys::send_with_fds(&conn, &frame, &[master.as_fd()]) {
                // Our child, reaped as a stranger once dead.
                if let Err(e) = sys::kill(pid, libc::SIGKILL) {
                    eprintln!("monitor: killing exec {pid}: {e}");
                }
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
            self.executor_for(c)
                .exec(c.pid, &c.spec, &process, stdio, &c.opts)?
        };
        self.table.execs.push(ExecJob {
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
}
