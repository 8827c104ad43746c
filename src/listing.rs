//! A node-wide byte budget for what a List RPC answers. kubelet (like every
//! grpc-go client) refuses a message over 16 MiB, and one such answer
//! breaks ListPodSandbox or ListContainers for every client until objects
//! are removed. So each object's share of the answer is reserved when it is
//! created and released when it is removed: a create that would push the
//! answer over the limit fails with ResourceExhausted instead.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Error;

/// kubelet's CRI message limit, less room for the answer's own framing.
pub const ANSWER_LIMIT: usize = (16 << 20) - (64 << 10);

/// Bytes reserved for one list answer.
#[derive(Debug)]
pub struct Budget {
    what: &'static str,
    limit: usize,
    used: AtomicUsize,
}

/// An entry's share: its encoding plus the field tag and length in front.
pub fn entry_bytes(msg: &impl prost::Message) -> usize {
    let len = msg.encoded_len();
    len + prost::length_delimiter_len(len) + 1
}

impl Budget {
    /// An empty budget for the answer listing `what` (e.g. "pod sandboxes").
    pub fn new(what: &'static str, limit: usize) -> Budget {
        Budget {
            what,
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` from the budget, or says why not.
    pub fn reserve(&self, bytes: usize) -> Result<(), Error> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = used.saturating_add(bytes);
            if next > self.limit {
                return Err(Error::ResourceExhausted(format!(
                    "the node's list of {} would exceed {} bytes (a CRI client's message limit); remove some first",
                    self.what, self.limit
                )));
            }
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    /// Counts an object that exists already (found at start), past the
    /// limit if need be: it is listed whatever the budget says.
    pub fn count_existing(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives `bytes` back (an object was removed or never made).
    pub fn release(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_limit_and_releases() {
        let b = Budget::new("pods", 100);
        b.reserve(60).unwrap();
        assert!(matches!(b.reserve(50), Err(Error::ResourceExhausted(_))));
        b.reserve(40).unwrap();
        b.release(60);
        assert_eq!(b.used(), 40);
        b.release(1000);
        assert_eq!(b.used(), 0);
    }
}
