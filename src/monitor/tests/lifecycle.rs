//! Containers from create to forget: the records the daemon reads, exit
//! codes, waits, kills, events, logs and the failure codes it maps.

use std::time::{Duration, Instant};

use super::{Harness, Spec, code, eventually, gone};
use crate::monitor::proto::{self, Code, request::Op};
use crate::monitor::{ExitRecord, files};

#[tokio::test]
async fn create_waits_for_start_then_the_exit_is_recorded() {
    let h = Harness::start();
    let ran = h.path("ran");
    let spec = Spec::sh(&format!(
        "echo out; echo err >&2; : > {}; exit 3",
        ran.display()
    ));
    let pid = h.create("c1", &spec).await.unwrap().pid;
    assert!(pid > 0);
    let pid_file = std::fs::read_to_string(h.bundle("c1").join(files::PID)).unwrap();
    assert_eq!(pid_file, pid.to_string());
    // Created: set up, but its program has not run.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!ran.exists(), "the process ran before start");
    let w = h.wait("c1", 0).await.unwrap();
    assert!(!w.exited);

    let started = h.start_container("c1").await.unwrap();
    assert_eq!(started.pid, pid);
    let stamp = std::fs::read_to_string(h.bundle("c1").join(files::STARTED)).unwrap();
    assert_eq!(stamp, started.started_at.to_string());

    let w = h.exited("c1").await;
    assert_eq!(w.exit_code, 3);
    assert!(ran.exists());
    assert!(w.finished_at >= started.started_at);
    assert!(!w.oom_killed);
    // The record on disk says the same, and the process is reaped.
    let rec = h.exit_record("c1").unwrap();
    assert_eq!(
        rec,
        ExitRecord {
            exit_code: 3,
            finished_at: w.finished_at,
            oom_killed: false,
            monitor_died: false,
        }
    );
    assert!(gone(pid));
    // Its output went to the CRI log, one full record per line.
    let log = std::fs::read_to_string(h.log("c1")).unwrap();
    assert!(log.contains(" stdout F out\n"), "{log}");
    assert!(log.contains(" stderr F err\n"), "{log}");
}

#[tokio::test]
async fn a_signal_death_is_128_plus_the_signal_real_time_ones_too() {
    let h = Harness::start();
    h.run("term", &Spec::sh("exec sleep 30")).await;
    // A signal the kernel does not know is the request's fault.
    assert_eq!(
        code(h.kill("term", 1000, false).await),
        Code::InvalidArgument
    );
    h.kill("term", libc::SIGTERM, false).await.unwrap();
    assert_eq!(h.exited("term").await.exit_code, 128 + libc::SIGTERM);
    // SIGRTMIN+3, systemd's stop signal: neither nix's Signal nor its wait
    // status decoding can name it.
    let rt = libc::SIGRTMIN() + 3;
    h.run("rt", &Spec::sh("exec sleep 30")).await;
    h.kill("rt", rt, false).await.unwrap();
    assert_eq!(h.exited("rt").await.exit_code, 128 + rt);
    assert_eq!(h.exit_record("rt").unwrap().exit_code, 128 + rt);
}

#[tokio::test]
async fn wait_times_out_unexited_and_a_parked_wait_is_answered_at_the_exit() {
    let h = Harness::start();
    h.run("c", &Spec::sh("exec sleep 30")).await;
    let t = Instant::now();
    let w = h.wait("c", 300).await.unwrap();
    assert!(!w.exited);
    assert!(t.elapsed() >= Duration::from_millis(300));

    let t = Instant::now();
    let (parked, killed) = tokio::join!(h.wait("c", 20_000), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.kill("c", libc::SIGKILL, false).await
    });
    killed.unwrap();
    let parked = parked.unwrap();
    assert!(parked.exited);
    assert_eq!(parked.exit_code, 137);
    assert!(t.elapsed() < Duration::from_secs(10));
    // A wait after the exit answers at once from the record.
    let again = h.wait("c", 20_000).await.unwrap();
    assert_eq!(
        (again.exited, again.finished_at),
        (true, parked.finished_at)
    );
}

#[tokio::test]
async fn subscribers_get_earlier_exits_first_then_each_new_one() {
    let h = Harness::start();
    h.run("early", &Spec::sh("exit 1")).await;
    h.exited("early").await;
    h.run("live", &Spec::sh("exec sleep 30")).await;
    let mut events = h.client.subscribe().await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.exit_code), ("early", 1));
    // Nobody subscribed when it exited: the first to hear is told so.
    assert!(first.unseen);
    h.kill("live", libc::SIGKILL, false).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (next.id.as_str(), next.exit_code, next.unseen),
        ("live", 137, false)
    );
    let rec = h.exit_record("live").unwrap();
    assert_eq!(next.finished_at, rec.finished_at);
    // A later subscriber (a restarted daemon) gets both, neither unseen.
    let mut again = h.client.subscribe().await.unwrap();
    for _ in 0..2 {
        let ev = again.next().await.unwrap().unwrap();
        assert!(!ev.unseen, "{ev:?}");
    }
}

#[tokio::test]
async fn kill_all_signals_every_process_listed_in_the_cgroup() {
    let h = Harness::start();
    let cg = h.path("cg");
    std::fs::create_dir(&cg).unwrap();
    let bg_file = h.path("bg");
    let spec = Spec {
        cgroup_dirs: vec![cg.clone()],
        ..Spec::sh(&format!(
            "sleep 30 & echo $! > {}.tmp; mv {0}.tmp {0}; exec sleep 30",
            bg_file.display()
        ))
    };
    let pid = h.run("c", &spec).await;
    assert!(eventually(|| bg_file.exists()));
    let bg: i32 = std::fs::read_to_string(&bg_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::write(cg.join("cgroup.procs"), format!("{pid}\n{bg}\n")).unwrap();
    h.kill("c", libc::SIGKILL, true).await.unwrap();
    assert_eq!(h.exited("c").await.exit_code, 137);
    assert!(gone(bg), "the cgroup's other process survived");
}

#[tokio::test]
async fn oom_kills_in_the_cgroup_count_only_for_failed_exits() {
    let h = Harness::start();
    let cg = h.path("cg");
    std::fs::create_dir(&cg).unwrap();
    std::fs::write(cg.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
    let with_cg = |script: &str| Spec {
        cgroup_dirs: vec![cg.clone()],
        ..Spec::sh(script)
    };
    h.run("killed", &with_cg("kill -9 $$")).await;
    let w = h.exited("killed").await;
    assert_eq!((w.exit_code, w.oom_killed), (137, true));
    assert!(h.exit_record("killed").unwrap().oom_killed);
    h.run("fine", &with_cg("exit 0")).await;
    assert!(!h.exited("fine").await.oom_killed);
}

#[tokio::test]
async fn forget_kills_and_reaps_before_it_answers() {
    let h = Harness::start();
    let pid = h.run("c", &Spec::sh("exec sleep 30")).await;
    h.client
        .call(Op::Forget(proto::ContainerRef { id: "c".into() }))
        .await
        .unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(code(h.wait("c", 0).await), Code::NotFound);
    // The id can be created again.
    h.run("c", &Spec::sh("exit 7")).await;
    assert_eq!(h.exited("c").await.exit_code, 7);
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let h = Harness::start();
    let r = |id: &str| proto::ContainerRef { id: id.into() };
    assert_eq!(code(h.start_container("x").await), Code::NotFound);
    assert_eq!(
        code(h.kill("x", libc::SIGTERM, false).await),
        Code::NotFound
    );
    assert_eq!(code(h.wait("x", 10).await), Code::NotFound);
    assert_eq!(code(h.exec_sync("x", "true", 0).await), Code::NotFound);
    let reopen = h.client.call(Op::ReopenLog(r("x"))).await;
    assert_eq!(code(reopen), Code::NotFound);
    let (a, b) = std::io::pipe().unwrap();
    let attach = h.client.attach("x", [a.into(), b.into()]);
    assert_eq!(code(attach), Code::NotFound);
    // Forgetting what is not there is done.
    h.client.call(Op::Forget(r("x"))).await.unwrap();
}

#[tokio::test]
async fn requests_in_the_wrong_state_are_failed_preconditions() {
    let h = Harness::start();
    h.create("c", &Spec::sh("exec sleep 30")).await.unwrap();
    let again = h.create("c", &Spec::sh("true")).await;
    assert_eq!(code(again), Code::FailedPrecondition);
    // Created, not started: no exec, no attach.
    assert_eq!(
        code(h.exec_sync("c", "true", 0).await),
        Code::FailedPrecondition
    );
    let (a, b) = std::io::pipe().unwrap();
    assert_eq!(
        code(h.client.attach("c", [a.into(), b.into()])),
        Code::FailedPrecondition
    );
    h.start_container("c").await.unwrap();
    assert_eq!(code(h.start_container("c").await), Code::FailedPrecondition);
    h.kill("c", libc::SIGKILL, false).await.unwrap();
    h.exited("c").await;
    // Exited: nothing runs in it any more.
    assert_eq!(
        code(h.exec_sync("c", "true", 0).await),
        Code::FailedPrecondition
    );
    assert_eq!(code(h.start_container("c").await), Code::FailedPrecondition);
    // A kill of an exited container signals nothing and is no error.
    h.kill("c", libc::SIGKILL, false).await.unwrap();
}

#[tokio::test]
async fn executor_failures_keep_their_kind() {
    let h = Harness::start();
    for (kind, want) in [
        ("internal", Code::Internal),
        ("invalid-argument", Code::InvalidArgument),
        ("permission-denied", Code::PermissionDenied),
        ("exec-failed", Code::ExecFailed),
    ] {
        let spec = Spec {
            fail_create: Some(kind),
            ..Spec::sh("true")
        };
        assert_eq!(code(h.create(kind, &spec).await), want, "{kind}");
        // A failed create leaves nothing behind: the id is free.
        assert_eq!(code(h.wait(kind, 0).await), Code::NotFound);
    }
    // A program that cannot run fails the start, as ExecFailed.
    let dir = h.bundle("nothere");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/nonexistent/program"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
        },
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let create = Op::Create(proto::Create {
        id: "nothere".into(),
        dir: dir.display().to_string(),
        ..Default::default()
    });
    h.client.call(create).await.unwrap();
    assert_eq!(code(h.start_container("nothere").await), Code::ExecFailed);
    // A spec that cannot be read is the node's problem.
    let create = Op::Create(proto::Create {
        id: "nospec".into(),
        dir: h.path("absent").display().to_string(),
        ..Default::default()
    });
    assert_eq!(code(h.client.call(create).await), Code::Internal);
}

#[tokio::test]
async fn reopen_log_moves_later_output_to_a_new_file() {
    let h = Harness::start();
    let go = h.path("go");
    let script = format!(
        "echo one; while [ ! -e {} ]; do sleep 0.02; done; echo two; exec sleep 30",
        go.display()
    );
    h.run("c", &Spec::sh(&script)).await;
    let log = h.log("c");
    let has =
        |p: &std::path::Path, s: &str| std::fs::read_to_string(p).is_ok_and(|t| t.contains(s));
    assert!(eventually(|| has(&log, "stdout F one")));
    let rotated = h.path("c.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    h.client
        .call(Op::ReopenLog(proto::ContainerRef { id: "c".into() }))
        .await
        .unwrap();
    std::fs::write(&go, "").unwrap();
    assert!(eventually(|| has(&log, "stdout F two")));
    assert!(!has(&rotated, "two"));
}

#[tokio::test]
async fn shutdown_ends_the_loop_and_the_process() {
    let mut h = Harness::start();
    h.client.call(Op::Ping(Default::default())).await.unwrap();
    let st = h.shutdown().await;
    assert!(
        matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
        "{st:?}"
    );
}
