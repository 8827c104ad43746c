//! Security defaults end to end, read where a user would read them: the
//! five capability sets in `/proc/<pid>/status` of a container's init and
//! of an exec, for root and non-root users; the node's pids limit in the
//! host's cgroup files and against a fork bomb; recursive read-only
//! mounts; the user ContainerStatus reports; what Status advertises.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pod::*;
use common::*;
use k8s_cri::v1::*;
use tonic::Code;

/// Docker's 14, `[runtime] default_capabilities` unless configured.
const DOCKER_DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The bit mask of capabilities named `CAP_…`.
fn mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| n.parse::<caps::Capability>().expect(n).bitmask())
        .fold(0, |a, b| a | b)
}

/// `CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb` of a status text.
fn cap_sets(status: &str) -> [u64; 5] {
    let f = status_fields(status);
    ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(|k| {
        let v = f.get(k).unwrap_or_else(|| panic!("{k} in {status}"));
        u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("{k} = {v}"))
    })
}

/// The bounding set of this (root) test process: what the daemon it
/// started may hand out, "ALL".
fn host_bounding() -> u64 {
    cap_sets(&std::fs::read_to_string("/proc/self/status").unwrap())[3]
}

fn secured(
    e: &Env,
    name: &str,
    script: &str,
    sec: LinuxContainerSecurityContext,
) -> ContainerConfig {
    let mut cfg = e.config(name, script);
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(sec),
        ..Default::default()
    });
    cfg
}

fn caps_request(add: &[&str], drop: &[&str], ambient: &[&str]) -> Option<Capability> {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Some(Capability {
        add_capabilities: v(add),
        drop_capabilities: v(drop),
        add_ambient_capabilities: v(ambient),
    })
}

fn as_user(uid: i64) -> Option<Int64Value> {
    Some(Int64Value { value: uid })
}

/// The capability sets of the container's init (`/proc/1/status`) and of
/// an exec (`/proc/self/status`), which must agree.
async fn container_caps(e: &mut Env, id: &str) -> [u64; 5] {
    let (init, code) = e.sh(id, "cat /proc/1/status").await;
    assert_eq!(code, 0, "{init}");
    let (exec, code) = e.sh(id, "cat /proc/self/status").await;
    assert_eq!(code, 0, "{exec}");
    let (init, exec) = (cap_sets(&init), cap_sets(&exec));
    assert_eq!(init, exec, "init and exec differ");
    init
}

#[tokio::test]
async fn capability_sets_for_root_and_non_root_users() {
    let mut e = env("caps").await;
    let d = mask(DOCKER_DEFAULT);
    let all = host_bounding();
    let chown = mask(&["CAP_CHOWN"]);
    let net_admin = mask(&["CAP_NET_ADMIN"]);
    let net_raw = mask(&["CAP_NET_RAW"]);
    println!("docker default {d:016x}, node bounding {all:016x}");
    // (name, security context, [CapInh, CapPrm, CapEff, CapBnd, CapAmb])
    let cases: Vec<(&str, LinuxContainerSecurityContext, [u64; 5])> = vec![
        ("root", Default::default(), [0, d, d, d, 0]),
        (
            // The kernel empties permitted and effective at execve for a
            // non-root user: the bounding set only limits what setuid and
            // file capabilities could give.
            "user",
            LinuxContainerSecurityContext {
                run_as_user: as_user(1000),
                ..Default::default()
            },
            [0, 0, 0, d, 0],
        ),
        (
            "user-ambient",
            LinuxContainerSecurityContext {
                run_as_user: as_user(1000),
                capabilities: caps_request(&[], &[], &["CHOWN"]),
                ..Default::default()
            },
            [chown, chown, chown, d, chown],
        ),
        (
            "root-ambient",
            LinuxContainerSecurityContext {
                capabilities: caps_request(&[], &[], &["NET_ADMIN"]),
                ..Default::default()
            },
            [
                net_admin,
                d | net_admin,
                d | net_admin,
                d | net_admin,
                net_admin,
            ],
        ),
        (
            "drop-all",
            LinuxContainerSecurityContext {
                capabilities: caps_request(&[], &["ALL"], &[]),
                ..Default::default()
            },
            [0; 5],
        ),
        (
            "drop-all-add-one",
            LinuxContainerSecurityContext {
                capabilities: caps_request(&["NET_RAW"], &["ALL"], &[]),
                ..Default::default()
            },
            [0, net_raw, net_raw, net_raw, 0],
        ),
        (
            "add-all",
            LinuxContainerSecurityContext {
                capabilities: caps_request(&["ALL"], &[], &[]),
                ..Default::default()
            },
            [0, all, all, all, 0],
        ),
        (
            "add-all-drop-one",
            LinuxContainerSecurityContext {
                capabilities: caps_request(&["ALL"], &["CAP_CHOWN"], &[]),
                ..Default::default()
            },
            [0, all & !chown, all & !chown, all & !chown, 0],
        ),
        (
            "user-add-all",
            LinuxContainerSecurityContext {
                run_as_user: as_user(1000),
                capabilities: caps_request(&["ALL"], &[], &[]),
                ..Default::default()
            },
            [0, 0, 0, all, 0],
        ),
    ];
    let mut ids = Vec::new();
    for (name, sec, want) in cases {
        let id = e.run_config(secured(&e, name, "sleep 1000", sec)).await;
        let got = container_caps(&mut e, &id).await;
        let hex = |s: [u64; 5]| s.map(|v| format!("{v:016x}")).join(" ");
        println!("{name:18} Inh Prm Eff Bnd Amb: {}", hex(got));
        assert_eq!(
            hex(got),
            hex(want),
            "{name}: CapInh CapPrm CapEff CapBnd CapAmb"
        );
        ids.push((name, id));
    }
    // What the sets mean to a non-root user: chown needs CAP_CHOWN, which
    // only the ambient request keeps across execve.
    for (name, want) in [("user", 1), ("user-ambient", 0)] {
        let id = &ids.iter().find(|(n, _)| *n == name).unwrap().1;
        let (out, code) = e.sh(id, "id -u; touch /tmp/f && chown 2000 /tmp/f").await;
        assert_eq!(out.lines().next(), Some("1000"), "{out}");
        assert_eq!(code, want, "{name}: chown as uid 1000");
    }
    // Ambient asks for a capability by name.
    let cfg = secured(
        &e,
        "ambient-all",
        "true",
        LinuxContainerSecurityContext {
            capabilities: caps_request(&[], &[], &["ALL"]),
            ..Default::default()
        },
    );
    assert_eq!(
        e.create(cfg).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // The node's default pids limit, in the host's cgroup file.
    let root = &ids[0].1;
    let pids_max = std::fs::read_to_string(e.container_cgroup(root, "pids").join("pids.max"))
        .expect("pids.max");
    println!("cgroup {}: pids.max {}", cgroup_version(), pids_max.trim());
    assert_eq!(pids_max.trim(), "4096");
}

#[tokio::test]
async fn node_default_capabilities_are_configurable() {
    let mut e = env_built("nodecaps", NamespaceMode::Container, |b| {
        b.config("[runtime]\ndefault_capabilities = [\"chown\", \"CAP_KILL\"]")
    })
    .await;
    let node = mask(&["CAP_CHOWN", "CAP_KILL"]);
    let id = e.run("plain", "sleep 1000").await;
    assert_eq!(container_caps(&mut e, &id).await, [0, node, node, node, 0]);
    let sec = LinuxContainerSecurityContext {
        capabilities: caps_request(&["NET_RAW"], &["KILL"], &[]),
        ..Default::default()
    };
    let id = e.run_config(secured(&e, "adds", "sleep 1000", sec)).await;
    let want = mask(&["CAP_CHOWN", "CAP_NET_RAW"]);
    assert_eq!(container_caps(&mut e, &id).await, [0, want, want, want, 0]);
}

/// A host process that echoes lines back: answers while the host can
/// schedule it, whatever a container does.
struct Probe {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Probe {
    fn start() -> Probe {
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cat");
        let out = BufReader::new(child.stdout.take().unwrap());
        Probe { child, out }
    }

    /// One round trip, and one new host process (fork works on the host).
    fn ask(&mut self, n: usize) -> Duration {
        let t = Instant::now();
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "ping {n}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("ping {n}"));
        let ok = Command::new("true").status().expect("fork on the host");
        assert!(ok.success());
        t.elapsed()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_fork_bomb_is_held_by_the_pids_limit() {
    const LIMIT: u64 = 128;
    let mut e = env_built("forkbomb", NamespaceMode::Container, |b| {
        b.config(&format!("[runtime]\npids_limit = {LIMIT}"))
    })
    .await;
    println!("cgroup {}", cgroup_version());
    let mut probe = Probe::start();
    let before = probe.ask(0);
    // The classic bomb; PID 1 then execs sleep (no fork left to do).
    let id = e
        .run("bomb", "bomb() { bomb | bomb & }; bomb; exec sleep 1000")
        .await;
    let dir = e.container_cgroup(&id, "pids");
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|err| panic!("{}: {err}", dir.join(f).display()))
    };
    assert_eq!(read("pids.max").trim(), LIMIT.to_string());
    let full = wait_for(
        "the bomb to reach the limit",
        Duration::from_secs(20),
        || async {
            let n: u64 = read("pids.current").trim().parse().unwrap();
            (n + 8 >= LIMIT).then_some(n)
        },
    )
    .await;
    // While it presses on the limit the host answers and forks.
    let (mut worst, mut rounds) = (before, 0);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        rounds += 1;
        worst = worst.max(probe.ask(rounds));
        let n: u64 = read("pids.current").trim().parse().unwrap();
        assert!(n <= LIMIT, "pids.current {n} over pids.max {LIMIT}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "bomb at {full} tasks (limit {LIMIT}); host probe: {rounds} round trips + forks, worst {worst:?} (before: {before:?})"
    );
    // 2 s, or 4 times the unloaded round trip where everything is slow
    // (the VM lane under TCG: about 1 s before the bomb).
    let bound = Duration::from_secs(2).max(before * 4);
    assert!(worst < bound, "host probe took {worst:?} (bound {bound:?})");
    // The kernel refused the container's forks: EAGAIN, counted by the
    // pids controller and printed by the shell into the container's log.
    let events = std::fs::read_to_string(dir.join("pids.events")).unwrap_or_default();
    println!("pids.events: {}", events.trim());
    if let Some(max) = events.split_whitespace().nth(1) {
        assert!(max.parse::<u64>().unwrap() > 0, "{events}");
    }
    e.stop(&id, 0).await;
    let log = e.log("bomb");
    assert!(
        log.contains("can't fork: Resource temporarily unavailable"),
        "the container saw EAGAIN: {}",
        &log[..log.len().min(2000)]
    );
    assert_eq!(
        e.status(&id).await.state,
        ContainerState::ContainerExited as i32
    );
}

#[tokio::test]
async fn a_requested_pids_limit_wins_on_cgroup_v2() {
    let mut e = env("pidsreq").await;
    let mut cfg = e.config("pids", "sleep 1000");
    let mut res = LinuxContainerResources::default();
    res.unified.insert("pids.max".into(), "50".into());
    cfg.linux = Some(LinuxContainerConfig {
        resources: Some(res),
        ..Default::default()
    });
    if cgroup_version() == "v1" {
        // v1 has no unified map: the request is refused, the node's limit
        // is the only one.
        println!("cgroup v1: unified resources refused; the node default applies");
        let err = e.create(cfg).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        return;
    }
    println!("cgroup v2: the request's pids.max");
    let id = e.run_config(cfg).await;
    let max = std::fs::read_to_string(e.container_cgroup(&id, "pids").join("pids.max")).unwrap();
    assert_eq!(max.trim(), "50");
}

/// A host directory with a tmpfs mounted on its `sub` (unmounted when the
/// daemon's directory is dropped).
fn dir_with_submount(base: &Path) -> std::path::PathBuf {
    let src = base.join("rro-src");
    mount_tmpfs(&src.join("sub"));
    src
}

fn mount_at(src: &Path, dest: &str, rro: bool, propagation: MountPropagation) -> Mount {
    Mount {
        container_path: dest.into(),
        host_path: src.display().to_string(),
        readonly: true,
        recursive_read_only: rro,
        propagation: propagation as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn recursive_read_only_mounts_reach_submounts() {
    let mut e = env("rro").await;
    let status =
        e.rt.status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    let handler = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .expect("default handler");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    println!("kernel {}: {handler:?}", release.trim());
    assert!(
        handler
            .features
            .as_ref()
            .unwrap()
            .recursive_read_only_mounts,
        "this kernel has mount_setattr"
    );
    let src = dir_with_submount(&e.d.paths.base);
    let private = MountPropagation::PropagationPrivate;
    let mut cfg = e.config("rro", "sleep 1000");
    cfg.mounts = vec![
        mount_at(&src, "/rro", true, private),
        mount_at(&src, "/ro", false, private),
    ];
    let id = e.run_config(cfg).await;
    let touch = |p: &str| format!("touch {p} 2>&1; echo rc=$?");
    // Recursive: the submount is read-only too.
    for p in ["/rro/f", "/rro/sub/f"] {
        let (out, _) = e.sh(&id, &touch(p)).await;
        assert!(
            out.contains("Read-only file system") && out.contains("rc=1"),
            "{p}: {out}"
        );
    }
    // Not recursive (critest's other case): only the top is.
    let (out, _) = e.sh(&id, &touch("/ro/f")).await;
    assert!(out.contains("Read-only file system"), "{out}");
    let (out, _) = e.sh(&id, &touch("/ro/sub/f")).await;
    assert_eq!(
        out.trim(),
        "rc=0",
        "a plain read-only bind leaves submounts writable"
    );
    assert!(
        src.join("sub/f").exists(),
        "the write reached the host's tmpfs"
    );
    let (info, _) = e
        .sh(&id, "grep -E ' /(rro|ro)/sub ' /proc/self/mountinfo")
        .await;
    println!("{info}");
    let opts = |dest: &str| {
        info.lines()
            .find(|l| l.split(' ').nth(4) == Some(dest))
            .and_then(|l| l.split(' ').nth(5))
            .unwrap_or_else(|| panic!("{dest} in {info}"))
            .to_string()
    };
    assert!(opts("/rro/sub").starts_with("ro"), "{info}");
    assert!(opts("/ro/sub").starts_with("rw"), "{info}");
    // Read-write or non-private recursive read-only mounts are refused.
    for (name, m) in [
        (
            "rw",
            Mount {
                readonly: false,
                ..mount_at(&src, "/x", true, private)
            },
        ),
        (
            "slave",
            mount_at(
                &src,
                "/x",
                true,
                MountPropagation::PropagationHostToContainer,
            ),
        ),
        (
            "shared",
            mount_at(&src, "/x", true, MountPropagation::PropagationBidirectional),
        ),
    ] {
        let mut cfg = e.config(name, "true");
        cfg.mounts = vec![m];
        let err = e.create(cfg).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        println!("{name}: {}", err.message());
    }
}

/// `id -G` of the container's init (its log) and of an exec, sorted.
async fn groups_seen(e: &mut Env, name: &str, id: &str) -> Vec<i64> {
    let sorted = |s: &str| {
        let mut g: Vec<i64> = s.split_whitespace().map(|g| g.parse().unwrap()).collect();
        g.sort();
        g
    };
    let (exec, code) = e.sh(id, "id -G").await;
    assert_eq!(code, 0, "{exec}");
    let log = wait_for("the init's id -G", Duration::from_secs(10), || async {
        let l = e.log(name);
        (!l.is_empty()).then_some(l)
    })
    .await;
    let init = log
        .lines()
        .next()
        .unwrap()
        .splitn(4, ' ')
        .nth(3)
        .unwrap()
        .to_string();
    assert_eq!(sorted(&init), sorted(&exec), "init and exec");
    sorted(&exec)
}

#[tokio::test]
async fn supplemental_groups_policy_and_the_reported_user() {
    let mut e = env("groups").await;
    let status =
        e.rt.status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    assert!(status.features.unwrap().supplemental_groups_policy);
    // critest's case: the image's default-user (1000) is also in group
    // 50000 of its /etc/group; Merge adds it, Strict does not.
    let image = common::pull_testenv_image_at(&e.d.paths.socket, "groups:latest")
        .await
        .expect("pull the groups image");
    let cases = [
        (
            "merge",
            SupplementalGroupsPolicy::Merge,
            None,
            vec![1000, 1234, 50000],
        ),
        (
            "strict",
            SupplementalGroupsPolicy::Strict,
            None,
            vec![1000, 1234],
        ),
        (
            "group-strict",
            SupplementalGroupsPolicy::Strict,
            Some(3000),
            vec![1234, 3000],
        ),
        (
            "group-merge",
            SupplementalGroupsPolicy::Merge,
            Some(3000),
            vec![1234, 3000, 50000],
        ),
    ];
    for (name, policy, group, want) in cases {
        let sec = LinuxContainerSecurityContext {
            run_as_user: as_user(1000),
            run_as_group: group.map(|value| Int64Value { value }),
            supplemental_groups: vec![1234],
            supplemental_groups_policy: policy as i32,
            ..Default::default()
        };
        let mut cfg = secured(&e, name, "id -G; sleep 1000", sec);
        cfg.image = Some(ImageSpec {
            image: image.clone(),
            ..Default::default()
        });
        let id = e.run_config(cfg).await;
        let seen = groups_seen(&mut e, name, &id).await;
        assert_eq!(seen, want, "{name}: id -G");
        let user = e
            .status(&id)
            .await
            .user
            .and_then(|u| u.linux)
            .expect("user");
        let mut reported = user.supplemental_groups.clone();
        reported.sort();
        println!(
            "{name}: uid {} gid {} groups {reported:?}",
            user.uid, user.gid
        );
        assert_eq!(
            (user.uid, user.gid),
            (1000, group.unwrap_or(1000)),
            "{name}"
        );
        assert_eq!(
            reported, want,
            "{name}: ContainerStatus reports what id -G sees"
        );
    }
    // An unknown policy is the caller's error.
    let sec = LinuxContainerSecurityContext {
        supplemental_groups_policy: 9,
        ..Default::default()
    };
    let err = e.create(secured(&e, "bad", "true", sec)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

fn policy_err(r: Result<impl std::fmt::Debug, tonic::Status>, rule: &str) {
    let err = r.expect_err("refused by the node policy");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(rule), "{rule}: {}", err.message());
    println!("{rule}: {}", err.message());
}

#[tokio::test]
async fn node_policy_refuses_pods_outside_exempt_namespaces() {
    // The test pod's namespace ("containers") is exempt: it runs on the
    // host network, and its containers may be privileged.
    let mut e = env_built("policy", NamespaceMode::Container, |b| {
        b.config(
            "[policy]\nrefuse_privileged = true\nrefuse_host_namespaces = true\n\
             refuse_sensitive_host_paths = true\nexempt_namespaces = [\"containers\"]",
        )
    })
    .await;
    let sec = LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    };
    let id = e.run_config(secured(&e, "exempt", "sleep 1000", sec)).await;
    assert_eq!(
        e.status(&id).await.state,
        ContainerState::ContainerRunning as i32
    );
    let mut host = pod_config("hostnet", "default");
    host_network(&mut host);
    let run = |config| RunPodSandboxRequest {
        config: Some(config),
        ..Default::default()
    };
    policy_err(
        e.rt.run_pod_sandbox(run(host)).await,
        "refuse_host_namespaces",
    );
    let mut privileged = pod_config("privileged", "default");
    privileged.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    policy_err(
        e.rt.run_pod_sandbox(run(privileged)).await,
        "refuse_privileged",
    );
}

#[tokio::test]
async fn node_policy_refuses_privileged_containers_and_sensitive_host_paths() {
    let mut e = env_built("policyc", NamespaceMode::Container, |b| {
        b.config(
            "[policy]\nrefuse_privileged = true\nrefuse_sensitive_host_paths = true\n\
             exempt_namespaces = []",
        )
    })
    .await;
    let sec = LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    };
    policy_err(
        e.create(secured(&e, "priv", "true", sec)).await,
        "refuse_privileged",
    );
    let base = e.d.paths.base.clone();
    let link = base.join("innocent");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let data = base.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let socket = e.d.paths.socket.display().to_string();
    for host in [
        "/",
        "/etc",
        "/proc/1",
        "/var/run/docker.sock",
        &socket,
        &link.display().to_string(),
    ] {
        let mut cfg = e.config("mount", "true");
        cfg.mounts = vec![Mount {
            host_path: host.to_string(),
            container_path: "/x".into(),
            readonly: true,
            ..Default::default()
        }];
        policy_err(e.create(cfg).await, "refuse_sensitive_host_paths");
    }
    // What runs the node stays out; ordinary data goes in.
    let mut cfg = e.config("data", "ls /x && sleep 1000");
    cfg.mounts = vec![Mount {
        host_path: data.display().to_string(),
        container_path: "/x".into(),
        ..Default::default()
    }];
    let id = e.run_config(cfg).await;
    assert_eq!(
        e.status(&id).await.state,
        ContainerState::ContainerRunning as i32
    );
}

#[tokio::test]
async fn cgroup_namespace_is_private_on_v2_and_the_hosts_on_v1() {
    let mut e = env("cgroupns").await;
    let host_ns = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    let host_ns = host_ns.to_string_lossy();
    let v2 = cgroup_version() == "v2";
    println!(
        "cgroup {}, driver {:?}, host {host_ns}",
        cgroup_version(),
        test_cgroup_driver()
    );
    for privileged in [false, true] {
        let name = if privileged { "privileged" } else { "default" };
        let sec = LinuxContainerSecurityContext {
            privileged,
            ..Default::default()
        };
        let id = e.run_config(secured(&e, name, "sleep 1000", sec)).await;
        let (out, code) = e
            .sh(
                &id,
                "readlink /proc/1/ns/cgroup; readlink /proc/self/ns/cgroup; cat /proc/self/cgroup; \
                 ls -R /sys/fs/cgroup | grep -c crius- || true",
            )
            .await;
        assert_eq!(code, 0, "{out}");
        println!("{name}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        let (init_ns, exec_ns) = (lines[0], lines[1]);
        assert_eq!(init_ns, exec_ns, "{name}: an exec joins the init's");
        if v2 {
            assert_ne!(init_ns, host_ns, "{name}: a private cgroup namespace");
            assert_eq!(
                lines[2], "0::/",
                "{name}: its cgroup is its namespace's root"
            );
            assert_eq!(lines.last(), Some(&"0"), "{name}: only its own subtree");
        } else {
            assert_eq!(init_ns, host_ns, "{name}: the host's on cgroup v1");
        }
    }
}

/// Whether crius uses AppArmor here: the kernel runs it and
/// `apparmor_parser` is installed.
fn apparmor_host() -> bool {
    let kernel = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y");
    kernel
        && ["/sbin", "/usr/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join("apparmor_parser").is_file())
}

/// A profile like critest's: everything but writes.
const DENY_WRITE: &str = "#include <tunables/global>
profile crius-test-deny-write flags=(attach_disconnected) {
  #include <abstractions/base>
  file,
  deny /** w,
}
";

fn load_profile(text: &str) {
    let mut child = Command::new("apparmor_parser")
        .args(["-r", "-K"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("apparmor_parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "apparmor_parser -r");
}

fn apparmor(t: security_profile::ProfileType, name: &str) -> LinuxContainerSecurityContext {
    LinuxContainerSecurityContext {
        apparmor: Some(SecurityProfile {
            profile_type: t as i32,
            localhost_ref: name.into(),
        }),
        ..Default::default()
    }
}

#[allow(deprecated)]
fn apparmor_old(profile: &str) -> LinuxContainerSecurityContext {
    LinuxContainerSecurityContext {
        apparmor_profile: profile.into(),
        ..Default::default()
    }
}

/// CAP_SYS_ADMIN without a seccomp filter: only an LSM stops its mounts.
fn may_mount(mut sec: LinuxContainerSecurityContext) -> LinuxContainerSecurityContext {
    sec.capabilities = caps_request(&["SYS_ADMIN"], &[], &[]);
    sec.seccomp = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    });
    sec
}

/// The LSM label of the init (`/proc/1`, its own PID namespace) and of an
/// exec, as the container reads them.
async fn labels(e: &mut Env, id: &str) -> (String, String) {
    let (out, _) = e
        .sh(
            id,
            "printf '%s|%s' \"$(cat /proc/1/attr/current 2>/dev/null)\" \
             \"$(cat /proc/self/attr/current 2>/dev/null)\"",
        )
        .await;
    let (init, exec) = out.split_once('|').unwrap_or((&out, ""));
    let clean = |s: &str| s.trim_end_matches(['\0', '\n']).to_string();
    (clean(init), clean(exec))
}

const MOUNT: &str = "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t 2>&1; echo rc=$?";

#[tokio::test]
async fn apparmor_profiles_where_the_host_has_apparmor() {
    use security_profile::ProfileType::*;
    let mut e = env("apparmor").await;
    let refused = |r: Result<String, tonic::Status>, what: &str, want: &str| {
        let s = r.expect_err(what);
        assert_eq!(s.code(), Code::FailedPrecondition, "{what}: {s:?}");
        assert!(s.message().contains(want), "{what}: {}", s.message());
    };
    if !apparmor_host() {
        println!("AppArmor is not enabled on this host: checking that nothing is applied");
        let id = e
            .run_config(secured(
                &e,
                "plain",
                "sleep 1000",
                may_mount(Default::default()),
            ))
            .await;
        let (init, exec) = labels(&mut e, &id).await;
        assert_eq!((init.as_str(), exec.as_str()), ("", ""), "no LSM label");
        let (out, _) = e.sh(&id, MOUNT).await;
        assert!(out.contains("rc=0"), "nothing stops the mount: {out}");
        for (what, sec) in [
            ("RuntimeDefault", apparmor(RuntimeDefault, "")),
            ("runtime/default", apparmor_old("runtime/default")),
            ("Localhost", apparmor(Localhost, "localhost/x")),
            ("localhost/x", apparmor_old("localhost/x")),
        ] {
            let cfg = secured(&e, &format!("refused-{}", what.len()), "true", sec);
            refused(e.create(cfg).await, what, "AppArmor is not enabled");
        }
        e.run_config(secured(&e, "unconfined", "true", apparmor(Unconfined, "")))
            .await;
        return;
    }
    println!("AppArmor is enabled on this host");
    load_profile(DENY_WRITE);

    // Nothing asked: crius-default, for the init and an exec.
    let id = e
        .run_config(secured(
            &e,
            "default",
            "sleep 1000",
            may_mount(Default::default()),
        ))
        .await;
    let (init, exec) = labels(&mut e, &id).await;
    assert_eq!(init, "crius-default (enforce)");
    assert_eq!(exec, "crius-default (enforce)", "an exec runs under it too");
    let (out, _) = e.sh(&id, MOUNT).await;
    assert!(
        out.contains("Permission denied") && !out.contains("rc=0"),
        "crius-default denies mounts: {out}"
    );
    // The same container unconfined mounts: the profile made the difference.
    let id = e
        .run_config(secured(
            &e,
            "unconfined",
            "sleep 1000",
            may_mount(apparmor(Unconfined, "")),
        ))
        .await;
    assert_eq!(labels(&mut e, &id).await.0, "unconfined");
    let (out, _) = e.sh(&id, MOUNT).await;
    assert!(out.contains("rc=0"), "unconfined mounts: {out}");
    for (name, sec) in [
        ("runtime-default", apparmor(RuntimeDefault, "")),
        ("deprecated-default", apparmor_old("runtime/default")),
    ] {
        let id = e.run_config(secured(&e, name, "sleep 1000", sec)).await;
        assert_eq!(
            labels(&mut e, &id).await.0,
            "crius-default (enforce)",
            "{name}"
        );
    }
    let privileged = LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    };
    let id = e
        .run_config(secured(&e, "privileged", "sleep 1000", privileged))
        .await;
    assert_eq!(labels(&mut e, &id).await.0, "unconfined", "privileged");

    // Localhost, by each field and spelling: applied, and it denies writes.
    let script = "cat /proc/self/attr/current; echo; touch /tmp/foo && echo wrote || echo denied";
    let mut both = apparmor(Localhost, "crius-test-deny-write");
    #[allow(deprecated)]
    {
        both.apparmor_profile = "localhost/crius-test-absent".into();
    }
    for (name, sec) in [
        ("local-ref", apparmor(Localhost, "crius-test-deny-write")),
        (
            "local-prefixed",
            apparmor(Localhost, "localhost/crius-test-deny-write"),
        ),
        (
            "local-deprecated",
            apparmor_old("localhost/crius-test-deny-write"),
        ),
        ("local-new-wins", both),
    ] {
        let id = e.run_config(secured(&e, name, script, sec)).await;
        e.wait_exit(&id).await;
        let log = e.log(name);
        assert!(
            log.contains("crius-test-deny-write (enforce)"),
            "{name}: {log}"
        );
        assert!(
            log.contains("denied") && !log.contains("wrote"),
            "{name}: {log}"
        );
    }
    // An unloaded profile fails the create, naming it.
    for (what, sec) in [
        (
            "new field",
            apparmor(Localhost, "localhost/crius-test-absent"),
        ),
        ("deprecated", apparmor_old("localhost/crius-test-absent")),
    ] {
        let cfg = secured(&e, &format!("absent-{}", what.len()), "true", sec);
        refused(
            e.create(cfg).await,
            what,
            "\"crius-test-absent\" is not loaded",
        );
    }
}
