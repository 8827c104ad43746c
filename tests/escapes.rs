//! The classic container escapes, each tried from inside a container
//! against a real daemon, and what the host keeps:
//!
//! - CVE-2019-5736: a process entering the container (a created init
//!   waiting for its start, an exec joining) is not dumpable, so a
//!   container's root cannot follow `/proc/<pid>/exe`; one that can
//!   (privileged, CAP_SYS_PTRACE) reaches only the sealed helper, which no
//!   open for writing gets; the runtime's binaries on the host stay as
//!   they were.
//! - CVE-2024-21626: no descriptor of the host reaches a container's
//!   init or an exec, and a working directory through `/proc/self/fd/N`
//!   fails (a working directory through `/proc/self/cwd` is the
//!   container's root).
//! - Symlinks pointing out of the rootfs (an image whose `/etc` climbs out,
//!   a volume holding a link that a mount destination goes through) are
//!   resolved inside the rootfs.
//! - Writes to `/proc` (sysrq-trigger, /proc/sys) and `/sys` fail in a
//!   container that is not privileged.
//! - A memory bomb is held by its limit and reported as OOMKilled:
//!   `containers::oom_kill_is_reported`.

mod common;

use std::path::{Path, PathBuf};

use common::pod::*;
use common::*;
use k8s_cri::v1::*;

/// The host pid of a container's (created or running) init, from the
/// verbose ContainerStatus.
async fn init_pid(e: &mut Env, id: &str) -> i32 {
    let r =
        e.rt.container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).expect("info JSON");
    info["pid"].as_i64().expect("pid") as i32
}

/// The pid `host_pid` has in its innermost PID namespace (`NSpid`).
fn ns_pid(host_pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).expect("status");
    let f = status_fields(&status);
    f["NSpid"].split_whitespace().last().unwrap().to_string()
}

/// The runtime's programs on the host: the daemon and its helper.
fn runtime_binaries() -> Vec<(PathBuf, Vec<u8>)> {
    let daemon = PathBuf::from(CRIUS);
    let helper = daemon.with_file_name("crius-helper");
    [daemon, helper]
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn with_security(mut cfg: ContainerConfig, sec: LinuxContainerSecurityContext) -> ContainerConfig {
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(sec),
        ..Default::default()
    });
    cfg
}

fn privileged(cfg: ContainerConfig) -> ContainerConfig {
    with_security(
        cfg,
        LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        },
    )
}

/// Reads `/proc/<pid>/exe` and opens it for writing (appending nothing),
/// from inside container `from`; what each step answered.
async fn probe_exe(e: &mut Env, from: &str, pid: &str) -> String {
    let script = format!(
        "l=$(readlink /proc/{pid}/exe) && echo \"readlink: $l\" || echo 'readlink: refused'; \
         ( : >> /proc/{pid}/exe ) 2>&1 && echo 'write-open: ok'; true"
    );
    e.sh(from, &script).await.0
}

#[tokio::test]
async fn runtime_binary_is_out_of_reach_through_proc_exe() {
    let before = runtime_binaries();
    assert!(!before.is_empty());
    let mut e = env_with("exe", NamespaceMode::Pod, &[]).await;
    // A scanner in the pod's PID namespace: every process whose exe it can
    // read and that is not the image's busybox.
    let scan = "while :; do for d in /proc/[0-9]*; do \
                l=$(readlink $d/exe) || continue; \
                case $l in /bin/busybox) ;; *) echo \"$d $l\" >> /tmp/seen;; esac; \
                done; echo x >> /tmp/rounds; done";
    let watcher = e.run("watcher", scan).await;
    let root = e
        .run_config(privileged(e.config("root", "sleep 1000")))
        .await;
    // A created container's init waits for StartContainer: it has joined
    // the pod's PID namespace and still runs the helper.
    let waiting = e.create(e.config("waiting", "sleep 1000")).await.unwrap();
    let host_pid = init_pid(&mut e, &waiting).await;
    let pid = ns_pid(host_pid);
    println!("waiting init: host pid {host_pid}, pod pid {pid}");
    let seen_by_host = std::fs::read_link(format!("/proc/{host_pid}/exe")).unwrap();
    println!("its exe as the host sees it: {}", seen_by_host.display());
    for (path, _) in &before {
        assert_ne!(&seen_by_host, path, "runs the installed binary itself");
    }
    for target in [pid.as_str(), "1"] {
        // Root of a default container: the same uid and fewer capabilities,
        // so only dumpability keeps it out.
        let out = probe_exe(&mut e, &watcher, target).await;
        println!("pid {target} from a default container: {out}");
        assert!(out.contains("readlink: refused"), "pid {target}: {out}");
        assert!(!out.contains("write-open: ok"), "pid {target}: {out}");
        // A privileged container gets past dumpability (CAP_SYS_PTRACE)
        // and finds the sealed copy: read-only for good, not just busy.
        let out = probe_exe(&mut e, &root, target).await;
        println!("pid {target} from a privileged container: {out}");
        assert!(!out.contains("write-open: ok"), "pid {target}: {out}");
        // The read-only overlay seal answers EROFS; the memfd fallback
        // (where overlayfs cannot stack on the helper's directory, as on
        // the VM lane's 9p) is a copy with no host file behind it, busy
        // while it runs and write-sealed after.
        if !out.contains("readlink: /memfd:") {
            assert!(
                out.contains("Read-only file system"),
                "pid {target}: the write must meet the seal, not a busy text file: {out}"
            );
        }
        for (path, _) in &before {
            assert!(
                !out.contains(&format!("readlink: {}\n", path.display())),
                "{out}"
            );
        }
    }
    // Execs join while the scanner looks.
    let rounds = async |e: &mut Env| {
        e.sh(&watcher, "wc -l < /tmp/rounds")
            .await
            .0
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    let started = rounds(&mut e).await;
    for _ in 0..20 {
        assert_eq!(e.exec(&root, &["true"], 10).await.exit_code, 0);
    }
    e.rt.start_container(StartContainerRequest {
        container_id: waiting.clone(),
    })
    .await
    .expect("start");
    let ended = rounds(&mut e).await;
    println!(
        "scanner rounds over /proc during the execs: {}",
        ended - started
    );
    let (seen, _) = e.sh(&watcher, "cat /tmp/seen 2>/dev/null").await;
    assert_eq!(seen, "", "exe links a container could follow");
    for ((path, was), (_, now)) in before.iter().zip(runtime_binaries()) {
        assert!(*was == now, "{} changed", path.display());
    }
}

#[tokio::test]
async fn no_host_descriptor_reaches_a_container_or_an_exec() {
    let mut e = env("fds").await;
    let id = e.run("fds", "sleep 1000").await;
    let (init, code) = e.sh(&id, "ls /proc/1/fd").await;
    assert_eq!(code, 0, "{init}");
    // The exec lists its own descriptors: 3 is the directory it reads.
    let exec = e.exec(&id, &["ls", "/proc/self/fd"], 10).await;
    let exec = String::from_utf8_lossy(&exec.stdout).into_owned();
    println!("init fds: {init:?}, exec fds: {exec:?}");
    assert_eq!(init.split_whitespace().collect::<Vec<_>>(), ["0", "1", "2"]);
    assert_eq!(
        exec.split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    // A working directory through a descriptor the process held while it
    // was set up: refused, whichever descriptor it names. Above stdio the
    // process holds only its channel to the monitor then ("File exists"
    // from the others means they were open).
    let mut held = Vec::new();
    for n in 0..12 {
        let mut cfg = e.config(&format!("fd{n}"), "pwd -P; ls /");
        cfg.working_dir = format!("/proc/self/fd/{n}");
        let got = match e.create(cfg).await {
            Err(s) => Err(s),
            Ok(id) => {
                e.rt.start_container(StartContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .map(|_| id)
            }
        };
        match got {
            Err(s) => {
                println!(
                    "working_dir /proc/self/fd/{n}: {:?}: {}",
                    s.code(),
                    s.message()
                );
                assert_ne!(s.code(), tonic::Code::Internal, "{s:?}");
                if n > 2 && s.message().contains("File exists") {
                    held.push(n);
                }
            }
            Ok(id) => {
                let st = e.wait_exit(&id).await;
                panic!(
                    "working_dir /proc/self/fd/{n} started: {st:?}, log {}",
                    e.log(&format!("fd{n}"))
                );
            }
        }
    }
    assert!(held.len() <= 1, "descriptors open during set-up: {held:?}");
    // The process's own cwd at that point is the container's root.
    let mut cfg = e.config("cwd", "pwd -P; ls /; sleep 1000");
    cfg.working_dir = "/proc/self/cwd".into();
    if let Ok(id) = e.create(cfg).await {
        e.rt.start_container(StartContainerRequest { container_id: id })
            .await
            .expect("start");
        let log = wait_for("cwd log", std::time::Duration::from_secs(10), || {
            let log = e.log("cwd");
            async move { log.contains("bin").then_some(log) }
        })
        .await;
        assert!(log.contains(" /\n") && log.contains("etc"), "{log}");
    }
}

#[tokio::test]
async fn symlinks_out_of_the_rootfs_resolve_inside_it() {
    let mut e = env("links").await;
    // An image whose /etc is `/../../../../../tmp/crius-escape-etc`: the
    // pod files bound at /etc/hosts, /etc/resolv.conf and the user lookup
    // in /etc/passwd go through it.
    let host_etc = Path::new("/tmp/crius-escape-etc");
    let _ = std::fs::remove_dir_all(host_etc); // an earlier failed run's
    std::fs::create_dir_all(host_etc).unwrap();
    std::fs::write(host_etc.join("passwd"), "evil:x:4242:4242::/:/bin/sh\n").unwrap();
    let host_before = std::fs::read_dir(host_etc).unwrap().count();
    let image = pull_testenv_image_at(&e.d.paths.socket, "symlink-etc:latest")
        .await
        .unwrap();
    let cfg = |name: &str| container_config(name, &image, &["sleep", "1000"]);
    let id = e.run_config(cfg("links")).await;
    let (out, code) = e.sh(&id, "ls /etc/ && cat /etc/hosts").await;
    println!("the container's /etc: {out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hosts"), "{out}");
    let mut named = cfg("named");
    named.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_username: "evil".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = e.create(named).await.unwrap_err();
    println!(
        "user from the host's file: {:?}: {}",
        err.code(),
        err.message()
    );
    assert!(err.message().contains("not found"), "{err:?}");
    // A volume holding a link to a host directory, and a second mount
    // whose destination goes through that link.
    // The link names /tmp, which the image has too.
    let vol = e.d.paths.base.join("vol");
    let src = e.d.paths.base.join("src");
    for d in [&vol, &src] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(src.join("marker"), "mounted\n").unwrap();
    std::os::unix::fs::symlink("/../../../../../tmp", vol.join("link")).unwrap();
    let host_target = Path::new("/tmp/crius-escape-mount");
    let _ = std::fs::remove_dir_all(host_target); // an earlier failed run's
    let mut through = e.config("through", "sleep 1000");
    let bind = |host: &Path, dest: &str| Mount {
        host_path: host.display().to_string(),
        container_path: dest.into(),
        ..Default::default()
    };
    through.mounts = vec![
        bind(&vol, "/vol"),
        bind(&src, "/vol/link/crius-escape-mount"),
    ];
    let id = e.run_config(through).await;
    let (out, _) = e.sh(&id, "cat /tmp/crius-escape-mount/marker").await;
    assert_eq!(out, "mounted\n", "the bind landed inside the rootfs");
    assert_eq!(
        std::fs::read_dir(host_etc).unwrap().count(),
        host_before,
        "nothing written to the host's {}",
        host_etc.display()
    );
    assert!(
        !host_target.exists(),
        "the mount destination was made on the host"
    );
    std::fs::remove_dir_all(host_etc).unwrap();
}

#[tokio::test]
async fn proc_and_sys_writes_fail_unless_privileged() {
    let mut e = env("kernel").await;
    let id = e.run("kernel", "sleep 1000").await;
    // Each write puts back what the file holds, or asks for harmless
    // help ('h' to sysrq), so nothing changes where one gets through.
    let writes = [
        ("/proc/sysrq-trigger", "echo h > /proc/sysrq-trigger"),
        (
            "/proc/sys/vm/overcommit_memory",
            "cat /proc/sys/vm/overcommit_memory > /tmp/v && cat /tmp/v > /proc/sys/vm/overcommit_memory",
        ),
        (
            "/proc/sys/kernel/pid_max",
            "cat /proc/sys/kernel/pid_max > /tmp/v && cat /tmp/v > /proc/sys/kernel/pid_max",
        ),
        (
            "/sys/kernel/mm/transparent_hugepage/defrag",
            "sed -n 's/.*\\[\\(.*\\)\\].*/\\1/p' /sys/kernel/mm/transparent_hugepage/defrag > /tmp/v \
             && cat /tmp/v > /sys/kernel/mm/transparent_hugepage/defrag",
        ),
        ("/sys (a new file)", "touch /sys/crius-escape"),
    ];
    for (what, script) in writes {
        let path = what.split(' ').next().unwrap();
        if !Path::new(path).exists() {
            println!("{what}: not on this host, not tried");
            continue;
        }
        let (out, code) = e.sh(&id, &format!("{script} 2>&1; echo rc=$?")).await;
        println!("{what}: {}", out.trim());
        assert_eq!(code, 0);
        assert!(!out.trim_end().ends_with("rc=0"), "{what} writable: {out}");
    }
}
