//! Group commit for single-record puts and deletes: changes that arrive
//! while a commit is under way wait for it, then the first of them commits
//! all that queued meanwhile in one transaction. Pods started at once then
//! share fsyncs (each RunPodSandbox writes its record three times) instead
//! of queueing for redb's one writer one fsync at a time. Every call still
//! returns only once its own change is durable.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use super::{StoreError, Table};

/// One record change: its new bytes, or `None` to delete it.
pub(super) struct Change {
    pub(super) table: Table,
    pub(super) key: String,
    pub(super) value: Option<Vec<u8>>,
}

/// A change's result: whether the record existed before (for a delete).
type Outcome = Result<bool, Arc<StoreError>>;

struct Queued {
    change: Change,
    outcome: Arc<OnceLock<Outcome>>,
}

#[derive(Default)]
struct State {
    queue: Vec<Queued>,
    committing: bool,
}

/// The queue of changes waiting for the next commit.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
    done: Condvar,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent whenever the lock is released.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `change` and returns once a commit holding it has finished.
    /// The caller that finds no commit under way commits everything queued
    /// (in arrival order) through `commit`, which answers per change; the
    /// others wait. A failed commit fails every change it held. Blocks.
    pub(super) fn submit(
        &self,
        change: Change,
        commit: impl Fn(&[Change]) -> Result<Vec<bool>, StoreError>,
    ) -> Result<bool, StoreError> {
        let outcome = Arc::new(OnceLock::new());
        let mut state = self.lock();
        state.queue.push(Queued {
            change,
            outcome: outcome.clone(),
        });
        loop {
            if let Some(o) = outcome.get() {
                return o.clone().map_err(StoreError::Shared);
            }
            if state.committing {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.committing = true;
            let batch = std::mem::take(&mut state.queue);
            drop(state);
            let mut leading = Leading {
                group: self,
                outcomes: batch.iter().map(|q| q.outcome.clone()).collect(),
            };
            let changes: Vec<Change> = batch.into_iter().map(|q| q.change).collect();
            leading.finish(commit(&changes));
            drop(leading);
            state = self.lock();
        }
    }
}

/// The outcomes of the batch one caller commits; whatever happens to that
/// caller (a panic in the commit included), the waiters get an answer and
/// the next commit can start.
struct Leading<'a> {
    group: &'a Group,
    outcomes: Vec<Arc<OnceLock<Outcome>>>,
}

impl Leading<'_> {
    fn finish(&mut self, result: Result<Vec<bool>, StoreError>) {
        match result {
            Ok(existed) => {
                for (o, e) in self.outcomes.iter().zip(existed) {
                    let _ = o.set(Ok(e));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for o in &self.outcomes {
                    let _ = o.set(Err(e.clone()));
                }
            }
        }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let aborted = Arc::new(StoreError::CommitAborted);
        for o in &self.outcomes {
            let _ = o.set(Err(aborted.clone()));
        }
        let mut state = self.group.lock();
        state.committing = false;
        drop(state);
        self.group.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn change(key: &str) -> Change {
        Change {
            table: Table::Pods,
            key: key.into(),
            value: Some(Vec::new()),
        }
    }

    #[test]
    fn concurrent_changes_share_commits_and_each_gets_its_answer() {
        let group = Group::default();
        let commits = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..16 {
                let (group, commits) = (&group, &commits);
                s.spawn(move || {
                    let key = format!("k{i}");
                    let r = group.submit(change(&key), |batch| {
                        commits.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        Ok(batch.iter().map(|c| c.key.ends_with('3')).collect())
                    });
                    assert_eq!(r.unwrap(), key.ends_with('3'), "{key}");
                });
            }
        });
        let n = commits.load(Ordering::SeqCst);
        assert!((1..16).contains(&n), "{n} commits for 16 changes");
    }

    #[test]
    fn a_failed_or_panicking_commit_fails_its_changes_and_the_next_one_runs() {
        let group = Group::default();
        let failed = group.submit(change("a"), |_| Err(StoreError::CommitAborted));
        assert!(matches!(failed, Err(StoreError::Shared(_))));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            group.submit(change("b"), |_| panic!("in the commit"))
        }));
        assert!(panicked.is_err());
        assert!(
            group
                .submit(change("c"), |b| Ok(vec![true; b.len()]))
                .unwrap()
        );
    }
}
