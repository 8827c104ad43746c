//! Retiring a monitor (RemovePodSandbox): when [`Client::retire`] returns,
//! the monitor's process has exited, whether it shut down when asked, hung,
//! or answered the Shutdown and stayed.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::Harness;
use crate::executor::sys;
use crate::monitor::client::{Client, RETIRE_GRACE};
use crate::monitor::proto::{Response, request::Op};
use crate::monitor::{PID_FILE, SOCKET, frame};

/// How the test's child `pid` ended, if it has; never waits.
fn ended(pid: Pid) -> Option<WaitStatus> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap() {
        WaitStatus::StillAlive => None,
        st => Some(st),
    }
}

/// Writes the pid file a real monitor writes at start, once `h`'s monitor
/// answers (so it runs in its directory, as a real one from the start).
async fn pid_file_of(h: &Harness) {
    h.client.call(Op::Ping(Default::default())).await.unwrap();
    pid_file(h.dir.path(), h.monitor);
}

/// Writes the pid file a real monitor writes at start.
fn pid_file(dir: &std::path::Path, pid: Pid) {
    std::fs::write(dir.join(PID_FILE), pid.to_string()).unwrap();
}

#[tokio::test]
async fn a_shut_down_monitor_has_exited_when_retire_returns() {
    let mut h = Harness::start();
    pid_file_of(&h).await;
    let dir = h.dir.path().to_path_buf();
    Client::new(&dir).retire().await;
    let st = ended(h.monitor);
    h.reaped = st.is_some();
    assert!(matches!(st, Some(WaitStatus::Exited(_, 0))), "{st:?}");
    assert!(!dir.exists(), "its directory stays");
}

#[tokio::test]
async fn a_stopped_monitor_is_killed_and_has_died_when_retire_returns() {
    let mut h = Harness::start();
    pid_file_of(&h).await;
    nix::sys::signal::kill(h.monitor, Signal::SIGSTOP).unwrap();
    Client::new(h.dir.path()).retire().await;
    let st = ended(h.monitor);
    h.reaped = st.is_some();
    assert!(
        matches!(st, Some(WaitStatus::Signaled(_, Signal::SIGKILL, _))),
        "{st:?}"
    );
}

#[tokio::test]
async fn a_monitor_still_there_after_its_shutdown_answer_is_killed() {
    let dir = tempfile::Builder::new()
        .prefix("crius-mon")
        .tempdir()
        .unwrap();
    let listener = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
    // A monitor that answers the Shutdown and then stays.
    #[allow(unsafe_code)]
    // SAFETY: as in `Harness::start`: the child is single-threaded from
    // here, takes no lock a test thread could hold and leaves through
    // _exit, never back into the test harness.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let _ = sys::close_fds_except(&[0, 1, 2, listener.as_raw_fd()]);
            let _ = nix::unistd::chdir(dir.path());
            if let Ok((mut conn, _)) = listener.accept() {
                let mut len = [0u8; 4];
                let _ = conn.read_exact(&mut len);
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                let _ = conn.read_exact(&mut body);
                let _ = conn.write_all(&frame(&Response::default()));
            }
            std::thread::sleep(Duration::from_secs(60));
            sys::exit(0)
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(listener);
    // Started as a real one is: in its directory.
    assert!(super::eventually(|| std::fs::read_link(format!(
        "/proc/{child}/cwd"
    ))
    .is_ok_and(|d| d == dir.path())));
    pid_file(dir.path(), child);
    let t = Instant::now();
    Client::new(dir.path()).retire().await;
    let took = t.elapsed();
    let st = ended(child);
    if st.is_none() {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
    }
    assert!(
        matches!(st, Some(WaitStatus::Signaled(_, Signal::SIGKILL, _))),
        "retire returned after {took:?} with the monitor {st:?}"
    );
    assert!(took >= RETIRE_GRACE, "killed after {took:?}");
}
