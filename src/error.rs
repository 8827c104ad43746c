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

impl Error {
    /// Whether a node fault is the disk being full (ENOSPC, or EDQUOT for
    /// a quota), told by the I/O error in its source chain or, for an
    /// `Internal` that kept only the text, by its "os error" number: the
    /// client sees ResourceExhausted, not a bare Internal, and a retry
    /// once space returns succeeds.
    pub fn is_out_of_space(&self) -> bool {
        let codes = [
            nix::errno::Errno::ENOSPC as i32,
            nix::errno::Errno::EDQUOT as i32,
        ];
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.raw_os_error().is_some_and(|c| codes.contains(&c))
            {
                return true;
            }
            source = e.source();
        }
        let text = self.to_string();
        codes
            .iter()
            .any(|c| text.contains(&format!("(os error {c})")))
    }
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

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn out_of_space_is_told_by_errno_or_its_text() {
        let full = std::io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        assert!(Error::Internal(full.to_string()).is_out_of_space());
        let quota = std::io::Error::from_raw_os_error(nix::errno::Errno::EDQUOT as i32);
        assert!(Error::Internal(format!("writing x: {quota}")).is_out_of_space());
        let other = std::io::Error::from_raw_os_error(nix::errno::Errno::EIO as i32);
        assert!(!Error::Internal(other.to_string()).is_out_of_space());
        assert!(!Error::NotFound("os error 2".into()).is_out_of_space());
    }
}
