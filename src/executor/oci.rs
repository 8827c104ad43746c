//! An external OCI runtime (runc's command line) behind the [`Executor`]
//! seam, for a RuntimeClass handler with `runtime_type = "oci"`.
//!
//! The monitor stays what it is for the embedded executor: the parent of
//! the container's processes. `runc create` and `runc exec --detach` run
//! as its children and exit once the process is set up; the process they
//! made is then re-parented to the monitor (a child subreaper), which reaps
//! it, writes its exit record and answers its waiters exactly as for an
//! embedded container. Standard streams pass straight through: runc hands
//! its own stdin/stdout/stderr (the monitor's pipes) to the process, or,
//! for a terminal, sends the pty master it made inside the container to a
//! `--console-socket`. Every invocation has a deadline, after which runc is
//! killed; its error comes from its `--log` (JSON lines, read from where
//! this call began).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Process, Spec};

use super::{CreateOptions, Created, Executor, ExecutorError, FailureKind, Stdio, sys};

/// How long `runc create` may take (the daemon's own create deadline is
/// 40 s).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any other runc call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The pid file `create` and `exec` write, in the bundle.
const PID_FILE: &str = "oci.pid";
/// runc's log, in the bundle.
const LOG_FILE: &str = "oci.log";
/// The process spec an exec runs, in the bundle.
const EXEC_PROCESS: &str = "oci-exec.json";
/// The console socket, in the monitor's directory (its cwd, whose socket
/// path is known to fit in sun_path).
const CONSOLE_SOCKET: &str = "console.sock";

/// One container run by an external OCI runtime: the binary, its state
/// directory, the container's id there and its bundle (the directory
/// with `config.json`).
#[derive(Debug, Clone)]
pub struct Oci {
    /// The runtime binary.
    pub binary: PathBuf,
    /// Its `--root`.
    pub root: PathBuf,
    /// The container's id (crius's).
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
}

impl Oci {
    /// `binary --root R --log L --log-format json ARGS`, with `stdio` (or
    /// /dev/null) as its standard streams, bounded by `timeout`.
    fn run<I, S>(
        &self,
        args: I,
        stdio: Option<Stdio>,
        timeout: Duration,
    ) -> Result<(), ExecutorError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = self.bundle.join(LOG_FILE);
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        match stdio {
            Some(s) => cmd
                .stdin(ProcStdio::from(s.stdin))
                .stdout(ProcStdio::from(s.stdout))
                .stderr(ProcStdio::from(s.stderr)),
            None => cmd
                .stdin(ProcStdio::null())
                .stdout(ProcStdio::null())
                .stderr(ProcStdio::null()),
        };
        let what = self.binary.display().to_string();
        let mut child = cmd.spawn().map_err(|e| ExecutorError::Sys {
            op: "spawning the OCI runtime",
            source: e,
        })?;
        // The streams given are the process's now: drop the Command (and
        // its copies of them), or a reader would never see EOF.
        drop(cmd);
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ExecutorError::Child(format!(
                        "{what} did not finish within {} s",
                        timeout.as_secs()
                    )));
                }
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(ExecutorError::sys("waiting for the OCI runtime")(e)),
            }
        };
        if status.success() {
            return Ok(());
        }
        let message = last_error(&log, from).unwrap_or_else(|| format!("{what} failed: {status}"));
        Err(ExecutorError::reported(failure_kind(&message), message))
    }

    /// The pid a `create` or `exec` wrote.
    fn read_pid(&self) -> Result<i32, ExecutorError> {
        let text = std::fs::read_to_string(self.bundle.join(PID_FILE))
            .map_err(ExecutorError::sys("reading the OCI runtime's pid file"))?;
        text.trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ExecutorError::Child(format!("bad pid file: {:?}", text.trim())))
    }

    fn clear_pid(&self) {
        let _ = std::fs::remove_file(self.bundle.join(PID_FILE));
    }

    /// Runs `args` with a console socket the runtime sends the terminal's
    /// master to; answers the master.
    fn run_with_console(
        &self,
        args: &[&OsStr],
        timeout: Duration,
    ) -> Result<OwnedFd, ExecutorError> {
        let sock = std::env::current_dir()
            .map_err(ExecutorError::sys("the monitor's directory"))?
            .join(CONSOLE_SOCKET);
        let _ = std::fs::remove_file(&sock);
        let listener =
            UnixListener::bind(&sock).map_err(ExecutorError::sys("binding the console socket"))?;
        let mut full: Vec<&OsStr> = Vec::with_capacity(args.len() + 2);
        full.push(OsStr::new(args[0]));
        full.push(OsStr::new("--console-socket"));
        full.push(sock.as_os_str());
        full.extend_from_slice(&args[1..]);
        let ran = self.run(&full, None, timeout);
        let _ = std::fs::remove_file(&sock);
        ran?;
        // The runtime connected and sent the master before it exited.
        listener
            .set_nonblocking(true)
            .map_err(ExecutorError::sys("console socket"))?;
        let (conn, _) = listener
            .accept()
            .map_err(ExecutorError::sys("the OCI runtime sent no terminal"))?;
        let mut buf = [0u8; 4096];
        let (_, mut fds) = sys::recv_with_fds(&conn, &mut buf)
            .map_err(ExecutorError::sys("receiving the terminal"))?;
        fds.pop()
            .ok_or_else(|| ExecutorError::Child("the OCI runtime sent no terminal".into()))
    }

    /// Writes `process` as the exec's process spec and answers its path.
    fn exec_process(&self, process: &Process) -> Result<PathBuf, ExecutorError> {
        let path = self.bundle.join(EXEC_PROCESS);
        let json = serde_json::to_vec(process).map_err(|e| ExecutorError::Spec(e.to_string()))?;
        std::fs::write(&path, json).map_err(ExecutorError::sys("writing the exec's process"))?;
        Ok(path)
    }
}

impl Executor for Oci {
    fn create(
        &self,
        spec: &Spec,
        stdio: Stdio,
        _opts: &CreateOptions,
    ) -> Result<Created, ExecutorError> {
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        std::fs::create_dir_all(&self.root)
            .map_err(ExecutorError::sys("the OCI runtime's root"))?;
        self.clear_pid();
        let bundle = self.bundle.as_os_str();
        let pid_file = self.bundle.join(PID_FILE);
        let args: [&OsStr; 6] = [
            "create".as_ref(),
            "--bundle".as_ref(),
            bundle,
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            self.id.as_ref(),
        ];
        let made = if terminal {
            drop(stdio);
            self.run_with_console(&args, CREATE_TIMEOUT).map(Some)
        } else {
            self.run(args, Some(stdio), CREATE_TIMEOUT).map(|()| None)
        };
        let console = match made {
            Ok(console) => console,
            Err(e) => {
                // Whatever the runtime left of the container goes.
                let _ = self.remove();
                return Err(e);
            }
        };
        let pid = match self.read_pid() {
            Ok(pid) => pid,
            Err(e) => {
                let _ = self.remove();
                return Err(e);
            }
        };
        Ok(Created {
            pid,
            chan: None,
            console,
            warnings: Vec::new(),
        })
    }

    fn start(&self, _created: Created) -> Result<(), ExecutorError> {
        self.run(["start", self.id.as_str()], None, CALL_TIMEOUT)
    }

    fn exec(
        &self,
        _pid: i32,
        _spec: &Spec,
        process: &Process,
        stdio: Stdio,
        _opts: &CreateOptions,
    ) -> Result<i32, ExecutorError> {
        let path = self.exec_process(process)?;
        let pid_file = self.bundle.join(PID_FILE);
        self.clear_pid();
        let args: [&OsStr; 7] = [
            "exec".as_ref(),
            "--detach".as_ref(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            "--process".as_ref(),
            path.as_os_str(),
            self.id.as_ref(),
        ];
        self.run(args, Some(stdio), CALL_TIMEOUT)?;
        self.read_pid()
    }

    fn exec_tty(
        &self,
        _pid: i32,
        _spec: &Spec,
        process: &Process,
        _opts: &CreateOptions,
    ) -> Result<(i32, OwnedFd), ExecutorError> {
        let path = self.exec_process(process)?;
        let pid_file = self.bundle.join(PID_FILE);
        self.clear_pid();
        let args: [&OsStr; 8] = [
            "exec".as_ref(),
            "--detach".as_ref(),
            "--tty".as_ref(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            "--process".as_ref(),
            path.as_os_str(),
            self.id.as_ref(),
        ];
        let master = self.run_with_console(&args, CALL_TIMEOUT)?;
        Ok((self.read_pid()?, master))
    }

    fn makes_terminal(&self) -> bool {
        true
    }

    fn remove(&self) -> Result<(), ExecutorError> {
        self.run(["delete", "--force", self.id.as_str()], None, CALL_TIMEOUT)
    }
}

/// The last error the runtime logged past byte `from` of `log`.
fn last_error(log: &Path, from: u64) -> Option<String> {
    let mut f = File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    f.take(1 << 20).read_to_string(&mut text).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next_back()
}

/// Who must act on a runtime's error, from its words (runc's).
fn failure_kind(message: &str) -> FailureKind {
    let m = message.to_ascii_lowercase();
    if m.contains("executable file not found")
        || m.contains("exec format error")
        || (m.contains("exec:") && (m.contains("no such file") || m.contains("permission denied")))
    {
        FailureKind::ExecFailed
    } else if m.contains("not a directory") || m.contains("chdir to cwd") {
        FailureKind::InvalidArgument
    } else {
        FailureKind::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_logged_error_of_this_call_is_the_message() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"an older call\"}\n").unwrap();
        let from = std::fs::metadata(&log).unwrap().len();
        let mut more = std::fs::read_to_string(&log).unwrap();
        more.push_str("{\"level\":\"warning\",\"msg\":\"noise\"}\nnot json\n");
        more.push_str("{\"level\":\"error\",\"msg\":\"runc create failed: exec: \\\"nope\\\": executable file not found in $PATH\"}\n");
        std::fs::write(&log, more).unwrap();
        let msg = last_error(&log, from).unwrap();
        assert!(msg.contains("executable file not found"), "{msg}");
        assert_eq!(failure_kind(&msg), FailureKind::ExecFailed);
        assert_eq!(
            last_error(&log, std::fs::metadata(&log).unwrap().len()),
            None
        );
        assert_eq!(failure_kind("cgroup: no space"), FailureKind::Internal);
    }

    /// An Oci whose "runtime" is the shell script `body`.
    fn scripted(dir: &Path, body: &str) -> Oci {
        use std::os::unix::fs::PermissionsExt;
        let binary = dir.join("runtime");
        std::fs::write(&binary, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        Oci {
            binary,
            root: dir.join("root"),
            id: "c1".into(),
            bundle: dir.to_path_buf(),
        }
    }

    #[test]
    fn a_hung_runtime_is_killed_at_its_deadline_and_a_failing_one_answers_its_logged_error() {
        let tmp = tempfile::tempdir().unwrap();
        let hung = scripted(tmp.path(), "exec sleep 30");
        let t = Instant::now();
        let err = hung
            .run(["start", "c1"], None, Duration::from_millis(300))
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(err.to_string().contains("did not finish"), "{err}");
        // A failing runtime: the error it logged (to its --log, the 4th
        // argument), with the kind its words give.
        let failing = scripted(
            tmp.path(),
            "echo '{\"level\":\"error\",\"msg\":\"exec: \\\"x\\\": executable file not found in $PATH\"}' >> \"$4\"; exit 1",
        );
        let err = failing.start(Created {
            pid: 1,
            chan: None,
            console: None,
            warnings: Vec::new(),
        });
        let err = err.unwrap_err();
        assert_eq!(err.kind(), FailureKind::ExecFailed, "{err}");
        assert!(
            err.to_string().contains("executable file not found"),
            "{err}"
        );
    }
}
