//! The daemon as an operator and kubelet see it: the socket, the service
//! answers, restarts, signals and configuration errors.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use k8s_cri::v1::*;
use tonic::Code;

/// The daemon answers a Version call.
async fn assert_serves(d: &Daemon) {
    d.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_crius_and_cri_v1() {
    let d = Daemon::start();
    let v = d
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "crius");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_root_owned() {
    let d = Daemon::start();
    let m = std::fs::metadata(&d.paths.socket).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    if nix::unistd::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ready_follows_cni_config_without_restart() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    let status = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&status, "RuntimeReady").status);
    let net = condition(&status, "NetworkReady");
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains(&d.paths.cni_dir.display().to_string()),
        "{net:?}"
    );
    assert!(status.info.is_empty(), "info only with verbose");

    d.install_cni_config(
        "10-test.conflist",
        &bridge_conflist("testnet", "crt0", "10.99.0.0/24"),
    );
    let status = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let net = condition(&status, "NetworkReady");
    assert!(net.status, "{net:?}");
    assert!(net.reason.is_empty());

    std::fs::remove_file(d.paths.cni_dir.join("10-test.conflist")).unwrap();
    let status = rt
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!condition(&status, "NetworkReady").status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_status_shows_effective_config() {
    let d = Daemon::start();
    let status = d
        .runtime()
        .await
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(config["root"], d.paths.root.display().to_string());
    assert_eq!(
        config["network"]["conf_dir"],
        d.paths.cni_dir.display().to_string()
    );
    assert_eq!(config["runtime"]["cgroup_driver"], "cgroupfs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_reports_configured_cgroup_driver() {
    let mut cases = vec![("", CgroupDriver::Cgroupfs)];
    // The systemd driver runs only where systemd is init (see below).
    if Path::new("/run/systemd/system").is_dir() {
        cases.push((
            "[runtime]\ncgroup_driver = \"systemd\"",
            CgroupDriver::Systemd,
        ));
    }
    for (toml, want) in cases {
        let d = Daemon::builder().config(toml).start();
        let resp = d
            .runtime()
            .await
            .runtime_config(RuntimeConfigRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.linux.unwrap().cgroup_driver,
            want as i32,
            "config {toml:?}"
        );
    }
}

/// `cgroup_driver = "systemd"` where systemd is not init (this host):
/// the daemon does not start and says why, and `crius check` fails on it.
/// Where systemd runs, the daemon starts and `crius check` is fine with it.
#[test]
fn the_systemd_driver_needs_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("crius.toml");
    std::fs::write(&cfg, "[runtime]\ncgroup_driver = \"systemd\"\n").unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();
    let args = |extra: &[&str]| {
        let mut c = std::process::Command::new(CRIUS);
        c.args(["--config", &path("crius.toml"), "--root", &path("root")])
            .args([
                "--runroot",
                &path("run"),
                "--listen",
                &path("run/crius.sock"),
            ])
            .args(extra)
            .stdin(std::process::Stdio::null());
        c
    };
    let check = args(&["check"]).output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    let line = report
        .lines()
        .find(|l| l.contains("cgroup driver"))
        .unwrap_or_else(|| panic!("no cgroup driver line:\n{report}"))
        .to_string();
    if Path::new("/run/systemd/system").is_dir() {
        println!("systemd is init here: the driver works");
        assert!(line.starts_with("[ ok ]"), "{line}");
        let d = Daemon::builder()
            .config("[runtime]\ncgroup_driver = \"systemd\"")
            .start();
        assert!(d.logs().contains("cgroup"), "{}", d.logs());
        return;
    }
    println!("no systemd here: the driver must be refused");
    assert!(line.starts_with("[FAIL]"), "{line}");
    assert!(line.contains("needs systemd as the init system"), "{line}");
    assert!(!check.status.success(), "{report}");
    let mut daemon = args(&[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        wait_timeout(&mut daemon, Duration::from_secs(30)).expect("the daemon exits at once");
    let out = daemon.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cgroup_driver = \"systemd\" needs systemd as the init system")
            && stderr.contains("use cgroup_driver = \"cgroupfs\""),
        "{stderr}"
    );
    assert!(
        !dir.path().join("run/crius.sock").exists(),
        "it never served"
    );
}

fn runtime_config_request(cidr: &str) -> UpdateRuntimeConfigRequest {
    UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    }
}

async fn pod_cidr_info(d: &Daemon) -> serde_json::Value {
    let status = d
        .runtime()
        .await
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&status.info["podCIDR"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cidr_is_kept_across_restarts_and_validated() {
    let mut d = Daemon::start();
    let mut rt = d.runtime().await;
    let err = rt
        .update_runtime_config(runtime_config_request("10.1.0.0/99"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A huge one (found by tests/fuzz.rs) is refused without being echoed.
    for cidr in [
        "1".repeat(100_000),
        format!("10.0.0.0/8,{}", "x".repeat(2000)),
    ] {
        let err = rt
            .update_runtime_config(runtime_config_request(&cidr))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().len() < 200, "{}", err.message());
    }
    rt.update_runtime_config(runtime_config_request("10.244.3.0/24"))
        .await
        .unwrap();
    // An empty CIDR (kubelet's default before the node has one) keeps the old one.
    rt.update_runtime_config(runtime_config_request(""))
        .await
        .unwrap();
    assert_eq!(pod_cidr_info(&d).await, "10.244.3.0/24");
    d.kill9();
    d.restart();
    assert_eq!(pod_cidr_info(&d).await, "10.244.3.0/24");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_not_built_yet_answer_unimplemented_by_name() {
    let d = Daemon::start();
    let err = d
        .runtime()
        .await
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("CheckpointContainer"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_accepted() {
    let d = Daemon::start();
    // 20 MiB of labels: far past gRPC's 4 MiB default, like a big node's lists.
    let labels = (0..20_000)
        .map(|i| (format!("label-{i}"), "x".repeat(1000)))
        .collect();
    let req = ListPodSandboxRequest {
        filter: Some(PodSandboxFilter {
            label_selector: labels,
            ..Default::default()
        }),
    };
    // Decoded and answered, not refused as too large.
    let resp = d.runtime().await.list_pod_sandbox(req).await.unwrap();
    assert!(resp.into_inner().items.is_empty());
}

/// Whether the daemon under test reads CRIUS_FAULT_PANIC_METHOD.
fn fault_injection_built() -> bool {
    cfg!(feature = "fault-injection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_answers_internal_and_daemon_keeps_serving() {
    assert!(
        fault_injection_built(),
        "build the tests with `--features fault-injection` (hack/test.sh does): \
         without it the daemon ignores CRIUS_FAULT_PANIC_METHOD"
    );
    let d = Daemon::builder()
        .env(crius::server::layer::FAULT_PANIC_ENV, "Version")
        .start();
    let mut rt = d.runtime().await;
    let err = rt.version(VersionRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("panicked"), "{err:?}");
    // Same connection and new ones still work.
    rt.status(StatusRequest::default()).await.unwrap();
    d.runtime()
        .await
        .status(StatusRequest::default())
        .await
        .unwrap();
    assert!(d.logs().contains("handler panicked"), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_with_their_method() {
    let d = Daemon::start();
    d.runtime()
        .await
        .status(StatusRequest::default())
        .await
        .unwrap();
    let logs = d.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("method=Status") && l.contains("response")),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_removes_socket() {
    let mut d = Daemon::start();
    assert_serves(&d).await;
    let status = d.terminate();
    assert!(status.success(), "{status:?}\n{}", d.logs());
    assert!(!d.paths.socket.exists());
    // And it comes back on the same state.
    d.restart();
    assert_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_stops_cleanly() {
    let mut d = Daemon::start();
    let status = d.stop_with(nix::sys::signal::Signal::SIGINT);
    assert!(status.success(), "{status:?}");
    assert!(!d.paths.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_on_same_root_fails_clearly() {
    let d = Daemon::start();
    let other_socket = d.paths.base.join("other.sock");
    let out = d
        .command()
        .arg("--listen")
        .arg(&other_socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already owns root"), "{stderr}");
    assert!(stderr.contains(&d.pid().to_string()), "{stderr}");
    assert!(!other_socket.exists());
    // The first daemon is unaffected.
    assert_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_socket_is_not_stolen_by_another_root() {
    let d = Daemon::start();
    let out = d
        .command()
        .arg("--root")
        .arg(d.paths.base.join("root2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another process is serving"), "{stderr}");
    assert_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leaves_stale_socket_that_restart_replaces() {
    let mut d = Daemon::start();
    d.kill9();
    assert!(d.paths.socket.exists(), "SIGKILL cannot clean up");
    d.restart();
    assert_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_socket_at_listen_path_is_left_alone() {
    let d = Daemon::start();
    let file = d.paths.base.join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let out = d
        .command()
        .arg("--root")
        .arg(d.paths.base.join("root2"))
        .arg("--listen")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_variables_set_flags() {
    let d = Daemon::start();
    let socket = d.paths.base.join("env.sock");
    let mut child = std::process::Command::new(CRIUS)
        .env("CRIUS_CONFIG", &d.paths.config)
        .env("CRIUS_ROOT", d.paths.base.join("root-env"))
        .env("CRIUS_RUNROOT", d.paths.base.join("run-env"))
        .env("CRIUS_LISTEN", &socket)
        .env("CRIUS_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "socket from CRIUS_LISTEN",
        Duration::from_secs(20),
        || async { socket.exists().then_some(()) },
    )
    .await;
    let v = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel(&socket).await)
        .version(VersionRequest::default())
        .await
        .unwrap();
    assert_eq!(v.into_inner().runtime_name, "crius");
    assert!(d.paths.base.join("root-env/meta.redb").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("exit");
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let first = stderr.lines().next().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(first)
        .unwrap_or_else(|e| panic!("CRIUS_LOG_FORMAT=json gave {first:?}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_favor_dynmods_is_opt_in() {
    let mounted = |d: &Daemon| {
        let point = d
            .paths
            .runroot
            .join("cgroup-favordynmods")
            .display()
            .to_string();
        let v2 = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| {
                l.contains(" /sys/fs/cgroup ")
                    && l.contains("cgroup2")
                    && l.contains("favordynmods")
            });
        v2 || std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(point.as_str()) && l.contains("favordynmods"))
    };
    let off = Daemon::start();
    assert!(!mounted(&off), "off by default");
    let on = Daemon::builder()
        .config("[runtime]\ncgroup_favor_dynmods = true")
        .start();
    // Serving (not just bound) means start-up is done.
    on.runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
    assert!(mounted(&on), "favordynmods on:\n{}", on.logs());
}
