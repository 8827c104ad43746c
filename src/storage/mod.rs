//! Container root filesystems: an overlay mount of the image's layer
//! directories with a per-container writable upper directory, under
//! `root/containers/<id>/{upper,work,merged}`.
//!
//! overlayfs takes its options in one page (4 KiB), and layer paths are long
//! (`…/layers/<64 hex>`), so lower directories are given through short
//! links in `root/l/` — the same trick containers/storage uses — which
//! leaves room for well over a hundred layers.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

pub mod usage;

/// Hex characters of the hash that names a layer's short link.
const LINK_LEN: usize = 20;
/// What overlayfs accepts in its mount data.
const MAX_OPTIONS: usize = 4000;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting the rootfs of {id}: {source}")]
    Mount {
        id: String,
        source: nix::errno::Errno,
    },
    #[error("invalid container id {0:?}")]
    BadId(String),
    #[error("{0} layers do not fit one overlay mount")]
    TooManyLayers(usize),
    #[error("a container rootfs needs at least one layer")]
    NoLayers,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writable layers and mounts of containers.
#[derive(Debug, Clone)]
pub struct Storage {
    containers: PathBuf,
    links: PathBuf,
    /// The writable layers' usage, sampled (see `usage.rs`).
    sampler: usage::Sampler,
}

impl Storage {
    /// Storage under `root` (the daemon's `--root`).
    pub fn open(root: &Path) -> Result<Storage, StorageError> {
        let containers = root.join("containers");
        let walked = containers.clone();
        let s = Storage {
            sampler: usage::Sampler::new(move || writable_usage(&walked)),
            containers,
            links: root.join("l"),
        };
        for d in [&s.containers, &s.links] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        Ok(s)
    }

    fn dir(&self, id: &str) -> Result<PathBuf, StorageError> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(StorageError::BadId(id.into()));
        }
        Ok(self.containers.join(id))
    }

    /// The short link naming a layer directory in overlay options: a hash
    /// of the layer's path, so it is stable and (80 bits) unique.
    fn link(&self, layer: &Path) -> Result<PathBuf, StorageError> {
        use sha2::{Digest as _, Sha256};
        let hash = hex::encode(Sha256::digest(layer.as_os_str().as_encoded_bytes()));
        let link = self.links.join(&hash[..LINK_LEN]);
        if let Ok(target) = std::fs::read_link(&link) {
            if target == layer {
                return Ok(link);
            }
            // A live link is never repointed: mounted rootfs may use it.
            return Err(StorageError::Io {
                path: link,
                source: std::io::Error::other("short link collision"),
            });
        }
        std::os::unix::fs::symlink(layer, &link)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io(&link))?;
        Ok(link)
    }

    /// Mounts the rootfs of container `id`: `layers` bottom to top, a fresh
    /// writable layer above. Returns the merged directory.
    pub fn create_rootfs(&self, id: &str, layers: &[PathBuf]) -> Result<PathBuf, StorageError> {
        if layers.is_empty() {
            return Err(StorageError::NoLayers);
        }
        let dir = self.dir(id)?;
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let lowers = layers
            .iter()
            .rev()
            .map(|l| self.link(l).map(|p| p.display().to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            upper.display(),
            work.display()
        );
        if options.len() > MAX_OPTIONS {
            return Err(StorageError::TooManyLayers(layers.len()));
        }
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|source| StorageError::Mount {
            id: id.into(),
            source,
        })?;
        Ok(merged)
    }

    /// Unmounts and deletes the rootfs and writable layer; missing is fine.
    pub fn remove_rootfs(&self, id: &str) -> Result<(), StorageError> {
        let dir = self.dir(id)?;
        let merged = dir.join("merged");
        match nix::mount::umount2(&merged, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(source) => {
                return Err(StorageError::Mount {
                    id: id.into(),
                    source,
                });
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Bytes and inodes of the writable layers, in all (ImageFsInfo) and
    /// by container (stats): the latest sample (see `usage.rs`).
    pub async fn usage(&self) -> usage::Sample {
        self.sampler.sample().await
    }

    /// Where writable layers live.
    pub fn root(&self) -> &Path {
        &self.containers
    }
}

/// Removes short links whose layer is gone (after image garbage collection).
pub fn prune_dangling_links(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root.join("l")) {
        for e in entries.flatten() {
            let p = e.path();
            if p.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
                && !p.exists()
            {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Bytes and inodes of every writable layer under `containers`, in all
/// and by container id.
fn writable_usage(containers: &Path) -> usage::Usage {
    let mut total = usage::Usage::default();
    if let Ok(entries) = std::fs::read_dir(containers) {
        for e in entries.flatten() {
            let (b, i) = tree_usage(&e.path().join("upper"));
            total.bytes += b;
            total.inodes += i;
            let id = e.file_name().to_string_lossy().into_owned();
            total.by_container.insert(id, (b, i));
        }
    }
    total
}

/// Bytes and entries below `dir`, not following symlinks.
fn tree_usage(dir: &Path) -> (u64, u64) {
    let mut stack = vec![dir.to_path_buf()];
    let (mut bytes, mut inodes) = (0, 0);
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::unpack::{Compression, UnpackLimits, unpack_layer};

    fn layer(dir: &Path, name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let dest = dir.join(name);
        unpack_layer(
            &b.into_inner().unwrap()[..],
            Compression::None,
            &dest,
            &UnpackLimits::default(),
        )
        .unwrap();
        dest
    }

    #[test]
    fn overlay_rootfs_merges_layers_and_writes_above_them() {
        let root = tempfile::tempdir().unwrap();
        let layers = root.path().join("layers");
        std::fs::create_dir(&layers).unwrap();
        let l1 = layer(
            &layers,
            &"a".repeat(64),
            &[("etc/keep", b"1"), ("etc/gone", b"x")],
        );
        let l2 = layer(
            &layers,
            &"b".repeat(64),
            &[("etc/.wh.gone", b""), ("etc/new", b"2")],
        );
        let s = Storage::open(root.path()).unwrap();
        let merged = s.create_rootfs("c1", &[l1.clone(), l2]).unwrap();
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/keep")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/new")).unwrap(),
            "2"
        );
        assert!(!merged.join("etc/gone").exists());
        std::fs::write(merged.join("etc/keep"), "changed").unwrap();
        // The image layer is untouched; the change lives in the upper dir.
        assert_eq!(std::fs::read_to_string(l1.join("etc/keep")).unwrap(), "1");
        assert!(writable_usage(&s.containers).bytes >= 7);
        assert!(writable_usage(&s.containers).by_container["c1"].0 >= 7);
        s.remove_rootfs("c1").unwrap();
        s.remove_rootfs("c1").unwrap();
        assert!(!root.path().join("containers/c1").exists());
        assert!(matches!(
            s.create_rootfs("../x", &[l1]),
            Err(StorageError::BadId(_))
        ));
        assert!(matches!(
            s.create_rootfs("c2", &[]),
            Err(StorageError::NoLayers)
        ));
    }

    #[test]
    fn many_layers_fit_through_short_links() {
        let root = tempfile::tempdir().unwrap();
        let layers = root.path().join("layers");
        std::fs::create_dir(&layers).unwrap();
        let ls: Vec<PathBuf> = (0..100)
            .map(|i| layer(&layers, &format!("{i:064x}"), &[(&format!("f{i}"), b"x")]))
            .collect();
        let s = Storage::open(root.path()).unwrap();
        let merged = s.create_rootfs("many", &ls).unwrap();
        assert!(merged.join("f0").exists() && merged.join("f99").exists());
        s.remove_rootfs("many").unwrap();
    }
}
