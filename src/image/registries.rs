//! containers-registries.conf (v2) and registry auth files: where a
//! reference is pulled from (mirrors first), whether plain HTTP is allowed,
//! which registries are blocked, and which credentials to send.
//!
//! The files are shared with podman and cri-o, so keys crius does not use
//! are ignored rather than refused.

use std::path::Path;

use serde::Deserialize;

use super::reference::{DOCKER_HUB, Reference, ReferenceError};
use super::registry::Credentials;

/// Errors of registries.conf and auth files.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    /// registries.conf or the auth file cannot be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// The read or parse error.
        message: String,
    },
    /// The reference's registry (or a prefix of it) is marked `blocked = true`.
    #[error("registry {0} is blocked in registries.conf")]
    Blocked(String),
    /// The image name does not parse as a reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// One place to try a pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    /// `host[:port]` to connect to.
    pub host: String,
    /// Repository path in that registry.
    pub repository: String,
    /// Plain HTTP allowed.
    pub insecure: bool,
    /// This source is a mirror from registries.conf, not the image's own registry.
    pub mirror: bool,
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default, rename = "unqualified-search-registries")]
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<RegistryEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RegistryEntry {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<MirrorEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct MirrorEntry {
    location: String,
    #[serde(default)]
    insecure: bool,
}

/// A loaded registries.conf.
#[derive(Debug, Default)]
pub struct Registries {
    search: Vec<String>,
    entries: Vec<RegistryEntry>,
}

impl Registries {
    /// Reads the file; a missing file means no special registries.
    pub fn load(path: &Path) -> Result<Registries, RegistriesError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
            Err(e) => {
                return Err(RegistriesError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        Self::parse(&text).map_err(|message| RegistriesError::File {
            path: path.display().to_string(),
            message,
        })
    }

    fn parse(text: &str) -> Result<Registries, String> {
        let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut entries = f.registry;
        for e in &mut entries {
            if e.prefix.is_none() {
                e.prefix = e.location.clone();
            }
            if e.prefix.as_deref().is_none_or(str::is_empty) {
                return Err("a [[registry]] needs a prefix or a location".into());
            }
        }
        Ok(Registries {
            search: f
                .unqualified_search_registries
                .unwrap_or_else(|| vec![DOCKER_HUB.to_string()]),
            entries,
        })
    }

    /// The entry whose prefix matches `name` (`registry/repository`) the
    /// longest, on a path boundary.
    fn matching(&self, name: &str) -> Option<&RegistryEntry> {
        self.entries
            .iter()
            .filter(|e| {
                let p = e.prefix.as_deref().unwrap_or_default();
                prefix_matches(p, name)
            })
            .max_by_key(|e| e.prefix.as_deref().map(str::len).unwrap_or(0))
    }

    /// Where to pull `r` from, in order: mirrors, then the registry itself.
    pub fn resolve(&self, r: &Reference) -> Result<Vec<PullSource>, RegistriesError> {
        let name = r.name();
        let Some(entry) = self.matching(&name) else {
            return Ok(vec![source(&r.registry, &r.repository, false, false)]);
        };
        if entry.blocked {
            return Err(RegistriesError::Blocked(r.registry.clone()));
        }
        let prefix = entry.prefix.as_deref().unwrap_or_default();
        let rest = &name[prefix.len()..];
        let mut out = Vec::new();
        for m in &entry.mirror {
            let (host, repo) = split_location(&m.location, rest);
            out.push(source(&host, &repo, m.insecure, true));
        }
        let location = entry.location.as_deref().unwrap_or(prefix);
        let (host, repo) = split_location(location, rest);
        out.push(source(&host, &repo, entry.insecure, false));
        Ok(out)
    }

    /// The fully qualified references an unqualified name stands for, in
    /// search order.
    pub fn unqualified_candidates(&self, name: &str) -> Result<Vec<Reference>, RegistriesError> {
        // Validate the name on its own first, for a clear error.
        Reference::parse(name)?;
        self.search
            .iter()
            .map(|reg| Reference::parse(&format!("{reg}/{name}")).map_err(Into::into))
            .collect()
    }
}

fn prefix_matches(prefix: &str, name: &str) -> bool {
    if let Some(wild) = prefix.strip_prefix("*.") {
        let host = name.split('/').next().unwrap_or_default();
        return host.ends_with(&format!(".{wild}"));
    }
    name == prefix
        || (name.starts_with(prefix)
            && (prefix.ends_with('/') || name[prefix.len()..].starts_with('/')))
}

/// Splits `host[/path]` + remaining repository path into a host and the
/// repository to request there.
fn split_location(location: &str, rest: &str) -> (String, String) {
    let joined = format!("{}{rest}", location.trim_end_matches('/'));
    match joined.split_once('/') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (joined, String::new()),
    }
}

fn source(host: &str, repository: &str, insecure: bool, mirror: bool) -> PullSource {
    let host = if host == DOCKER_HUB {
        "registry-1.docker.io".to_string()
    } else {
        host.to_string()
    };
    PullSource {
        host,
        repository: repository.to_string(),
        insecure,
        mirror,
    }
}

#[derive(Debug, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Credentials for `host`/`repository` from a containers-auth.json or
/// docker config.json; the most specific key wins.
pub fn lookup_auth(
    auth_file: &Path,
    host: &str,
    repository: &str,
) -> Result<Option<Credentials>, RegistriesError> {
    let file_err = |message: String| RegistriesError::File {
        path: auth_file.display().to_string(),
        message,
    };
    let text = match std::fs::read_to_string(auth_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_err(e.to_string())),
    };
    let f: AuthFile = serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))?;
    let host_key = if host == "registry-1.docker.io" {
        DOCKER_HUB
    } else {
        host
    };
    let mut keys: Vec<String> = Vec::new();
    let parts: Vec<&str> = repository.split('/').collect();
    for i in (1..=parts.len()).rev() {
        keys.push(format!("{host_key}/{}", parts[..i].join("/")));
    }
    keys.push(host_key.to_string());
    if host_key == DOCKER_HUB {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
    }
    keys.push(format!("https://{host_key}"));
    keys.push(format!("http://{host_key}"));
    for key in keys {
        let Some(e) = f.auths.get(&key) else { continue };
        if let Some(t) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken(t.clone())));
        }
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            return Ok(Some(Credentials::Basic {
                username: u.clone(),
                password: p.clone(),
            }));
        }
        if let Some(a) = e.auth.as_ref().filter(|a| !a.is_empty()) {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| file_err(format!("auth for {key} is not base64")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| file_err(format!("auth for {key} is not UTF-8")))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| file_err(format!("auth for {key} is not user:password")))?;
            return Ok(Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    const CONF: &str = r#"
unqualified-search-registries = ["quay.io", "docker.io"]
something-podman-uses = true

[[registry]]
location = "127.0.0.1:5100"
insecure = true

[[registry]]
prefix = "registry.k8s.io"
location = "registry.k8s.io"
[[registry.mirror]]
location = "127.0.0.1:5100/crius"
insecure = true
[[registry.mirror]]
location = "mirror.example/k8s"

[[registry]]
prefix = "registry.k8s.io/special"
location = "special.example/x"

[[registry]]
location = "blocked.example"
blocked = true

[[registry]]
prefix = "*.wild.example"
location = "wild-mirror.example"
"#;

    #[test]
    fn mirrors_first_then_the_registry() {
        let c = Registries::parse(CONF).unwrap();
        let s = c.resolve(&r("registry.k8s.io/pause:3.10")).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            (
                s[0].host.as_str(),
                s[0].repository.as_str(),
                s[0].insecure,
                s[0].mirror
            ),
            ("127.0.0.1:5100", "crius/pause", true, true)
        );
        assert_eq!(
            (s[1].host.as_str(), s[1].repository.as_str(), s[1].insecure),
            ("mirror.example", "k8s/pause", false)
        );
        assert_eq!(
            (s[2].host.as_str(), s[2].repository.as_str(), s[2].mirror),
            ("registry.k8s.io", "pause", false)
        );
    }

    #[test]
    fn longest_prefix_on_a_boundary_and_rewrite() {
        let c = Registries::parse(CONF).unwrap();
        let s = c.resolve(&r("registry.k8s.io/special/img:1")).unwrap();
        assert_eq!(s, vec![source("special.example", "x/img", false, false)]);
        // "registry.k8s.io.evil" must not match the "registry.k8s.io" prefix.
        let s = c.resolve(&r("registry.k8s.io.evil/x:1")).unwrap();
        assert_eq!(s, vec![source("registry.k8s.io.evil", "x", false, false)]);
        let s = c.resolve(&r("a.wild.example/x:1")).unwrap();
        assert_eq!(s[0].host, "wild-mirror.example");
    }

    #[test]
    fn insecure_blocked_and_docker_hub() {
        let c = Registries::parse(CONF).unwrap();
        let s = c
            .resolve(&r("127.0.0.1:5100/crius/busybox:latest"))
            .unwrap();
        assert!(s[0].insecure);
        assert!(matches!(
            c.resolve(&r("blocked.example/x")),
            Err(RegistriesError::Blocked(_))
        ));
        let s = Registries::default().resolve(&r("busybox")).unwrap();
        assert_eq!(
            s,
            vec![source(
                "registry-1.docker.io",
                "library/busybox",
                false,
                false
            )]
        );
    }

    #[test]
    fn unqualified_names_use_search_registries() {
        let c = Registries::parse(CONF).unwrap();
        let names: Vec<String> = c
            .unqualified_candidates("busybox")
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            names,
            ["quay.io/busybox:latest", "docker.io/library/busybox:latest"]
        );
        let d = Registries::parse("").unwrap();
        assert_eq!(
            d.unqualified_candidates("busybox").unwrap()[0].to_string(),
            "docker.io/library/busybox:latest"
        );
        assert!(c.unqualified_candidates("Bad Name").is_err());
    }

    #[test]
    fn auth_file_lookup() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &f,
            serde_json::json!({"auths": {
                "reg.example": {"auth": b("a:1")},
                "reg.example/team": {"username": "t", "password": "2"},
                "https://index.docker.io/v1/": {"auth": b("hub:3")},
                "tok.example": {"identitytoken": "refresh"}
            }})
            .to_string(),
        )
        .unwrap();
        let basic = |u: &str, p: &str| {
            Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(
            lookup_auth(&f, "reg.example", "other/x").unwrap(),
            basic("a", "1")
        );
        assert_eq!(
            lookup_auth(&f, "reg.example", "team/x").unwrap(),
            basic("t", "2")
        );
        assert_eq!(
            lookup_auth(&f, "registry-1.docker.io", "library/busybox").unwrap(),
            basic("hub", "3")
        );
        assert_eq!(
            lookup_auth(&f, "tok.example", "x").unwrap(),
            Some(Credentials::IdentityToken("refresh".into()))
        );
        assert_eq!(lookup_auth(&f, "none.example", "x").unwrap(), None);
        assert_eq!(
            lookup_auth(&dir.path().join("missing"), "a", "b").unwrap(),
            None
        );
    }
}
