//! A daemon with busybox pulled and one pod, and the container calls the
//! container tests make on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::testenv::testenv;
use super::*;

pub struct Env {
    pub d: Daemon,
    pub rt: Runtime,
    pub pod: String,
    pub logs: PathBuf,
    pub image: String,
}

/// A daemon with busybox pulled and one host-network pod (no CNI needed).
pub async fn env(name: &str) -> Env {
    env_with(name, NamespaceMode::Container, &[]).await
}

/// [`env`] with the pod's PID namespace mode (`POD` shares one among its
/// containers) and extra environment for the daemon.
pub async fn env_with(name: &str, pid: NamespaceMode, daemon_env: &[(&str, &str)]) -> Env {
    env_built(name, pid, |mut b| {
        for (k, v) in daemon_env {
            b = b.env(k, v);
        }
        b
    })
    .await
}

/// [`env`] with the pod's PID namespace mode and the daemon built by
/// `build` (extra config, environment).
pub async fn env_built(
    name: &str,
    pid: NamespaceMode,
    build: impl FnOnce(DaemonBuilder) -> DaemonBuilder,
) -> Env {
    let d = build(Daemon::builder().registries(&testenv().registries_conf())).start();
    env_on(d, name, pid).await
}

/// [`env`] on a daemon already started (with the test registry configured).
pub async fn env_on(d: Daemon, name: &str, pid: NamespaceMode) -> Env {
    let image = pull_busybox_at(&d.paths.socket)
        .await
        .expect("pull busybox");
    let mut rt = d.runtime().await;
    let logs = d.paths.base.join("logs");
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host_pod(name, &logs, pid)),
            ..Default::default()
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    println!("cgroup version: {}", cgroup_version());
    Env {
        d,
        rt,
        pod,
        logs,
        image,
    }
}

pub fn cgroup_version() -> &'static str {
    let v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if v2 { "v2" } else { "v1" }
}

/// A host-network pod whose containers log under `logs`.
pub fn host_pod(name: &str, logs: &Path, pid: NamespaceMode) -> PodSandboxConfig {
    let mut p = pod_config(name, "containers");
    p.log_directory = logs.display().to_string();
    p.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                pid: pid as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    p
}

impl Env {
    pub fn config(&self, name: &str, script: &str) -> ContainerConfig {
        container_config(name, &self.image, &["/bin/sh", "-c", script])
    }

    pub async fn create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
        self.rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.pod.clone(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// Stops and removes the pod (both must succeed).
    pub async fn stop_and_remove_pod(&mut self) {
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: self.pod.clone(),
            })
            .await
            .expect("StopPodSandbox");
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: self.pod.clone(),
            })
            .await
            .expect("RemovePodSandbox");
    }

    /// Creates and starts a container `name` running `script` on a client
    /// of its own, in a task of its own: for races against pod operations.
    pub async fn spawn_run(
        &self,
        name: &str,
        script: &str,
    ) -> tokio::task::JoinHandle<Result<String, tonic::Status>> {
        let mut rt = self.d.runtime().await;
        let pod = self.pod.clone();
        let cfg = self.config(name, script);
        tokio::spawn(async move {
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(cfg),
                    sandbox_config: None,
                })
                .await?
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            Ok(id)
        })
    }

    pub async fn run(&mut self, name: &str, script: &str) -> String {
        let cfg = self.config(name, script);
        self.run_config(cfg).await
    }

    pub async fn run_config(&mut self, cfg: ContainerConfig) -> String {
        let id = self.create(cfg).await.expect("create");
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("start");
        id
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("status body")
    }

    pub async fn wait_exit(&mut self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(id).await;
            if s.state == ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(Instant::now() < deadline, "container did not exit: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn exec(&mut self, id: &str, cmd: &[&str], timeout: i64) -> ExecSyncResponse {
        self.rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .expect("exec_sync")
            .into_inner()
    }

    pub async fn sh(&mut self, id: &str, script: &str) -> (String, i32) {
        let r = self.exec(id, &["/bin/sh", "-c", script], 10).await;
        (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub async fn stop(&mut self, id: &str, timeout: i64) {
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .expect("stop");
    }

    pub async fn remove(&mut self, id: &str) {
        self.rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("remove");
    }

    pub async fn list(&mut self, filter: ContainerFilter) -> Vec<Container> {
        self.rt
            .list_containers(ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .expect("list")
            .into_inner()
            .containers
    }

    pub fn container_cgroup(&self, id: &str, controller: &str) -> PathBuf {
        // The default parent of each driver: /crius, crius.slice (where
        // the container is the scope crius-<id>.scope).
        let short = &id[..12];
        cgroup_named(
            controller,
            &[format!("crius-{short}"), format!("crius-{short}.scope")],
        )
        .expect("container cgroup")
    }

    /// The pod's own cgroup (`crius-pod-<id>`, the slice
    /// `crius-crius_pod_<id>.slice` under systemd) in `controller`'s
    /// hierarchy (the one tree on v2).
    pub fn pod_cgroup(&self, controller: &str) -> PathBuf {
        let short = &self.pod[..12];
        cgroup_named(
            controller,
            &[
                format!("crius-crius_pod_{short}.slice"),
                format!("crius-pod-{short}"),
            ],
        )
        .expect("pod cgroup")
    }
}

/// The first cgroup directory with one of `names` under the default parent
/// of either driver (/crius, crius.slice), in `controller`'s hierarchy.
fn cgroup_named(controller: &str, names: &[String]) -> Option<PathBuf> {
    let base = if cgroup_version() == "v2" {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup").join(controller)
    };
    ["crius", "crius.slice"].iter().find_map(|parent| {
        names
            .iter()
            .find_map(|name| find_dir(&base.join(parent), name))
    })
}

/// The first directory named `name` under `dir`, depth first.
pub fn find_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy() == name {
            return Some(e.path());
        }
        if let Some(p) = find_dir(&e.path(), name) {
            return Some(p);
        }
    }
    None
}
