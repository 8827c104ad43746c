//! GetContainerEvents in the core: the container table's lifecycle
//! events, each with its pod's record and its containers' statuses.

use std::sync::{Arc, Weak};

use futures::Stream;
use k8s_cri::v1::ContainerEventType;

use super::containers::{message, reason};
use super::{ContainerStatus, ContainerView, Runtime};
use crate::container::events::{Event, Subscription};
use crate::error::{Error, Result};
use crate::sandbox::PodRecord;

/// One event as GetContainerEvents sends it.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// Created, started, stopped or deleted.
    pub kind: ContainerEventType,
    /// The container that changed.
    pub id: String,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// The pod as it is when the event is sent; `None` once removed.
    pub pod: Option<Arc<PodRecord>>,
    /// The pod's containers right after the change.
    pub containers: Vec<ContainerStatus>,
}

impl Runtime {
    /// A new GetContainerEvents stream: every change from now on, in
    /// order; it ends with ResourceExhausted when the client falls too far
    /// behind, and when the runtime is gone. It does not keep the runtime
    /// alive.
    pub fn container_events(
        self: &Arc<Self>,
    ) -> impl Stream<Item = Result<ContainerEvent>> + Send + 'static {
        let start: (Subscription, Weak<Runtime>) =
            (self.containers.subscribe(), Arc::downgrade(self));
        futures::stream::unfold(start, |(mut sub, rt)| async move {
            let next = match sub.next().await? {
                Ok(ev) => Ok(rt.upgrade()?.event(ev)),
                Err(lagged) => Err(Error::ResourceExhausted(lagged.to_string())),
            };
            Some((next, (sub, rt)))
        })
    }

    fn event(&self, ev: Event) -> ContainerEvent {
        let containers = ev
            .containers
            .into_iter()
            .map(|(record, run)| {
                let (reason, exit_code, finished_at) = reason(&record, &run);
                ContainerStatus {
                    message: message(&record, &run),
                    view: ContainerView { record, run },
                    reason,
                    exit_code,
                    finished_at,
                    spec: None,
                }
            })
            .collect();
        ContainerEvent {
            kind: ev.kind,
            id: ev.id,
            at: ev.at,
            pod: self.pods.get(&ev.pod_id).ok().map(Arc::new),
            containers,
        }
    }

    /// GetContainerEvents subscribers now.
    pub fn event_subscribers(&self) -> usize {
        self.containers.event_subscribers()
    }
}
