//! Startup reconciliation of pods: what a crash left half done, found by
//! comparing the stored pods with the node. Each repair is logged as one
//! `reconcile:` line. Runs before the socket serves, so no request races it.

use super::*;

/// Whether `path` is a live namespace pin (a bind mount of an nsfs file).
fn pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

impl Pods {
    /// Pods that are not ready but still hold a network attachment or a
    /// pinned network namespace: a crash cut their RunPodSandbox (or
    /// StopPodSandbox) short. They are stopped as StopPodSandbox would
    /// (CNI DEL, pod init, network pin), so no address, veth or process is
    /// held for a pod that cannot run; the record stays, NOT_READY, for
    /// kubelet to remove. Pod directories with no record are released
    /// whole (pins, shm, cgroup under the default parent, files).
    pub async fn reconcile(&self, network: &Network) {
        let pods: Vec<PodRecord> = match self.records.read() {
            Ok(r) => r.values().map(|p| (**p).clone()).collect(),
            Err(_) => return,
        };
        for mut pod in pods {
            if pod.state != PodState::NotReady {
                continue;
            }
            let net_pin = self.ns_path(&pod.id, NsKind::Net);
            let held = pod.network.is_some() || crate::sync::blocking(|| pinned(&net_pin));
            if !held {
                continue;
            }
            match self.tear_down(&mut pod, network, false, false).await {
                Ok(()) => {
                    if let Err(e) = self.save(&pod) {
                        tracing::warn!(pod_id = %pod.id, error = %e, "reconcile: storing the stopped pod");
                    }
                    tracing::info!(
                        pod_id = %pod.id,
                        "reconcile: pod {} was left half set up by a crash: released its network and stopped its namespaces",
                        pod.id
                    );
                }
                Err(e) => tracing::warn!(
                    pod_id = %pod.id,
                    error = %e,
                    "reconcile: pod {} was left half set up by a crash; releasing it failed (StopPodSandbox retries)",
                    pod.id
                ),
            }
        }
        let known: std::collections::HashSet<String> = match self.records.read() {
            Ok(r) => r.keys().cloned().collect(),
            Err(_) => return,
        };
        let stale: Vec<String> = crate::sync::blocking(|| {
            std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|id| !known.contains(id) && crate::ids::is_id(id))
                .collect()
        });
        for id in stale {
            let pod = orphan_record(&id);
            match crate::sync::blocking(|| self.release_node_side(&pod, None, true, None)) {
                Ok(()) => tracing::info!(
                    pod_id = %id,
                    "reconcile: removed pod directory {id} with no record (namespaces, mounts, cgroup)"
                ),
                Err(e) => tracing::warn!(
                    pod_id = %id,
                    error = %e,
                    "reconcile: removing pod directory {id} with no record failed"
                ),
            }
        }
    }
}

/// A stand-in record for a pod directory whose record is gone: enough to
/// find its pins, init and cgroup (under the default parent).
fn orphan_record(id: &str) -> PodRecord {
    PodRecord {
        id: id.to_string(),
        config: PodSandboxConfig::default(),
        runtime_handler: String::new(),
        state: PodState::NotReady,
        created_at: 0,
        ips: Vec::new(),
        host_network: false,
        host_ipc: false,
        network: None,
        cgroup: None,
        init_pid: None,
    }
}
