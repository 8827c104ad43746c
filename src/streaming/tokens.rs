//! Single-use, short-lived tokens naming a pending streaming request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};

/// How long an issued URL stays valid.
pub const TTL: Duration = Duration::from_secs(60);
/// Most URLs outstanding at once.
pub const MAX_OUTSTANDING: usize = 1000;

/// A validated request waiting for its client to connect.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Pending {
    /// The URL path segment this request is served under.
    pub fn route(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("maximum number of in-flight requests exceeded")]
    TooMany,
}

/// The outstanding tokens.
#[derive(Default)]
pub struct Tokens {
    map: HashMap<String, (Instant, Pending)>,
}

fn random_token() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 18];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Tokens {
    /// Stores a request under a fresh token; expired ones are dropped first.
    pub fn insert(&mut self, p: Pending) -> Result<String, TokenError> {
        let now = Instant::now();
        self.map.retain(|_, (t, _)| now.duration_since(*t) < TTL);
        if self.map.len() >= MAX_OUTSTANDING {
            return Err(TokenError::TooMany);
        }
        let token = random_token();
        self.map.insert(token.clone(), (now, p));
        Ok(token)
    }

    /// Spends a token: its request if it is live and for `route`.
    pub fn take(&mut self, route: &str, token: &str) -> Option<Pending> {
        let (issued, p) = self.map.remove(token)?;
        (issued.elapsed() < TTL && p.route() == route).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_route_bound() {
        let mut t = Tokens::default();
        let a = t.insert(Pending::Exec(ExecRequest::default())).unwrap();
        let b = t.insert(Pending::Exec(ExecRequest::default())).unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 22);
        assert!(t.take("attach", &a).is_none(), "wrong route");
        assert!(t.take("exec", &a).is_none(), "spent by the wrong-route use");
        assert!(t.take("exec", &b).is_some());
        assert!(t.take("exec", &b).is_none(), "single use");
        assert!(t.take("exec", "nope").is_none());
    }

    #[test]
    fn outstanding_tokens_are_capped() {
        let mut t = Tokens::default();
        for _ in 0..MAX_OUTSTANDING {
            t.insert(Pending::Exec(ExecRequest::default())).unwrap();
        }
        assert!(t.insert(Pending::Exec(ExecRequest::default())).is_err());
    }
}
