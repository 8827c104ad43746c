//! Ids for pods and containers: 64 hex digits from the kernel's random
//! number generator (`getrandom(2)`, which needs no descriptor), as
//! containerd and cri-o make theirs. Without randomness no id is made.

use crate::error::Error;

/// A fresh id.
pub fn new_id() -> Result<String, Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| Error::Unavailable(format!("no randomness for a new id: {e}")))?;
    Ok(hex::encode(b))
}

/// Whether `s` has an id's shape (64 lowercase hex digits): startup
/// reconciliation only touches directories crius could have made.
pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_64_hex_digits_and_differ() {
        let (a, b) = (super::new_id().unwrap(), super::new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(super::is_id(&a));
        assert!(!super::is_id("..") && !super::is_id(&a[1..]));
    }
}
