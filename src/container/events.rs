//! Container lifecycle events for GetContainerEvents: each change of the
//! container table (created, started, stopped, deleted) goes to every
//! subscriber in the order the table made it. Sending never waits: each
//! subscriber has a bounded buffer, and one that lets it fill is dropped;
//! its stream then ends with [`Lagged`] (kubelet re-lists and subscribes
//! again) while the others go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_cri::v1::ContainerEventType;

use super::{ContainerRecord, RunState};

/// One change, with the pod's containers as they were right after it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Created, started, stopped or deleted.
    pub kind: ContainerEventType,
    /// The container that changed.
    pub id: String,
    /// Its pod sandbox's id.
    pub pod_id: String,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// Every container of the pod with its state, after the change (a
    /// deleted container is no longer among them).
    pub containers: Vec<(Arc<ContainerRecord>, RunState)>,
}

/// A subscriber let its buffer fill; events were lost.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("container event subscriber fell more than {0} events behind")]
pub struct Lagged(pub usize);

struct Sub {
    tx: tokio::sync::mpsc::Sender<Event>,
    lagged: Arc<AtomicBool>,
}

/// The subscribers (see the module docs).
pub struct Events {
    capacity: usize,
    subs: Mutex<Vec<Sub>>,
}

/// One subscription: events in order, then `Err(Lagged)` if it fell
/// behind.
pub struct Subscription {
    rx: tokio::sync::mpsc::Receiver<Event>,
    lagged: Arc<AtomicBool>,
    capacity: usize,
}

impl Subscription {
    /// The next event; `None` when the runtime is gone.
    pub async fn next(&mut self) -> Option<Result<Event, Lagged>> {
        match self.rx.recv().await {
            Some(e) => Some(Ok(e)),
            None if self.lagged.swap(false, Ordering::Relaxed) => Some(Err(Lagged(self.capacity))),
            None => None,
        }
    }
}

impl Events {
    /// Subscribers each buffer up to `capacity` events.
    pub fn new(capacity: usize) -> Events {
        Events {
            capacity: capacity.max(1),
            subs: Mutex::default(),
        }
    }

    /// A new subscriber, from the next event on.
    pub fn subscribe(&self) -> Subscription {
        let (tx, rx) = tokio::sync::mpsc::channel(self.capacity);
        let lagged = Arc::new(AtomicBool::new(false));
        self.lock().push(Sub {
            tx,
            lagged: lagged.clone(),
        });
        Subscription {
            rx,
            lagged,
            capacity: self.capacity,
        }
    }

    /// Whether anyone listens (events cost nothing to make otherwise).
    pub fn wanted(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Sends to every subscriber without waiting; drops those that are
    /// full or gone.
    pub fn send(&self, event: Event) {
        use tokio::sync::mpsc::error::TrySendError;
        self.lock().retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                s.lagged.store(true, Ordering::Relaxed);
                tracing::warn!(
                    capacity = self.capacity,
                    "container event subscriber too slow; ending its stream"
                );
                false
            }
            Err(TrySendError::Closed(_)) => false,
        });
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sub>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> Event {
        Event {
            kind: ContainerEventType::ContainerStartedEvent,
            id: n.to_string(),
            pod_id: "p".into(),
            at: n,
            containers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_slow_subscriber_ends_with_lagged_and_blocks_nobody() {
        let events = Events::new(4);
        let mut fast = events.subscribe();
        let mut slow = events.subscribe();
        for n in 0..10 {
            events.send(event(n));
            let got = fast.next().await.unwrap().unwrap();
            assert_eq!(got.at, n);
        }
        assert_eq!(events.subscribers(), 1, "the slow one is dropped");
        for n in 0..4 {
            assert_eq!(slow.next().await.unwrap().unwrap().at, n);
        }
        assert!(matches!(slow.next().await, Some(Err(Lagged(4)))));
        drop(fast);
        events.send(event(11));
        assert!(!events.wanted(), "a gone subscriber is dropped");
    }
}
