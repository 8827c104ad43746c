//! Containers: the record kept in the store, the rootfs, the OCI spec and
//! cgroup the daemon prepares, and the pod monitor that runs them. The
//! running state (pid, start, exit) lives in files the monitor writes under
//! `runroot/containers/<id>/`, so it is right after a daemon restart and
//! for containers that exited while the daemon was down.

pub mod events;
pub mod process;
pub mod spec;
mod stop;
mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{
    ContainerConfig, ContainerState, LinuxContainerResources, NamespaceMode, PodSandboxConfig,
};
use oci_spec::runtime::LinuxNamespaceType;
use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroups;
use crate::error::{Error, Result};
use crate::image::Images;
use crate::monitor::ExitRecord;
use crate::monitor::client::{Client, MonitorError};
use crate::monitor::proto::{self, request::Op};
use crate::sandbox::pinns::NsKind;
use crate::sandbox::{PodRecord, PodState, Pods};
use crate::storage::Storage;
use crate::store::{Store, Table};
use crate::sync::KeyedLocks;

/// One container, stored in the `containers` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    /// The image id (`sha256:` of its config).
    pub image_id: String,
    /// The digest reference (or id) of the image used.
    pub image_ref: String,
    /// Absolute log path; empty when the pod has no log directory.
    pub log_path: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The container cgroup relative to each hierarchy root.
    pub cgroup: String,
    /// Chain ids of the image layers the rootfs stacks.
    pub layers: Vec<String>,
    pub stop_signal: i32,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Current resources (updated by UpdateContainerResources).
    pub resources: Option<LinuxContainerResources>,
    /// Why StartContainer failed, for the status message.
    #[serde(default)]
    pub start_error: Option<String>,
}

/// Where a container is in its life (see `table.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunState {
    pub state: ContainerState,
    pub pid: Option<i32>,
    pub started_at: i64,
    pub exit: Option<ExitRecord>,
}

/// The node's containers.
pub struct Containers {
    store: Arc<Store>,
    dir: PathBuf,
    cgroups: Cgroups,
    locks: KeyedLocks,
    log_dir: PathBuf,
    /// ListContainers' answer, kept under a client's message limit.
    listed: crate::listing::Budget,
    /// `[runtime] restrict_oom_score_adj`.
    restrict_oom_score_adj: bool,
    /// Stops under way, by container id (see `stop.rs`).
    stopping: std::sync::Mutex<HashMap<String, Arc<stop::Stopping>>>,
    /// Every container with its run state, in memory (see `table.rs`).
    table: Arc<table::Table>,
    /// GetContainerEvents' subscribers, fed by the table.
    events: Arc<events::Events>,
    /// Per pod with containers: the task that follows its monitor's exits.
    watchers: std::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// A monitor's answer as a core error: its code says who must act.
fn monitor_err(e: MonitorError) -> Error {
    use crate::monitor::proto::Code;
    match e {
        MonitorError::Remote { code, message } => match code {
            Code::NotFound => Error::NotFound(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            // The program is missing or cannot run in the container: the
            // request's command, not a runtime fault (cri-o says Unknown,
            // containerd Unknown too); the container's content decides.
            Code::ExecFailed => Error::FailedPrecondition(message),
            Code::Internal => Error::Internal(message),
        },
        other => Error::Internal(other.to_string()),
    }
}

fn now_nanos() -> i64 {
    crate::monitor::now_nanos()
}

/// Reads a file of the image inside the rootfs, resolving symlinks as the
/// container would (never out of the rootfs); missing → empty.
fn read_in_root(root: &Path, rel: &str) -> String {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let Ok(dir) = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()) else {
        return String::new();
    };
    let Ok(fd) = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) else {
        return String::new();
    };
    let mut s = String::new();
    let mut f = std::fs::File::from(fd);
    let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut f, 4 << 20), &mut s);
    s
}

/// A signal number from an image STOPSIGNAL (`SIGTERM`, `TERM`, `15`).
fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..65).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name).to_string();
    nix::sys::signal::Signal::iterator()
        .find(|sig| sig.as_str().strip_prefix("SIG") == Some(name.as_str()))
        .map(|sig| sig as i32)
}

/// Validates `log_path` (relative, no `..`) and joins it to the pod's log
/// directory.
/// A pod without a log directory logs under `fallback/<pod id>` (the
/// `[runtime] log_dir` setting).
fn log_path(
    pod: &PodSandboxConfig,
    c: &ContainerConfig,
    fallback: &Path,
    pod_id: &str,
) -> Result<String> {
    if c.log_path.is_empty() {
        return Ok(String::new());
    }
    let dir = if pod.log_directory.is_empty() {
        fallback.join(pod_id).display().to_string()
    } else {
        pod.log_directory.clone()
    };
    if !dir.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "log directory {dir:?} is not absolute"
        )));
    }
    let rel = Path::new(&c.log_path);
    if rel.is_absolute()
        || rel
            .components()
            .any(|p| !matches!(p, std::path::Component::Normal(_)))
    {
        return Err(Error::InvalidArgument(format!(
            "log path {:?} must stay inside the pod's log directory",
            c.log_path
        )));
    }
    Ok(Path::new(&dir).join(rel).display().to_string())
}

/// A container's share of a ListContainers answer.
fn list_bytes(c: &ContainerRecord) -> usize {
    crate::listing::entry_bytes(&k8s_cri::v1::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: c.config.metadata.clone(),
        image: c.config.image.clone(),
        image_ref: c.image_ref.clone(),
        state: 0,
        created_at: c.created_at,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        image_id: c.image_id.clone(),
    })
}

fn container_name(c: &ContainerConfig) -> Result<(String, u32)> {
    let m = c
        .metadata
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("container config needs metadata".into()))?;
    if m.name.is_empty() {
        return Err(Error::InvalidArgument(
            "container metadata.name is empty".into(),
        ));
    }
    Ok((m.name.clone(), m.attempt))
}

impl Containers {
    /// Records in the store; state files under `runroot/containers`.
    pub fn new(
        store: Arc<Store>,
        runroot: &Path,
        cgroups: Cgroups,
        config: &crate::config::RuntimeConfig,
    ) -> Containers {
        let log_dir = &config.log_dir;
        let dir = runroot.join("containers");
        let records: Vec<ContainerRecord> = store
            .list::<ContainerRecord>(Table::Containers)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let listed = crate::listing::Budget::new("containers", crate::listing::ANSWER_LIMIT);
        for c in &records {
            listed.count_existing(list_bytes(c));
        }
        let events = Arc::new(events::Events::new(config.container_events_buffer));
        Containers {
            log_dir: log_dir.to_path_buf(),
            store,
            table: Arc::new(table::Table::load(&dir, records, events.clone())),
            events,
            dir,
            cgroups,
            locks: KeyedLocks::default(),
            listed,
            restrict_oom_score_adj: config.restrict_oom_score_adj,
            stopping: Default::default(),
            watchers: Default::default(),
        }
    }

    /// Follows the monitors of every pod that has containers (at start).
    pub fn watch_all(&self, pods: &Pods) {
        let mut seen = std::collections::HashSet::new();
        for c in self.list().unwrap_or_default() {
            if seen.insert(c.pod_id.clone()) {
                self.watch(pods, &c.pod_id);
            }
        }
    }

    /// Starts following `pod_id`'s monitor unless already: its exit events
    /// keep the table current; while it is not reachable the table reads
    /// the files, and the watcher tries again every second.
    fn watch(&self, pods: &Pods, pod_id: &str) {
        let Ok(mut watchers) = self.watchers.lock() else {
            return;
        };
        if watchers.contains_key(pod_id) {
            return;
        }
        let (table, client, pod) = (
            self.table.clone(),
            Self::monitor(pods, pod_id),
            pod_id.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                if let Ok(mut events) = client.subscribe().await {
                    table.set_watched(&pod, true);
                    while let Ok(Some(ev)) = events.next().await {
                        table.exited(
                            &ev.id,
                            ExitRecord {
                                exit_code: ev.exit_code,
                                finished_at: ev.finished_at,
                                oom_killed: ev.oom_killed,
                            },
                        );
                    }
                    table.set_watched(&pod, false);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        watchers.insert(pod_id.to_string(), task.abort_handle());
    }

    /// Stops following a removed pod's monitor.
    fn unwatch(&self, pod_id: &str) {
        if let Ok(mut watchers) = self.watchers.lock()
            && let Some(w) = watchers.remove(pod_id)
        {
            w.abort();
        }
        self.table.set_watched(pod_id, false);
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where a container's OCI spec (`config.json`) is.
    pub fn spec_path(&self, id: &str) -> PathBuf {
        self.state_dir(id).join("config.json")
    }

    /// The pod's monitor (see [`crate::monitor::dir`]).
    fn monitor(pods: &Pods, pod_id: &str) -> Client {
        Client::new(&crate::monitor::dir(pods.runroot(), pod_id))
    }

    /// All containers.
    pub fn list(&self) -> Result<Vec<Arc<ContainerRecord>>> {
        Ok(self.table.all()?.into_iter().map(|(c, _)| c).collect())
    }

    /// A new GetContainerEvents subscriber.
    pub fn subscribe(&self) -> events::Subscription {
        self.events.subscribe()
    }

    /// Pod monitors whose events the daemon receives now.
    pub fn monitors_followed(&self) -> usize {
        self.table.subscribed()
    }

    /// GetContainerEvents subscribers now.
    pub fn event_subscribers(&self) -> usize {
        self.events.subscribers()
    }

    /// All containers with their run state.
    pub fn list_with_state(&self) -> Result<Vec<(Arc<ContainerRecord>, RunState)>> {
        self.table.all()
    }

    /// The container with this id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        self.table.get(id).map(|(c, _)| c)
    }

    /// Where a container is in its life.
    pub fn run_state(&self, c: &ContainerRecord) -> RunState {
        match self.table.get(&c.id) {
            Ok((_, st)) => st,
            Err(_) => table::run_state_from_files(&self.dir, c),
        }
    }

    /// Creates a container in a ready pod; it waits for StartContainer.
    pub async fn create(
        &self,
        pods: &Pods,
        images: &Images,
        storage: &Storage,
        pod_id: &str,
        config: ContainerConfig,
        sandbox_config: Option<PodSandboxConfig>,
    ) -> Result<String> {
        let (name, attempt) = container_name(&config)?;
        let pod = pods.get(pod_id)?;
        // A pod's stop or removal waits for creates under way, and a create
        // that comes after finds the pod gone or not ready: never a
        // container in a pod whose namespaces are being torn down.
        let _pod = pods.shared(&pod.id).await;
        let pod = pods.get(&pod.id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::InvalidArgument("container image is empty".into()));
        }
        let image = images
            .find(&image_name)?
            .ok_or_else(|| Error::NotFound(format!("image {image_name:?} not found")))?;
        let pod_cfg = sandbox_config.unwrap_or_else(|| pod.config.clone());
        let log_path = log_path(&pod_cfg, &config, &self.log_dir, &pod.id)?;
        let _one = self
            .locks
            .lock(&format!("{}/{name}/{attempt}", pod.id))
            .await;
        // kubelet retries a create it gave up on with the same pod, name
        // and attempt: it gets what the first call made (which ran on to
        // the end), not "name is reserved".
        if let Some(c) = self.table.named(&pod.id, &name, attempt)? {
            tracing::info!(container_id = %c.id, name = %name, attempt, "CreateContainer retried: the first call's container");
            return Ok(c.id.clone());
        }
        let id = crate::ids::new_id()?;
        let pod_cgroup = pod
            .cgroup
            .clone()
            .ok_or_else(|| Error::FailedPrecondition("pod has no cgroup".into()))?;
        let mut record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            config: config.clone(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or(image.id.clone()),
            log_path,
            created_at: now_nanos(),
            cgroup: format!("{pod_cgroup}/crius-{}", &id[..12]),
            layers: image.layers.iter().map(|l| l.chain_id.clone()).collect(),
            stop_signal: image
                .config
                .config
                .stop_signal
                .as_deref()
                .and_then(parse_signal)
                .unwrap_or(libc::SIGTERM),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
            start_error: None,
        };
        // Recorded first: a crash mid-create leaves something to remove.
        let share = list_bytes(&record);
        self.listed.reserve(share)?;
        if let Err(e) = self.store.put(Table::Containers, &id, &record) {
            self.listed.release(share);
            return Err(e.into());
        }
        self.table.insert(record.clone())?;
        match self
            .set_up(pods, images, storage, &pod, &image, &mut record)
            .await
        {
            Ok(()) => {
                self.store.put(Table::Containers, &id, &record)?;
                self.table.put_record(record)?;
                self.table.announce_created(&id);
                tracing::info!(container_id = %id, pod_id = %pod.id, name = %name, "container created");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(container_id = %id, error = %e, "container create failed; cleaning up");
                self.tear_down(pods, storage, &record).await;
                let _ = self.store.delete(Table::Containers, &id);
                self.table.remove(&id);
                self.listed.release(share);
                Err(e)
            }
        }
    }

    async fn set_up(
        &self,
        pods: &Pods,
        images: &Images,
        storage: &Storage,
        pod: &PodRecord,
        image: &crate::image::record::ImageRecord,
        record: &mut ContainerRecord,
    ) -> Result<()> {
        let id = record.id.clone();
        let t = std::time::Instant::now();
        let step = |what: &str| tracing::debug!(container_id = %id, elapsed_us = t.elapsed().as_micros() as u64, "{what}");
        let layers = record
            .layers
            .iter()
            .map(|c| images.layer_dir(c))
            .collect::<Result<Vec<_>>>()?;
        let privileged = spec::privileged(&record.config);
        let devices = crate::sync::blocking(|| host_devices(&record.config, privileged))?;
        // The cgroup with its limits (before any process joins it) is made
        // on a blocking thread while the rootfs is mounted and the spec
        // written; it is always waited for, so a failure of either leaves
        // tear_down nothing half-made.
        let cgroup_job = {
            let (cgroups, path) = (self.cgroups.clone(), record.cgroup.clone());
            let resources = record.resources.clone().unwrap_or_default();
            let devices = devices.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                cgroups.create(&path).map_err(internal)?;
                cgroups
                    .apply(&path, &resources)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                cgroups
                    .restrict_devices(&path, privileged, &devices)
                    .map_err(internal)
            })
        };
        // Mounts, file reads and writes: off the async workers.
        let prepared = crate::sync::blocking(|| {
            self.write_spec(pods, storage, pod, image, record, &layers, devices, &step)
        });
        let cgroup = cgroup_job.await.map_err(internal).and_then(|r| r);
        let dir = prepared?;
        cgroup?;
        step("cgroup ready");
        self.create_in_monitor(pods, pod, record, &dir, &step).await
    }

    /// Mounts the rootfs, resolves the user and writes `config.json` (and
    /// the seccomp program) into the container's state directory, returned.
    #[allow(clippy::too_many_arguments)]
    fn write_spec(
        &self,
        pods: &Pods,
        storage: &Storage,
        pod: &PodRecord,
        image: &crate::image::record::ImageRecord,
        record: &mut ContainerRecord,
        layers: &[PathBuf],
        devices: Vec<spec::HostDevice>,
        step: &impl Fn(&str),
    ) -> Result<PathBuf> {
        let id = record.id.clone();
        let config = &record.config;
        let rootfs = storage.create_rootfs(&id, layers).map_err(internal)?;
        step("rootfs mounted");
        let sec = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let run = &image.config.config;
        let user_req = process::UserRequest {
            run_as_user: sec.run_as_user.as_ref().map(|v| v.value),
            run_as_username: sec.run_as_username.clone(),
            run_as_group: sec.run_as_group.as_ref().map(|v| v.value),
            supplemental_groups: sec.supplemental_groups.clone(),
            policy: if sec.supplemental_groups_policy == 1 {
                process::GroupsPolicy::Strict
            } else {
                process::GroupsPolicy::Merge
            },
        };
        let user = process::resolve_user(
            &user_req,
            run.user.as_deref().unwrap_or(""),
            &read_in_root(&rootfs, "etc/passwd"),
            &read_in_root(&rootfs, "etc/group"),
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        record.uid = user.uid;
        record.gid = user.gid;
        record.additional_gids = user.additional_gids.clone();
        let args = process::command(run, &config.command, &config.args)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let env_pairs: Vec<(String, String)> = config
            .envs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let env = process::environment(run, &env_pairs);
        let pod_dir = pods.pod_dir(&pod.id);
        let mut pod_namespaces = Vec::new();
        if !pod.host_network {
            pod_namespaces.push((
                LinuxNamespaceType::Network,
                pods.ns_path(&pod.id, NsKind::Net),
            ));
            pod_namespaces.push((LinuxNamespaceType::Uts, pods.ns_path(&pod.id, NsKind::Uts)));
        }
        if !pod.host_ipc {
            pod_namespaces.push((LinuxNamespaceType::Ipc, pods.ns_path(&pod.id, NsKind::Ipc)));
        }
        let ns_opts = sec.namespace_options.clone().unwrap_or_default();
        let pid = match NamespaceMode::try_from(ns_opts.pid) {
            Ok(NamespaceMode::Pod) if pods.ns_path(&pod.id, NsKind::Pid).exists() => {
                let proc = pods.proc_pin(&pod.id);
                // PID 1 of the pod shows in its /proc while the pod runs;
                // a pod made before crius pinned /proc has none.
                if !proc.join("1").exists() {
                    return Err(Error::FailedPrecondition(format!(
                        "pod {} has no /proc of its PID namespace (made by an older crius, or its init is gone); recreate the pod",
                        pod.id
                    )));
                }
                spec::PidNamespace::Pod {
                    ns: pods.ns_path(&pod.id, NsKind::Pid),
                    proc,
                }
            }
            Ok(NamespaceMode::Node) => spec::PidNamespace::Node,
            Ok(NamespaceMode::Target) => {
                let target = self.get(&ns_opts.target_id)?;
                let st = self.run_state(&target);
                let tpid = st
                    .pid
                    .filter(|_| st.state == ContainerState::ContainerRunning)
                    .ok_or_else(|| {
                        Error::FailedPrecondition(format!(
                            "target container {} is not running",
                            target.id
                        ))
                    })?;
                spec::PidNamespace::Target(PathBuf::from(format!("/proc/{tpid}/ns/pid")))
            }
            _ => spec::PidNamespace::Container,
        };
        let shm = if pod.host_ipc {
            Some(PathBuf::from("/dev/shm"))
        } else {
            Some(pods.shm_path(&pod.id))
        };
        let mut host_mounts_ok = Vec::new();
        for m in &config.mounts {
            // Like containerd and cri-o: a missing host directory is created.
            let p = Path::new(&m.host_path);
            if p.is_absolute() && !p.exists() {
                std::fs::create_dir_all(p).map_err(|e| {
                    Error::InvalidArgument(format!("mount host path {}: {e}", m.host_path))
                })?;
            }
            host_mounts_ok.push(p);
        }
        let v2 = self.cgroups.version() == "v2";
        let input = spec::SpecInput {
            config,
            args,
            env,
            image_workdir: run.working_dir.clone(),
            user: &user,
            rootfs: &rootfs,
            pod_namespaces,
            pid,
            pod_files: vec![
                ("/etc/resolv.conf", pod_dir.join("resolv.conf")),
                ("/etc/hostname", pod_dir.join("hostname")),
                ("/etc/hosts", pod_dir.join("hosts")),
            ],
            shm,
            cgroups_path: record.cgroup.clone(),
            cgroup_namespace: v2,
            devices,
        };
        let mut oci = spec::build(&input).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let dir = self.state_dir(&id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        if let Some(profile) = seccomp_profile(&sec)? {
            let program = crate::executor::seccomp::compile(&profile)
                .map_err(|e| Error::InvalidArgument(format!("seccomp profile: {e}")))?;
            std::fs::write(dir.join("seccomp.bpf"), program.to_bytes()).map_err(internal)?;
            if let Some(linux) = oci.linux_mut() {
                linux.set_seccomp(Some(profile));
            }
        }
        let json = serde_json::to_vec_pretty(&oci).map_err(internal)?;
        std::fs::write(dir.join("config.json"), json).map_err(internal)?;
        if !record.log_path.is_empty()
            && let Some(parent) = Path::new(&record.log_path).parent()
        {
            std::fs::create_dir_all(parent).map_err(internal)?;
        }
        step("spec written");
        Ok(dir)
    }

    /// Has the pod's monitor create the container's process from the spec
    /// in `dir`.
    async fn create_in_monitor(
        &self,
        pods: &Pods,
        pod: &PodRecord,
        record: &ContainerRecord,
        dir: &Path,
        step: &impl Fn(&str),
    ) -> Result<()> {
        let (id, config) = (&record.id, &record.config);
        let monitor = Self::monitor(pods, &pod.id);
        monitor.ensure_running().await.map_err(monitor_err)?;
        self.watch(pods, &pod.id);
        step("monitor ready");
        let cgroup_dirs = self
            .cgroups
            .dirs(&record.cgroup)
            .map_err(internal)?
            .into_iter()
            .map(|d| d.display().to_string())
            .collect();
        let resp = monitor
            .call(Op::Create(proto::Create {
                id: id.clone(),
                dir: dir.display().to_string(),
                log_path: record.log_path.clone(),
                cgroup_dirs,
                stdin: config.stdin,
                stdin_once: config.stdin_once,
                clamp_oom_score_adj: self.restrict_oom_score_adj,
            }))
            .await
            .map_err(|e| match monitor_err(e) {
                Error::Internal(m) => Error::Internal(format!("creating container: {m}")),
                other => other,
            })?;
        step("container set up");
        self.table.created(id, resp.pid);
        for w in resp.warnings {
            tracing::warn!(container_id = %id, "{w}");
        }
        Ok(())
    }

    /// Undoes create, best effort: process, rootfs, cgroup, state.
    async fn tear_down(&self, pods: &Pods, storage: &Storage, c: &ContainerRecord) {
        let monitor = Self::monitor(pods, &c.pod_id);
        let _ = monitor
            .call(Op::Forget(proto::ContainerRef { id: c.id.clone() }))
            .await;
        crate::sync::blocking(|| {
            if let Err(e) = storage.remove_rootfs(&c.id) {
                tracing::warn!(container_id = %c.id, error = %e, "removing rootfs");
            }
            self.kill_cgroup(c);
            if let Err(e) = self.cgroups.remove(&c.cgroup) {
                tracing::warn!(container_id = %c.id, error = %e, "removing cgroup");
            }
            let _ = std::fs::remove_dir_all(self.state_dir(&c.id));
        });
    }

    /// SIGKILLs whatever is left in the container's cgroup (processes that
    /// outlived the init in a shared PID namespace).
    fn kill_cgroup(&self, c: &ContainerRecord) {
        crate::sync::blocking(|| self.kill_cgroup_now(c))
    }

    fn kill_cgroup_now(&self, c: &ContainerRecord) {
        for dir in self.cgroups.dirs(&c.cgroup).unwrap_or_default() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Starts a created container.
    pub async fn start(&self, pods: &Pods, id: &str) -> Result<()> {
        let c = self.get(id)?;
        // Ordered against the pod's stop and removal (see `create`).
        let _pod = pods.shared(&c.pod_id).await;
        let c = self.get(&c.id)?;
        let _one = self.locks.lock(&c.id).await;
        if pods.get(&c.pod_id)?.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                c.pod_id
            )));
        }
        let st = self.run_state(&c);
        if st.state != ContainerState::ContainerCreated {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not in created state",
                c.id
            )));
        }
        let monitor = Self::monitor(pods, &c.pod_id);
        match monitor
            .call(Op::Start(proto::ContainerRef { id: c.id.clone() }))
            .await
        {
            Ok(r) => {
                self.table.started(&c.id, r.started_at);
                tracing::info!(container_id = %c.id, "container started");
                Ok(())
            }
            Err(e) => {
                let mut c = (*c).clone();
                c.start_error = Some(e.to_string());
                self.store.put(Table::Containers, &c.id, &c)?;
                self.table.put_record(c)?;
                Err(match monitor_err(e) {
                    Error::Internal(m) => Error::Internal(format!("starting container: {m}")),
                    other => other,
                })
            }
        }
    }

    /// Removes a container (stopping it first); an unknown id is fine.
    pub async fn remove(&self, pods: &Pods, storage: &Storage, id: &str) -> Result<()> {
        let c = match self.get(id) {
            Ok(c) => c,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _one = self.locks.lock(&c.id).await;
        if self.run_state(&c).state != ContainerState::ContainerExited {
            // Joins (and hurries) a stop under way rather than waiting it
            // out; a hung monitor's container is killed through its cgroup.
            self.stop_by(pods, &c, tokio::time::Instant::now()).await?;
        }
        self.tear_down(pods, storage, &c).await;
        self.store.delete(Table::Containers, &c.id)?;
        self.table.remove(&c.id);
        self.listed.release(list_bytes(&c));
        tracing::info!(container_id = %c.id, "container removed");
        Ok(())
    }

    /// Stops every container of a pod (StopPodSandbox).
    pub async fn stop_pod(&self, pods: &Pods, pod_id: &str) -> Result<()> {
        for c in self.list()?.into_iter().filter(|c| c.pod_id == pod_id) {
            let _one = self.locks.lock(&c.id).await;
            self.stop_by(pods, &c, tokio::time::Instant::now()).await?;
        }
        Ok(())
    }

    /// Removes every container of a pod and its monitor (RemovePodSandbox).
    pub async fn remove_pod(&self, pods: &Pods, storage: &Storage, pod_id: &str) -> Result<()> {
        for c in self.list()?.into_iter().filter(|c| c.pod_id == pod_id) {
            self.remove(pods, storage, &c.id).await?;
        }
        self.unwatch(pod_id);
        Self::monitor(pods, pod_id).retire().await;
        Ok(())
    }

    /// Changes the cgroup limits of a container live.
    pub async fn update(&self, id: &str, resources: LinuxContainerResources) -> Result<()> {
        let c = self.get(id)?;
        let _one = self.locks.lock(&c.id).await;
        if self.run_state(&c).state == ContainerState::ContainerExited {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        self.cgroups
            .apply(&c.cgroup, &resources)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut c = (*c).clone();
        c.resources = Some(resources);
        self.store.put(Table::Containers, &c.id, &c)?;
        self.table.put_record(c)?;
        Ok(())
    }

    /// Makes the monitor reopen the log file (after kubelet rotated it).
    pub async fn reopen_log(&self, pods: &Pods, id: &str) -> Result<()> {
        let c = self.running(id)?;
        Self::monitor(pods, &c.pod_id)
            .call(Op::ReopenLog(proto::ContainerRef { id: c.id.clone() }))
            .await
            .map_err(monitor_err)?;
        Ok(())
    }

    /// Runs a command in the container, returning its output and exit code;
    /// a timeout kills it and reports a non-zero code.
    pub async fn exec_sync(
        &self,
        pods: &Pods,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        if cmd.is_empty() || cmd[0].is_empty() {
            return Err(Error::InvalidArgument("exec command is empty".into()));
        }
        let c = self.running(id)?;
        let r = Self::monitor(pods, &c.pod_id)
            .call(Op::ExecSync(proto::Exec {
                id: c.id.clone(),
                cmd,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }))
            .await
            .map_err(|e| match monitor_err(e) {
                Error::Internal(m) => Error::Internal(format!("exec: {m}")),
                other => other,
            })?;
        let mut stderr = r.stderr;
        let mut code = r.exit_code;
        if r.timed_out {
            stderr.extend_from_slice(
                format!("command timed out after {}s\n", timeout.as_secs_f64()).as_bytes(),
            );
            if code == 0 {
                code = 137;
            }
        }
        Ok((r.stdout, stderr, code))
    }

    /// A running container, or FailedPrecondition.
    fn running(&self, id: &str) -> Result<Arc<ContainerRecord>> {
        let c = self.get(id)?;
        if self.run_state(&c).state != ContainerState::ContainerRunning {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        Ok(c)
    }

    /// The monitor of a running container and the container's full id, for
    /// streaming sessions.
    pub fn monitor_for(&self, pods: &Pods, id: &str) -> Result<(Client, String)> {
        let c = self.running(id)?;
        Ok((Self::monitor(pods, &c.pod_id), c.id.clone()))
    }

    /// Chain ids of layers some container's rootfs stacks, so image removal
    /// never frees them.
    pub fn layers_in_use(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .list()?
            .iter()
            .flat_map(|c| c.layers.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The seccomp profile a container asked for: RuntimeDefault (also the
/// deprecated `runtime/default`, `docker/default` paths), Localhost (an
/// absolute path to an OCI profile), or none (Unconfined, unset,
/// privileged).
fn seccomp_profile(
    sec: &k8s_cri::v1::LinuxContainerSecurityContext,
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    use k8s_cri::v1::security_profile::ProfileType;
    if sec.privileged {
        return Ok(None);
    }
    #[allow(deprecated)] // old kubelets send the path form
    let path = sec.seccomp_profile_path.clone();
    let localhost = match &sec.seccomp {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => None,
            Ok(ProfileType::Unconfined) => return Ok(None),
            Ok(ProfileType::Localhost) => Some(p.localhost_ref.clone()),
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "unknown seccomp profile type {}",
                    p.profile_type
                )));
            }
        },
        None => match path.as_str() {
            "" | "unconfined" => return Ok(None),
            "runtime/default" | "docker/default" => None,
            p => match p.strip_prefix("localhost/") {
                Some(rest) => Some(rest.to_string()),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown seccomp profile {p:?}"
                    )));
                }
            },
        },
    };
    let Some(file) = localhost else {
        let caps = spec::capabilities(sec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        return Ok(Some(crate::executor::seccomp::runtime_default(&caps)));
    };
    if !file.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "seccomp localhost profile {file:?} is not an absolute path"
        )));
    }
    let text = std::fs::read(&file)
        .map_err(|e| Error::InvalidArgument(format!("seccomp profile {file}: {e}")))?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::InvalidArgument(format!("seccomp profile {file}: {e}")))
}

/// CRI `devices` (and, privileged, every host device) as spec devices.
fn host_devices(config: &ContainerConfig, privileged: bool) -> Result<Vec<spec::HostDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut add = |host: &Path, ctr: &Path, perms: &str| -> Result<bool> {
        let md = match std::fs::metadata(host) {
            Ok(m) => m,
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "device {}: {e}",
                    host.display()
                )));
            }
        };
        let ft = md.file_type();
        if !ft.is_char_device() && !ft.is_block_device() {
            return Ok(false);
        }
        let rdev = md.rdev();
        out.push(spec::HostDevice {
            host_path: host.to_path_buf(),
            container_path: ctr.to_path_buf(),
            char_device: ft.is_char_device(),
            major: libc::major(rdev) as i64,
            minor: libc::minor(rdev) as i64,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            permissions: perms.to_string(),
        });
        Ok(true)
    };
    for d in &config.devices {
        let ctr = if d.container_path.is_empty() {
            &d.host_path
        } else {
            &d.container_path
        };
        if !d.host_path.starts_with('/') || !ctr.starts_with('/') || ctr.contains("..") {
            return Err(Error::InvalidArgument(format!(
                "device {:?} -> {:?}",
                d.host_path, ctr
            )));
        }
        let host = Path::new(&d.host_path);
        if host.is_dir() {
            for e in std::fs::read_dir(host).map_err(internal)?.flatten() {
                let name = e.file_name();
                add(&e.path(), &Path::new(ctr).join(&name), &d.permissions)?;
            }
        } else if !add(host, Path::new(ctr), &d.permissions)? {
            return Err(Error::InvalidArgument(format!(
                "{} is not a device",
                d.host_path
            )));
        }
    }
    if privileged {
        let have: Vec<PathBuf> = config
            .devices
            .iter()
            .map(|d| PathBuf::from(&d.container_path))
            .collect();
        for e in std::fs::read_dir("/dev").map_err(internal)?.flatten() {
            let p = e.path();
            if have.contains(&p) || e.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let _ = add(&p, &p, "rwm");
        }
    }
    Ok(out)
}

/// Labels/state/pod filter of ListContainers.
pub fn matches_filter(
    c: &ContainerRecord,
    st: &RunState,
    f: &k8s_cri::v1::ContainerFilter,
) -> bool {
    if !f.id.is_empty() && !c.id.starts_with(&f.id) {
        return false;
    }
    if !f.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&f.pod_sandbox_id) {
        return false;
    }
    if let Some(s) = &f.state
        && s.state != st.state as i32
    {
        return false;
    }
    let labels: &HashMap<String, String> = &c.config.labels;
    crate::sandbox::labels_match(labels, &f.label_selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse() {
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn log_paths_stay_in_the_directory() {
        let pod = PodSandboxConfig {
            log_directory: "/var/log/pods/x".into(),
            ..Default::default()
        };
        let mut c = ContainerConfig {
            log_path: "app/0.log".into(),
            ..Default::default()
        };
        let fallback = Path::new("/var/log/crius/pods");
        assert_eq!(
            log_path(&pod, &c, fallback, "p1").unwrap(),
            "/var/log/pods/x/app/0.log"
        );
        let no_dir = PodSandboxConfig::default();
        assert_eq!(
            log_path(&no_dir, &c, fallback, "p1").unwrap(),
            "/var/log/crius/pods/p1/app/0.log"
        );
        for bad in ["../../etc/passwd", "/etc/passwd", "a/../../b"] {
            c.log_path = bad.into();
            assert!(log_path(&pod, &c, fallback, "p1").is_err(), "{bad}");
        }
    }
}
