//! What a streaming client cannot make the daemon hold: connections that
//! never finish a request, more connections than `max_connections`, and
//! sessions nobody uses.

mod common;

use std::time::{Duration, Instant};

use common::stream::*;
use common::*;
use rustix::process::{Resource, Rlimit, getrlimit, prlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long until the server closes `s` (EOF or reset), or `None` if it
/// is still open after `limit`. Data the server sends first is skipped.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn unfinished_requests_are_closed_after_the_header_timeout() {
    let d = Daemon::builder()
        .config("[streaming]\nheader_read_timeout = 2")
        .start();
    let addr = streaming_addr(&d);
    let fds_before = open_fds(&d);
    let mut clients = Vec::new();
    for i in 0..51 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        match i % 3 {
            // Silent.
            0 => {}
            // Half a request head, never finished.
            1 => s
                .write_all(b"GET /exec/abc HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap(),
            // One whole request (answered), then kept alive with nothing.
            _ => {
                s.write_all(b"GET /exec/abc HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("HTTP/1.1 404"), "{head}");
            }
        }
        clients.push(s);
    }
    let connected = Instant::now();
    wait_for(
        "the server to hold all 51",
        Duration::from_millis(1500),
        || {
            let held = held_connections(&d);
            async move { (held == 51).then_some(()) }
        },
    )
    .await;
    assert!(open_fds(&d) >= fds_before + 51);

    let waiting = connected.elapsed();
    let closed = futures::future::join_all(
        clients
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(8))),
    )
    .await;
    for (i, c) in closed.iter().enumerate() {
        let after = c.unwrap_or_else(|| panic!("connection {i} still open after 8 s"));
        let at = waiting + after;
        assert!(
            at > Duration::from_secs(1) && at < Duration::from_secs(6),
            "connection {i} closed {at:?} after connecting, timeout 2 s"
        );
    }
    wait_for("the daemon to let go", Duration::from_secs(3), || {
        let (held, fds) = (held_connections(&d), open_fds(&d));
        async move { (held == 0 && fds <= fds_before + 2).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let d = daemon_with("[streaming]\nmax_connections = 4\nheader_read_timeout = 30");
    let (mut rt, id) = running_container(&d).await;
    let addr = streaming_addr(&d);
    let mut clients = Vec::new();
    // A connection over the limit is accepted and closed at once: a sample
    // may catch it in between, so only connections seen in two samples
    // 20 ms apart count as held.
    let mut peak = 0;
    let mut before = held_connection_inodes(&d);
    let sample = |before: &mut std::collections::HashSet<String>| {
        let now = held_connection_inodes(&d);
        let held = now.intersection(before).count();
        *before = now;
        held
    };
    for _ in 0..16 {
        clients.push(TcpStream::connect(&addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(sample(&mut before));
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(sample(&mut before));
    }
    assert_eq!(peak, 4, "the daemon held {peak} connections, limit 4");

    let closed = futures::future::join_all(
        clients
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(2))),
    )
    .await;
    let fast = closed.iter().filter(|c| c.is_some()).count();
    assert_eq!(fast, 12, "closed at once: {closed:?}");
    let warned = d.logs().matches("connection limit reached").count();
    assert_eq!(
        warned, 1,
        "one warning while refusing, not one per connection"
    );

    drop(clients);
    wait_for("the slots to free", Duration::from_secs(5), || {
        let held = held_connections(&d);
        async move { (held == 0).then_some(()) }
    })
    .await;
    let url = exec_url(&mut rt, &id, &["/bin/sh", "-c", "echo after"], false).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    let (out, _, status) = collect(&mut ws, false).await;
    assert_eq!(out, "after\n");
    assert!(status.contains("Success"), "{status}");

    // An upgraded session keeps its place: with one running, 3 more fit.
    drop(ws);
    let held_only = |n: usize| {
        let held = held_connections(&d);
        async move { (held == n).then_some(()) }
    };
    wait_for("the exec to end", Duration::from_secs(5), || held_only(0)).await;
    let url = exec_url(&mut rt, &id, &["/bin/cat"], true).await;
    let (session, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    wait_for("the session", Duration::from_secs(5), || held_only(1)).await;
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(TcpStream::connect(&addr).await.unwrap());
    }
    let closed = futures::future::join_all(
        more.iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(2))),
    )
    .await;
    let fast = closed.iter().filter(|c| c.is_some()).count();
    assert_eq!(fast, 1, "a live session holds a slot: {closed:?}");
    drop(session);
}

#[tokio::test]
async fn a_tls_handshake_must_finish_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let d = Daemon::builder()
        .config(&format!(
            "[streaming]\nheader_read_timeout = 1\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ))
        .start();
    let addr = streaming_addr(&d);
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    // A handshake record header announcing 80 bytes that never come.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x50])
        .await
        .unwrap();
    for (what, s) in [("silent", &mut silent), ("partial", &mut partial)] {
        let after = closed_within(s, Duration::from_secs(6)).await;
        assert!(
            after.is_some_and(|a| a < Duration::from_secs(4)),
            "{what} handshake: {after:?}"
        );
    }
}

/// The lowest descriptor number `pid` has free: with its soft
/// RLIMIT_NOFILE there, it can open nothing.
fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// Sets `pid`'s soft RLIMIT_NOFILE, returning the old limits. The daemon
/// inherits its hard limit from this process and never changes it, so that
/// hard limit is kept.
fn set_nofile(pid: u32, soft: u64) -> Rlimit {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a daemon pid");
    let new = Rlimit {
        current: Some(soft),
        maximum: getrlimit(Resource::Nofile).maximum,
    };
    prlimit(Some(pid), Resource::Nofile, new).expect("lower RLIMIT_NOFILE")
}

/// Puts back limits [`set_nofile`] returned.
fn restore_nofile(pid: u32, old: Rlimit) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a daemon pid");
    prlimit(Some(pid), Resource::Nofile, old).expect("restore RLIMIT_NOFILE");
}

#[tokio::test]
async fn accept_failures_back_off_instead_of_spinning() {
    let d = Daemon::builder()
        .config("[streaming]\nheader_read_timeout = 30")
        .start();
    let addr = streaming_addr(&d);
    let old = set_nofile(d.pid(), lowest_free_fd(d.pid()));
    // Queued by the kernel; the daemon cannot accept them (EMFILE).
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(TcpStream::connect(&addr).await.unwrap());
    }
    let failures = || {
        d.logs()
            .lines()
            .filter(|l| l.contains("accept") && l.contains("Too many open files"))
            .count()
    };
    // A loaded machine may take a while to run the first accept; from the
    // first failure on, a window of 2.5 s is counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while failures() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = failures();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let in_window = failures() - first;
    restore_nofile(d.pid(), old);
    assert!(first > 0, "no accept failure logged within 10 s");
    assert!(
        (1..=15).contains(&in_window),
        "{in_window} accept failures logged in 2.5 s: a backoff doubling from 5 ms \
         to a 1 s cap gives at most ~10 and at least 2, a spinning loop thousands"
    );

    // With descriptors again, the queued connections are served.
    let s = &mut waiting[0];
    s.write_all(b"GET /exec/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("served within the 1 s backoff cap")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
    assert!(d.logs().contains("streaming server accepting again"));
}

/// Whether `ps` in the container lists `needle`.
async fn running_in(rt: &mut Runtime, id: &str, needle: &str) -> bool {
    let r = rt
        .exec_sync(k8s_cri::v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "ps -o args".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&r.stdout).contains(needle)
}

/// Reads until stdout (channel 1) has carried `needle`; false if the
/// session ends or `limit` passes first.
async fn echoed(ws: &mut Ws, needle: &str, limit: Duration) -> bool {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        match m {
            Message::Binary(b) if b.first() == Some(&1) => out.extend_from_slice(&b[1..]),
            Message::Close(_) => return false,
            _ => {}
        }
        if String::from_utf8_lossy(&out).contains(needle) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn idle_websocket_sessions_are_closed_busy_ones_are_not() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let d = daemon_with("[streaming]\nidle_timeout = 2");
    let (mut rt, id) = running_container(&d).await;
    let quiet_url = exec_url(&mut rt, &id, &["/bin/sh", "-c", "sleep 4242"], false).await;
    let busy_url = exec_url(&mut rt, &id, &["/bin/cat"], true).await;
    let (mut quiet, _) = connect(&quiet_url, "v5.channel.k8s.io").await.unwrap();
    let (mut busy, _) = connect(&busy_url, "v5.channel.k8s.io").await.unwrap();
    let t0 = Instant::now();
    let quiet_side = async {
        let (_, _, status) = collect(&mut quiet, false).await;
        (t0.elapsed(), status)
    };
    let busy_side = async {
        // A line every 500 ms for 5 s (2.5 timeouts), each echoed back.
        for i in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let line = format!("tick {i}\n");
            busy.send(Message::Binary(
                [&[0u8][..], line.as_bytes()].concat().into(),
            ))
            .await
            .unwrap_or_else(|e| panic!("busy session closed at {:?}: {e}", t0.elapsed()));
            assert!(
                echoed(&mut busy, &line, Duration::from_secs(2)).await,
                "busy session ended at {:?}",
                t0.elapsed()
            );
        }
        let busy_for = t0.elapsed();
        let silent = Instant::now();
        let (_, _, status) = collect(&mut busy, false).await;
        (busy_for, silent.elapsed(), status)
    };
    let ((quiet_after, quiet_status), (busy_for, busy_silent, busy_status)) =
        tokio::join!(quiet_side, busy_side);
    let near_timeout = |t: Duration| t > Duration::from_millis(1500) && t < Duration::from_secs(6);
    assert!(
        near_timeout(quiet_after),
        "quiet session closed after {quiet_after:?}"
    );
    assert!(quiet_status.contains("idle timeout"), "{quiet_status}");
    assert!(busy_for > Duration::from_secs(5));
    assert!(
        near_timeout(busy_silent),
        "busy session, then silent: {busy_silent:?}"
    );
    assert!(busy_status.contains("idle timeout"), "{busy_status}");
    // Closing the session ended its process, as a client hang-up does.
    wait_for("the idle exec to be killed", Duration::from_secs(5), || {
        let (mut rt, id) = (rt.clone(), id.clone());
        async move { (!running_in(&mut rt, &id, "sleep 4242").await).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn idle_spdy_sessions_get_goaway_and_are_closed() {
    use crius::streaming::spdy::Frame;
    let d = daemon_with("[streaming]\nidle_timeout = 2");
    let (mut rt, id) = running_container(&d).await;
    let url = exec_url(&mut rt, &id, &["/bin/sh", "-c", "sleep 4343"], false).await;
    let (mut c, _) = spdy_client::connect(&url, &["v4.channel.k8s.io"]).await;
    c.open(1, "error").await;
    c.open(3, "stdout").await;
    c.open(5, "stderr").await;
    let t0 = Instant::now();
    let mut goaway = None;
    loop {
        let f = tokio::time::timeout(Duration::from_secs(8), c.next())
            .await
            .unwrap_or_else(|_| panic!("session still open after {:?}", t0.elapsed()));
        match f {
            Some(Frame::GoAway { .. }) => goaway = Some(t0.elapsed()),
            Some(_) => {}
            None => break,
        }
    }
    let at = goaway.expect("GOAWAY before the connection closed");
    assert!(
        at > Duration::from_millis(1500) && at < Duration::from_secs(6),
        "GOAWAY after {at:?}, timeout 2 s"
    );
    wait_for("the idle exec to be killed", Duration::from_secs(5), || {
        let (mut rt, id) = (rt.clone(), id.clone());
        async move { (!running_in(&mut rt, &id, "sleep 4343").await).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn idle_spdy_in_websocket_tunnels_are_closed() {
    use crius::streaming::spdy::{Decoder, Frame};
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let d = daemon_with("[streaming]\nidle_timeout = 2");
    let (mut rt, _) = running_container(&d).await;
    let pod = rt
        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items[0]
        .id
        .clone();
    let url = rt
        .port_forward(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: pod,
            port: vec![7777],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    // crictl --transport websocket: SPDY frames inside binary messages.
    let (mut ws, proto) = connect(&url, "SPDY/3.1+portforward.k8s.io").await.unwrap();
    assert_eq!(proto, "SPDY/3.1+portforward.k8s.io");
    let t0 = Instant::now();
    let (mut dec, mut buf) = (Decoder::new(), bytes::BytesMut::new());
    let mut goaway = None;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(8), ws.next())
            .await
            .unwrap_or_else(|_| panic!("tunnel still open after {:?}", t0.elapsed()));
        match m {
            Some(Ok(Message::Binary(b))) => {
                buf.extend_from_slice(&b);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    if matches!(f, Frame::GoAway { .. }) {
                        goaway = Some(t0.elapsed());
                    }
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    let at = goaway.expect("GOAWAY through the tunnel before it closed");
    assert!(
        at > Duration::from_millis(1500) && at < Duration::from_secs(6),
        "GOAWAY after {at:?}, timeout 2 s"
    );
}

#[tokio::test]
async fn idle_websocket_port_forwards_are_closed() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let d = daemon_with("[streaming]\nidle_timeout = 2");
    let (mut rt, _) = running_container(&d).await;
    let pod = rt
        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items[0]
        .id
        .clone();
    // The pod shares the host's network: a listener here is its localhost.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = rt
        .port_forward(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: pod,
            port: vec![i32::from(port)],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = connect(&url, "v4.channel.k8s.io").await.unwrap();
    let (_held, _) = listener.accept().await.unwrap();
    let t0 = Instant::now();
    let close = loop {
        let m = tokio::time::timeout(Duration::from_secs(8), ws.next())
            .await
            .unwrap_or_else(|_| panic!("port-forward still open after {:?}", t0.elapsed()));
        match m {
            Some(Ok(Message::Close(c))) => break c,
            Some(Ok(_)) => {}
            other => panic!("ended without Close: {other:?}"),
        }
    };
    let at = t0.elapsed();
    assert!(
        at > Duration::from_millis(1500) && at < Duration::from_secs(6),
        "closed after {at:?}, timeout 2 s"
    );
    assert_eq!(
        close.map(|c| c.reason.to_string()).as_deref(),
        Some("idle timeout")
    );
}
