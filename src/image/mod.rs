//! Images: references, registries, pulling, the content store and unpacked
//! overlay layers, and the image records the ImageService serves.
//!
//! On disk under `--root`: `content/` holds verified blobs by digest,
//! `layers/<chain id hex>` one overlayfs-ready directory per layer, and the
//! metadata store keeps [`record::ImageRecord`]s (table `images`) and layer
//! sizes (table `layers`).

pub mod content;
mod leases;
mod pull;
pub mod record;
pub mod reference;
pub mod registries;
pub mod registry;
pub mod unpack;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::ImageConfig as Settings;
use crate::error::{Error, Result};
use crate::store::{Store, Table};
use crate::sync::KeyedLocks;
use content::ContentStore;
use record::ImageRecord;
use reference::Reference;

pub use pull::PullAuth;

/// Size of one unpacked layer, for ImageFsInfo without walking trees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    /// `sha256:` digest of the layer's uncompressed tar.
    pub diff_id: String,
    /// `sha256:` digest of the compressed blob it was unpacked from.
    pub digest: String,
    /// File content bytes written at unpack (not allocated blocks).
    pub bytes: u64,
    /// Inodes (tar entries) created at unpack.
    pub inodes: u64,
}

/// Bytes and inodes used by one filesystem area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes (file content, not allocated blocks).
    pub bytes: u64,
    /// Inodes (files, directories, links).
    pub inodes: u64,
}

/// The node's images.
pub struct Images {
    store: Arc<Store>,
    content: ContentStore,
    layers_dir: PathBuf,
    settings: Settings,
    registry: registry::RegistryClient,
    /// One lock per reference or layer being pulled, so concurrent pulls of
    /// the same thing share one transfer.
    inflight: KeyedLocks,
    /// What pulls have stored but not yet recorded in an image: garbage
    /// collection leaves it alone (see `leases.rs`).
    leases: leases::Leases,
    /// One garbage collection at a time.
    gc: tokio::sync::Mutex<()>,
    /// What [`Images::usage`] last counted; emptied by every change.
    usage: std::sync::Mutex<Option<Usage>>,
}

impl Images {
    /// Opens the image store under `root`, discarding what a crash left half done.
    pub fn open(root: &Path, settings: Settings, store: Arc<Store>) -> Result<Images> {
        let content = ContentStore::open(&root.join("content")).map_err(internal)?;
        let layers_dir = root.join("layers");
        std::fs::create_dir_all(&layers_dir)
            .map_err(|e| Error::Internal(format!("{}: {e}", layers_dir.display())))?;
        remove_unfinished_layers(&layers_dir);
        // A partial blob is kept a day for a retry to resume, then dropped.
        let _ = content.prune_ingest(std::time::Duration::from_secs(24 * 3600));
        let registry = registry::RegistryClient::new(registry::ClientTimeouts {
            connect: std::time::Duration::from_secs(30),
            stall: std::time::Duration::from_secs(settings.pull_stall_timeout),
        })
        .map_err(internal)?;
        Ok(Images {
            store,
            content,
            layers_dir,
            settings,
            registry,
            inflight: KeyedLocks::default(),
            leases: leases::Leases::default(),
            gc: tokio::sync::Mutex::new(()),
            usage: std::sync::Mutex::new(None),
        })
    }

    /// Every image, optionally only those `filter` names.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>> {
        let all: Vec<(String, ImageRecord)> = self.store.list(Table::Images)?;
        let all = all.into_iter().map(|(_, r)| r);
        Ok(match filter.filter(|f| !f.is_empty()) {
            None => all.collect(),
            Some(f) => all.filter(|r| matches(r, f)).collect(),
        })
    }

    /// The image a user-given name refers to: an id, a unique id prefix, a
    /// tag or a digest reference, in the forms crictl and kubelet send.
    pub fn find(&self, name: &str) -> Result<Option<ImageRecord>> {
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::InvalidArgument("image name is empty".into()));
        }
        let all = self.list(None)?;
        if let Some(r) = all.iter().find(|r| matches(r, name)) {
            return Ok(Some(r.clone()));
        }
        // A (short) id prefix, as `crictl images` prints ids truncated.
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 3 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = all
                .iter()
                .filter(|r| r.id["sha256:".len()..].starts_with(hex));
            if let (Some(one), None) = (hits.next(), hits.next()) {
                return Ok(Some(one.clone()));
            }
        }
        Ok(None)
    }

    /// Whether an image is the configured infra image.
    pub fn is_pinned(&self, r: &ImageRecord) -> bool {
        matches(r, &self.settings.pause_image)
    }

    /// Removes an image and every tag of it; unknown names are fine (the
    /// call is idempotent). Layers no other image uses are freed.
    pub async fn remove(&self, name: &str, layers_in_use: &[String]) -> Result<()> {
        let Some(img) = self.find(name)? else {
            return Ok(());
        };
        let _one = self.gc.lock().await;
        self.store.delete(Table::Images, &img.id)?;
        tracing::info!(id = %img.id, tags = ?img.repo_tags, "image removed");
        // Renames, deletions and store commits: off the async workers.
        let collected = crate::sync::blocking(|| self.collect_garbage(layers_in_use));
        self.usage_changed();
        collected
    }

    /// Deletes layers and blobs that no image (and no container, via
    /// `layers_in_use`) refers to and no pull holds. Pulls that record
    /// their image meanwhile make it read the images again; after a few
    /// such rounds what is left waits for the next collection.
    fn collect_garbage(&self, layers_in_use: &[String]) -> Result<()> {
        for _ in 0..4 {
            if self.collect_once(layers_in_use)? {
                return Ok(());
            }
        }
        tracing::info!("image garbage collection leaves the rest for later: pulls kept finishing");
        Ok(())
    }

    /// One pass of [`Self::collect_garbage`]; false when a pull let go
    /// meanwhile and the images must be read again.
    fn collect_once(&self, layers_in_use: &[String]) -> Result<bool> {
        use leases::Freed;
        let epoch = self.leases.epoch();
        let images = self.list(None)?;
        let mut keep_layers: std::collections::HashSet<&str> =
            layers_in_use.iter().map(String::as_str).collect();
        let mut keep_blobs = std::collections::HashSet::new();
        for img in &images {
            keep_blobs.insert(img.id.as_str());
            keep_blobs.extend(img.manifests.iter().map(String::as_str));
            for l in &img.layers {
                keep_layers.insert(l.chain_id.as_str());
                keep_blobs.insert(l.digest.as_str());
            }
        }
        let layers: Vec<(String, LayerRecord)> = self.store.list(Table::Layers)?;
        for (chain_id, _) in layers {
            if keep_layers.contains(chain_id.as_str()) {
                continue;
            }
            let dir = self.layer_dir(&chain_id)?;
            // Renamed first so a crash mid-delete leaves a `tmp-` dir that
            // the next start removes, never a half-deleted layer in use.
            let doomed = self
                .layers_dir
                .join(format!("tmp-gc-{}", hex_of(&chain_id)));
            let freed = self
                .leases
                .free_unless_held(&[leases::layer(&chain_id)], epoch, || {
                    let moved = std::fs::rename(&dir, &doomed).is_ok();
                    self.store.delete(Table::Layers, &chain_id).map(|_| moved)
                });
            match freed {
                Freed::Stale => return Ok(false),
                Freed::Held => tracing::debug!(chain_id, "layer held by a pull"),
                Freed::Done(moved) => {
                    if moved? {
                        remove_tree(&doomed);
                    }
                    tracing::info!(chain_id, "layer freed");
                }
            }
        }
        if let Some(root) = self.layers_dir.parent() {
            crate::storage::prune_dangling_links(root);
        }
        for digest in self.content.list() {
            if keep_blobs.contains(digest.as_str()) {
                continue;
            }
            let freed = self
                .leases
                .free_unless_held(&[leases::blob(&digest)], epoch, || {
                    self.content.remove(&digest)
                });
            match freed {
                Freed::Stale => return Ok(false),
                Freed::Held => {}
                Freed::Done(r) => r.map_err(internal)?,
            }
        }
        Ok(true)
    }

    /// Directory of an unpacked layer.
    pub fn layer_dir(&self, chain_id: &str) -> Result<PathBuf> {
        let hex = content::digest_hex(chain_id).map_err(internal)?;
        Ok(self.layers_dir.join(hex))
    }

    /// Space taken by blobs and unpacked layers: the unpacked sizes
    /// recorded when each layer was unpacked, and the blobs' sizes, counted
    /// again only after a pull or a collection changed them.
    pub async fn usage(&self) -> Result<Usage> {
        if let Some(u) = *self.counted() {
            return Ok(u);
        }
        let u = crate::sync::blocking(|| self.count_usage())?;
        *self.counted() = Some(u);
        Ok(u)
    }

    fn counted(&self) -> std::sync::MutexGuard<'_, Option<Usage>> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the counted usage: blobs or layers were added or freed.
    fn usage_changed(&self) {
        *self.counted() = None;
    }

    fn count_usage(&self) -> Result<Usage> {
        let layers: Vec<(String, LayerRecord)> = self.store.list(Table::Layers)?;
        let (blob_bytes, blob_files) = self.content.usage();
        let mut u = Usage {
            bytes: blob_bytes,
            inodes: blob_files,
        };
        for (_, l) in layers {
            u.bytes += l.bytes;
            u.inodes += l.inodes;
        }
        Ok(u)
    }

    /// Where image data lives, for ImageFsInfo's mountpoint.
    pub fn root_dir(&self) -> &Path {
        &self.layers_dir
    }

    /// Stores `img` under its id: its tags move to it from any other image.
    fn save(&self, img: &ImageRecord) -> Result<()> {
        let others = self.list(None)?;
        self.store.write(|b| {
            for mut other in others {
                if other.id == img.id {
                    continue;
                }
                let before = other.repo_tags.len();
                other.repo_tags.retain(|t| !img.repo_tags.contains(t));
                if other.repo_tags.len() != before {
                    b.put(Table::Images, &other.id, &other)?;
                }
            }
            b.put(Table::Images, &img.id, img)
        })?;
        Ok(())
    }
}

/// Whether `name` (an id or a reference in any accepted spelling) names `r`.
fn matches(r: &ImageRecord, name: &str) -> bool {
    if r.id == name || r.id.strip_prefix("sha256:") == Some(name) {
        return true;
    }
    match Reference::parse(name) {
        Ok(reference) => {
            if let Some(d) = &reference.digest {
                r.repo_digests.contains(&reference.repo_digest(d))
            } else {
                r.repo_tags.contains(&reference.repo_tag())
            }
        }
        Err(_) => false,
    }
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Removes a tree, logging (not failing) when the kernel refuses.
fn remove_tree(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove");
    }
}

/// Unpacks interrupted by a crash leave `tmp-*` directories; they are never
/// referenced, so they go.
fn remove_unfinished_layers(layers_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(layers_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("tmp-") {
                remove_tree(&e.path());
            }
        }
    }
}
