//! Container root filesystems: an overlay mount of the image's layer
//! directories with a per-container writable upper directory, under
//! `root/containers/<id>/{upper,work,merged}`; and image volumes, read-only
//! overlays of another image's layers at `root/containers/<id>/iv<n>`.
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
    /// Creating, linking or removing a layer or rootfs directory failed (also a short-link
    /// collision).
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Mounting or unmounting a container's overlay rootfs failed.
    #[error("mounting the rootfs of {id}: {source}")]
    Mount {
        /// The container whose rootfs it was.
        id: String,
        /// The errno from mount(2) or umount2(2).
        source: nix::errno::Errno,
    },
    /// An image layer could not be given an idmapped mount for a container
    /// in a user namespace (the filesystem or kernel does not support it).
    #[error("idmapped mount of layer {layer}: {source}")]
    Idmap {
        /// The layer directory.
        layer: PathBuf,
        /// The error from open_tree, mount_setattr or move_mount.
        source: std::io::Error,
    },
    /// A container id that is empty or not ASCII letters, digits, `-` and `_`: it would escape the
    /// containers directory.
    #[error("invalid container id {0:?}")]
    BadId(String),
    /// The overlay options (lower dirs) exceed one page, the limit of a mount option string.
    #[error("{0} layers do not fit one overlay mount")]
    TooManyLayers(usize),
    /// A rootfs was asked for with no image layers.
    #[error("a container rootfs needs at least one layer")]
    NoLayers,
    /// An image volume's `image_sub_path` names nothing in the image (or
    /// resolves outside it): the request's fault.
    #[error("image volume sub path {path:?}: {source}")]
    ImageSubPath {
        /// The sub path as requested.
        path: String,
        /// Why it does not resolve.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a rootfs is idmapped for a container in a pod's user namespace.
#[derive(Debug, Clone)]
pub struct Idmap {
    /// The pinned user namespace (the pod's `ns/user`).
    pub userns: PathBuf,
    /// The host uid of the namespace's root: owner of the writable layer.
    pub root_uid: u32,
    /// The host gid of the namespace's root.
    pub root_gid: u32,
}

/// Writable layers and mounts of containers.
#[derive(Debug, Clone)]
pub struct Storage {
    containers: PathBuf,
    links: PathBuf,
    /// An empty directory: the bottom lower of every image volume, since
    /// overlayfs needs two lowers when it has no upper directory.
    empty: PathBuf,
    /// The writable layers' usage, sampled (see `usage.rs`).
    sampler: usage::Sampler,
    /// Whether rootfs can be idmapped here (user namespaces), probed once
    /// at open: why not, when not.
    idmap_support: Result<(), String>,
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
            empty: root.join("empty"),
            idmap_support: Ok(()),
        };
        for d in [&s.containers, &s.links, &s.empty] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let idmap_support = crate::executor::userns::probe(root);
        match &idmap_support {
            Ok(()) => tracing::info!("user namespaces: idmapped overlay layers work"),
            Err(why) => tracing::warn!(%why, "user namespaces unavailable"),
        }
        Ok(Storage { idmap_support, ..s })
    }

    /// Whether container rootfs can be idmapped (pods with their own user
    /// namespace); the reason when not.
    pub fn idmap_support(&self) -> Result<(), String> {
        self.idmap_support.clone()
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
    ///
    /// With `idmap` (a container of a pod with its own user namespace),
    /// each layer is an idmapped clone through that namespace, attached at
    /// `containers/<id>/m/<n>` (what host root owns shows as the
    /// namespace's root), and the writable layer belongs to the host ids
    /// the namespace's root maps to; files the container makes there are
    /// owned by its mapped ids on the host.
    pub fn create_rootfs(
        &self,
        id: &str,
        layers: &[PathBuf],
        idmap: Option<&Idmap>,
    ) -> Result<PathBuf, StorageError> {
        if layers.is_empty() {
            return Err(StorageError::NoLayers);
        }
        let dir = self.dir(id)?;
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let lowers = self.lowers(&dir, layers, idmap, |k| k.to_string())?;
        if let Some(m) = idmap {
            for d in [&upper, &work] {
                std::os::unix::fs::chown(d, Some(m.root_uid), Some(m.root_gid)).map_err(io(d))?;
            }
        }
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

    /// An overlay's `lowerdir` entries for `layers` (bottom to top), top
    /// first: each layer's short link, or with `idmap` an idmapped clone of
    /// it at `<dir>/m/<name(k)>`.
    fn lowers(
        &self,
        dir: &Path,
        layers: &[PathBuf],
        idmap: Option<&Idmap>,
        name: impl Fn(usize) -> String,
    ) -> Result<Vec<String>, StorageError> {
        let Some(m) = idmap else {
            return layers
                .iter()
                .rev()
                .map(|l| self.link(l).map(|p| p.display().to_string()))
                .collect();
        };
        let ns = std::fs::File::open(&m.userns).map_err(io(&m.userns))?;
        let mut out = Vec::with_capacity(layers.len());
        for (k, l) in layers.iter().rev().enumerate() {
            let at = dir.join("m").join(name(k));
            std::fs::create_dir_all(&at).map_err(io(&at))?;
            crate::executor::mount_attr::idmapped_bind(l, &at, &ns).map_err(|e| {
                StorageError::Idmap {
                    layer: l.clone(),
                    source: e,
                }
            })?;
            out.push(at.display().to_string());
        }
        Ok(out)
    }

    /// Mounts image volume `n` of container `id`: a read-only overlay of
    /// `layers` (bottom to top; nosuid, nodev, but executable as the image
    /// volume KEP asks), and returns the directory to bind at the mount's
    /// container path: the overlay's root, or `sub_path` resolved inside it
    /// (symlinks cannot leave it), which must exist.
    ///
    /// With `idmap` (an idmapped image volume of a pod with a user
    /// namespace) each layer is an idmapped clone at
    /// `containers/<id>/m/iv<n>-<k>`, as a rootfs's are: an overlay mount
    /// itself cannot be idmapped.
    pub fn mount_image_volume(
        &self,
        id: &str,
        n: usize,
        layers: &[PathBuf],
        sub_path: &str,
        idmap: Option<&Idmap>,
    ) -> Result<PathBuf, StorageError> {
        if layers.is_empty() {
            return Err(StorageError::NoLayers);
        }
        let dir = self.dir(id)?;
        let target = dir.join(format!("iv{n}"));
        std::fs::create_dir_all(&target).map_err(io(&target))?;
        let mut lowers = self.lowers(&dir, layers, idmap, |k| format!("iv{n}-{k}"))?;
        lowers.push(self.empty.display().to_string());
        let options = format!("lowerdir={}", lowers.join(":"));
        if options.len() > MAX_OPTIONS {
            return Err(StorageError::TooManyLayers(layers.len()));
        }
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|source| StorageError::Mount {
            id: id.into(),
            source,
        })?;
        if sub_path.is_empty() {
            return Ok(target);
        }
        resolve_beneath(&target, sub_path)
    }

    /// Unmounts and deletes the rootfs, image volumes and writable layer;
    /// missing is fine.
    pub fn remove_rootfs(&self, id: &str) -> Result<(), StorageError> {
        let dir = self.dir(id)?;
        let volumes = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("iv"))
            .map(|e| e.path());
        for mounted in volumes.chain([dir.join("merged")]) {
            match nix::mount::umount2(&mounted, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(source) => {
                    return Err(StorageError::Mount {
                        id: id.into(),
                        source,
                    });
                }
            }
        }
        // Idmapped layer clones (user namespaces): detached, and each
        // directory checked empty before the tree goes, so a mount that
        // did not leave never has its layer's files deleted through it.
        let layers = dir.join("m");
        if layers.exists() {
            crate::executor::mount_attr::unmount_tree(&layers).map_err(io(&layers))?;
            for e in std::fs::read_dir(&layers).map_err(io(&layers))?.flatten() {
                std::fs::remove_dir(e.path()).map_err(io(&e.path()))?;
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

/// Opens `rel` inside the directory `root` as if `root` were `/`: `..`
/// and symlinks (absolute ones too) stay inside it, magic links are
/// refused. How a path an image or a request names is opened in a rootfs or
/// image volume.
pub fn open_in_root(
    root: &Path,
    rel: &str,
    flags: rustix::fs::OFlags,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(rustix::fs::openat2(
        &dir,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// `sub_path` inside `root`, resolved as if `root` were `/` (`..` and
/// symlinks stay inside it): the real path of what it names.
fn resolve_beneath(root: &Path, sub_path: &str) -> Result<PathBuf, StorageError> {
    let bad = |source| StorageError::ImageSubPath {
        path: sub_path.to_string(),
        source,
    };
    let found = open_in_root(root, sub_path, rustix::fs::OFlags::PATH).map_err(bad)?;
    let real = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&found)
    ))
    .map_err(bad)?;
    if !real.starts_with(root) {
        return Err(bad(std::io::Error::other("resolves outside the image")));
    }
    Ok(real)
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
        let merged = s.create_rootfs("c1", &[l1.clone(), l2], None).unwrap();
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
            s.create_rootfs("../x", &[l1], None),
            Err(StorageError::BadId(_))
        ));
        assert!(matches!(
            s.create_rootfs("c2", &[], None),
            Err(StorageError::NoLayers)
        ));
    }

    #[test]
    fn image_volumes_are_read_only_and_sub_paths_stay_inside() {
        let root = tempfile::tempdir().unwrap();
        let layers = root.path().join("layers");
        std::fs::create_dir(&layers).unwrap();
        let l1 = layer(&layers, &"c".repeat(64), &[("etc/passwd", b"root")]);
        let s = Storage::open(root.path()).unwrap();
        s.create_rootfs("c1", std::slice::from_ref(&l1), None)
            .unwrap();
        // One layer is enough (the empty bottom layer makes two).
        let whole = s
            .mount_image_volume("c1", 0, std::slice::from_ref(&l1), "", None)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(whole.join("etc/passwd")).unwrap(),
            "root"
        );
        let err = std::fs::write(whole.join("x"), "w").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let etc = s
            .mount_image_volume("c1", 1, std::slice::from_ref(&l1), "etc", None)
            .unwrap();
        assert_eq!(std::fs::read_to_string(etc.join("passwd")).unwrap(), "root");
        // `..` cannot climb out of the volume; a missing path is an error.
        let up = s
            .mount_image_volume("c1", 2, std::slice::from_ref(&l1), "../../etc", None)
            .unwrap();
        assert!(
            up.starts_with(root.path().join("containers/c1/iv2")),
            "{up:?}"
        );
        assert!(matches!(
            s.mount_image_volume("c1", 3, std::slice::from_ref(&l1), "not-there", None),
            Err(StorageError::ImageSubPath { .. })
        ));
        s.remove_rootfs("c1").unwrap();
        assert!(!root.path().join("containers/c1").exists());
        assert!(l1.join("etc/passwd").exists(), "the layer is untouched");
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
        let merged = s.create_rootfs("many", &ls, None).unwrap();
        assert!(merged.join("f0").exists() && merged.join("f99").exists());
        s.remove_rootfs("many").unwrap();
    }
}
