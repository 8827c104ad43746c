//! Capped exponential backoff for the accept loop: when `accept` fails
//! for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM), retrying at
//! once spins a worker at 100% and floods the log while nothing changes.

use std::time::Duration;

/// First pause after a failed accept: a passing shortage costs 5 ms.
pub const ACCEPT_MIN: Duration = Duration::from_millis(5);
/// Longest pause: once descriptors are free again the server accepts
/// within a second.
pub const ACCEPT_MAX: Duration = Duration::from_secs(1);

/// Pauses that double from `min` up to `max`, until [`Backoff::reset`].
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// A schedule starting at `min`, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min.min(max),
            failures: 0,
        }
    }

    /// The accept loop's schedule: 5 ms, 10 ms, 20 ms … 1 s.
    pub fn accept() -> Backoff {
        Backoff::new(ACCEPT_MIN, ACCEPT_MAX)
    }

    /// The pause after one more failure.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    /// Back to the first step after a success; returns how many failures
    /// in a row it ends (0: there was nothing to recover from).
    pub fn reset(&mut self) -> u32 {
        self.next = self.min.min(self.max);
        std::mem::take(&mut self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn accept_schedule_doubles_from_5ms_to_1s_and_stays() {
        let mut b = Backoff::accept();
        let pauses: Vec<Duration> = (0..10).map(|_| b.next_pause()).collect();
        let expected = [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000].map(ms);
        assert_eq!(pauses, expected);
        assert_eq!(b.reset(), 10);
        assert_eq!(b.next_pause(), ms(5), "a success starts over");
        assert_eq!(b.reset(), 1);
        assert_eq!(b.reset(), 0, "nothing to recover from");
    }

    #[test]
    fn never_exceeds_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(b.next_pause(), Duration::from_secs(1));
        let mut b = Backoff::new(ms(1), Duration::MAX);
        for _ in 0..200 {
            b.next_pause();
        }
        assert_eq!(b.next_pause(), Duration::MAX, "saturates, no overflow");
    }
}
