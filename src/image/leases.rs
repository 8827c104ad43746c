//! What a pull has stored but not yet recorded in an image: its manifests,
//! config, layer blobs and unpacked layers, by key. Garbage collection
//! frees only what no pull holds, one item at a time, so RemoveImage never
//! waits for a transfer and a pull never waits for a collection longer
//! than the removal of one item.
//!
//! A collection decides from the images it read; a pull that records its
//! image and lets go after that read would have its items freed. So every
//! release moves an epoch on, and a collection that sees a new epoch reads
//! the images again before freeing anything more.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// The key of a blob in the content store.
pub fn blob(digest: &str) -> String {
    format!("blob:{digest}")
}

/// The key of an unpacked layer.
pub fn layer(chain_id: &str) -> String {
    format!("layer:{chain_id}")
}

/// Counts of holders by key.
#[derive(Debug, Default)]
pub struct Leases {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<String, usize>,
    /// Moves on whenever a lease with keys is released.
    epoch: u64,
}

/// What [`Leases::free_unless_held`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Freed<T> {
    /// Nobody held the keys: `free` ran.
    Done(T),
    /// A pull holds one of the keys.
    Held,
    /// A pull let go since the caller read the images: read them again.
    Stale,
}

/// Keys held by one pull until it is dropped.
#[derive(Debug)]
pub struct Lease<'a> {
    leases: &'a Leases,
    keys: Vec<String>,
}

impl Leases {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the counts half-changed
        // (each change is one map operation).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch to pass to [`Self::free_unless_held`]: read it before
    /// reading the images a collection decides from.
    pub fn epoch(&self) -> u64 {
        self.state().epoch
    }

    /// An empty lease that [`Lease::add`] extends.
    pub fn lease(&self) -> Lease<'_> {
        Lease {
            leases: self,
            keys: Vec::new(),
        }
    }

    /// Runs `free` for `keys` unless a pull holds one of them or one let go
    /// since `epoch`. No lease can be taken while `free` runs, so keep it
    /// short (a rename, a record deletion, an unlink).
    pub fn free_unless_held<T>(
        &self,
        keys: &[String],
        epoch: u64,
        free: impl FnOnce() -> T,
    ) -> Freed<T> {
        let state = self.state();
        if state.epoch != epoch {
            return Freed::Stale;
        }
        if keys.iter().any(|k| state.held.contains_key(k)) {
            return Freed::Held;
        }
        Freed::Done(free())
    }
}

impl Lease<'_> {
    /// Holds `key` too (taken before the item is looked for or stored, so
    /// a collection either ran before, and the pull stores it again, or
    /// leaves it alone).
    pub fn add(&mut self, key: String) {
        // A collection may be freeing an item (short, but it can wait for
        // a disk): off the async workers.
        crate::sync::blocking(|| *self.leases.state().held.entry(key.clone()).or_default() += 1);
        self.keys.push(key);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut state = self.leases.state();
        state.epoch += 1;
        for k in self.keys.drain(..) {
            if let Some(n) = state.held.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    state.held.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_keys_are_not_freed_until_every_holder_lets_go() {
        let leases = Leases::default();
        let mut a = leases.lease();
        a.add(layer("sha256:1"));
        let mut b = leases.lease();
        b.add(layer("sha256:1"));
        b.add(blob("sha256:2"));
        let e = leases.epoch();
        assert_eq!(
            leases.free_unless_held(&[layer("sha256:1")], e, || 1),
            Freed::Held
        );
        assert_eq!(
            leases.free_unless_held(&[blob("sha256:3")], e, || 3),
            Freed::Done(3)
        );
        drop(a);
        assert_eq!(
            leases.free_unless_held(&[layer("sha256:1")], e, || 1),
            Freed::Stale
        );
        let e = leases.epoch();
        assert_eq!(
            leases.free_unless_held(&[layer("sha256:1")], e, || 1),
            Freed::Held
        );
        drop(b);
        let e = leases.epoch();
        assert_eq!(
            leases.free_unless_held(&[layer("sha256:1")], e, || 1),
            Freed::Done(1)
        );
        assert_eq!(
            leases.free_unless_held(&[blob("sha256:2")], e, || 2),
            Freed::Done(2)
        );
        assert!(leases.state().held.is_empty());
    }

    #[test]
    fn an_empty_lease_moves_no_epoch() {
        let leases = Leases::default();
        let e = leases.epoch();
        drop(leases.lease());
        assert_eq!(leases.epoch(), e);
    }
}
