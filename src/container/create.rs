//! CreateContainer: the record first, then the rootfs (and image
//! volumes), user, OCI spec and cgroup, then the pod's monitor creates the
//! process; a failure on the way undoes what was made.

use super::*;

impl Containers {
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
        if !self.recursive_readonly_for(&pod.runtime_handler)
            && let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only)
        {
            let why = if self.recursive_readonly {
                format!(
                    "runtime handler {:?} runs an external OCI runtime without it",
                    pod.runtime_handler
                )
            } else {
                "this kernel has no mount_setattr (Linux 5.12+)".to_string()
            };
            return Err(Error::InvalidArgument(format!(
                "recursive read-only mount at {:?}: {why}; Status reports recursive_read_only_mounts false",
                m.container_path
            )));
        }
        idmapped_mounts(
            &config,
            crate::sandbox::userns_maps(&pod.config).as_ref(),
            &pod.id,
        )?;
        let image_volumes = image_volumes(images, &config)?;
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
            cgroup: self.cgroups.container_path(&pod_cgroup, &id),
            layers: image.layers.iter().map(|l| l.chain_id.clone()).collect(),
            // The container's own stop signal (KEP-4960) wins over the
            // image's STOPSIGNAL.
            stop_signal: k8s_cri::v1::Signal::try_from(config.stop_signal)
                .ok()
                .and_then(signal_number)
                .or_else(|| {
                    image
                        .config
                        .config
                        .stop_signal
                        .as_deref()
                        .and_then(parse_signal)
                })
                .unwrap_or(libc::SIGTERM),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            resources: config.linux.as_ref().and_then(|l| l.resources.clone()),
            start_error: None,
            image_volumes,
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

    pub(super) async fn set_up(
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
        let volume_layers = record
            .image_volumes
            .iter()
            .map(|v| v.layers.iter().map(|c| images.layer_dir(c)).collect())
            .collect::<Result<Vec<Vec<_>>>>()?;
        let privileged = spec::privileged(&record.config);
        let devices = crate::sync::blocking(|| host_devices(&record.config, privileged))?;
        // The cgroup with its limits (before any process joins it) is made
        // on a blocking thread while the rootfs is mounted and the spec
        // written; it is always waited for, so a failure of either leaves
        // tear_down nothing half-made.
        // A systemd scope cannot start empty: a seed process holds it, and
        // keeps holding it until the container's exit is recorded (see
        // `Seed`).
        let seed = if self.cgroups.units() {
            Some(Seed::spawn()?)
        } else {
            None
        };
        let cgroup_job = {
            let (cgroups, path) = (self.cgroups.clone(), record.cgroup.clone());
            let resources = record.resources.clone().unwrap_or_default();
            let pids_limit = self.pids_limit;
            let devices = devices.clone();
            let pids: Vec<u32> = seed.iter().filter_map(Seed::pid).collect();
            tokio::task::spawn_blocking(move || -> Result<()> {
                cgroups
                    .create(&path, &pids, &resources)
                    .map_err(Error::from)?;
                cgroups
                    .apply(&path, &resources, pids_limit)
                    .map_err(Error::from)?;
                cgroups
                    .restrict_devices(&path, privileged, &devices)
                    .map_err(Error::from)
            })
        };
        // Mounts, file reads and writes: off the async workers.
        let prepared = crate::sync::blocking(|| {
            self.write_spec(
                pods,
                storage,
                pod,
                image,
                record,
                (&layers, &volume_layers),
                devices,
                &step,
            )
        });
        let cgroup = cgroup_job.await.map_err(internal).and_then(|r| r);
        let dir = prepared?;
        cgroup?;
        step("cgroup ready");
        self.create_in_monitor(pods, pod, record, &dir, &step)
            .await?;
        if let Some(seed) = seed {
            seed.hold_until(&dir.join(crate::monitor::files::EXIT))
                .await;
        }
        Ok(())
    }

    /// Mounts the rootfs, resolves the user and writes `config.json` (and
    /// the seccomp program) into the container's state directory, returned.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_spec(
        &self,
        pods: &Pods,
        storage: &Storage,
        pod: &PodRecord,
        image: &crate::image::record::ImageRecord,
        record: &mut ContainerRecord,
        (layers, volume_layers): (&[PathBuf], &[Vec<PathBuf>]),
        devices: Vec<spec::HostDevice>,
        step: &impl Fn(&str),
    ) -> Result<PathBuf> {
        let id = record.id.clone();
        // Before anything is mounted: a profile the node lacks fails here.
        let (apparmor, selinux) = self.lsm_labels(&record.config, &id)?;
        let userns = crate::sandbox::userns_maps(&pod.config);
        same_userns(&record.config, &pod.config)?;
        let idmap = userns.as_ref().map(|(uids, gids)| crate::storage::Idmap {
            userns: pods.userns_path(&pod.id),
            root_uid: uids.iter().find_map(|m| m.host_of(0)).unwrap_or(0),
            root_gid: gids.iter().find_map(|m| m.host_of(0)).unwrap_or(0),
        });
        let rootfs = storage
            .create_rootfs(&id, layers, idmap.as_ref())
            .map_err(|e| match e {
                crate::storage::StorageError::Idmap { .. } => {
                    Error::FailedPrecondition(e.to_string())
                }
                e => internal(e),
            })?;
        step("rootfs mounted");
        let with_volumes;
        let config = if record.image_volumes.is_empty() {
            &record.config
        } else {
            with_volumes = mount_image_volumes(storage, record, volume_layers, idmap.as_ref())?;
            step("image volumes mounted");
            &with_volumes
        };
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
            // Unknown values were refused at the edge.
            policy: match k8s_cri::v1::SupplementalGroupsPolicy::try_from(
                sec.supplemental_groups_policy,
            ) {
                Ok(k8s_cri::v1::SupplementalGroupsPolicy::Strict) => process::GroupsPolicy::Strict,
                _ => process::GroupsPolicy::Merge,
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
            .map(|kv| {
                (
                    kv.key.clone(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
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
            default_capabilities: &self.default_capabilities,
        };
        let mut oci = spec::build(&input).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let Some(p) = oci.process_mut() {
            p.set_apparmor_profile(apparmor);
            p.set_selinux_label(selinux);
        }
        if let Some(maps) = &userns {
            spec::join_user_namespace(&mut oci, pods.userns_path(&pod.id), maps)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        let dir = self.state_dir(&id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        if let Some(profile) =
            seccomp_profile(&sec, self.seccomp_default, &self.default_capabilities)?
        {
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

    /// The AppArmor profile and SELinux label container `id` runs under
    /// (see `lsm`): a profile the node cannot give is refused; SELinux
    /// options on a node without SELinux are ignored, as cri-o does.
    fn lsm_labels(
        &self,
        config: &ContainerConfig,
        id: &str,
    ) -> Result<(Option<String>, Option<String>)> {
        let sec = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let apparmor = lsm::apparmor_profile(&sec, &self.apparmor_default, self.apparmor.as_ref())?;
        let mut selinux = lsm::selinux_label(&sec)?;
        if selinux.is_some() && !lsm::selinux_enabled() {
            tracing::debug!(
                container = id,
                "SELinux is not enabled on this node: the container's selinux_options are ignored"
            );
            selinux = None;
        }
        Ok((apparmor, selinux))
    }

    /// Has the pod's monitor create the container's process from the spec
    /// in `dir`.
    pub(super) async fn create_in_monitor(
        &self,
        pods: &Pods,
        pod: &PodRecord,
        record: &ContainerRecord,
        dir: &Path,
        step: &impl Fn(&str),
    ) -> Result<()> {
        let (id, config) = (&record.id, &record.config);
        let monitor = Self::monitor(pods, &pod.id);
        if let Some(pid) = monitor.ensure_running().await.map_err(monitor_err)? {
            crate::sandbox::place_monitor(&self.cgroups, &pod.id, pid);
        }
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
                oci_runtime: self.oci_runtime(&pod.runtime_handler),
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
    pub(super) async fn tear_down(&self, pods: &Pods, storage: &Storage, c: &ContainerRecord) {
        let monitor = Self::monitor(pods, &c.pod_id);
        let _ = monitor
            .call(Op::Forget(proto::ContainerRef { id: c.id.clone() }))
            .await;
        crate::sync::blocking(|| {
            // Whatever still runs in the container goes first (processes
            // that outlived its init in the pod's PID namespace), then the
            // rootfs it ran in.
            if let Err(e) = self.cgroups.kill_and_remove(&c.cgroup) {
                tracing::warn!(container_id = %c.id, error = %e, "removing cgroup");
            }
            if let Err(e) = storage.remove_rootfs(&c.id) {
                tracing::warn!(container_id = %c.id, error = %e, "removing rootfs");
            }
            let _ = std::fs::remove_dir_all(self.state_dir(&c.id));
        });
    }
}

/// The process a container's systemd scope starts with (systemd refuses
/// an empty scope): `crius-helper hold`. It stays in the scope for the
/// container's whole life: when the container's last process exits, the
/// scope is not empty yet, so systemd keeps its cgroup until the monitor has
/// read `memory.events` (OOMKilled) and written the exit record, whose path
/// the seed is given once the create succeeded ([`Seed::hold_until`]); it
/// exits then, and systemd ends the scope. A failed create (or a daemon
/// dying during it) drops the seed, which is killed (its stdin closes).
/// It costs the container one task of its pids budget while it lives.
struct Seed(Option<tokio::process::Child>);

impl Seed {
    fn spawn() -> Result<Seed> {
        let mut cmd = crate::helper::command(&["hold"]).map_err(internal)?;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| Error::Internal(format!("starting the scope's seed process: {e}")))?;
        Ok(Seed(Some(child)))
    }

    fn pid(&self) -> Option<u32> {
        self.0.as_ref().and_then(|c| c.id())
    }

    /// Hands the seed the path of the container's exit record and lets it
    /// go: it leaves once the record exists. tokio reaps it when it exits.
    /// If the path cannot be written the seed is killed (the OOM verdict
    /// may then be lost, as before the seed stayed).
    async fn hold_until(mut self, record: &Path) {
        use tokio::io::AsyncWriteExt;
        let Some(mut child) = self.0.take() else {
            return;
        };
        let mut line = record.as_os_str().as_encoded_bytes().to_vec();
        line.push(b'\n');
        let sent = match child.stdin.take() {
            Some(mut stdin) => {
                tokio::time::timeout(std::time::Duration::from_secs(5), stdin.write_all(&line))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
            None => false,
        };
        if !sent {
            let _ = child.start_kill();
        }
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

/// The image volumes `config` asks for, each image found on the node
/// (kubelet pulls it first, as for the container's own image).
pub(super) fn image_volumes(images: &Images, config: &ContainerConfig) -> Result<Vec<ImageVolume>> {
    let mut out = Vec::new();
    for (mount, m) in config.mounts.iter().enumerate() {
        let Some(spec) = &m.image else { continue };
        let image = images.find(&spec.image)?.ok_or_else(|| {
            Error::NotFound(format!(
                "image {:?} of the image volume at {} not found; pull it first",
                spec.image, m.container_path
            ))
        })?;
        out.push(ImageVolume {
            mount,
            image_id: image.id.clone(),
            layers: image.layers.iter().map(|l| l.chain_id.clone()).collect(),
        });
    }
    Ok(out)
}

/// Reads a file of the image inside the rootfs, resolving symlinks as the
/// container would (never out of the rootfs); missing → empty.
pub(super) fn read_in_root(root: &Path, rel: &str) -> String {
    let Ok(fd) = crate::storage::open_in_root(root, rel, rustix::fs::OFlags::RDONLY) else {
        return String::new();
    };
    let mut s = String::new();
    let mut f = std::fs::File::from(fd);
    let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut f, 4 << 20), &mut s);
    s
}

/// Validates `log_path` (relative, no `..`) and joins it to the pod's log
/// directory.
/// A pod without a log directory logs under `fallback/<pod id>` (the
/// `[runtime] log_dir` setting).
pub(super) fn log_path(
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

/// The seccomp profile a container asked for: RuntimeDefault (also the
/// deprecated `runtime/default`, `docker/default` paths, and nothing at all
/// when `default_when_empty`), Localhost (an absolute path to an OCI
/// profile), or none (Unconfined, privileged, or unset without
/// `default_when_empty`). The RuntimeDefault profile allows the syscalls of
/// the capabilities the container gets (from the node's
/// `default_capabilities` and the request).
pub(super) fn seccomp_profile(
    sec: &k8s_cri::v1::LinuxContainerSecurityContext,
    default_when_empty: bool,
    default_capabilities: &[String],
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
            "" if default_when_empty => None,
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
        let caps = spec::capabilities(sec, default_capabilities)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        return Ok(Some(crate::executor::seccomp::runtime_default(
            &caps.granted,
        )));
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

/// Mounts `c`'s image volumes (`layers`: each volume's layer directories)
/// and returns its config with each image mount's host path set to what
/// it binds: the volume, or its sub path.
pub(super) fn mount_image_volumes(
    storage: &Storage,
    c: &ContainerRecord,
    layers: &[Vec<PathBuf>],
    idmap: Option<&crate::storage::Idmap>,
) -> Result<ContainerConfig> {
    let mut config = c.config.clone();
    for (v, dirs) in c.image_volumes.iter().zip(layers) {
        let m = config
            .mounts
            .get_mut(v.mount)
            .ok_or_else(|| internal(format!("image volume of mount {} lost", v.mount)))?;
        // An idmapped image volume (checked to carry the pod's mappings):
        // its layers are idmapped, as containerd does, and the bind of the
        // overlay (which cannot be idmapped itself) is a plain one.
        let idmapped = !m.uid_mappings.is_empty();
        if idmapped {
            m.uid_mappings.clear();
            m.gid_mappings.clear();
        }
        let path = storage
            .mount_image_volume(
                &c.id,
                v.mount,
                dirs,
                &m.image_sub_path,
                idmap.filter(|_| idmapped),
            )
            .map_err(|e| match e {
                crate::storage::StorageError::ImageSubPath { .. } => {
                    Error::InvalidArgument(e.to_string())
                }
                crate::storage::StorageError::Idmap { .. } => {
                    Error::FailedPrecondition(e.to_string())
                }
                e => internal(e),
            })?;
        m.host_path = path.display().to_string();
    }
    Ok(config)
}

/// CRI `devices` (and, privileged, every host device) as spec devices.
pub(super) fn host_devices(
    config: &ContainerConfig,
    privileged: bool,
) -> Result<Vec<spec::HostDevice>> {
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

/// A container's `userns_options`, when given, must be its pod's: its
/// processes run in the pod's user namespace (or the host's), nothing else
/// (as cri-o and containerd require).
fn same_userns(c: &ContainerConfig, pod: &PodSandboxConfig) -> Result<()> {
    let theirs = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref());
    let Some(theirs) = theirs else {
        return Ok(());
    };
    let node = k8s_cri::v1::UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    };
    let ours = pod
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())
        .unwrap_or(&node);
    if theirs != ours {
        return Err(Error::InvalidArgument(
            "the container's user namespace options differ from its pod's".into(),
        ));
    }
    Ok(())
}

/// Idmapped mounts (CRI `Mount.uid_mappings`/`gid_mappings`, which kubelet
/// sets on every volume of a pod with a user namespace) are made with the
/// pod's user namespace, so they must carry its mappings: a pod without
/// one, or other mappings, is `InvalidArgument`. A mount without mappings
/// in such a pod stays a plain bind (as in containerd: host ids unmapped
/// in the pod show as 65534).
fn idmapped_mounts(
    c: &ContainerConfig,
    userns: Option<&crate::sandbox::pinns::IdMaps>,
    pod_id: &str,
) -> Result<()> {
    let same = |cri: &[k8s_cri::v1::IdMapping], ours: &[crate::executor::userns::IdMap]| {
        cri.len() == ours.len()
            && cri.iter().zip(ours).all(|(a, b)| {
                (a.container_id, a.host_id, a.length) == (b.container_id, b.host_id, b.length)
            })
    };
    let show = |maps: &[k8s_cri::v1::IdMapping]| {
        maps.iter()
            .map(|m| format!("{}:{}:{}", m.container_id, m.host_id, m.length))
            .collect::<Vec<_>>()
            .join(",")
    };
    for m in &c.mounts {
        if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
            continue;
        }
        let at = crate::error::shown(&m.container_path);
        let Some((uids, gids)) = userns else {
            return Err(Error::InvalidArgument(format!(
                "idmapped mount at {at}: pod {pod_id} has no user namespace of its own (userns_options mode POD) to map it with"
            )));
        };
        if !same(&m.uid_mappings, uids) || !same(&m.gid_mappings, gids) {
            let pod: Vec<String> = [uids, gids]
                .iter()
                .map(|v| {
                    v.iter()
                        .map(|r| r.line().replace(' ', ":"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            return Err(Error::InvalidArgument(format!(
                "idmapped mount at {at}: mappings uid {} gid {} differ from pod {pod_id}'s user namespace (uid {} gid {}); a volume is idmapped with the pod's own",
                show(&m.uid_mappings),
                show(&m.gid_mappings),
                pod[0],
                pod[1]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
