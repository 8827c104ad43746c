//! Single-use, short-lived tokens naming a pending streaming request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};

/// How long an issued URL stays valid.
pub const TTL: Duration = Duration::from_secs(60);
/// Most URLs outstanding at once.
pub const MAX_OUTSTANDING: usize = 1000;

/// A validated request waiting for its client to connect, with what it
/// needs resolved when the URL was issued (so serving it needs nothing of
/// the core).
#[derive(Debug, Clone)]
pub enum Pending {
    /// An exec in a running container, through its pod's monitor.
    Exec {
        /// The validated CRI request.
        req: ExecRequest,
        /// The pod monitor that runs the exec.
        monitor: crate::monitor::client::Client,
    },
    /// The main process of a running container, through its pod's monitor.
    Attach {
        /// The validated CRI request.
        req: AttachRequest,
        /// The pod monitor that owns the container's output and stdin.
        monitor: crate::monitor::client::Client,
    },
    /// Ports of a pod: `localhost` in its network namespace (`None`: the
    /// host's, for host-network pods).
    PortForward {
        /// The validated CRI request (pod id and ports).
        req: PortForwardRequest,
        /// The pod's pinned network namespace; `None` for host-network pods.
        netns: Option<std::path::PathBuf>,
    },
}

impl Pending {
    /// The URL path segment this request is served under.
    pub fn route(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// [`MAX_OUTSTANDING`] unexpired URLs are already waiting for their clients.
    #[error("maximum number of in-flight requests exceeded")]
    TooMany,
    /// The kernel gave no random bytes. A token is the only credential of
    /// a stream URL, so there is no fallback: the request fails instead.
    #[error("no streaming URL issued: the kernel's random number generator failed: {0}")]
    NoRandomness(#[source] getrandom::Error),
}

/// Where token bytes come from: the kernel in the daemon, a stub in tests.
pub trait RandomSource {
    /// Fills all of `buf`, or fails; never leaves it partly random.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error>;
}

/// `getrandom(2)`: needs no descriptor (so it works when the daemon is out
/// of them) and does not block once the kernel's pool is initialised,
/// which happens early in boot, before a CRI runtime starts.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelRandom;

impl RandomSource for KernelRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
        getrandom::fill(buf)
    }
}

/// Bytes of randomness in a token (144 bits, 24 base64 characters).
const TOKEN_BYTES: usize = 18;

/// The outstanding tokens, and the source their names are drawn from.
#[derive(Default)]
pub struct Tokens<R = KernelRandom> {
    map: HashMap<String, (Instant, Pending)>,
    random: R,
}

impl<R: RandomSource> Tokens<R> {
    /// Tokens drawn from `random`.
    pub fn with_source(random: R) -> Self {
        Tokens {
            map: HashMap::new(),
            random,
        }
    }

    fn random_token(&mut self) -> Result<String, TokenError> {
        use base64::Engine as _;
        let mut b = [0u8; TOKEN_BYTES];
        self.random.fill(&mut b).map_err(TokenError::NoRandomness)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
    }

    /// Stores a request under a fresh token; expired ones are dropped first.
    pub fn insert(&mut self, p: Pending) -> Result<String, TokenError> {
        let now = Instant::now();
        self.map.retain(|_, (t, _)| now.duration_since(*t) < TTL);
        if self.map.len() >= MAX_OUTSTANDING {
            return Err(TokenError::TooMany);
        }
        let token = self.random_token()?;
        self.map.insert(token.clone(), (now, p));
        Ok(token)
    }

    /// Spends a token: its request if it is live and for `route`.
    pub fn take(&mut self, route: &str, token: &str) -> Option<Pending> {
        let (issued, p) = self.map.remove(token)?;
        (issued.elapsed() < TTL && p.route() == route).then_some(p)
    }
}

/// A URL that could not be issued: too many outstanding is the client's
/// to back off from; no randomness is the node's, and retryable.
impl From<TokenError> for crate::error::Error {
    fn from(e: TokenError) -> Self {
        use crate::error::Error;
        match e {
            TokenError::TooMany => Error::ResourceExhausted(e.to_string()),
            TokenError::NoRandomness(_) => {
                tracing::error!(error = %e, "streaming URL refused");
                Error::Unavailable(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_route_bound() {
        let mut t = Tokens::<KernelRandom>::default();
        let a = t
            .insert(Pending::PortForward {
                req: Default::default(),
                netns: None,
            })
            .unwrap();
        let b = t
            .insert(Pending::PortForward {
                req: Default::default(),
                netns: None,
            })
            .unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 22);
        assert!(t.take("attach", &a).is_none(), "wrong route");
        assert!(
            t.take("portforward", &a).is_none(),
            "spent by the wrong-route use"
        );
        assert!(t.take("portforward", &b).is_some());
        assert!(t.take("portforward", &b).is_none(), "single use");
        assert!(t.take("portforward", "nope").is_none());
    }

    /// A source that always fails, as `getrandom(2)` would with e.g. a
    /// seccomp filter denying it.
    struct Failing;
    impl RandomSource for Failing {
        fn fill(&mut self, _: &mut [u8]) -> Result<(), getrandom::Error> {
            Err(getrandom::Error::UNSUPPORTED)
        }
    }

    /// A source that fails while its flag is set and gives zeros otherwise.
    struct Switch<'a>(&'a std::cell::Cell<bool>);
    impl RandomSource for Switch<'_> {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), getrandom::Error> {
            if self.0.get() {
                return Err(getrandom::Error::UNEXPECTED);
            }
            buf.fill(0);
            Ok(())
        }
    }

    #[test]
    fn no_token_without_randomness() {
        let mut t = Tokens::with_source(Failing);
        let err = t
            .insert(Pending::PortForward {
                req: Default::default(),
                netns: None,
            })
            .unwrap_err();
        assert!(matches!(err, TokenError::NoRandomness(_)), "{err:?}");
        assert!(err.to_string().contains("random"), "{err}");
        assert!(t.map.is_empty(), "nothing stored under a weak name");
    }

    #[test]
    fn a_failed_draw_stores_nothing_and_later_draws_work() {
        let fail = std::cell::Cell::new(true);
        let mut t = Tokens::with_source(Switch(&fail));
        assert!(
            t.insert(Pending::PortForward {
                req: Default::default(),
                netns: None
            })
            .is_err()
        );
        assert!(t.take("portforward", "AAAAAAAAAAAAAAAAAAAAAAAA").is_none());
        fail.set(false);
        let token = t
            .insert(Pending::PortForward {
                req: Default::default(),
                netns: None,
            })
            .unwrap();
        assert_eq!(t.map.len(), 1);
        assert!(t.take("portforward", &token).is_some());
    }

    #[test]
    fn kernel_tokens_differ() {
        let mut t = Tokens::<KernelRandom>::default();
        let a = t.random_token().unwrap();
        let b = t.random_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }

    #[test]
    fn outstanding_tokens_are_capped() {
        let mut t = Tokens::<KernelRandom>::default();
        for _ in 0..MAX_OUTSTANDING {
            t.insert(Pending::PortForward {
                req: Default::default(),
                netns: None,
            })
            .unwrap();
        }
        assert!(
            t.insert(Pending::PortForward {
                req: Default::default(),
                netns: None
            })
            .is_err()
        );
    }

    #[test]
    fn token_errors_answer_retryable_codes() {
        use crate::error::Error;
        let e = Error::from(TokenError::NoRandomness(getrandom::Error::UNSUPPORTED));
        assert!(
            matches!(&e, Error::Unavailable(m) if m.contains("random number generator")),
            "{e}"
        );
        assert!(matches!(
            Error::from(TokenError::TooMany),
            Error::ResourceExhausted(_)
        ));
    }
}
