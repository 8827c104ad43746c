//! Async locks by key (a pod, a container, an image reference), made on
//! demand and dropped when nobody holds or waits for them, and the way
//! blocking work runs from async code. Shared by the core's modules, so it
//! lives in none of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Async mutexes by key, created on demand and dropped when unused.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for the lock on `key`.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = m.clone().lock_owned().await;
        KeyGuard {
            locks: self,
            key: key.to_string(),
            _guard: Some(guard),
            mutex: m,
        }
    }
}

/// Holds a [`KeyedLocks`] entry.
pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    mutex: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self._guard = None;
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this guard hold it: nobody waits, drop the entry.
        if Arc::strong_count(&self.mutex) <= 2 {
            map.remove(&self.key);
        }
    }
}

/// Runs blocking work (file system, mounts, fsync, /proc) from async code
/// without stalling the runtime: on the daemon's multi-threaded runtime the
/// worker hands its other tasks to another thread first
/// (`block_in_place`); elsewhere (a current-thread test runtime, no
/// runtime) it simply runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Async read-write locks by key: many holders share one, an exclusive
/// holder waits for them and keeps new ones out (a pod's container
/// operations against its stop and removal).
#[derive(Default)]
pub struct KeyedRwLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

/// Holds a [`KeyedRwLocks`] entry, shared or exclusive.
pub struct RwKeyGuard<'a> {
    locks: &'a KeyedRwLocks,
    key: String,
    shared: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    exclusive: Option<tokio::sync::OwnedRwLockWriteGuard<()>>,
    lock: Arc<tokio::sync::RwLock<()>>,
}

impl KeyedRwLocks {
    fn entry(&self, key: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_string()).or_default().clone()
    }

    /// Waits for a shared hold on `key`.
    pub async fn read(&self, key: &str) -> RwKeyGuard<'_> {
        let lock = self.entry(key);
        let shared = Some(lock.clone().read_owned().await);
        RwKeyGuard {
            locks: self,
            key: key.to_string(),
            shared,
            exclusive: None,
            lock,
        }
    }

    /// Waits for the exclusive hold on `key`.
    pub async fn write(&self, key: &str) -> RwKeyGuard<'_> {
        let lock = self.entry(key);
        let exclusive = Some(lock.clone().write_owned().await);
        RwKeyGuard {
            locks: self,
            key: key.to_string(),
            shared: None,
            exclusive,
            lock,
        }
    }
}

impl Drop for RwKeyGuard<'_> {
    fn drop(&mut self) {
        self.shared = None;
        self.exclusive = None;
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&self.lock) <= 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_waits_for_shared_and_entries_go() {
        let locks = KeyedRwLocks::default();
        let a = locks.read("pod").await;
        let b = locks.read("pod").await;
        let w =
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.write("pod")).await;
        assert!(w.is_err(), "exclusive while shared holders remain");
        drop((a, b));
        let w = locks.write("pod").await;
        let r = tokio::time::timeout(std::time::Duration::from_millis(50), locks.read("pod")).await;
        assert!(r.is_err(), "shared while the exclusive holder remains");
        drop(w);
        assert!(locks.map.lock().unwrap().is_empty());
    }
}
