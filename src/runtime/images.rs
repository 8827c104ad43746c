//! Image operations of the core: one method per CRI call.

use std::path::PathBuf;

use super::Runtime;
use crate::error::Result;
use crate::image::PullAuth;
use crate::image::record::ImageRecord;

/// An image as ListImages and ImageStatus show it.
#[derive(Debug, Clone)]
pub struct ImageView {
    /// The stored image.
    pub record: ImageRecord,
    /// kubelet's image GC must keep it (the pause image).
    pub pinned: bool,
}

/// Space used on one filesystem, for ImageFsInfo.
#[derive(Debug, Clone)]
pub struct FsUsage {
    /// The directory the usage is reported for (image layers, or container writable layers).
    pub mountpoint: PathBuf,
    /// Bytes used (file content, not allocated blocks).
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
    /// When the numbers were measured.
    pub at: std::time::SystemTime,
}

impl Runtime {
    fn view(&self, record: ImageRecord) -> ImageView {
        let pinned = self.images.is_pinned(&record);
        ImageView { record, pinned }
    }

    /// ListImages, optionally those matching `filter` (a reference).
    pub fn list_images(&self, filter: Option<&str>) -> Result<Vec<ImageView>> {
        Ok(self
            .images
            .list(filter)?
            .into_iter()
            .map(|r| self.view(r))
            .collect())
    }

    /// ImageStatus: the image `name` (reference, id or short id), if any.
    pub fn image_status(&self, name: &str) -> Result<Option<ImageView>> {
        Ok(self.images.find(name)?.map(|r| self.view(r)))
    }

    /// PullImage: the pulled image's id.
    pub async fn pull_image(&self, name: &str, auth: &PullAuth) -> Result<String> {
        let started = std::time::Instant::now();
        let pulled = self.images.pull(name, auth).await;
        let size = match &pulled {
            Ok(id) => Some(self.images.find(id)?.map_or(0, |r| r.size)),
            Err(_) => None,
        };
        self.telemetry.observe_pull(started.elapsed(), size);
        pulled
    }

    /// RemoveImage, keeping layers containers stack; an unknown image is fine.
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        let in_use = self.containers.layers_in_use()?;
        self.images.remove(name, &in_use).await
    }

    /// ImageFsInfo: the image filesystem and the containers' writable
    /// layers.
    pub async fn image_fs_info(&self) -> Result<(FsUsage, FsUsage)> {
        let images = self.images.usage().await?;
        let image_fs = FsUsage {
            mountpoint: self.images.root_dir().to_path_buf(),
            bytes: images.bytes,
            inodes: images.inodes,
            at: std::time::SystemTime::now(),
        };
        let sample = self.storage.usage().await;
        let container_fs = FsUsage {
            mountpoint: self.storage.root().to_path_buf(),
            bytes: sample.bytes,
            inodes: sample.inodes,
            at: sample.at,
        };
        Ok((image_fs, container_fs))
    }
}
