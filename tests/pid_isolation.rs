//! What a container sees of the processes crius puts into its PID
//! namespace: the pod's PID 1, container inits waiting for start and exec
//! processes being set up. With CAP_SYS_PTRACE, or every capability short
//! of privileged, a container must learn nothing of the host through them
//! (`/proc/<pid>/root`, `cwd`, `exe`, `environ`, `fd`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use common::pod::*;
use common::status_fields;
use k8s_cri::v1::*;

/// A secret only the host has: a file the containers must not reach and
/// an environment value of the daemon they must not read.
struct Marker {
    token: String,
    /// Absolute host path of the file holding `token`.
    path: PathBuf,
}

async fn shared_pid_env(name: &str) -> (Env, Marker) {
    let token = format!(
        "host-secret-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let e = env_with(name, NamespaceMode::Pod, &[("CRIUS_TEST_SECRET", &token)]).await;
    let dir = e.d.paths.base.join("host-marker");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, &token).unwrap();
    (e, Marker { token, path })
}

/// busybox running `sleep`, with `caps` added to the default set.
fn with_caps(e: &Env, name: &str, caps: &[&str]) -> ContainerConfig {
    let mut cfg = e.config(name, "sleep 100000");
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: caps.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

/// `sh -c script` in a container: (stdout, stderr, exit code).
async fn run(e: &mut Env, id: &str, script: &str) -> (String, String, i32) {
    let r = e.exec(id, &["/bin/sh", "-c", script], 30).await;
    (
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
        r.exit_code,
    )
}

/// The lines of `text` between the line `from` and the line `to`.
fn section<'a>(text: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != from)
        .skip(1)
        .take_while(|l| *l != to)
        .collect()
}

/// Opens `/proc/<pid>/exe` read-only from inside the container, then tries
/// to reopen it for writing through `/proc/self/fd` (the CVE-2019-5736
/// route); answers what the shell printed.
fn exe_write_attempt(pid: &str) -> String {
    format!("exec 3</proc/{pid}/exe || exit 9; echo pwned >> /proc/self/fd/3; echo rc=$?")
}

/// The write must fail because the file cannot be written at all (a
/// read-only mount or a sealed memfd), not because something runs it.
fn assert_exe_unwritable(out: &str, err: &str, what: &str) {
    assert!(
        err.contains("Read-only file system") || err.contains("Operation not permitted"),
        "{what}: reopening /proc/<pid>/exe for writing: stdout {out:?} stderr {err:?}"
    );
    assert!(!err.contains("Text file busy"), "{what}: {err}");
    assert!(!out.contains("rc=0"), "{what}: the write succeeded: {out}");
}

#[tokio::test]
async fn pod_init_holds_nothing_of_the_host() {
    let (mut e, marker) = shared_pid_env("podinit").await;
    let m = marker.path.display().to_string();
    let ptrace = e.run_config(with_caps(&e, "ptrace", &["SYS_PTRACE"])).await;
    let allcaps = e.run_config(with_caps(&e, "allcaps", &["ALL"])).await;
    for (what, id) in [("SYS_PTRACE", &ptrace), ("all capabilities", &allcaps)] {
        let script = format!(
            "echo '<root>'; ls -A /proc/1/root/ 2>&1; echo '<cwd>'; ls -A /proc/1/cwd/ 2>&1; \
             echo '<fd>'; ls /proc/1/fd/ 2>&1; echo '<end>'; \
             echo environ=$(wc -c < /proc/1/environ); \
             tr '\\0' ' ' < /proc/1/environ; echo; tr '\\0' ' ' < /proc/1/cmdline; echo; \
             grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/1/status; \
             cat /proc/1/root{m} /proc/1/cwd{m} /proc/1/root/../../..{m} 2>/dev/null; \
             for p in /proc/[0-9]*; do cat $p/root{m} $p/cwd{m} 2>/dev/null; done; true"
        );
        let (out, err, code) = run(&mut e, id, &script).await;
        println!("[{what}] pid 1 as seen from the container:\n{out}{err}");
        assert_eq!(code, 0, "{what}: {err}");
        assert!(
            !out.contains(&marker.token),
            "{what}: the host leaked: {out}"
        );
        // An empty, read-only root and cwd, no descriptors, no environment.
        assert!(section(&out, "<root>", "<cwd>").is_empty(), "{what}: {out}");
        assert!(section(&out, "<cwd>", "<fd>").is_empty(), "{what}: {out}");
        assert!(section(&out, "<fd>", "<end>").is_empty(), "{what}: {out}");
        assert!(out.contains("environ=0\n"), "{what}: {out}");
        let st = status_fields(&out);
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(st[cap], "0000000000000000", "{what}: pod init {cap}");
        }
        assert_eq!(st["NoNewPrivs"], "1", "{what}");
        assert_eq!(st["Seccomp"], "2", "{what}");
        let (out, err, _) = run(&mut e, id, &exe_write_attempt("1")).await;
        assert_exe_unwritable(&out, &err, what);
    }
    // The containers' /proc (a bind of the pod's) has the usual masks.
    let (out, err, _) = run(
        &mut e,
        &ptrace,
        "stat -c %F /proc/keys; echo x > /proc/sys/kernel/domainname; echo rc=$?",
    )
    .await;
    // Masked: /dev/null bound over it.
    assert!(
        out.starts_with("character special file\n") && !out.contains("rc=0"),
        "{out}{err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    // The pod init still does its job: it reaps orphans in the pod.
    let (_, _, code) = run(&mut e, &ptrace, "sh -c 'sleep 0.2 &' ; sleep 0.5; true").await;
    assert_eq!(code, 0);
    let (zombies, _, _) = run(&mut e, &ptrace, "grep -l '^State:.*Z' /proc/[0-9]*/status").await;
    assert!(zombies.trim().is_empty(), "unreaped orphans: {zombies}");
}

#[tokio::test]
async fn a_created_container_exposes_only_its_stdio_and_start_pipe() {
    let (mut e, marker) = shared_pid_env("waiting").await;
    let m = marker.path.display().to_string();
    let sibling = e
        .run_config(with_caps(&e, "sibling", &["SYS_PTRACE"]))
        .await;
    let logger = e
        .run("logger", "while true; do echo tick; sleep 0.1; done")
        .await;
    let waiting = e.create(e.config("waiting", "sleep 100000")).await.unwrap();
    let info =
        e.rt.container_status(ContainerStatusRequest {
            container_id: waiting.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let host_pid = info["pid"].as_u64().expect("pid of the waiting init");
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    let pid = status_fields(&status)["NSpid"]
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let script = format!(
        "echo '<fd>'; ls -l /proc/{pid}/fd/ | grep -- '->'; echo '<end>'; \
         echo environ=$(wc -c < /proc/{pid}/environ); \
         grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/{pid}/status; \
         echo '<root>'; ls -A /proc/{pid}/root/; echo '<rend>'; \
         cat /proc/{pid}/root{m} /proc/{pid}/cwd{m} 2>/dev/null; \
         for f in /proc/{pid}/fd/*; do echo FORGED > $f; done 2>/dev/null; true"
    );
    let (out, err, code) = run(&mut e, &sibling, &script).await;
    println!("waiting init (pid {pid} in the pod) as a sibling sees it:\n{out}{err}");
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&marker.token), "the host leaked: {out}");
    let fds: BTreeMap<u32, String> = section(&out, "<fd>", "<end>")
        .iter()
        .filter_map(|l| {
            let (left, target) = l.split_once(" -> ")?;
            let fd = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.to_string()))
        })
        .collect();
    let extra: Vec<_> = fds.iter().filter(|(fd, _)| **fd > 2).collect();
    assert!(
        fds.keys().take(3).eq([0, 1, 2].iter()) && extra.len() == 1,
        "stdio and one start channel, nothing else: {fds:?}"
    );
    assert!(
        extra[0].1.starts_with("socket:") || extra[0].1.starts_with("pipe:"),
        "{fds:?}"
    );
    for (fd, target) in &fds {
        assert!(
            target.starts_with("pipe:") || target.starts_with("socket:") || target == "/dev/null",
            "fd {fd} of the waiting init is {target}"
        );
    }
    assert!(out.contains("environ=0\n"), "{out}");
    // It already is what the container will be: its capabilities, its root.
    let st = status_fields(&out);
    assert_ne!(st["CapEff"], "000001ffffffffff", "{out}");
    let root = section(&out, "<root>", "<rend>");
    assert!(root.contains(&"bin") && root.contains(&"etc"), "{root:?}");
    assert!(!root.contains(&"host-marker"), "{root:?}");
    let (out, err, _) = run(&mut e, &sibling, &exe_write_attempt(&pid)).await;
    assert_exe_unwritable(&out, &err, "waiting init");
    // Nothing the sibling wrote reached another container's log or a
    // monitor file. (Its own stdout pipe, which any process sharing the
    // PID namespace with CAP_SYS_PTRACE can write to, ends in its own log.)
    let mut forged = Vec::new();
    for dir in [e.logs.clone(), e.d.paths.runroot.join("m")] {
        for f in walk(&dir) {
            if f.ends_with("waiting.log") {
                continue;
            }
            if std::fs::read(&f).is_ok_and(|b| b.windows(6).any(|w| w == b"FORGED")) {
                forged.push(f);
            }
        }
    }
    assert!(
        forged.is_empty(),
        "host files written through the init's descriptors: {forged:?}"
    );
    // Not dumpable while it waits: its /proc entries belong to root even
    // when the container's user is not root.
    let mut cfg = e.config("waiting-user", "sleep 100000");
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let waiting_user = e.create(cfg).await.unwrap();
    let user_pid = ns_pid(&mut e, &waiting_user).await;
    let (owner, _, _) = run(
        &mut e,
        &sibling,
        &format!("stat -c %u /proc/{user_pid}/status"),
    )
    .await;
    assert_eq!(
        owner.trim(),
        "0",
        "the waiting init of a uid 1000 container is not dumpable"
    );
    e.rt.start_container(StartContainerRequest {
        container_id: waiting_user.clone(),
    })
    .await
    .unwrap();
    let (owner, _, _) = run(
        &mut e,
        &sibling,
        &format!("stat -c %u /proc/{user_pid}/status"),
    )
    .await;
    assert_eq!(
        owner.trim(),
        "1000",
        "once it runs its program it is an ordinary process"
    );
    // Started, it runs with exactly the capabilities it waited with.
    e.rt.start_container(StartContainerRequest {
        container_id: waiting.clone(),
    })
    .await
    .unwrap();
    let (own, _, _) = run(&mut e, &waiting, "grep -E '^CapEff:' /proc/self/status").await;
    assert_eq!(status_fields(&own)["CapEff"], st["CapEff"]);
    assert!(e.log("logger").contains("tick"));
    let _ = logger;
}

/// The pid of a container's init inside its PID namespace.
async fn ns_pid(e: &mut Env, id: &str) -> String {
    let info =
        e.rt.container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let host_pid = info["pid"].as_u64().expect("pid of the init");
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    status_fields(&status)["NSpid"]
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        } else if entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_racing_reader_never_reaches_the_host_during_execs_and_creates() {
    let (mut e, marker) = shared_pid_env("race").await;
    let m = marker.path.display().to_string();
    // Every process's root and cwd, over and over, one `cat` per round.
    let reader = format!(
        "while true; do cat /proc/[0-9]*/root{m} /proc/[0-9]*/cwd{m} 2>/dev/null; \
         echo round; done"
    );
    let mut cfg = with_caps(&e, "reader", &["ALL"]);
    cfg.command = vec!["/bin/sh".into(), "-c".into(), reader];
    let reader = e.run_config(cfg).await;
    let target = e.run("target", "sleep 100000").await;
    let t = Instant::now();
    for i in 0..200 {
        let r = e.exec(&target, &["true"], 10).await;
        assert_eq!(r.exit_code, 0);
        if i % 40 == 0 {
            // Container inits being set up are raced as well.
            let id = e.run(&format!("short{i}"), "true").await;
            e.wait_exit(&id).await;
        }
    }
    e.stop(&reader, 0).await;
    let log = e.log("reader");
    let rounds = log.matches(" round").count();
    println!(
        "200 execs and 5 container starts in {:?}; the reader made {rounds} rounds",
        t.elapsed(),
    );
    assert!(rounds > 10, "the reader hardly ran: {rounds} rounds");
    assert!(
        !log.contains(&marker.token),
        "the reader reached the host marker: {}",
        &log[..log.len().min(500)]
    );
}

#[tokio::test]
async fn a_target_container_shares_and_sees_its_targets_processes() {
    let mut e = env_with("target", NamespaceMode::Container, &[]).await;
    let target = e.run("target", "sleep 100000").await;
    let mut cfg = e.config("debug", "sleep 100000");
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: NamespaceMode::Target as i32,
                target_id: target.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let debug = e.run_config(cfg).await;
    let (out, err, code) = run(
        &mut e,
        &debug,
        "tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc/self/ns/pid >/dev/null && ps -o args",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sleep 100000 \n"), "{out}");
    // The debug container sees the target's init and its own process.
    assert_eq!(out.matches("sleep 100000").count(), 3, "{out}");
    // Its /proc is its own mount with the usual masks.
    let (out, _, _) = run(&mut e, &debug, "stat -c %F /proc/keys").await;
    assert_eq!(out.trim(), "character special file", "/proc/keys is masked");
}

#[tokio::test]
async fn a_host_pid_container_sees_the_hosts_processes() {
    let mut e = env_with("hostpid", NamespaceMode::Node, &[]).await;
    let mut cfg = e.config("hostpid", "sleep 100000");
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = e.run_config(cfg).await;
    let (out, err, code) = run(&mut e, &id, "cat /proc/1/comm; cat /proc/self/status").await;
    assert_eq!(code, 0, "{err}");
    let host_init = std::fs::read_to_string("/proc/1/comm").unwrap();
    assert!(out.starts_with(&host_init), "{out}");
    // Its own pid is the host's view of it.
    let own = status_fields(&out)["NSpid"].clone();
    assert!(
        !own.contains(char::is_whitespace),
        "one PID namespace: {own}"
    );
}
