//! Image references as kubelet and crictl send them, normalised the way
//! docker and containers/image do (`busybox` → `docker.io/library/busybox:latest`),
//! so the same image is found whatever spelling a client used.

use std::fmt;

/// The registry Docker Hub names live in.
pub const DOCKER_HUB: &str = "docker.io";

/// Why a reference was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {}: {reason}", crate::error::shown(.input))]
pub struct ReferenceError {
    /// The reference as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`; `docker.io` for Docker Hub.
    pub registry: String,
    /// Path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    /// The tag; `latest` when the input gives neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:<hex>`; wins over the tag when pulling.
    pub digest: Option<String>,
}

/// Whether `s` names its registry (first component has `.` or `:` or is
/// `localhost`), so no search registries apply.
pub fn is_fully_qualified(s: &str) -> bool {
    match s.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

impl Reference {
    /// Parses and normalises `s`; names without a registry go to Docker Hub.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > 4096 {
            return Err(err("too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                validate_digest(d).map_err(|r| err(&r))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                validate_tag(tag).map_err(|r| err(&r))?;
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = if is_fully_qualified(name) {
            let (r, p) = name.split_once('/').ok_or_else(|| err("no repository"))?;
            validate_host(r).map_err(|r| err(&r))?;
            (r.to_string(), p.to_string())
        } else {
            (DOCKER_HUB.to_string(), name.to_string())
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_path(&repository).map_err(|r| err(&r))?;
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn pull_reference(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` (tag `latest` when none was given).
    pub fn repo_tag(&self) -> String {
        format!(
            "{}:{}",
            self.name(),
            self.tag.as_deref().unwrap_or("latest")
        )
    }

    /// `registry/repository@digest`.
    pub fn repo_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn validate_digest(d: &str) -> Result<(), String> {
    let (algo, hex) = d.split_once(':').ok_or("digest must be algorithm:hex")?;
    if algo != "sha256" {
        return Err(format!(
            "unsupported digest algorithm {}",
            crate::error::shown(algo)
        ));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("a sha256 digest has 64 lowercase hex digits".into());
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), String> {
    let ok_first = t
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok_first
        || t.len() > 128
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(format!("invalid tag {}", crate::error::shown(t)));
    }
    Ok(())
}

fn validate_host(h: &str) -> Result<(), String> {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!(
            "invalid registry port in {}",
            crate::error::shown(h)
        ));
    }
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if !host_ok {
        return Err(format!("invalid registry host {}", crate::error::shown(h)));
    }
    Ok(())
}

fn validate_path(p: &str) -> Result<(), String> {
    if p.len() > 255 {
        return Err("repository name too long".into());
    }
    for comp in p.split('/') {
        let valid = !comp.is_empty()
            && comp.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && comp
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && comp
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "repository component {} must be lowercase letters, digits and separators",
                crate::error::shown(comp)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(p("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(p("user/x").repo_tag(), "docker.io/user/x:latest");
        assert_eq!(
            p("index.docker.io/library/busybox:1").repo_tag(),
            "docker.io/library/busybox:1"
        );
        let r = p("127.0.0.1:5000/crius/busybox:1.0");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "crius/busybox")
        );
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = p(&format!("localhost:5000/a/b@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.pull_reference(), d);
        assert_eq!(r.repo_digest(&d), format!("localhost:5000/a/b@{d}"));
        let r = p(&format!("registry.k8s.io/pause:3.10@{d}"));
        assert_eq!(r.tag.as_deref(), Some("3.10"));
        assert_eq!(r.pull_reference(), d);
    }

    #[test]
    fn qualification() {
        assert!(is_fully_qualified("127.0.0.1:5000/x"));
        assert!(is_fully_qualified("localhost/x"));
        assert!(is_fully_qualified("quay.io/x/y"));
        assert!(!is_fully_qualified("user/x"));
        assert!(!is_fully_qualified("busybox:1"));
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER/case",
            "busybox:bad tag",
            "busybox:-x",
            "a@sha256:123",
            "a@md5:abc",
            "host:99999/x",
            "a//b",
            "bad_/x",
            "x:",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
