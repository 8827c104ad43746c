//! The writable layers' usage for ImageFsInfo, sampled. Knowing it means
//! walking every container's upper directory, which takes long on a node
//! with busy containers; kubelet asks every few seconds, and so may any
//! client. So at most one walk runs at a time and at most one per
//! [`MAX_AGE`]: a call gets the latest sample with its time (as
//! containerd's snapshot usage syncer does), starting a walk in the
//! background when that sample is old, and only the very first call waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How old a sample may be before a call starts a new walk.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// What one walk measures: the total and each container's share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// File content bytes in all writable layers (apparent sizes; hardlinks
    /// counted per link).
    pub bytes: u64,
    /// Entries (files, directories, links) in all writable layers.
    pub inodes: u64,
    /// Bytes and inodes by container id (for container stats).
    pub by_container: HashMap<String, (u64, u64)>,
}

/// One measurement of the writable layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// File content bytes in all writable layers (apparent sizes, not allocated blocks; hardlinks
    /// counted per link).
    pub bytes: u64,
    /// Entries (files, directories, links) in all writable layers.
    pub inodes: u64,
    /// Bytes and inodes by container id.
    pub by_container: Arc<HashMap<String, (u64, u64)>>,
    /// When the walk that measured it ended.
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    last: Option<(Instant, Sample)>,
    walking: bool,
}

type Walk = Arc<dyn Fn() -> Usage + Send + Sync>;

/// Samples of one measurement (`walk`: bytes and inodes), shared by clones.
#[derive(Clone)]
pub struct Sampler {
    walk: Walk,
    state: Arc<Mutex<State>>,
    /// Held by the first walk, which callers without any sample wait for.
    first: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// Samples of `walk`.
    pub fn new(walk: impl Fn() -> Usage + Send + Sync + 'static) -> Sampler {
        Sampler {
            walk: Arc::new(walk),
            state: Arc::default(),
            first: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest sample; see the module docs.
    pub async fn sample(&self) -> Sample {
        {
            let mut st = self.state();
            if let Some((taken, sample)) = st.last.clone() {
                if taken.elapsed() >= MAX_AGE && !st.walking {
                    st.walking = true;
                    let me = self.clone();
                    tokio::task::spawn_blocking(move || me.walk_and_record());
                }
                return sample;
            }
        }
        // No sample yet: one caller walks, the others wait for it.
        let _first = self.first.lock().await;
        if let Some((_, sample)) = &self.state().last {
            return sample.clone();
        }
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.walk_and_record()).await {
            Ok(sample) => sample,
            // The walk panicked: nothing measured, and the next call tries
            // again.
            Err(_) => Sample {
                bytes: 0,
                inodes: 0,
                by_container: Arc::default(),
                at: SystemTime::now(),
            },
        }
    }

    /// Measures and stores the numbers (on a blocking thread).
    fn walk_and_record(&self) -> Sample {
        let started = Instant::now();
        let usage = (self.walk)();
        let (bytes, inodes) = (usage.bytes, usage.inodes);
        let sample = Sample {
            bytes,
            inodes,
            by_container: Arc::new(usage.by_container),
            at: SystemTime::now(),
        };
        let mut st = self.state();
        st.last = Some((Instant::now(), sample.clone()));
        st.walking = false;
        tracing::debug!(
            bytes,
            inodes,
            took_ms = started.elapsed().as_millis() as u64,
            "writable layers measured"
        );
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_share_one_walk_until_the_sample_is_old() {
        let walks = Arc::new(AtomicU64::new(0));
        let counted = walks.clone();
        let sampler = Sampler::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(50));
            Usage {
                bytes: n * 100,
                inodes: n,
                by_container: HashMap::new(),
            }
        });
        let first = futures::future::join_all((0..8).map(|_| sampler.sample())).await;
        assert!(first.iter().all(|s| s.bytes == 100), "{first:?}");
        for _ in 0..100 {
            assert_eq!(sampler.sample().await.bytes, 100);
        }
        assert_eq!(walks.load(Ordering::SeqCst), 1);

        // An old sample is still answered, and one walk refreshes it.
        sampler.state().last.as_mut().unwrap().0 -= MAX_AGE;
        for _ in 0..10 {
            assert_eq!(sampler.sample().await.bytes, 100);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sampler.sample().await.bytes, 200);
        assert_eq!(walks.load(Ordering::SeqCst), 2);
    }
}
