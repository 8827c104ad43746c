//! The error type of the runtime core. Each variant says which gRPC status the
//! edge answers with, so handlers never have to guess from a message.

use crate::store::StoreError;

/// What went wrong in a core operation, classified by who must act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed; retrying it unchanged cannot help.
    #[error("{0}")]
    InvalidArgument(String),
    /// An id or name in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object the request would create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A remote service (a registry) cannot be reached; retrying later may help.
    #[error("{0}")]
    Unavailable(String),
    /// A node-wide limit would be exceeded.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The node refuses what was asked (a privilege crius does not hold).
    #[error("{0}")]
    PermissionDenied(String),
    /// The client's deadline passed before the operation finished.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller's credentials were refused.
    #[error("{0}")]
    Unauthenticated(String),
    /// The operation is not built yet.
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
    /// The metadata store failed; reported as Internal.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else: a fault of the node or of crius.
    #[error("{0}")]
    Internal(String),
}

/// Result of a core operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How much of a hostile string a message quotes.
pub const SHOWN_CHARS: usize = 32;

/// `s` for a message: escaped (no control character reaches a log line or
/// a client) and quoted, cut to [`SHOWN_CHARS`] characters.
pub fn shown(s: &str) -> String {
    let short: String = s.chars().take(SHOWN_CHARS).collect();
    if short.len() < s.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}
