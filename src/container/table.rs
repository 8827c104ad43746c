//! The node's containers in memory: each record (persisted in the store)
//! with its run state. Create, start and stop set the run state as they
//! go; each pod's monitor pushes its containers' exits (`Subscribe` in
//! `proto/monitor.proto`, one watcher task per pod). ListContainers and
//! ContainerStatus read only this table, never a file.
//!
//! While a pod's monitor is not subscribed (at daemon start until the
//! watcher connects, or after the monitor died), its containers' state is
//! read from the files the monitor keeps, as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use k8s_cri::v1::{ContainerEventType, ContainerState};

use super::events::{Event, Events};
use super::{ContainerRecord, RunState};
use crate::error::{Error, Result};
use crate::monitor::{ExitRecord, files};

struct Entry {
    record: Arc<ContainerRecord>,
    run: RunState,
    /// The run state is kept current by the pod's monitor subscription.
    watched: bool,
}

/// See the module docs.
pub struct Table {
    /// `runroot/containers`: where the monitor's state files are.
    dir: PathBuf,
    map: RwLock<HashMap<String, Entry>>,
    /// Pods whose monitor subscription is live.
    subscribed: RwLock<std::collections::HashSet<String>>,
    /// Where lifecycle changes go (GetContainerEvents).
    events: Arc<Events>,
}

/// The run state as the monitor's files tell it: `pid`, `started`,
/// `exit.json` in the container's state directory.
pub fn run_state_from_files(dir: &Path, c: &ContainerRecord) -> RunState {
    let dir = dir.join(&c.id);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let pid = read(files::PID).and_then(|s| s.trim().parse::<i32>().ok());
    let started_at = read(files::STARTED)
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let exit: Option<ExitRecord> = read(files::EXIT).and_then(|s| serde_json::from_str(&s).ok());
    let state = match (&exit, started_at, pid) {
        (Some(_), _, _) => ContainerState::ContainerExited,
        // State gone (reboot) or the process vanished without a record.
        (None, _, None) if c.start_error.is_some() || !dir.exists() => {
            ContainerState::ContainerExited
        }
        (None, 0, _) => ContainerState::ContainerCreated,
        (None, _, Some(p)) if !Path::new(&format!("/proc/{p}")).exists() => {
            ContainerState::ContainerExited
        }
        _ => ContainerState::ContainerRunning,
    };
    RunState {
        state,
        pid,
        started_at,
        exit,
    }
}

fn poisoned() -> Error {
    Error::Internal("container table lock poisoned".into())
}

impl Table {
    /// The containers of the store, their state from the files.
    pub fn load(dir: &Path, records: Vec<ContainerRecord>, events: Arc<Events>) -> Table {
        let map = records
            .into_iter()
            .map(|r| {
                let run = run_state_from_files(dir, &r);
                let entry = Entry {
                    record: Arc::new(r),
                    run,
                    watched: false,
                };
                (entry.record.id.clone(), entry)
            })
            .collect();
        Table {
            dir: dir.to_path_buf(),
            map: RwLock::new(map),
            subscribed: Default::default(),
            events,
        }
    }

    /// Tells subscribers of a change to `id` (in pod `pod_id`); called with
    /// the map locked, so events leave in the order the changes were made.
    fn emit(&self, map: &HashMap<String, Entry>, kind: ContainerEventType, id: &str, pod_id: &str) {
        if !self.events.wanted() {
            return;
        }
        let containers = map
            .values()
            .filter(|e| e.record.pod_id == pod_id)
            .map(|e| (e.record.clone(), self.state(e)))
            .collect();
        self.events.send(Event {
            kind,
            id: id.to_string(),
            pod_id: pod_id.to_string(),
            at: crate::monitor::now_nanos(),
            containers,
        });
    }

    /// Announces a container whose create finished.
    pub fn announce_created(&self, id: &str) {
        if let Ok(map) = self.map.read()
            && let Some(e) = map.get(id)
        {
            let pod = e.record.pod_id.clone();
            self.emit(&map, ContainerEventType::ContainerCreatedEvent, id, &pod);
        }
    }

    fn state(&self, e: &Entry) -> RunState {
        if e.watched {
            e.run
        } else {
            run_state_from_files(&self.dir, &e.record)
        }
    }

    /// The container with this id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<(Arc<ContainerRecord>, RunState)> {
        if id.is_empty() {
            return Err(Error::InvalidArgument("container id is empty".into()));
        }
        let map = self.map.read().map_err(|_| poisoned())?;
        if let Some(e) = map.get(id) {
            return Ok((e.record.clone(), self.state(e)));
        }
        let mut hits = map.values().filter(|e| e.record.id.starts_with(id));
        match (hits.next(), hits.next()) {
            (Some(e), None) => Ok((e.record.clone(), self.state(e))),
            (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
                "container id prefix {id:?} is ambiguous"
            ))),
            _ => Err(Error::NotFound(format!("container {id:?} not found"))),
        }
    }

    /// The container of pod `pod_id` with this name and attempt, if any.
    pub fn named(
        &self,
        pod_id: &str,
        name: &str,
        attempt: u32,
    ) -> Result<Option<Arc<ContainerRecord>>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map
            .values()
            .find(|e| {
                e.record.pod_id == pod_id
                    && e.record
                        .config
                        .metadata
                        .as_ref()
                        .is_some_and(|m| m.name == name && m.attempt == attempt)
            })
            .map(|e| e.record.clone()))
    }

    /// Every container with its state.
    pub fn all(&self) -> Result<Vec<(Arc<ContainerRecord>, RunState)>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map
            .values()
            .map(|e| (e.record.clone(), self.state(e)))
            .collect())
    }

    /// A new container, before anything of it exists on the node.
    pub fn insert(&self, record: ContainerRecord) -> Result<()> {
        let watched = self
            .subscribed
            .read()
            .map_err(|_| poisoned())?
            .contains(&record.pod_id);
        let mut map = self.map.write().map_err(|_| poisoned())?;
        map.insert(
            record.id.clone(),
            Entry {
                record: Arc::new(record),
                run: RunState {
                    state: ContainerState::ContainerCreated,
                    pid: None,
                    started_at: 0,
                    exit: None,
                },
                // Without a live subscription for its pod, each read looks
                // at the files instead.
                watched,
            },
        );
        Ok(())
    }

    /// A record changed (start error, resources).
    pub fn put_record(&self, record: ContainerRecord) -> Result<()> {
        let mut map = self.map.write().map_err(|_| poisoned())?;
        if let Some(e) = map.get_mut(&record.id) {
            e.record = Arc::new(record);
        }
        Ok(())
    }

    /// Applies `f` to a container's run state (a no-op for an unknown id),
    /// announcing `kind` when the state becomes `to`.
    fn update(
        &self,
        id: &str,
        to: ContainerState,
        kind: ContainerEventType,
        f: impl FnOnce(&mut RunState),
    ) {
        if let Ok(mut map) = self.map.write()
            && let Some(e) = map.get_mut(id)
        {
            let before = e.run.state;
            f(&mut e.run);
            if before != to && e.run.state == to {
                let pod = e.record.pod_id.clone();
                self.emit(&map, kind, id, &pod);
            }
        }
    }

    /// The monitor made the init (it waits for start).
    pub fn created(&self, id: &str, pid: i32) {
        // Not an event: CREATED is announced when the create finishes.
        if let Ok(mut map) = self.map.write()
            && let Some(e) = map.get_mut(id)
        {
            e.run.pid = Some(pid);
        }
    }

    /// The init was let go at `started_at`.
    pub fn started(&self, id: &str, started_at: i64) {
        self.update(
            id,
            ContainerState::ContainerRunning,
            ContainerEventType::ContainerStartedEvent,
            |r| {
                if r.exit.is_none() {
                    r.state = ContainerState::ContainerRunning;
                }
                r.started_at = started_at;
            },
        );
    }

    /// The container exited (from the monitor, or recorded by the daemon
    /// when the monitor is gone).
    pub fn exited(&self, id: &str, exit: ExitRecord) {
        self.update(
            id,
            ContainerState::ContainerExited,
            ContainerEventType::ContainerStoppedEvent,
            |r| {
                r.state = ContainerState::ContainerExited;
                r.exit = Some(exit);
            },
        );
    }

    /// Forgets a removed container.
    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.map.write()
            && let Some(e) = map.remove(id)
        {
            self.emit(
                &map,
                ContainerEventType::ContainerDeletedEvent,
                id,
                &e.record.pod_id,
            );
        }
    }

    /// Pods whose monitor subscription is live.
    pub fn subscribed(&self) -> usize {
        self.subscribed.read().map_or(0, |s| s.len())
    }

    /// Whether `pod_id`'s containers are kept current by its monitor. Going
    /// watched, each takes the state its files hold now; the subscription
    /// brings what changes after.
    pub fn set_watched(&self, pod_id: &str, watched: bool) {
        if let Ok(mut pods) = self.subscribed.write() {
            if watched {
                pods.insert(pod_id.to_string());
            } else {
                pods.remove(pod_id);
            }
        }
        if let Ok(mut map) = self.map.write() {
            let mut changed = Vec::new();
            for e in map.values_mut().filter(|e| e.record.pod_id == pod_id) {
                if watched && !e.watched {
                    let before = e.run.state;
                    e.run = run_state_from_files(&self.dir, &e.record);
                    // What happened while nobody watched is told now.
                    let kind = match e.run.state {
                        s if s == before => None,
                        ContainerState::ContainerRunning => {
                            Some(ContainerEventType::ContainerStartedEvent)
                        }
                        ContainerState::ContainerExited => {
                            Some(ContainerEventType::ContainerStoppedEvent)
                        }
                        _ => None,
                    };
                    changed.extend(kind.map(|k| (k, e.record.id.clone())));
                }
                e.watched = watched;
            }
            for (kind, id) in changed {
                self.emit(&map, kind, &id, pod_id);
            }
        }
    }
}
