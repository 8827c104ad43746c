//! Startup reconciliation of containers: state a crash (or a lost record)
//! left with no container or pod to own it. One `reconcile:` line per
//! action. Containers whose monitor died while the daemon was down are
//! ended by their pod's watcher (`orphans.rs`), which logs its own line.

use std::collections::HashSet;
use std::path::Path;

use super::Containers;
use crate::sandbox::Pods;
use crate::storage::Storage;

/// Names of the id-shaped entries of `dir` not in `known`.
fn unknown_ids(dir: &Path, known: &HashSet<String>) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| !known.contains(id) && crate::ids::is_id(id))
        .collect()
}

impl Containers {
    /// Removes what no stored container or pod owns: a container's state
    /// directory and rootfs (unmounted first), and a pod monitor (shut
    /// down or killed, its directory removed).
    pub async fn reconcile(&self, pods: &Pods, storage: &Storage) {
        let known: HashSet<String> = self
            .list()
            .unwrap_or_default()
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let stale = crate::sync::blocking(|| {
            let mut ids = unknown_ids(&self.dir, &known);
            ids.extend(unknown_ids(storage.root(), &known));
            ids.sort();
            ids.dedup();
            ids
        });
        for id in stale {
            let removed = crate::sync::blocking(|| -> Result<(), String> {
                storage.remove_rootfs(&id).map_err(|e| e.to_string())?;
                match std::fs::remove_dir_all(self.state_dir(&id)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                }
            });
            match removed {
                Ok(()) => tracing::info!(
                    container_id = %id,
                    "reconcile: removed container {id}'s rootfs and state: it has no record"
                ),
                Err(e) => tracing::warn!(
                    container_id = %id,
                    error = %e,
                    "reconcile: removing container {id}'s leftovers failed"
                ),
            }
        }
        let pod_ids: Vec<String> = pods
            .list()
            .unwrap_or_default()
            .iter()
            .map(|p| p.id.clone())
            .collect();
        let monitors = pods.runroot().join("m");
        let dirs: Vec<String> = crate::sync::blocking(|| {
            std::fs::read_dir(&monitors)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // A monitor directory is named by its pod id's first half.
                .filter(|n| n.len() == 32 && n.bytes().all(|c| c.is_ascii_hexdigit()))
                .filter(|n| !pod_ids.iter().any(|p| p.starts_with(n.as_str())))
                .collect()
        });
        for name in dirs {
            crate::monitor::client::Client::new(&monitors.join(&name))
                .retire()
                .await;
            tracing::info!(
                "reconcile: retired the monitor in {} whose pod has no record",
                monitors.join(&name).display()
            );
        }
    }
}
