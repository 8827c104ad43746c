//! The streaming server for `Exec`, `Attach` and `PortForward`: the CRI
//! RPCs only hand out a single-use URL ([`Streaming::issue`]); the client
//! then connects here and upgrades to WebSocket (or SPDY) to talk to the
//! process. Wire details: `../shared/docs/streaming-protocol.md`.

pub mod backoff;
pub mod idle;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod spdy_serve;
pub mod tokens;
pub mod websocket;

use std::sync::Mutex;

pub use tokens::{Pending, TokenError};

/// Issues URLs; the server redeems them.
pub struct Streaming {
    base_url: String,
    tokens: Mutex<tokens::Tokens>,
}

impl Streaming {
    /// `base_url` is `http://<address>:<port>` of the bound listener.
    pub fn new(base_url: String) -> Streaming {
        Streaming {
            base_url,
            tokens: Mutex::new(tokens::Tokens::default()),
        }
    }

    /// A URL for one request, valid once, for a minute.
    pub fn issue(&self, pending: Pending) -> Result<String, TokenError> {
        let route = pending.route();
        let token = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pending)?;
        Ok(format!("{}/{route}/{token}", self.base_url))
    }

    /// Takes the request a token was issued for, if it is valid for
    /// `route`; the token is spent either way.
    pub fn redeem(&self, route: &str, token: &str) -> Option<Pending> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(route, token)
    }
}
