//! Test harness: runs the real `crius` binary on a private root, runroot and
//! socket, and talks CRI to it over the unix socket like kubelet does.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cut;
pub mod leaks;
pub mod net;
pub mod pod;
pub mod rng;
pub mod stream;
pub mod testenv;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// Path of the binary under test.
pub const CRIUS: &str = env!("CARGO_BIN_EXE_crius");

/// A CRI runtime client on a unix socket.
pub type Runtime = RuntimeServiceClient<Channel>;
/// A CRI image client on a unix socket.
pub type Images = ImageServiceClient<Channel>;

/// Every pod the runtime lists (no filter), as a user's `crictl pods`.
pub async fn all_pods(rt: &mut Runtime) -> Vec<PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// Every container the runtime lists (no filter), as `crictl ps -a`.
pub async fn all_containers(rt: &mut Runtime) -> Vec<Container> {
    rt.list_containers(ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

/// Options for a daemon under test.
#[derive(Default)]
pub struct DaemonBuilder {
    config: String,
    network: String,
    registries: Option<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    runroot_tmpfs: bool,
    wrap: Option<String>,
}

impl DaemonBuilder {
    /// Mounts a tmpfs on the runroot, as `/run` is on a real node (here the
    /// temporary directory is on the root filesystem). Unmounted on drop.
    pub fn runroot_on_tmpfs(mut self) -> Self {
        self.runroot_tmpfs = true;
        self
    }

    /// Extra TOML appended to the generated config, which ends inside its
    /// `[image]` table: bare keys set image options, a `[table]` starts another.
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// Extra keys for the generated config's `[network]` table.
    pub fn network(mut self, toml: &str) -> Self {
        self.network.push_str(toml);
        self.network.push('\n');
        self
    }

    /// A registries.conf for this daemon (written next to its config).
    pub fn registries(mut self, toml: &str) -> Self {
        self.registries = Some(toml.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the daemon through `bash -c script sh crius ARGS...`: the
    /// script sets the daemon's surroundings up and ends with `exec "$@"`.
    pub fn wrap(mut self, script: &str) -> Self {
        self.wrap = Some(script.into());
        self
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("crius-test-")
            .tempdir()
            .expect("tempdir");
        let paths = Paths::new(dir.path());
        std::fs::create_dir_all(&paths.cni_dir).expect("cni dir");
        if self.runroot_tmpfs {
            mount_tmpfs(&paths.runroot);
        }
        let registries = paths.base.join("registries.conf");
        std::fs::write(&registries, self.registries.unwrap_or_default()).expect("registries.conf");
        let config = format!(
            "log_level = \"debug\"\n[network]\nconf_dir = \"{}\"\n{}[image]\nregistries_conf = \"{}\"\n{}",
            paths.cni_dir.display(),
            self.network,
            registries.display(),
            with_test_cgroup_driver(&self.config)
        );
        eprintln!("crius under test: {}", cgroup_setup(&config));
        std::fs::write(&paths.config, config).expect("write config");
        let mut d = Daemon {
            child: None,
            paths,
            env: self.env,
            args: self.args,
            wrap: self.wrap,
            _dir: dir,
        };
        d.restart();
        d
    }
}

/// The `[runtime] cgroup_driver` every daemon under test uses:
/// `CRIUS_TEST_CGROUP_DRIVER` (`cgroupfs` or `systemd`), unset for the
/// daemon's default. The VM lane (hack/vm) runs the tests with each.
pub fn test_cgroup_driver() -> Option<String> {
    let driver = std::env::var("CRIUS_TEST_CGROUP_DRIVER").ok()?;
    assert!(
        matches!(driver.as_str(), "cgroupfs" | "systemd"),
        "CRIUS_TEST_CGROUP_DRIVER={driver:?}: want cgroupfs or systemd"
    );
    Some(driver)
}

/// A test's extra config with `cgroup_driver` from [`test_cgroup_driver`]
/// added: into its `[runtime]` table when it has one (TOML allows a table
/// once), unless the test picks a driver itself.
fn with_test_cgroup_driver(extra: &str) -> String {
    let Some(driver) = test_cgroup_driver() else {
        return extra.to_string();
    };
    let key = format!("cgroup_driver = \"{driver}\"");
    if extra.contains("cgroup_driver") {
        extra.to_string()
    } else if extra.lines().any(|l| l.trim() == "[runtime]") {
        extra.replacen("[runtime]", &format!("[runtime]\n{key}"), 1)
    } else {
        format!("{extra}\n[runtime]\n{key}\n")
    }
}

/// "cgroup v2, driver systemd": what a daemon with `config` (its generated
/// TOML) runs on, printed when it starts so every test's output says so.
pub fn cgroup_setup(config: &str) -> String {
    let version = match crius::cgroups::cgroup_mode() {
        Some(crius::cgroups::CgroupMode::Unified) => "cgroup v2",
        Some(crius::cgroups::CgroupMode::Hybrid) => "cgroup v1 (hybrid)",
        Some(crius::cgroups::CgroupMode::Legacy) => "cgroup v1",
        None => "no cgroups",
    };
    let parsed: toml::Table = config.parse().unwrap_or_default();
    let driver = parsed
        .get("runtime")
        .and_then(|r| r.get("cgroup_driver"))
        .and_then(|d| d.as_str())
        .unwrap_or("cgroupfs")
        .to_string();
    format!("{version}, driver {driver}")
}

/// Where a daemon under test keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    pub base: PathBuf,
    pub root: PathBuf,
    pub runroot: PathBuf,
    pub socket: PathBuf,
    pub cni_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Paths {
    fn new(base: &Path) -> Paths {
        Paths {
            base: base.to_path_buf(),
            root: base.join("root"),
            runroot: base.join("run"),
            socket: base.join("run/crius.sock"),
            cni_dir: base.join("net.d"),
            config: base.join("crius.toml"),
            log: base.join("crius.log"),
        }
    }
}

/// A running `crius`; killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub paths: Paths,
    env: Vec<(String, String)>,
    args: Vec<String>,
    wrap: Option<String>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// A daemon with the default test config.
    pub fn start() -> Daemon {
        Self::builder().start()
    }

    /// The command line this daemon runs with, for starting a second copy.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.wrap {
            Some(script) => {
                let mut c = Command::new("/bin/bash");
                c.arg("-c").arg(script).arg("sh").arg(CRIUS);
                c
            }
            None => Command::new(CRIUS),
        };
        cmd.arg("--config")
            .arg(&self.paths.config)
            .arg("--root")
            .arg(&self.paths.root)
            .arg("--runroot")
            .arg(&self.paths.runroot)
            .arg("--listen")
            .arg(&self.paths.socket)
            .args(&self.args)
            .env_remove("CRIUS_FAULT_PANIC_METHOD")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// (Re)starts the daemon process on the same state and waits for its socket.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.log)
            .expect("log file");
        let child = self
            .command()
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn crius");
        self.child = Some(child);
        self.wait_for_socket();
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.paths.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "crius exited with {status} before serving:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "crius did not serve in time:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Drops `key` from the daemon's environment for the next
    /// [`Daemon::restart`] (a fault injected only into the first run).
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal crius");
        wait_timeout(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("crius did not exit after {sig}:\n{}", self.logs()))
    }

    /// SIGTERM, as an init system stops the daemon.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }

    /// Waits for a daemon something else killed (its unit stopped) to exit.
    pub fn reap(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon started");
        wait_timeout(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("crius did not exit:\n{}", self.logs()))
    }

    /// SIGKILL, a crash.
    pub fn kill9(&mut self) {
        self.stop_with(nix::sys::signal::Signal::SIGKILL);
    }

    pub async fn runtime(&self) -> Runtime {
        RuntimeServiceClient::new(channel(&self.paths.socket).await)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub async fn images(&self) -> Images {
        ImageServiceClient::new(channel(&self.paths.socket).await)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// Writes a CNI network config into the daemon's config directory.
    pub fn install_cni_config(&self, name: &str, json: &str) {
        let tmp = self.paths.cni_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, json).expect("write cni config");
        std::fs::rename(&tmp, self.paths.cni_dir.join(name)).expect("rename cni config");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A test that failed before removing its pods must not leave pod
        // inits running, nor namespace pins or tmpfs mounted on the host.
        kill_containers(&self.paths.runroot);
        kill_pod_inits(&self.paths.runroot.join("pods"));
        remove_pod_cgroups(&self.paths.runroot.join("pods"));
        for point in mounts_under(&self.paths.base) {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Pulls the test registry's busybox through the CRI endpoint at `sock`;
/// returns its reference.
pub async fn pull_busybox_at(sock: &Path) -> Result<String, String> {
    pull_testenv_image_at(sock, "busybox:latest").await
}

/// Pulls the test registry's `name` (`groups:latest`) through the CRI
/// endpoint at `sock`; returns its reference.
pub async fn pull_testenv_image_at(sock: &Path, name: &str) -> Result<String, String> {
    let image = testenv::testenv().image(name);
    ImageServiceClient::new(channel(sock).await)
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("pull {image}: {}", e.message()))?;
    Ok(image)
}

/// Makes `pod` share the host's network namespace (no CNI).
pub fn host_network(pod: &mut PodSandboxConfig) {
    pod.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// `Name:\tvalue` fields of a /proc status text (`CapEff`, `Seccomp`, …).
pub fn status_fields(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Mount points at or under `dir`, as this process sees them.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Mounts a fresh tmpfs on `dir` (created if missing).
pub fn mount_tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("tmpfs mount point");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0755"),
    )
    .expect("mount tmpfs");
}

/// Kills container inits (their pid files) and the pod monitors of a
/// runroot, so a failed test leaves no processes behind.
fn kill_containers(runroot: &Path) {
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    for pid in monitor_pids(runroot) {
        kill(pid);
    }
    for c in std::fs::read_dir(runroot.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if c.path().join("exit.json").exists() {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(c.path().join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            kill(pid);
        }
    }
}

/// The pod monitors of a runroot: `crius-helper monitor` processes whose
/// working directory (their monitor directory) is under it.
pub fn monitor_pids(runroot: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(p.path().join("cwd")).unwrap_or_default();
        if cmd.split(|b| *b == 0).any(|a| a == b"monitor") && cwd.starts_with(runroot) {
            out.push(pid);
        }
    }
    out
}

/// A systemd unit's `ActiveState` (`systemctl show`): `active` while a
/// pod's slice or a container's scope lives; `inactive` for one stopped,
/// unloaded or never made (systemd loads any slice name on demand, so
/// `LoadState` says nothing for slices); `failed` is not gone.
pub fn unit_active_state(unit: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-p", "ActiveState", "--value", unit])
        .output()
        .expect("systemctl (the systemd driver's tests run where systemd is init)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stops a systemd unit a test left (best effort; no systemd, nothing):
/// SIGKILL first, as crius does, since a scope's seed ignores SIGTERM.
pub fn stop_unit(unit: &str) {
    if Path::new("/run/systemd/system").is_dir() {
        let _ = Command::new("systemctl")
            .args(["kill", "--signal=SIGKILL", unit])
            .status();
        let _ = Command::new("systemctl").args(["stop", unit]).status();
        let _ = Command::new("systemctl")
            .args(["reset-failed", unit])
            .status();
    }
}

/// The cgroup directories pod `id` has or would have, named and placed as
/// crius does for either driver.
pub fn pod_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    use crius::cgroups::Cgroups;
    use crius::config::CgroupDriver;
    let mut out = Vec::new();
    for driver in [CgroupDriver::Cgroupfs, CgroupDriver::Systemd] {
        let cgroups = Cgroups::detect(driver);
        if let Ok(rel) = cgroups.pod_path("", id) {
            out.extend(cgroups.dirs(&rel).unwrap_or_default());
        }
    }
    out
}

/// Removes the cgroups of the pods a test left (a killed daemon never
/// removed them); the systemd driver's slices are stopped.
fn remove_pod_cgroups(pods: &Path) {
    use crius::cgroups::Cgroups;
    use crius::config::CgroupDriver;
    let ids = std::fs::read_dir(pods)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    for id in ids {
        if let Ok(rel) = Cgroups::detect(CgroupDriver::Systemd).pod_path("", &id)
            && let Some(unit) = rel.rsplit('/').next()
        {
            stop_unit(unit);
        }
        for pod in pod_cgroup_dirs(&id) {
            // Killed processes may take a moment to leave.
            for _ in 0..50 {
                if !pod.is_dir() {
                    break;
                }
                for child in std::fs::read_dir(&pod).into_iter().flatten().flatten() {
                    let _ = std::fs::remove_dir(child.path());
                }
                if std::fs::remove_dir(&pod).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Kills the `crius pod-init` of every pod PID namespace pinned under `pods`.
fn kill_pod_inits(pods: &Path) {
    use std::os::unix::fs::MetadataExt;
    let pinned: Vec<u64> = std::fs::read_dir(pods)
        .map(|d| {
            d.flatten()
                .filter_map(|p| std::fs::metadata(p.path().join("ns/pid")).ok())
                .map(|m| m.ino())
                .collect()
        })
        .unwrap_or_default();
    if pinned.is_empty() {
        return;
    }
    for proc_entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let ns = std::fs::metadata(proc_entry.path().join("ns/pid")).map(|m| m.ino());
        let is_init = std::fs::read(proc_entry.path().join("cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"pod-init"));
        if is_init && ns.is_ok_and(|i| pinned.contains(&i)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Waits for a child to exit, or gives up after `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A runtime client over one bare HTTP/2 connection: unlike a tonic
/// `Channel`, it keeps no deadline of its own, so what an expired
/// `grpc-timeout` answers is the server's answer alone.
pub async fn bare_runtime(socket: &Path) -> RuntimeServiceClient<BareService> {
    RuntimeServiceClient::with_origin(
        BareService(h2_connection(socket).await),
        "http://localhost".parse().expect("origin"),
    )
}

/// One HTTP/2 connection to the daemon's socket, driven by a task of its own.
pub async fn h2_connection(
    socket: &Path,
) -> hyper::client::conn::http2::SendRequest<tonic::body::Body> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// The gRPC status of calling `path` with `message` (a serialized request)
/// on a bare HTTP/2 connection, with `grpc-timeout: timeout` when given:
/// `(code, message)`, or `None` for an answer still open after `open_for`
/// (a stream a handler answered); a connection that failed answers code
/// `transport` with hyper's error.
pub async fn grpc_status(
    send: &mut hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    path: &str,
    message: &[u8],
    timeout: Option<&str>,
    open_for: Duration,
) -> Option<(String, String)> {
    use http_body_util::BodyExt;
    let len = u32::try_from(message.len()).expect("message under 4 GiB");
    let mut body = vec![0];
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(message);
    let mut req = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    let req = req
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .expect("request");
    let resp = match send.send_request(req).await {
        Ok(resp) => resp,
        Err(e) => return Some(("transport".into(), e.to_string())),
    };
    let field = |h: &http::HeaderMap, k: &str| {
        h.get(k)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    if let Some(code) = field(resp.headers(), "grpc-status") {
        let msg = field(resp.headers(), "grpc-message").unwrap_or_default();
        return Some((code, msg));
    }
    let body = tokio::time::timeout(open_for, resp.into_body().collect())
        .await
        .ok()?
        .expect("body");
    let trailers = body.trailers().cloned().unwrap_or_default();
    Some((
        field(&trailers, "grpc-status").unwrap_or_default(),
        field(&trailers, "grpc-message").unwrap_or_default(),
    ))
}

/// See [`bare_runtime`].
#[derive(Clone)]
pub struct BareService(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for BareService {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A gRPC channel over a unix socket.
pub async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::1]:0")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect to crius socket")
}

/// The messages of a `Stream*` list RPC, each message's items, checking
/// every message holds at least one (as the CRI asks).
pub async fn stream_batches<T, I>(
    mut s: tonic::Streaming<T>,
    items: impl Fn(T) -> Vec<I>,
) -> Vec<Vec<I>> {
    let mut out = Vec::new();
    while let Some(msg) = s.message().await.expect("stream message") {
        let batch = items(msg);
        assert!(!batch.is_empty(), "a message without items");
        out.push(batch);
    }
    out
}

/// Polls `check` until it returns `Some`, or panics naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Status condition `kind` from a Status response.
pub fn condition(resp: &StatusResponse, kind: &str) -> RuntimeCondition {
    resp.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == kind))
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} condition in {resp:?}"))
}

/// A pod config as kubelet sends it: metadata, log directory, labels.
pub fn pod_config(name: &str, namespace: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: namespace.into(),
            uid: format!("uid-{namespace}-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: String::new(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

/// A container config running `command` from `image`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        ..Default::default()
    }
}

/// A minimal bridge network config using the real CNI plugins.
pub fn bridge_conflist(name: &str, bridge: &str, subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// (min, p50, p90, p99, max) of milliseconds (nearest rank).
pub fn percentiles(ms: &[f64]) -> (f64, f64, f64, f64, f64) {
    let mut v = ms.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (v[0], at(0.50), at(0.90), at(0.99), v[v.len() - 1])
}

/// `key` from the environment as a number, or `default` when unset; a
/// value that is not a number stops the test (a typo must not run the default).
pub fn env_number(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?}: want a number")),
        Err(_) => default,
    }
}

/// The trimmed contents of `path` (a cgroup or /proc file); a read error
/// stops the test, naming the path.
pub fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .trim()
        .to_string()
}
