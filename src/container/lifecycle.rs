//! A created container's life: start, update, exec, log reopening, stop
//! of a pod's containers and removal.

use super::*;

impl Containers {
    /// SIGKILLs whatever is left in the container's cgroup (processes that
    /// outlived the init in a shared PID namespace).
    pub(super) fn kill_cgroup(&self, c: &ContainerRecord) {
        crate::sync::blocking(|| self.kill_cgroup_now(c))
    }

    pub(super) fn kill_cgroup_now(&self, c: &ContainerRecord) {
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
        // Interface file writes: off the async workers. The node's pids
        // limit stays as create wrote it unless the update sets pids.max.
        crate::sync::blocking(|| self.cgroups.apply(&c.cgroup, &resources, 0))
            .map_err(Error::from)?;
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
    pub(super) fn running(&self, id: &str) -> Result<Arc<ContainerRecord>> {
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
}
