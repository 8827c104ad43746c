//! The idle timer of an upgraded session (kubelet's stream idle timeout):
//! traffic in either direction pushes the deadline back, and a session
//! with none for the whole timeout is closed. It is not a cap on a
//! session's length: a busy shell can run for days.
//!
//! The tasks that move a session's bytes call [`Activity::touch`], one
//! atomic store per message or read; only the task waiting on
//! [`Activity::expired`] deals with a timer, re-armed when it fires early.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When a session last saw traffic, shared by the tasks that carry it.
#[derive(Debug)]
pub struct Activity {
    timeout: Duration,
    start: Instant,
    /// Milliseconds from `start` to the latest traffic.
    last: AtomicU64,
}

impl Activity {
    /// A session that has just seen traffic (its upgrade).
    pub fn new(timeout: Duration) -> Activity {
        Activity {
            timeout,
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// How long the session may be silent.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records traffic now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        // fetch_max: a late store from another task never moves it back.
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    fn deadline(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed)) + self.timeout
    }

    /// Resolves once `timeout` has passed without a [`Activity::touch`].
    pub async fn expired(&self) {
        loop {
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Runs `work` to its end (`Some`), or drops it when the session goes
    /// idle (`None`); whatever `work` was waiting on (a client that stopped
    /// reading, a process that stopped reading its stdin) cannot hold the
    /// session past its idle timeout.
    pub async fn run<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            out = work => Some(out),
            () = self.expired() => None,
        }
    }
}

/// What an idle session's client is told, where the protocol has a place
/// for it (the WebSocket error channel).
pub fn idle_message(timeout: Duration) -> String {
    format!(
        "stream idle timeout: no traffic in either direction for {}s",
        timeout.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn expires_after_the_timeout_without_traffic() {
        let a = Activity::new(Duration::from_secs(10));
        let t0 = Instant::now();
        a.expired().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_in_between_pushes_the_deadline_back() {
        let a = Arc::new(Activity::new(Duration::from_secs(10)));
        let t0 = Instant::now();
        let toucher = a.clone();
        tokio::spawn(async move {
            // Every 4 s for 40 s: never 10 s of silence.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                toucher.touch();
            }
        });
        a.expired().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(50), "last touch + 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn run_drops_work_that_outlives_the_silence() {
        let a = Activity::new(Duration::from_secs(3));
        assert_eq!(a.run(async { 7 }).await, Some(7));
        let t0 = Instant::now();
        assert_eq!(a.run(std::future::pending::<()>()).await, None);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        // Busy work is not cut off: it touches as it goes.
        a.touch();
        let busy = async {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                a.touch();
            }
            "done"
        };
        assert_eq!(a.run(busy).await, Some("done"));
    }

    #[test]
    fn the_message_names_the_timeout() {
        let m = idle_message(Duration::from_secs(14400));
        assert!(m.contains("idle") && m.contains("14400s"), "{m}");
    }
}
