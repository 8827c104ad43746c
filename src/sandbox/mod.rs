//! Pod sandboxes: pinned namespaces, CNI networking and the pod's
//! resolv.conf, hostname and hosts files.
//!
//! A pod is recorded (not ready) before anything is created for it, so a
//! crash at any point leaves a record that Stop and Remove can clean up.
//! Everything a pod owns on the node lives under `runroot/pods/<id>`.

pub mod host_ports;
pub mod pinns;
mod reconcile;
pub mod resources;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::{
    LinuxContainerResources, NamespaceMode, PodSandboxConfig, PortMapping, Protocol,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cgroups::Cgroups;
use crate::error::{Error, Result, shown};
use crate::network::cni::{Attachment, CniArgs, NetworkConf, result_ips};
use crate::network::{Network, Readiness};
use crate::store::{Store, Table};
use crate::sync::KeyedLocks;
use host_ports::{HostPort, HostPorts};
use pinns::NsKind;

/// Size of a pod's own /dev/shm (kubelet does not pass one; cri-o's default).
pub const SHM_SIZE_KIB: u64 = 64 * 1024;

/// Whether a pod is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Namespaces, network and cgroup are set up; containers may be created in it.
    Ready,
    /// Still being set up, or stopped (StopPodSandbox ran); kept until RemovePodSandbox.
    NotReady,
}

/// The network a pod was attached to, cached so DEL works after a restart
/// or a change of the CNI config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network config (name, version, plugin chain) ADD ran with, as
    /// [`crate::network::cni::NetworkConf::to_json`] gives it.
    pub conf: Value,
    /// The final ADD result, passed to DEL and CHECK as `prevResult`; `null` while ADD has not
    /// finished.
    pub result: Value,
}

/// One pod, stored in the `pods` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// 64 hex digits, random.
    pub id: String,
    /// The CRI config the pod was created with, as kubelet sent it.
    pub config: PodSandboxConfig,
    /// The `runtime_handler` kubelet asked for (a configured one; the core
    /// checks it); empty for the default.
    pub runtime_handler: String,
    /// Ready or not; see [`PodState`].
    pub state: PodState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Pod IPs from the CNI result, IPv4 first; empty for host-network pods and once the network is
    /// torn down.
    pub ips: Vec<String>,
    /// The pod uses the node's network namespace: no CNI, no pinned netns.
    pub host_network: bool,
    /// The pod uses the node's IPC namespace: no pinned ipc namespace.
    pub host_ipc: bool,
    /// Set while the pod holds an IP.
    pub network: Option<NetworkAttachment>,
    /// The pod cgroup, relative to each hierarchy root.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// PID of the pod init when the pod has its own PID namespace.
    #[serde(default)]
    pub init_pid: Option<u32>,
}

impl PodRecord {
    fn key(&self) -> String {
        identity(&self.config)
    }
}

/// The node's pods.
pub struct Pods {
    store: Arc<Store>,
    dir: PathBuf,
    cgroups: Cgroups,
    locks: KeyedLocks,
    /// ListPodSandbox's answer, kept under a client's message limit.
    listed: crate::listing::Budget,
    /// Host ports of the pods that hold a CNI attachment.
    host_ports: HostPorts,
    /// Per pod: container creates and starts hold it shared, the pod's stop
    /// and removal exclusive.
    gates: crate::sync::KeyedRwLocks,
    /// Every pod record, in memory (the store keeps them across restarts):
    /// listing and status never read the store.
    records: std::sync::RwLock<HashMap<String, Arc<PodRecord>>>,
}

/// A pod's share of a ListPodSandbox answer.
/// Moves a monitor crius just started out of the daemon's cgroup
/// ([`Cgroups::place_monitor`]). A failure is logged, not returned: the
/// monitor works where it is and only a stop of the daemon's service
/// would take it along.
pub fn place_monitor(cgroups: &Cgroups, pod_id: &str, pid: u32) {
    if let Err(e) = crate::sync::blocking(|| cgroups.place_monitor(pod_id, pid)) {
        tracing::warn!(pod_id, pid, error = %e, "the pod's monitor stays in the daemon's cgroup");
    }
}

fn list_bytes(p: &PodRecord) -> usize {
    crate::listing::entry_bytes(&k8s_cri::v1::PodSandbox {
        id: p.id.clone(),
        metadata: p.config.metadata.clone(),
        state: 0,
        created_at: p.created_at,
        labels: p.config.labels.clone(),
        annotations: p.config.annotations.clone(),
        runtime_handler: p.runtime_handler.clone(),
    })
}

fn identity(c: &PodSandboxConfig) -> String {
    let m = c.metadata.clone().unwrap_or_default();
    format!("{}/{}/{}/{}", m.namespace, m.name, m.uid, m.attempt)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn poisoned() -> Error {
    Error::Internal("pod table lock poisoned".into())
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

impl Pods {
    /// Pod state lives in the store; pod files under `runroot/pods`. The
    /// host ports held are rebuilt from the stored pods: every pod with a
    /// CNI attachment (ready, or stopped with a DEL still to succeed)
    /// holds its port rules.
    pub fn new(store: Arc<Store>, runroot: &Path, cgroups: Cgroups) -> Result<Pods> {
        let host_ports = HostPorts::default();
        for (_, pod) in store.list::<PodRecord>(Table::Pods)? {
            if pod.network.is_none() {
                continue;
            }
            let label = pod_label(&pod.config);
            if let Some(e) = host_ports.restore(&pod.id, &label, &forwarded_ports(&pod)) {
                tracing::warn!(pod_id = %pod.id, error = %e, "stored pods overlap on a host port");
            }
        }
        let pods = Pods {
            store,
            dir: runroot.join("pods"),
            cgroups,
            locks: KeyedLocks::default(),
            listed: crate::listing::Budget::new("pod sandboxes", crate::listing::ANSWER_LIMIT),
            host_ports,
            gates: Default::default(),
            records: Default::default(),
        };
        {
            let mut records = pods.records.write().map_err(|_| poisoned())?;
            for (id, p) in pods.store.list::<PodRecord>(Table::Pods)? {
                pods.listed.count_existing(list_bytes(&p));
                records.insert(id, Arc::new(p));
            }
        }
        Ok(pods)
    }

    /// A shared hold on pod `id`: its stop and removal wait for it.
    pub async fn shared(&self, id: &str) -> crate::sync::RwKeyGuard<'_> {
        self.gates.read(id).await
    }

    /// The exclusive hold on pod `id`, for its stop and removal.
    pub async fn exclusive(&self, id: &str) -> crate::sync::RwKeyGuard<'_> {
        self.gates.write(id).await
    }

    /// Where a pod's /dev/shm is mounted (none for host IPC pods).
    pub fn shm_path(&self, id: &str) -> PathBuf {
        self.pod_dir(id).join("shm")
    }

    /// The daemon's runroot.
    pub fn runroot(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// A pod's runtime directory (namespace pins, pod files, monitor).
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where the pod init mounts the /proc of a pod's PID namespace;
    /// containers sharing that namespace bind it as their /proc.
    pub fn proc_pin(&self, id: &str) -> PathBuf {
        self.pod_dir(id).join("proc")
    }

    /// Path of a pinned namespace of a pod.
    pub fn ns_path(&self, id: &str, kind: NsKind) -> PathBuf {
        self.pod_dir(id).join("ns").join(kind.name())
    }

    /// Where a pod's own user namespace is pinned (mode POD; see
    /// `pinns::pin_userns`).
    pub fn userns_path(&self, id: &str) -> PathBuf {
        self.pod_dir(id).join("ns").join(pinns::USERNS_PIN)
    }

    /// All pods.
    pub fn list(&self) -> Result<Vec<Arc<PodRecord>>> {
        let records = self.records.read().map_err(|_| poisoned())?;
        Ok(records.values().cloned().collect())
    }

    /// Stores a pod's record and keeps it in memory.
    fn save(&self, pod: &PodRecord) -> Result<()> {
        self.store.put(Table::Pods, &pod.id, pod)?;
        let mut records = self.records.write().map_err(|_| poisoned())?;
        records.insert(pod.id.clone(), Arc::new(pod.clone()));
        Ok(())
    }

    /// Deletes a pod's record, from the store and from memory.
    fn forget(&self, id: &str) -> Result<()> {
        self.store.delete(Table::Pods, id)?;
        let mut records = self.records.write().map_err(|_| poisoned())?;
        records.remove(id);
        Ok(())
    }

    /// The pod with this id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<PodRecord> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("pod sandbox id is empty".into()));
        }
        let records = self.records.read().map_err(|_| poisoned())?;
        if let Some(p) = records.get(id) {
            return Ok((**p).clone());
        }
        let mut hits = records.values().filter(|p| p.id.starts_with(id));
        match (hits.next(), hits.next()) {
            (Some(p), None) => Ok((**p).clone()),
            (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
                "pod sandbox id prefix {id:?} is ambiguous"
            ))),
            _ => Err(Error::NotFound(format!("pod sandbox {id:?} not found"))),
        }
    }

    /// Creates a ready pod, or returns the existing one for the same
    /// name/namespace/uid/attempt (a retry of a call the client gave up on).
    pub async fn run(
        &self,
        config: PodSandboxConfig,
        runtime_handler: &str,
        network: &Network,
    ) -> Result<String> {
        validate(&config)?;
        let key = identity(&config);
        let _one = self.locks.lock(&key).await;
        if let Some(p) = self
            .list()?
            .into_iter()
            .find(|p| p.key() == key && p.state == PodState::Ready)
        {
            return Ok(p.id.clone());
        }
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_network = ns.network == NamespaceMode::Node as i32;
        let host_ipc = ns.ipc == NamespaceMode::Node as i32;
        let id = crate::ids::new_id()?;
        // Before anything exists for the pod: metadata that would forge
        // CNI_ARGS pairs is refused here rather than after namespaces are made.
        if !host_network {
            CniArgs::new(k8s_pod_args(&id, &config)).map_err(|e| {
                Error::InvalidArgument(format!("pod metadata cannot be passed to CNI: {e}"))
            })?;
        }
        let mut pod = PodRecord {
            id: id.clone(),
            config,
            runtime_handler: runtime_handler.to_string(),
            state: PodState::NotReady,
            created_at: now_nanos(),
            ips: Vec::new(),
            host_network,
            host_ipc,
            network: None,
            cgroup: None,
            init_pid: None,
        };
        // Before CNI runs, and atomically against every other run: a port
        // another pod forwards is refused, not given a second DNAT rule.
        self.host_ports
            .claim(&id, &pod_label(&pod.config), &forwarded_ports(&pod))
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let started = std::time::Instant::now();
        let share = list_bytes(&pod);
        if let Err(e) = self.listed.reserve(share) {
            self.host_ports.release(&id);
            return Err(e);
        }
        if let Err(e) = self.save(&pod) {
            self.listed.release(share);
            self.host_ports.release(&id);
            return Err(e);
        }
        let mut timing = SetUpTiming::default();
        match self.set_up(&mut pod, network, &mut timing).await {
            Ok(()) => {
                pod.state = PodState::Ready;
                self.save(&pod)?;
                tracing::info!(
                    pod_id = %id, pod = %key, ips = ?pod.ips,
                    total_ms = ms(started.elapsed()),
                    namespaces_ms = ms(timing.namespaces),
                    network_ms = ms(timing.network),
                    monitor_ms = ms(timing.monitor),
                    "pod sandbox ready"
                );
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(pod_id = %id, error = %e, "pod sandbox failed; cleaning up");
                if let Err(c) = self.tear_down(&mut pod, network, true, true).await {
                    tracing::error!(pod_id = %id, error = %c, "cleanup of a failed pod");
                }
                // The record goes, so its claim must too, even if DEL failed.
                self.host_ports.release(&id);
                crate::monitor::client::Client::new(&crate::monitor::dir(self.runroot(), &id))
                    .retire()
                    .await;
                let _ = self.forget(&id);
                self.listed.release(share);
                Err(e)
            }
        }
    }

    async fn set_up(
        &self,
        pod: &mut PodRecord,
        network: &Network,
        timing: &mut SetUpTiming,
    ) -> Result<()> {
        // The pod's container monitor starts while the namespaces and the
        // network are set up, so the first CreateContainer finds it ready.
        let monitor =
            crate::monitor::client::Client::new(&crate::monitor::dir(self.runroot(), &pod.id));
        let (cgroups, pod_id) = (self.cgroups.clone(), pod.id.clone());
        let starting = tokio::spawn(async move {
            let t = std::time::Instant::now();
            match monitor.ensure_running().await {
                Ok(Some(pid)) => place_monitor(&cgroups, &pod_id, pid),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "starting the pod's monitor early"),
            }
            t.elapsed()
        });
        let r = self.set_up_node(pod, network, timing).await;
        timing.monitor = starting.await.unwrap_or_default();
        r
    }

    async fn set_up_node(
        &self,
        pod: &mut PodRecord,
        network: &Network,
        timing: &mut SetUpTiming,
    ) -> Result<()> {
        let t = std::time::Instant::now();
        let dir = self.pod_dir(&pod.id);
        crate::sync::blocking(|| std::fs::create_dir_all(dir.join("ns"))).map_err(internal)?;
        let mut kinds = Vec::new();
        if !pod.host_network {
            kinds.push(NsKind::Net);
            kinds.push(NsKind::Uts);
        }
        if !pod.host_ipc {
            kinds.push(NsKind::Ipc);
        }
        if pid_mode(&pod.config) == NamespaceMode::Pod as i32 {
            kinds.push(NsKind::Pid);
        }
        let hostname = hostname(&pod.config);
        let cgroup = self
            .cgroups
            .pod_path(cgroup_parent(&pod.config), &pod.id)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Not stored yet: a crash before the next write is cleaned up by
        // recomputing the path and finding the init through its pin.
        pod.cgroup = Some(cgroup.clone());
        // The namespaces are made by a child process; the node-side pieces
        // are made while it runs.
        let userns = userns_maps(&pod.config);
        let pinning = if kinds.is_empty() && userns.is_none() {
            None
        } else {
            Some(start_pin(
                &dir.join("ns"),
                &kinds,
                &hostname,
                &sysctls(&pod.config),
                &self.proc_pin(&pod.id),
                userns.as_ref(),
            )?)
        };
        // Files, mounts and cgroup writes: off the async workers.
        let limits = pod_limits_of(&pod.config);
        let node_side = crate::sync::blocking(|| {
            self.cgroups
                .create(&cgroup, &[], &Default::default())
                .map_err(internal)?;
            if let Some(limits) = &limits {
                self.cgroups.apply(&cgroup, limits, 0)?;
            }
            if !pod.host_ipc {
                pinns::mount_shm(&self.shm_path(&pod.id), SHM_SIZE_KIB).map_err(internal)?;
            }
            write_file(&dir.join("hostname"), &format!("{hostname}\n"))?;
            write_file(&dir.join("resolv.conf"), &resolv_conf(&pod.config)?)
        });
        if let Some(child) = pinning {
            pod.init_pid = finish_pin(child).await?;
        }
        node_side?;
        if let Some(pid) = pod.init_pid {
            let placed =
                crate::sync::blocking(|| self.cgroups.place_pod_init(&cgroup, &pod.id, pid));
            if let Err(e) = placed {
                tracing::warn!(pod_id = %pod.id, pid, error = %e, "the pod init stays in the daemon's cgroup");
            }
        }
        timing.namespaces = t.elapsed();
        let t = std::time::Instant::now();
        if !pod.host_network {
            let file = match network.readiness() {
                Readiness::Ready(f) => f,
                Readiness::NotReady(why) => {
                    return Err(Error::FailedPrecondition(format!(
                        "network not ready: {why}"
                    )));
                }
            };
            let conf = NetworkConf::from_json(&file.raw).map_err(internal)?;
            let invoker = network.invoker();
            // Recorded before ADD: a crash mid-ADD still gets a DEL.
            pod.network = Some(NetworkAttachment {
                conf: conf.to_json(),
                result: Value::Null,
            });
            self.save(pod)?;
            let args = CniArgs::new(k8s_pod_args(&pod.id, &pod.config))?;
            let result = invoker.add(&conf, &self.attachment(pod, args)).await?;
            // Tests: a crash with the network added and the pod not ready.
            crate::fault::crash_point("pod-after-network");
            timing.network = t.elapsed();
            pod.ips = result_ips(&result);
            pod.network = Some(NetworkAttachment {
                conf: conf.to_json(),
                result,
            });
        }
        let hosts = hosts_file(&hostname, pod.ips.first().map(String::as_str));
        crate::sync::blocking(|| write_file(&dir.join("hosts"), &hosts))
    }

    /// What a CNI call for `pod` passes, with its checked `CNI_ARGS`.
    fn attachment(&self, pod: &PodRecord, args: CniArgs) -> Attachment {
        let mut capabilities = serde_json::Map::new();
        // Only mappings with a host port are forwarded. Run checked them
        // all; an invalid one of an older record is left out, so that it
        // cannot make every DEL fail.
        let ports: Vec<Value> = pod
            .config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .filter_map(|p| {
                let protocol = port_protocol(p).ok()?;
                check_port_mapping(p).ok()?;
                Some(json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": protocol,
                    "hostIP": p.host_ip,
                }))
            })
            .collect();
        if !ports.is_empty() {
            capabilities.insert("portMappings".into(), Value::Array(ports));
        }
        if let Some(bw) = bandwidth(&pod.config.annotations) {
            capabilities.insert("bandwidth".into(), bw);
        }
        if let Some(dns) = &pod.config.dns_config {
            capabilities.insert(
                "dns".into(),
                json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
            );
        }
        // Only a live pin is a namespace; a leftover file after a crash or
        // an unmount is not (DEL then runs without one, as CNI allows).
        let netns = self.ns_path(&pod.id, NsKind::Net);
        let live = nix::sys::statfs::statfs(&netns)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
        Attachment {
            container_id: pod.id.clone(),
            netns: if live {
                netns.display().to_string()
            } else {
                String::new()
            },
            ifname: "eth0".into(),
            args,
            capabilities,
        }
    }

    /// Releases the network (CNI DEL) and, with `all`, the namespaces,
    /// shm, cgroup and files too. Safe to repeat and to run when parts are
    /// already gone. A failed DEL stops here (the pod keeps what a retry
    /// needs) unless `force`, which a failed RunPodSandbox uses to clean up
    /// all it can.
    async fn tear_down(
        &self,
        pod: &mut PodRecord,
        network: &Network,
        all: bool,
        force: bool,
    ) -> Result<()> {
        let mut first: Option<Error> = None;
        if let Some(att) = pod.network.clone() {
            let invoker = network.invoker();
            let prev = (!att.result.is_null()).then_some(&att.result);
            // A pod recorded before CNI_ARGS were checked still gets its DEL,
            // without the pairs that are not safe to pass.
            let (args, refused) = CniArgs::lenient(k8s_pod_args(&pod.id, &pod.config));
            for e in refused {
                tracing::warn!(pod_id = %pod.id, error = %e, "CNI DEL without an unsafe argument");
            }
            let deleted = match NetworkConf::from_json(&att.conf) {
                Ok(conf) => invoker
                    .del(&conf, &self.attachment(pod, args), prev)
                    .await
                    .map_err(Error::from),
                Err(e) => Err(internal(e)),
            };
            match deleted {
                Ok(()) => {
                    pod.network = None;
                    pod.ips.clear();
                }
                Err(e) if !force => return Err(e),
                Err(e) => first = Some(e),
            }
        }
        // Ports are held while the pod may still have port rules: until DEL
        // succeeded.
        if pod.network.is_none() {
            self.host_ports.release(&pod.id);
        }
        let init = pod.init_pid.take();
        crate::sync::blocking(|| self.release_node_side(pod, init, all, first))
    }

    /// The node-side half of [`Self::tear_down`]: the pod init, the pins,
    /// mounts, cgroup and files (a /proc scan, unmounts, removals).
    fn release_node_side(
        &self,
        pod: &PodRecord,
        init: Option<u32>,
        all: bool,
        mut first: Option<Error>,
    ) -> Result<()> {
        stop_init(init, &self.ns_path(&pod.id, NsKind::Pid));
        let mut step = |r: Result<()>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        step(pinns::unpin(&self.ns_path(&pod.id, NsKind::Net)).map_err(internal));
        if all {
            for k in [NsKind::Ipc, NsKind::Uts, NsKind::Pid] {
                step(pinns::unpin(&self.ns_path(&pod.id, k)).map_err(internal));
            }
            step(pinns::unpin(&self.userns_path(&pod.id)).map_err(internal));
            step(pinns::unmount(&self.proc_pin(&pod.id)).map_err(internal));
            step(pinns::unmount(&self.shm_path(&pod.id)).map_err(internal));
            let cgroup = pod.cgroup.clone().or_else(|| {
                self.cgroups
                    .pod_path(cgroup_parent(&pod.config), &pod.id)
                    .ok()
            });
            if let Some(cg) = cgroup {
                // With what is left in it: a container cgroup a crash left.
                step(self.cgroups.kill_and_remove(&cg).map_err(internal));
            }
            match std::fs::remove_dir_all(self.pod_dir(&pod.id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => step(Err(internal(e))),
                _ => {}
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs CNI CHECK for a ready pod's network: `None` when the pod has no
    /// CNI attachment, else the outcome.
    pub async fn check_network(&self, pod: &PodRecord, network: &Network) -> Option<Result<()>> {
        let att = pod.network.as_ref().filter(|a| !a.result.is_null())?;
        let conf = match NetworkConf::from_json(&att.conf) {
            Ok(c) => c,
            Err(e) => return Some(Err(internal(e))),
        };
        let args = match CniArgs::new(k8s_pod_args(&pod.id, &pod.config)) {
            Ok(a) => a,
            Err(e) => return Some(Err(e.into())),
        };
        Some(
            network
                .invoker()
                .check(&conf, &self.attachment(pod, args), &att.result)
                .await
                .map_err(Error::from),
        )
    }

    /// Stops a pod: its IP is released and its network namespace goes.
    /// Repeating it is fine.
    pub async fn stop(&self, id: &str, network: &Network) -> Result<()> {
        let mut pod = self.get(id)?;
        let _one = self.locks.lock(&pod.key()).await;
        self.tear_down(&mut pod, network, false, false).await?;
        pod.state = PodState::NotReady;
        self.save(&pod)?;
        tracing::info!(pod_id = %pod.id, "pod sandbox stopped");
        Ok(())
    }

    /// UpdatePodSandboxResources: writes the limits of `resources` plus
    /// `overhead` (see [`resources::pod_limits`]) into the ready pod's
    /// cgroup and records them in its config, so a restarted daemon and a
    /// later resize start from them. A part the request leaves out keeps
    /// the recorded one. Values the kernel refuses (a v1 CPU quota below a
    /// container's, a memory limit below the pod's usage) are
    /// InvalidArgument and change nothing recorded.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: Option<LinuxContainerResources>,
        overhead: Option<LinuxContainerResources>,
    ) -> Result<()> {
        let pod = self.get(id)?;
        let _one = self.locks.lock(&pod.key()).await;
        let mut pod = self.get(&pod.id)?;
        if pod.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let cgroup = pod
            .cgroup
            .clone()
            .ok_or_else(|| Error::FailedPrecondition(format!("pod {} has no cgroup", pod.id)))?;
        let linux = pod.config.linux.get_or_insert_with(Default::default);
        if resources.is_some() {
            linux.resources = resources;
        }
        if overhead.is_some() {
            linux.overhead = overhead;
        }
        if let Some(limits) = pod_limits_of(&pod.config) {
            // Interface file writes: off the async workers.
            crate::sync::blocking(|| self.cgroups.apply(&cgroup, &limits, 0))?;
        }
        self.save(&pod)?;
        tracing::info!(pod_id = %pod.id, "pod sandbox resources updated");
        Ok(())
    }

    /// Removes a pod and everything it holds; an unknown id is fine.
    pub async fn remove(&self, id: &str, network: &Network) -> Result<()> {
        let mut pod = match self.get(id) {
            Ok(p) => p,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _one = self.locks.lock(&pod.key()).await;
        self.tear_down(&mut pod, network, true, false).await?;
        self.forget(&pod.id)?;
        self.listed.release(list_bytes(&pod));
        tracing::info!(pod_id = %pod.id, "pod sandbox removed");
        Ok(())
    }
}

/// What the request's shape cannot tell: the hostname the pod will get
/// (from its name when none is given) and whether each sysctl belongs to a
/// namespace the pod owns. Sizes and characters are checked at the edge
/// (`server::validate`).
fn validate(c: &PodSandboxConfig) -> Result<()> {
    let h = hostname(c);
    if h.len() > 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(Error::InvalidArgument(format!("invalid hostname {h:?}")));
    }
    let ns = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    for (key, _) in sysctls(c) {
        let name = key.replace('/', ".");
        let (namespaced, host) = if name.starts_with("net.") {
            (true, ns.network == NamespaceMode::Node as i32)
        } else if name.starts_with("kernel.shm")
            || name.starts_with("kernel.msg")
            || name == "kernel.sem"
            || name.starts_with("fs.mqueue.")
        {
            (true, ns.ipc == NamespaceMode::Node as i32)
        } else {
            (false, false)
        };
        if !namespaced {
            return Err(Error::InvalidArgument(format!(
                "sysctl {key:?} is not namespaced: only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* can be set per pod"
            )));
        }
        if host {
            return Err(Error::InvalidArgument(format!(
                "sysctl {key:?} cannot be set for a pod sharing the host's namespace"
            )));
        }
    }
    for (i, p) in c.port_mappings.iter().enumerate() {
        check_port_mapping(p)
            .map_err(|why| Error::InvalidArgument(format!("port mapping {i}: {why}")))?;
    }
    Ok(())
}

/// Why a port mapping cannot be passed to portmap, which refuses a port out
/// of range on ADD and again on DEL: refused before CNI runs, it can leave
/// nothing (an address, a rule) behind.
fn check_port_mapping(p: &PortMapping) -> std::result::Result<(), String> {
    if !(1..=65535).contains(&p.container_port) {
        return Err(format!(
            "container port {} is not in 1-65535",
            p.container_port
        ));
    }
    if !(0..=65535).contains(&p.host_port) {
        return Err(format!(
            "host port {} is not in 0-65535 (0: none)",
            p.host_port
        ));
    }
    port_protocol(p)?;
    if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
        return Err(format!(
            "host IP {} is not an IP address",
            shown(&p.host_ip)
        ));
    }
    Ok(())
}

/// A port mapping's protocol as portmap names it.
fn port_protocol(p: &PortMapping) -> std::result::Result<&'static str, String> {
    match Protocol::try_from(p.protocol) {
        Ok(Protocol::Tcp) => Ok("tcp"),
        Ok(Protocol::Udp) => Ok("udp"),
        Ok(Protocol::Sctp) => Ok("sctp"),
        Err(_) => Err(format!(
            "protocol {} is not TCP (0), UDP (1) or SCTP (2)",
            p.protocol
        )),
    }
}

/// The host ports CNI forwards for a pod (those [`Pods::attachment`]
/// passes to portmap): none for a host-network pod.
fn forwarded_ports(pod: &PodRecord) -> Vec<HostPort> {
    if pod.host_network {
        return Vec::new();
    }
    pod.config
        .port_mappings
        .iter()
        .filter(|p| check_port_mapping(p).is_ok())
        .filter_map(HostPort::of)
        .collect()
}

/// `namespace/name` of a pod, for messages.
fn pod_label(c: &PodSandboxConfig) -> String {
    let m = c.metadata.clone().unwrap_or_default();
    format!("{}/{}", m.namespace, m.name)
}

/// The `K8S_POD_*` CNI_ARGS kubelet's runtimes pass (as cri-o and containerd).
fn k8s_pod_args(id: &str, c: &PodSandboxConfig) -> [(&'static str, String); 4] {
    let m = c.metadata.clone().unwrap_or_default();
    [
        ("K8S_POD_NAMESPACE", m.namespace),
        ("K8S_POD_NAME", m.name),
        ("K8S_POD_INFRA_CONTAINER_ID", id.to_string()),
        ("K8S_POD_UID", m.uid),
    ]
}

/// The pod's hostname: the requested one, else the pod name (kubelet's rule).
fn hostname(c: &PodSandboxConfig) -> String {
    if !c.hostname.is_empty() {
        return c.hostname.clone();
    }
    let name = c
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("pod");
    name.chars().take(63).collect()
}

fn resolv_conf(c: &PodSandboxConfig) -> Result<String> {
    match &c.dns_config {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut out = String::new();
            if !d.searches.is_empty() {
                out.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for s in &d.servers {
                out.push_str(&format!("nameserver {s}\n"));
            }
            if !d.options.is_empty() {
                out.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            Ok(out)
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").or_else(|_| Ok(String::new())),
    }
}

fn hosts_file(hostname: &str, ip: Option<&str>) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}

/// Where a pod's set-up time went, logged with "pod sandbox ready" so an
/// operator can see a slow CNI plugin or namespace step.
#[derive(Default)]
struct SetUpTiming {
    namespaces: std::time::Duration,
    network: std::time::Duration,
    monitor: std::time::Duration,
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The pod cgroup's limits for the resources in a pod's config: none
/// when it names neither resources nor overhead.
fn pod_limits_of(c: &PodSandboxConfig) -> Option<LinuxContainerResources> {
    let l = c.linux.as_ref()?;
    if l.resources.is_none() && l.overhead.is_none() {
        return None;
    }
    let none = LinuxContainerResources::default();
    Some(resources::pod_limits(
        l.resources.as_ref().unwrap_or(&none),
        l.overhead.as_ref().unwrap_or(&none),
    ))
}

/// The cgroup parent kubelet asked for ("" when none).
fn cgroup_parent(c: &PodSandboxConfig) -> &str {
    c.linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("")
}

/// The pod's user namespace mappings (uids, gids) when it asks for one of
/// its own (`userns_options` mode POD; the shape was checked at the edge):
/// the pod and its containers run in it.
pub fn userns_maps(c: &PodSandboxConfig) -> Option<pinns::IdMaps> {
    let u = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())?;
    if u.mode != NamespaceMode::Pod as i32 {
        return None;
    }
    let conv = |v: &[k8s_cri::v1::IdMapping]| {
        v.iter()
            .map(|m| crate::executor::userns::IdMap {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
            .collect::<Vec<_>>()
    };
    Some((conv(&u.uids), conv(&u.gids)))
}

/// The pod's PID namespace mode (POD, CONTAINER, NODE).
fn pid_mode(c: &PodSandboxConfig) -> i32 {
    c.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|n| n.pid)
        .unwrap_or(NamespaceMode::Pod as i32)
}

/// Ends a pod init (and with it every process in the pod's PID namespace).
/// The process is identified by the namespace it is PID 1 of, so a reused
/// pid is never killed; without a recorded pid it is looked up.
fn stop_init(recorded: Option<u32>, pin: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(pin).map(|m| m.ino()) else {
        return;
    };
    let in_ns = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/pid")).is_ok_and(|m| m.ino() == ns)
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"pod-init"))
    };
    let pid = recorded.filter(|p| in_ns(*p)).or_else(|| {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|p| in_ns(*p))
    });
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The pod's sysctls, sorted for a stable order.
fn sysctls(c: &PodSandboxConfig) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Starts `crius-helper pinns` to create and pin the namespaces.
fn start_pin(
    dir: &Path,
    kinds: &[NsKind],
    hostname: &str,
    sysctls: &[(String, String)],
    proc_pin: &Path,
    userns: Option<&pinns::IdMaps>,
) -> Result<tokio::process::Child> {
    let mut cmd = crate::helper::command(&["pinns"]).map_err(internal)?;
    cmd.arg("--proc")
        .arg(proc_pin)
        .arg("--dir")
        .arg(dir)
        .arg("--hostname")
        .arg(hostname);
    for k in kinds {
        cmd.arg("--ns").arg(k.name());
    }
    for (k, v) in sysctls {
        cmd.arg("--sysctl").arg(format!("{k}={v}"));
    }
    for (flag, maps) in userns
        .into_iter()
        .flat_map(|(u, g)| [("--uid-map", u), ("--gid-map", g)])
    {
        for m in maps {
            cmd.arg(flag)
                .arg(format!("{}:{}:{}", m.container_id, m.host_id, m.length));
        }
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(internal)
}

/// Waits for `pinns`; the pod init's pid when it started one.
async fn finish_pin(child: tokio::process::Child) -> Result<Option<u32>> {
    let out = child.wait_with_output().await.map_err(internal)?;
    if out.status.code() == Some(pinns::EXIT_BAD_SYSCTL as i32) {
        return Err(Error::InvalidArgument(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "pinning namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("init_pid="))
        .and_then(|p| p.trim().parse().ok()))
}

/// The CNI `bandwidth` capability from kubelet's pod annotations
/// (`kubernetes.io/ingress-bandwidth: 10M`), in bits per second; the burst
/// is left unlimited as cri-o and containerd do.
fn bandwidth(annotations: &HashMap<String, String>) -> Option<Value> {
    let rate = |k: &str| annotations.get(k).and_then(|v| parse_quantity(v));
    let (ingress, egress) = (
        rate("kubernetes.io/ingress-bandwidth"),
        rate("kubernetes.io/egress-bandwidth"),
    );
    if ingress.is_none() && egress.is_none() {
        return None;
    }
    let mut bw = serde_json::Map::new();
    if let Some(r) = ingress {
        bw.insert("ingressRate".into(), json!(r));
        bw.insert("ingressBurst".into(), json!(i32::MAX));
    }
    if let Some(r) = egress {
        bw.insert("egressRate".into(), json!(r));
        bw.insert("egressBurst".into(), json!(i32::MAX));
    }
    Some(Value::Object(bw))
}

/// A Kubernetes quantity (`10M`, `1Gi`, `500k`, `1000`) as a number.
fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Label selector match: every selector pair must be present.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{DnsConfig, PodSandboxMetadata};

    fn cfg() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn dns_and_hosts_files() {
        let mut c = cfg();
        c.dns_config = Some(DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        });
        assert_eq!(
            resolv_conf(&c).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert!(hosts_file("web", Some("10.88.0.2")).ends_with("10.88.0.2\tweb\n"));
        assert_eq!(hostname(&c), "web");
    }

    #[test]
    fn bandwidth_annotations() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("x"), None);
        let a = HashMap::from([(
            "kubernetes.io/egress-bandwidth".to_string(),
            "5M".to_string(),
        )]);
        let bw = bandwidth(&a).unwrap();
        assert_eq!(bw["egressRate"], 5_000_000);
        assert!(bw.get("ingressRate").is_none());
        assert!(bandwidth(&HashMap::new()).is_none());
    }

    #[test]
    fn validation() {
        assert!(validate(&cfg()).is_ok());
        let mut c = cfg();
        c.hostname = "bad host\n".into();
        assert!(validate(&c).is_err());
        let mut c = cfg();
        c.linux = Some(k8s_cri::v1::LinuxPodSandboxConfig {
            sysctls: HashMap::from([("kernel.hostname".to_string(), "x".to_string())]),
            ..Default::default()
        });
        assert!(matches!(validate(&c), Err(Error::InvalidArgument(_))));
    }

    fn mapping(container_port: i32, host_port: i32, protocol: i32, host_ip: &str) -> PortMapping {
        PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn port_mappings_are_checked() {
        let with = |p: PortMapping| {
            let mut c = cfg();
            c.port_mappings = vec![mapping(80, 8080, 0, ""), p];
            validate(&c)
        };
        for good in [
            mapping(1, 0, 0, ""),
            mapping(65535, 65535, 1, "127.0.0.1"),
            mapping(53, 5353, 2, "::1"),
        ] {
            assert!(with(good.clone()).is_ok(), "{good:?}");
        }
        for bad in [
            mapping(0, 8081, 0, ""),
            mapping(-1, 8081, 0, ""),
            mapping(65536, 8081, 0, ""),
            mapping(80, -1, 0, ""),
            mapping(80, 65536, 0, ""),
            mapping(80, 8081, 3, ""),
            mapping(80, 8081, -1, ""),
            mapping(80, 8081, 0, "localhost"),
            mapping(80, 8081, 0, "10.0.0.1;x"),
        ] {
            match with(bad.clone()) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(m.starts_with("port mapping 1: "), "{m}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let hostile = format!("{}\n", "9".repeat(5000));
        let Err(Error::InvalidArgument(m)) = with(mapping(80, 8081, 0, &hostile)) else {
            panic!("accepted");
        };
        assert!(m.len() < 100 && !m.contains('\n'), "{m}");
    }
}
