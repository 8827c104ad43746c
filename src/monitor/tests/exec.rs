//! Processes beside a container's own: ExecSync capture and timeouts,
//! interactive execs on the daemon's descriptors, attach.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{Harness, Spec, code, gone};
use crate::monitor::EXEC_OUTPUT_CAP;
use crate::monitor::client::MonitorError;
use crate::monitor::proto::Code;

fn pipe() -> (std::io::PipeReader, OwnedFd) {
    let (r, w) = std::io::pipe().unwrap();
    (r, w.into())
}

/// A monitor with a running container `c` to exec in.
async fn with_running_container() -> Harness {
    let h = Harness::start();
    h.run("c", &Spec::sh("exec sleep 30")).await;
    h
}

/// Descriptors for an ExecStream: the process's `[stdin, stdout, stderr]`,
/// and our ends (stdin's writer, stdout's and stderr's readers).
struct StreamStdio {
    theirs: [OwnedFd; 3],
    _stdin: std::io::PipeWriter,
    stdout: std::io::PipeReader,
    _stderr: std::io::PipeReader,
}

fn stream_stdio() -> StreamStdio {
    let (stdin_r, stdin_w) = std::io::pipe().unwrap();
    let (stdout, out_w) = pipe();
    let (stderr, err_w) = pipe();
    StreamStdio {
        theirs: [stdin_r.into(), out_w, err_w],
        _stdin: stdin_w,
        stdout,
        _stderr: stderr,
    }
}

fn sh(script: &str) -> Vec<String> {
    ["/bin/sh", "-c", script].map(String::from).to_vec()
}

#[tokio::test]
async fn exec_sync_answers_with_each_stream_and_the_exit_code() {
    let h = with_running_container().await;
    let r = h
        .exec_sync("c", "echo out; echo err >&2; exit 4", 0)
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.timed_out), (4, false));
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
}

#[tokio::test]
async fn exec_sync_is_killed_at_its_timeout_and_keeps_its_output() {
    let h = with_running_container().await;
    let t = Instant::now();
    let r = h
        .exec_sync("c", "echo before; exec sleep 30", 300)
        .await
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 137);
    assert_eq!(r.stdout, b"before\n");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn exec_sync_output_is_capped_and_the_process_is_not_held_up() {
    let h = with_running_container().await;
    let r = h
        .exec_sync("c", "head -c 17000000 /dev/zero; exit 0", 20_000)
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.timed_out), (0, false));
    assert_eq!(r.stdout.len(), EXEC_OUTPUT_CAP);
}

#[tokio::test]
async fn the_loop_serves_other_requests_while_an_exec_runs() {
    let h = with_running_container().await;
    let t = Instant::now();
    let (slow, quick) = tokio::join!(h.exec_sync("c", "sleep 1; echo slow", 0), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = h.exec_sync("c", "echo quick", 0).await;
        (r, t.elapsed())
    });
    let (quick, quick_at) = quick;
    assert_eq!(quick.unwrap().stdout, b"quick\n");
    assert!(quick_at < Duration::from_millis(900), "{quick_at:?}");
    assert_eq!(slow.unwrap().stdout, b"slow\n");
}

#[tokio::test]
async fn exec_stream_answers_with_the_exit_code() {
    let h = with_running_container().await;
    let mut io = stream_stdio();
    let (master, waiter) = h
        .client
        .start_stream("c", sh("echo streamed; exit 5"), false, Some(io.theirs))
        .unwrap();
    assert!(master.is_none());
    let (_keep, cancel) = tokio::sync::oneshot::channel();
    assert_eq!(waiter.wait(cancel).await.unwrap(), 5);
    let mut got = String::new();
    io.stdout.read_to_string(&mut got).unwrap();
    assert_eq!(got, "streamed\n");
}

#[tokio::test]
async fn a_daemon_hang_up_kills_the_exec() {
    let h = with_running_container().await;
    let io = stream_stdio();
    let (_, waiter) = h
        .client
        .start_stream("c", sh("echo $$; exec sleep 30"), false, Some(io.theirs))
        .unwrap();
    let mut line = String::new();
    BufReader::new(io.stdout).read_line(&mut line).unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    let (hang_up, cancel) = tokio::sync::oneshot::channel::<()>();
    drop(hang_up);
    assert!(matches!(
        waiter.wait(cancel).await,
        Err(MonitorError::Cancelled(_))
    ));
    assert!(gone(pid), "the exec outlived its client");
}

#[tokio::test]
async fn a_tty_exec_hands_back_the_terminal() {
    let h = with_running_container().await;
    let cmd = ["/bin/sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"].map(String::from);
    let (master, waiter) = h
        .client
        .start_stream("c", cmd.to_vec(), true, None)
        .unwrap();
    let mut master = std::fs::File::from(master.expect("a pty master"));
    let (_keep, cancel) = tokio::sync::oneshot::channel();
    assert_eq!(waiter.wait(cancel).await.unwrap(), 0);
    // Everything the process wrote; EIO once its side is closed.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), "on-a-tty\r\n");
}

#[tokio::test]
async fn attach_gets_the_output_and_with_stdin_once_the_only_stdin() {
    let h = Harness::start();
    let spec = Spec {
        stdin: true,
        stdin_once: true,
        ..Spec::sh("while read l; do echo got $l; done; echo bye")
    };
    h.run("c", &spec).await;
    let (out, out_w) = pipe();
    let (_err, err_w) = pipe();
    let stdin = h.client.attach("c", [out_w, err_w]).unwrap();
    let mut stdin = std::fs::File::from(stdin.expect("the container's stdin"));
    stdin.write_all(b"hi\n").unwrap();
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got hi\n");
    // Ours was the only copy: closing it is the process's EOF.
    drop(stdin);
    assert_eq!(h.exited("c").await.exit_code, 0);
    // And the attacher sees the rest, then EOF with the exit.
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "bye\n");
    let log = std::fs::read_to_string(h.log("c")).unwrap();
    assert!(log.contains("stdout F got hi\n"), "{log}");
    // Attach needs a running container and two descriptors.
    let (_, w) = pipe();
    assert_eq!(
        code(h.client.attach("c", [w.try_clone().unwrap(), w])),
        Code::FailedPrecondition
    );
}
