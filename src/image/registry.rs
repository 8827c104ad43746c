//! An OCI distribution API client: manifests and blobs with bearer-token
//! and basic auth, digest checks, range resume and a stall timeout.
//!
//! Our own rather than a crate's so that mirrors, resume, stall detection
//! and streaming into the unpacker are under our control. Registries marked
//! insecure are spoken to over plain HTTP; all others over HTTPS.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::registries::PullSource;

const MAX_MANIFEST: usize = 4 << 20;
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// How to authenticate to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: only registries that allow anonymous pulls (or hand out anonymous bearer
    /// tokens).
    Anonymous,
    /// A username and password, sent as Basic auth or exchanged for a bearer token.
    Basic {
        /// Account name at the registry.
        username: String,
        /// Password or access token for `username`.
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token endpoint.
    IdentityToken(String),
    /// A bearer token sent as-is.
    RegistryToken(String),
}

/// Network time limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// Longest wait for a TCP/TLS connection to the registry.
    pub connect: Duration,
    /// No byte for this long fails the request instead of hanging a pull.
    pub stall: Duration,
}

/// Registry failures, classified for kubelet.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached, stalled, or answered 429/5xx; worth retrying.
    #[error("RegistryUnavailable: {host}/{repository}: {message}")]
    Unavailable {
        /// Registry host the request went to (the mirror, when pulling through one).
        host: String,
        /// Repository path at that host.
        repository: String,
        /// What went wrong: transport error chain, timeout or status and body.
        message: String,
    },
    /// The registry answered 404 for a manifest or blob.
    #[error("{host}/{repository}: {what} not found")]
    NotFound {
        /// Registry host the request went to.
        host: String,
        /// Repository path at that host.
        repository: String,
        /// The missing object, e.g. `manifest latest` or `blob sha256:…`.
        what: String,
    },
    /// The registry answered 401/403, demanded credentials we lack, or refused the ones given.
    #[error("{host}/{repository}: unauthorized: {message}")]
    Unauthorized {
        /// Registry host the request went to.
        host: String,
        /// Repository path at that host.
        repository: String,
        /// The registry's answer (body, at most 300 characters) or why auth could not be attempted.
        message: String,
    },
    /// Content fetched by digest did not hash to that digest.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The object checked, e.g. `manifest of host/repo`.
        what: String,
        /// The digest asked for.
        expected: String,
        /// The sha256 digest of the bytes received.
        actual: String,
    },
    /// A manifest that is not JSON, is larger than 4 MiB, or is neither an image manifest nor an
    /// index.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// Any other non-success HTTP status (not 401/403/404/429/5xx), e.g. 400 or 405.
    #[error("{host}/{repository}: registry answered {status}: {message}")]
    Http {
        /// Registry host the request went to.
        host: String,
        /// Repository path at that host.
        repository: String,
        /// The HTTP status code.
        status: u16,
        /// The response body, at most 300 characters.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("registry client: {0}")]
    Client(String),
}

/// A content descriptor as manifests list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content; empty when the manifest omits it.
    #[serde(default)]
    pub media_type: String,
    /// Content digest, `algorithm:hex` (e.g. `sha256:…`).
    pub digest: String,
    /// Size of the content in bytes; 0 when the manifest omits it.
    #[serde(default)]
    pub size: u64,
}

/// One image of an index, with its platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Digest of the platform's image manifest.
    pub digest: String,
    /// Media type of that manifest.
    pub media_type: String,
    /// Size of that manifest in bytes.
    pub size: u64,
    /// `platform.os`, e.g. `linux`; empty when the entry has no platform.
    pub os: String,
    /// `platform.architecture` as a GOARCH name, e.g. `amd64`; empty when absent.
    pub architecture: String,
    /// `platform.variant`, e.g. `v8` for arm64; absent when the index gives none.
    pub variant: Option<String>,
}

/// What a manifest describes.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// A multi-platform index (OCI index or Docker manifest list): one entry per listed manifest.
    Index(Vec<IndexEntry>),
    /// A single-platform image manifest.
    Image {
        /// The image config blob.
        config: Descriptor,
        /// The layer blobs, base layer first.
        layers: Vec<Descriptor>,
    },
}

/// A fetched, digest-checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest exactly as served; its sha256 is `digest`.
    pub bytes: Vec<u8>,
    /// Media type from the manifest's `mediaType` field, else the response's `Content-Type`.
    pub media_type: String,
    /// `sha256:` digest of `bytes`.
    pub digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawEntry>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Manifest {
    /// Parses OCI and Docker schema2 manifests and indexes.
    pub fn kind(&self) -> Result<ManifestKind, RegistryError> {
        let raw: RawManifest = serde_json::from_slice(&self.bytes)
            .map_err(|e| RegistryError::InvalidManifest(e.to_string()))?;
        let mt = raw.media_type.as_deref().unwrap_or(&self.media_type);
        if let Some(entries) = raw
            .manifests
            .filter(|_| !mt.ends_with("manifest.v1+json") && !mt.ends_with("manifest.v2+json"))
        {
            return Ok(ManifestKind::Index(
                entries
                    .into_iter()
                    .map(|e| {
                        let p = e.platform.unwrap_or(RawPlatform {
                            os: String::new(),
                            architecture: String::new(),
                            variant: None,
                        });
                        IndexEntry {
                            digest: e.digest,
                            media_type: e.media_type,
                            size: e.size,
                            os: p.os,
                            architecture: p.architecture,
                            variant: p.variant,
                        }
                    })
                    .collect(),
            ));
        }
        match (raw.config, raw.layers) {
            (Some(config), Some(layers)) => Ok(ManifestKind::Image { config, layers }),
            _ => Err(RegistryError::InvalidManifest(format!(
                "unsupported manifest (media type {mt:?})"
            ))),
        }
    }
}

/// The GOARCH name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The index entry for linux on this architecture; attestations and other
/// `unknown` entries are never picked.
pub fn pick_platform(entries: &[IndexEntry]) -> Option<&IndexEntry> {
    let arch = host_arch();
    let candidates = entries
        .iter()
        .filter(|e| e.os == "linux" && e.architecture == arch);
    let mut best = None;
    for e in candidates {
        let variant_ok = match (arch, e.variant.as_deref()) {
            ("arm64", Some(v)) => v == "v8",
            _ => true,
        };
        if variant_ok {
            return Some(e);
        }
        best.get_or_insert(e);
    }
    best
}

/// A blob body, chunk by chunk; fails if the registry stalls.
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    offset: u64,
    stall: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    host: String,
    repository: String,
}

impl BlobStream {
    /// Where the body starts in the blob: the requested offset when the
    /// registry honoured the range, else 0.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                let next = tokio::time::Instant::now() + this.stall;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RegistryError::Unavailable {
                host: this.host.clone(),
                repository: this.repository.clone(),
                message: format!("reading blob: {e}"),
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(RegistryError::Unavailable {
                    host: this.host.clone(),
                    repository: this.repository.clone(),
                    message: format!("no data for {}s", this.stall.as_secs()),
                }))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// A cached `Authorization` header value.
struct CachedAuth {
    header: String,
    until: Instant,
}

/// The registry client. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    timeouts: ClientTimeouts,
    auth: Arc<Mutex<HashMap<String, CachedAuth>>>,
}

impl RegistryClient {
    /// Builds the HTTP client (system roots for HTTPS).
    pub fn new(timeouts: ClientTimeouts) -> Result<RegistryClient, RegistryError> {
        // Idempotent: a second install (another client) is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .user_agent(concat!("crius/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))?;
        Ok(RegistryClient {
            http,
            timeouts,
            auth: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn url(src: &PullSource, path: &str) -> String {
        let scheme = if src.insecure { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}/{path}", src.host, src.repository)
    }

    /// GETs the manifest `reference` (tag or digest) and checks its digest.
    pub async fn fetch_manifest(
        &self,
        src: &PullSource,
        reference: &str,
        creds: &Credentials,
    ) -> Result<Manifest, RegistryError> {
        let url = Self::url(src, &format!("manifests/{reference}"));
        let resp = self
            .get(src, &url, Some(ACCEPT_MANIFESTS), 0, creds, true)
            .await?;
        let resp = check_status(src, resp, &format!("manifest {reference}")).await?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut bytes = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = tokio::time::timeout(self.timeouts.stall, body.next())
            .await
            .map_err(|_| unavailable(src, "manifest download stalled"))?
        {
            let chunk = chunk.map_err(|e| unavailable(src, &e.to_string()))?;
            if bytes.len() + chunk.len() > MAX_MANIFEST {
                return Err(RegistryError::InvalidManifest(format!(
                    "{reference}: larger than 4 MiB"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest of {}/{}", src.host, src.repository),
                expected: reference.to_string(),
                actual: digest,
            });
        }
        let media_type = serde_json::from_slice::<RawManifest>(&bytes)
            .ok()
            .and_then(|m| m.media_type)
            .unwrap_or(content_type);
        tracing::debug!(host = %src.host, repository = %src.repository, reference, %digest, %media_type, "manifest fetched");
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// GETs a blob from `offset` on. The caller verifies the digest.
    pub async fn fetch_blob(
        &self,
        src: &PullSource,
        digest: &str,
        offset: u64,
        creds: &Credentials,
    ) -> Result<BlobStream, RegistryError> {
        let url = Self::url(src, &format!("blobs/{digest}"));
        let mut resp = self.get(src, &url, None, offset, creds, false).await?;
        if offset > 0 && resp.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            resp = self.get(src, &url, None, 0, creds, false).await?;
        }
        let resp = check_status(src, resp, &format!("blob {digest}")).await?;
        let start = if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            offset
        } else {
            0
        };
        tracing::debug!(host = %src.host, repository = %src.repository, digest, offset = start, "blob download started");
        Ok(BlobStream {
            inner: Box::pin(resp.bytes_stream()),
            offset: start,
            stall: self.timeouts.stall,
            timer: Box::pin(tokio::time::sleep(self.timeouts.stall)),
            host: src.host.clone(),
            repository: src.repository.clone(),
        })
    }

    /// A GET with auth: cached credentials first, then whatever a 401
    /// challenge asks for.
    async fn get(
        &self,
        src: &PullSource,
        url: &str,
        accept: Option<&str>,
        offset: u64,
        creds: &Credentials,
        whole_timeout: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let key = format!("{}/{}", src.host, src.repository);
        let cached = {
            let map = self.auth.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&key)
                .filter(|c| c.until > Instant::now())
                .map(|c| c.header.clone())
        };
        let cached = cached.or_else(|| match creds {
            Credentials::RegistryToken(t) => Some(format!("Bearer {t}")),
            _ => None,
        });
        let resp = self
            .send(src, url, accept, offset, cached.as_deref(), whole_timeout)
            .await?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge)
            .ok_or_else(|| unauthorized(src, "401 without a WWW-Authenticate challenge"))?;
        let (header, ttl) = match challenge {
            Challenge::Basic => match creds {
                Credentials::Basic { username, password } => {
                    (basic(username, password), Duration::from_secs(3600))
                }
                _ => return Err(unauthorized(src, "registry requires credentials")),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", src.repository));
                self.token(src, &realm, service.as_deref(), &scope, creds)
                    .await?
            }
        };
        let resp = self
            .send(src, url, accept, offset, Some(&header), whole_timeout)
            .await?;
        if matches!(resp.status().as_u16(), 401 | 403) {
            return Err(unauthorized(src, "credentials refused"));
        }
        self.auth.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            CachedAuth {
                header,
                until: Instant::now() + ttl,
            },
        );
        Ok(resp)
    }

    async fn send(
        &self,
        src: &PullSource,
        url: &str,
        accept: Option<&str>,
        offset: u64,
        auth: Option<&str>,
        whole_timeout: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if whole_timeout {
            req = req.timeout(self.timeouts.stall);
        }
        // Headers must arrive within the stall limit even for blobs.
        tokio::time::timeout(self.timeouts.stall, req.send())
            .await
            .map_err(|_| {
                unavailable(
                    src,
                    &format!("no answer in {}s", self.timeouts.stall.as_secs()),
                )
            })?
            .map_err(|e| unavailable(src, &error_chain(&e)))
    }

    /// Gets a bearer token from the challenge's realm.
    async fn token(
        &self,
        src: &PullSource,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: &Credentials,
    ) -> Result<(String, Duration), RegistryError> {
        let mut query = vec![("scope", scope.to_string())];
        if let Some(s) = service {
            query.push(("service", s.to_string()));
        }
        let req = match creds {
            Credentials::IdentityToken(t) => {
                let mut form = query.clone();
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", t.clone()));
                form.push(("client_id", "crius".into()));
                self.http.post(realm).form(&form)
            }
            Credentials::Basic { username, password } => self
                .http
                .get(realm)
                .query(&query)
                .basic_auth(username, Some(password)),
            _ => self.http.get(realm).query(&query),
        };
        let resp = req
            .timeout(self.timeouts.stall)
            .send()
            .await
            .map_err(|e| unavailable(src, &format!("token endpoint: {}", error_chain(&e))))?;
        if matches!(resp.status().as_u16(), 401 | 403) {
            return Err(unauthorized(src, "token endpoint refused the credentials"));
        }
        if !resp.status().is_success() {
            return Err(unavailable(
                src,
                &format!("token endpoint answered {}", resp.status()),
            ));
        }
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| unavailable(src, &format!("token endpoint: {e}")))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| unavailable(src, &format!("token endpoint: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| unauthorized(src, "token endpoint gave no token"))?;
        // Refresh a little early; registries default to 60 s.
        let ttl = Duration::from_secs(t.expires_in.unwrap_or(60).saturating_sub(5).max(1));
        Ok((format!("Bearer {token}"), ttl))
    }
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

fn parse_challenge(h: &str) -> Challenge {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Basic;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, tail) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        params.insert(k, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Challenge::Bearer {
        realm: params.remove("realm").unwrap_or_default(),
        service: params.remove("service"),
        scope: params.remove("scope"),
    }
}

fn unavailable(src: &PullSource, message: &str) -> RegistryError {
    RegistryError::Unavailable {
        host: src.host.clone(),
        repository: src.repository.clone(),
        message: message.to_string(),
    }
}

fn unauthorized(src: &PullSource, message: &str) -> RegistryError {
    RegistryError::Unauthorized {
        host: src.host.clone(),
        repository: src.repository.clone(),
        message: message.to_string(),
    }
}

/// The error and its causes, since reqwest's top message hides the reason.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn check_status(
    src: &PullSource,
    resp: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(match status.as_u16() {
        404 => RegistryError::NotFound {
            host: src.host.clone(),
            repository: src.repository.clone(),
            what: what.to_string(),
        },
        401 | 403 => unauthorized(src, &body),
        429 | 500..=599 => unavailable(src, &format!("{status}: {body}")),
        code => RegistryError::Http {
            host: src.host.clone(),
            repository: src.repository.clone(),
            status: code,
            message: body,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="crius-test""#),
            Challenge::Basic
        );
        assert_eq!(
            parse_challenge("Bearer realm=http://x/t, service=s"),
            Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some("s".into()),
                scope: None
            }
        );
    }

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> IndexEntry {
        IndexEntry {
            digest: format!("{os}/{arch}"),
            media_type: String::new(),
            size: 1,
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn platform_choice_skips_attestations() {
        let entries = vec![
            entry("unknown", "unknown", None),
            entry("linux", "arm64", Some("v8")),
            entry("linux", "amd64", None),
            entry("windows", "amd64", None),
        ];
        let got = pick_platform(&entries).map(|e| e.digest.clone());
        match host_arch() {
            "amd64" => assert_eq!(got.as_deref(), Some("linux/amd64")),
            "arm64" => assert_eq!(got.as_deref(), Some("linux/arm64")),
            _ => {}
        }
        assert!(pick_platform(&[entry("unknown", "unknown", None)]).is_none());
    }

    #[test]
    fn manifest_kinds() {
        let m = |json: &str, ct: &str| Manifest {
            bytes: json.as_bytes().to_vec(),
            media_type: ct.into(),
            digest: String::new(),
        };
        let img = m(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
               "config":{"mediaType":"c","digest":"sha256:c","size":3},
               "layers":[{"mediaType":"l","digest":"sha256:l","size":5}]}"#,
            "",
        );
        match img.kind().unwrap() {
            ManifestKind::Image { config, layers } => {
                assert_eq!(config.size, 3);
                assert_eq!(layers[0].digest, "sha256:l");
            }
            other => panic!("{other:?}"),
        }
        let idx = m(
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:a","size":1,
               "platform":{"os":"linux","architecture":"amd64"}}]}"#,
            "application/vnd.oci.image.index.v1+json",
        );
        assert!(matches!(idx.kind().unwrap(), ManifestKind::Index(e) if e[0].os == "linux"));
        assert!(m("{}", "").kind().is_err());
        assert!(m("not json", "").kind().is_err());
    }
}
