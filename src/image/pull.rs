//! Pulling: resolve the name through registries.conf, fetch and verify the
//! manifest and config, then download every layer into the content store
//! while unpacking it into its layer directory, several layers at a time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};

use super::registries::{PullSource, Registries};
use super::registry::{self, Credentials, Descriptor, ManifestKind, RegistryError};
use super::unpack::{self, Compression, UnpackLimits};
use super::{Images, LayerRecord, Reference, hex_of, internal, leases, reference};
use crate::error::{Error, Result};
use crate::image::record::{ImageConfig, ImageRecord, LayerRef, chain_ids};
use crate::store::Table;

/// How often a long layer download logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Credentials that came with a pull request (CRI `AuthConfig`).
#[derive(Debug, Clone, Default)]
pub struct PullAuth {
    /// Registry user name; used with `password`.
    pub username: String,
    /// Registry password.
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// An OAuth2 refresh token, exchanged at the registry's token endpoint.
    pub identity_token: String,
    /// A bearer token sent to the registry as-is.
    pub registry_token: String,
}

impl PullAuth {
    /// The credentials to use, or `None` when the request carried none.
    fn credentials(&self) -> Result<Option<Credentials>> {
        if !self.registry_token.is_empty() {
            return Ok(Some(Credentials::RegistryToken(
                self.registry_token.clone(),
            )));
        }
        if !self.identity_token.is_empty() {
            return Ok(Some(Credentials::IdentityToken(
                self.identity_token.clone(),
            )));
        }
        if !self.username.is_empty() {
            return Ok(Some(Credentials::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            }));
        }
        if !self.auth.is_empty() {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| Error::InvalidArgument("auth is not valid base64".into()))?;
            let text = String::from_utf8(raw)
                .map_err(|_| Error::InvalidArgument("auth is not valid UTF-8".into()))?;
            let (u, p) = text.split_once(':').ok_or_else(|| {
                Error::InvalidArgument("auth must encode username:password".into())
            })?;
            return Ok(Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            }));
        }
        Ok(None)
    }
}

impl Images {
    /// Pulls `image` and returns its id. Unqualified names are tried against
    /// the search registries in order.
    pub async fn pull(&self, image: &str, auth: &PullAuth) -> Result<String> {
        let image = image.trim();
        if image.is_empty() {
            return Err(Error::InvalidArgument("image reference is empty".into()));
        }
        let creds = auth.credentials()?;
        // However it ends (an error, a cancelled call), it may have stored
        // blobs and layers.
        let _recount = Recount(self);
        let registries = Registries::load(&self.settings.registries_conf)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let candidates = if reference::is_fully_qualified(image) {
            vec![Reference::parse(image).map_err(|e| Error::InvalidArgument(e.to_string()))?]
        } else {
            registries
                .unqualified_candidates(image)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?
        };
        let mut last = None;
        for r in candidates {
            match self.pull_reference(&registries, &r, creds.as_ref()).await {
                Ok(id) => return Ok(id),
                Err(e @ Error::NotFound(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotFound(format!("image {image:?} not found"))))
    }

    async fn pull_reference(
        &self,
        registries: &Registries,
        r: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let _one_at_a_time = self.inflight.lock(&format!("ref:{r}")).await;
        let sources = registries
            .resolve(r)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let mut last = None;
        for src in &sources {
            let creds = match creds {
                Some(c) => c.clone(),
                None => self.file_credentials(src),
            };
            tracing::info!(image = %r, host = %src.host, repository = %src.repository, mirror = src.mirror, "pulling");
            match self.pull_from(src, r, &creds).await {
                Ok(id) => return Ok(id),
                Err(e) => {
                    tracing::warn!(image = %r, host = %src.host, error = %e, "pull attempt failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::NotFound(format!("no registry to pull {r} from"))))
    }

    fn file_credentials(&self, src: &PullSource) -> Credentials {
        self.settings
            .auth_file
            .as_deref()
            .and_then(|f| {
                super::registries::lookup_auth(f, &src.host, &src.repository)
                    .ok()
                    .flatten()
            })
            .unwrap_or(Credentials::Anonymous)
    }

    async fn pull_from(
        &self,
        src: &PullSource,
        r: &Reference,
        creds: &Credentials,
    ) -> Result<String> {
        // Everything stored from here on is held from garbage collection
        // until the image is recorded (or the pull fails).
        let mut lease = self.leases.lease();
        let top = self
            .registry
            .fetch_manifest(src, &r.pull_reference(), creds)
            .await
            .map_err(registry_error)?;
        lease.add(leases::blob(&top.digest));
        self.content
            .write_verified(&top.digest, &top.bytes)
            .map_err(internal)?;
        let mut manifests = vec![top.digest.clone()];
        let (config_desc, layers) = match top.kind().map_err(registry_error)? {
            ManifestKind::Image { config, layers } => (config, layers),
            ManifestKind::Index(entries) => {
                let entry = registry::pick_platform(&entries).ok_or_else(|| {
                    Error::NotFound(format!(
                        "{r} has no image for this platform ({})",
                        std::env::consts::ARCH
                    ))
                })?;
                let m = self
                    .registry
                    .fetch_manifest(src, &entry.digest, creds)
                    .await
                    .map_err(registry_error)?;
                lease.add(leases::blob(&m.digest));
                self.content
                    .write_verified(&m.digest, &m.bytes)
                    .map_err(internal)?;
                manifests.push(m.digest.clone());
                match m.kind().map_err(registry_error)? {
                    ManifestKind::Image { config, layers } => (config, layers),
                    ManifestKind::Index(_) => {
                        return Err(Error::Internal(format!("{r}: an index inside an index")));
                    }
                }
            }
        };

        lease.add(leases::blob(&config_desc.digest));
        let config_bytes = self.fetch_small_blob(src, &config_desc, creds).await?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::Internal(format!("{r}: image config: {e}")))?;
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(Error::Internal(format!(
                "{r}: config lists {} layers, manifest {}",
                config.rootfs.diff_ids.len(),
                layers.len()
            )));
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        for (desc, chain) in layers.iter().zip(&chains) {
            lease.add(leases::blob(&desc.digest));
            lease.add(leases::layer(chain));
        }
        let mut jobs = Vec::with_capacity(layers.len());
        for (i, desc) in layers.iter().enumerate() {
            jobs.push(self.fetch_layer(src, creds, desc, &config.rootfs.diff_ids[i], &chains[i]));
        }
        futures::stream::iter(jobs)
            .buffer_unordered(self.settings.max_concurrent_downloads)
            .try_collect::<Vec<()>>()
            .await?;

        let id = config_desc.digest.clone();
        let mut img = self
            .store
            .get::<ImageRecord>(Table::Images, &id)?
            .unwrap_or_else(|| ImageRecord {
                id: id.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size: 0,
                layers: Vec::new(),
                manifests: Vec::new(),
                config: config.clone(),
                pulled_at: 0,
            });
        img.size = config_desc.size + layers.iter().map(|l| l.size).sum::<u64>();
        img.layers = layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(&chains)
            .map(|((l, d), c)| LayerRef {
                digest: l.digest.clone(),
                diff_id: d.clone(),
                chain_id: c.clone(),
                size: l.size,
            })
            .collect();
        img.config = config;
        for m in manifests {
            push_unique(&mut img.manifests, m);
        }
        img.pulled_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if r.tag.is_some() || r.digest.is_none() {
            push_unique(&mut img.repo_tags, r.repo_tag());
        }
        push_unique(&mut img.repo_digests, r.repo_digest(&top.digest));
        self.save(&img)?;
        drop(lease);
        tracing::info!(image = %r, id = %id, size = img.size, "pulled");
        Ok(id)
    }

    /// Fetches a config-sized blob (bounded to 16 MiB) and stores it verified.
    async fn fetch_small_blob(
        &self,
        src: &PullSource,
        desc: &Descriptor,
        creds: &Credentials,
    ) -> Result<Vec<u8>> {
        const MAX: u64 = 16 << 20;
        if let Ok(b) = self.content.read(&desc.digest) {
            return Ok(b);
        }
        if desc.size > MAX {
            return Err(Error::Internal(format!(
                "config blob {} is too large",
                desc.digest
            )));
        }
        let mut stream = self
            .registry
            .fetch_blob(src, &desc.digest, 0, creds)
            .await
            .map_err(registry_error)?;
        let mut buf = Vec::with_capacity(desc.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(registry_error)?;
            if (buf.len() + chunk.len()) as u64 > MAX {
                return Err(Error::Internal(format!(
                    "config blob {} is too large",
                    desc.digest
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        self.content
            .write_verified(&desc.digest, &buf)
            .map_err(internal)?;
        Ok(buf)
    }

    /// Makes layer `chain_id` present: downloads the blob unless stored,
    /// unpacking it as it arrives, and checks the uncompressed digest.
    async fn fetch_layer(
        &self,
        src: &PullSource,
        creds: &Credentials,
        desc: &Descriptor,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<()> {
        let _layer = self.inflight.lock(&format!("layer:{chain_id}")).await;
        let final_dir = self.layer_dir(chain_id)?;
        if final_dir.is_dir()
            && self
                .store
                .get::<LayerRecord>(Table::Layers, chain_id)?
                .is_some()
        {
            return Ok(());
        }
        let _blob = self.inflight.lock(&format!("blob:{}", desc.digest)).await;
        let compression = Compression::from_media_type(&desc.media_type).map_err(internal)?;
        let tmp = self.layers_dir.join(format!(
            "tmp-{}-{}",
            hex_of(chain_id),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let limits = UnpackLimits::default();
        let blob = self.content.blob_path(&desc.digest).map_err(internal)?;
        let stats = if blob.is_file() {
            // Stored by an earlier pull (or another image's layer): no download.
            let dest = tmp.clone();
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&blob).map_err(internal)?;
                unpack::unpack_layer(std::io::BufReader::new(f), compression, &dest, &limits)
                    .map_err(|e| unpack_error(&blob.display().to_string(), e))
            })
            .await
            .map_err(internal)??
        } else {
            self.download_and_unpack(src, creds, desc, compression, &tmp, limits)
                .await?
        };
        if stats.diff_id != diff_id {
            remove_dir(&tmp);
            return Err(Error::Internal(format!(
                "layer {} unpacks to {}, but the image config says {diff_id}",
                desc.digest, stats.diff_id
            )));
        }
        if final_dir.exists() {
            remove_dir(&final_dir);
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| {
            remove_dir(&tmp);
            Error::Internal(format!("{}: {e}", final_dir.display()))
        })?;
        self.store.put(
            Table::Layers,
            chain_id,
            &LayerRecord {
                diff_id: diff_id.to_string(),
                digest: desc.digest.clone(),
                bytes: stats.bytes,
                inodes: stats.entries,
            },
        )?;
        Ok(())
    }

    async fn download_and_unpack(
        &self,
        src: &PullSource,
        creds: &Credentials,
        desc: &Descriptor,
        compression: Compression,
        dest: &std::path::Path,
        limits: UnpackLimits,
    ) -> Result<unpack::UnpackStats> {
        let mut ingest = self.content.ingest(&desc.digest).map_err(internal)?;
        let mut stream = self
            .registry
            .fetch_blob(src, &desc.digest, ingest.offset(), creds)
            .await
            .map_err(registry_error)?;
        if stream.offset() != ingest.offset() {
            // The registry ignored the range request (or the partial blob
            // was already whole): start over.
            tracing::info!(digest = %desc.digest, offset = ingest.offset(), "resuming layer download impossible; downloading it again");
            ingest.restart().map_err(internal)?;
        } else if ingest.offset() > 0 {
            tracing::info!(digest = %desc.digest, offset = ingest.offset(), "resuming layer download");
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(64);
        let dest_owned = dest.to_path_buf();
        let unpacker = tokio::task::spawn_blocking(move || {
            unpack::unpack_layer(ChannelReader::new(rx), compression, &dest_owned, &limits)
        });

        let download = async {
            let mut hasher = Sha256::new();
            if ingest.offset() > 0 {
                let partial = tokio::fs::read(ingest.partial_path())
                    .await
                    .map_err(internal)?;
                hasher.update(&partial);
                tx.send(Ok(Bytes::from(partial)))
                    .await
                    .map_err(|_| Error::Internal("unpacker stopped".into()))?;
            }
            let mut received = ingest.offset();
            let mut last_log = Instant::now();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(registry_error)?;
                hasher.update(&chunk);
                ingest.write(&chunk).map_err(internal)?;
                received += chunk.len() as u64;
                if received > desc.size {
                    return Err(Error::Internal(format!(
                        "layer {} is larger than its descriptor says ({} bytes)",
                        desc.digest, desc.size
                    )));
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    // The unpacker failed; its error is the one to report.
                    return Ok(());
                }
                if last_log.elapsed() >= PROGRESS_EVERY {
                    last_log = Instant::now();
                    tracing::info!(digest = %desc.digest, received, total = desc.size, "pull progress");
                }
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            ingest.commit_prehashed(&actual).map_err(internal)?;
            tracing::debug!(digest = %desc.digest, bytes = received, "layer downloaded");
            Ok(())
        };
        let downloaded = download.await;
        if let Err(e) = &downloaded {
            // Make the unpacker fail (and clean up) instead of seeing a clean end.
            let _ = tx
                .send(Err(std::io::Error::other(format!("download failed: {e}"))))
                .await;
        }
        drop(tx);
        let unpacked = unpacker.await.map_err(internal)?;
        downloaded?;
        unpacked.map_err(|e| unpack_error(&desc.digest, e))
    }
}

/// Makes the image usage be counted again when dropped.
struct Recount<'a>(&'a Images);

impl Drop for Recount<'_> {
    fn drop(&mut self) {
        self.0.usage_changed();
    }
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn remove_dir(dir: &std::path::Path) {
    super::remove_tree(dir);
}

fn unpack_error(layer: &str, e: unpack::UnpackError) -> Error {
    Error::Internal(format!("unpacking layer {layer}: {e}"))
}

/// Maps registry failures to the statuses kubelet understands.
fn registry_error(e: RegistryError) -> Error {
    match e {
        RegistryError::NotFound { .. } => Error::NotFound(e.to_string()),
        RegistryError::Unauthorized { .. } => Error::Unauthenticated(e.to_string()),
        RegistryError::Unavailable { .. } => Error::Unavailable(e.to_string()),
        other => Error::Internal(other.to_string()),
    }
}

/// A blocking `Read` over chunks sent from the async download.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
