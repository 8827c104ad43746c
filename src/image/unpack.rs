//! Unpacking a layer tar into its own overlayfs-ready directory.
//!
//! Layers are hostile input. Every entry's parent is opened with `openat2`
//! beneath the layer root without following any symlink, and the entry is
//! created relative to that directory descriptor, so no name, symlink or
//! hardlink in a layer can reach outside it. OCI whiteouts become what
//! overlayfs understands: `.wh.NAME` a 0:0 character device, `.wh..wh..opq`
//! the `trusted.overlay.opaque` xattr. A failed unpack removes its directory.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use sha2::{Digest as _, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Compression of a layer blob, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// A gzip-compressed tar.
    Gzip,
    /// A zstd-compressed tar.
    Zstd,
}

impl Compression {
    /// Maps OCI and Docker layer media types; unknown ones are refused
    /// rather than guessed.
    pub fn from_media_type(mt: &str) -> Result<Compression, UnpackError> {
        let base = mt.strip_prefix("application/vnd.").unwrap_or(mt);
        match base {
            "oci.image.layer.v1.tar"
            | "oci.image.layer.nondistributable.v1.tar"
            | "docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "oci.image.layer.v1.tar+gzip"
            | "oci.image.layer.nondistributable.v1.tar+gzip"
            | "docker.image.rootfs.diff.tar.gzip"
            | "docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "oci.image.layer.v1.tar+zstd" | "oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            _ => Err(UnpackError::Unsupported(format!("layer media type {mt:?}"))),
        }
    }
}

/// Bounds against decompression bombs.
#[derive(Debug, Clone)]
pub struct UnpackLimits {
    /// Uncompressed tar bytes.
    pub max_bytes: u64,
    /// Tar entries (inodes) created.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone)]
pub struct UnpackStats {
    /// `sha256:<hex>` of the uncompressed tar, to check against the config.
    pub diff_id: String,
    /// File content bytes written.
    pub bytes: u64,
    /// Entries (inodes) created.
    pub entries: u64,
}

/// Why an unpack failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A filesystem operation on the destination failed.
    #[error("{path}: {source}")]
    Io {
        /// Path inside the layer (or the destination) being written.
        path: String,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// An entry that would write outside the layer or through a link: `..`
    /// or absolute names, symlinked parents, hardlinks out of the layer. The
    /// partial unpack is removed.
    #[error("hostile layer entry {path:?}: {reason}")]
    Hostile {
        /// The entry's name as the tar gives it.
        path: String,
        /// Which check it failed.
        reason: String,
    },
    /// The layer would exceed [`UnpackLimits`]; the message names which limit.
    #[error("layer exceeds the limit of {0}")]
    Limit(String),
    /// The compressed stream or the tar itself is malformed (bad header, bad number field, link
    /// without a target).
    #[error("corrupt layer: {0}")]
    Corrupt(String),
    /// A layer media type or tar entry type crius does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_string(),
        source,
    }
}

fn errno(path: &str) -> impl FnOnce(rustix::io::Errno) -> UnpackError + '_ {
    move |e| UnpackError::Io {
        path: path.to_string(),
        source: e.into(),
    }
}

fn hostile(path: &str, reason: &str) -> UnpackError {
    UnpackError::Hostile {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Unpacks `reader` into the new directory `dest` (which must not exist).
/// On any error `dest` is removed, so a failed unpack leaves nothing behind.
pub fn unpack_layer<R: Read>(
    reader: R,
    compression: Compression,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let shown = dest.display().to_string();
    std::fs::create_dir(dest).map_err(io_err(&shown))?;
    let result = (|| {
        std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err(&shown))?;
        match compression {
            Compression::None => unpack_tar(reader, dest, limits),
            Compression::Gzip => {
                unpack_tar(flate2::read::MultiGzDecoder::new(reader), dest, limits)
            }
            Compression::Zstd => {
                let z = zstd::stream::read::Decoder::new(reader)
                    .map_err(|e| UnpackError::Corrupt(format!("zstd: {e}")))?;
                unpack_tar(z, dest, limits)
            }
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

/// Counts and hashes the uncompressed stream as the tar parser reads it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    max: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read > self.max {
            return Err(io::Error::other(LimitHit));
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct LimitHit;

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size limit")
    }
}

impl std::error::Error for LimitHit {}

/// Maps a read error of the layer stream: limits, else corruption.
fn stream_err(e: io::Error) -> UnpackError {
    if e.get_ref().is_some_and(|i| i.is::<LimitHit>()) {
        UnpackError::Limit("uncompressed bytes".into())
    } else {
        UnpackError::Corrupt(e.to_string())
    }
}

fn unpack_tar<R: Read>(
    reader: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let shown = dest.display().to_string();
    let root = rustix::fs::open(
        dest,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(errno(&shown))?;
    let mut u = Unpacker {
        root,
        whited: HashSet::new(),
        whiteout_devs: HashSet::new(),
        dirs: Vec::new(),
        bytes: 0,
        entries: 0,
    };
    let mut archive = tar::Archive::new(Hashing {
        inner: reader,
        hasher: Sha256::new(),
        read: 0,
        max: limits.max_bytes,
    });
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        u.entries += 1;
        if u.entries > limits.max_entries {
            return Err(UnpackError::Limit(format!(
                "{} entries",
                limits.max_entries
            )));
        }
        u.entry(&mut entry)?;
    }
    // Read to the end: trailing padding must reach the digest, and the
    // decompressor must see (and check) the end of its stream.
    let mut hashing = archive.into_inner();
    io::copy(&mut hashing, &mut io::sink()).map_err(stream_err)?;
    u.finish_dirs()?;
    Ok(UnpackStats {
        diff_id: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
        bytes: u.bytes,
        entries: u.entries,
    })
}

/// A checked, normalised entry name: its parent components and its name.
struct Name {
    parents: Vec<String>,
    name: String,
    full: String,
}

fn clean_name(raw: &Path) -> Result<Option<Name>, UnpackError> {
    let shown = raw.display().to_string();
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => {
                let s = p
                    .to_str()
                    .ok_or_else(|| hostile(&shown, "name is not UTF-8"))?;
                parts.push(s.to_string());
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(hostile(&shown, "name contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(hostile(&shown, "absolute name"));
            }
        }
    }
    let Some(name) = parts.pop() else {
        return Ok(None); // "./": the layer root itself
    };
    let full = if parts.is_empty() {
        name.clone()
    } else {
        format!("{}/{name}", parts.join("/"))
    };
    Ok(Some(Name {
        parents: parts,
        name,
        full,
    }))
}

struct Unpacker {
    root: OwnedFd,
    /// Paths whited out by this layer (lower content must stay hidden).
    whited: HashSet<String>,
    /// Whiteout devices this layer created (a real entry replaces them).
    whiteout_devs: HashSet<String>,
    /// Directories and their mtimes, applied after their children.
    dirs: Vec<(Name, i64)>,
    bytes: u64,
    entries: u64,
}

impl Unpacker {
    /// Opens (creating as needed) the parent directory of `n` beneath the
    /// root, refusing any symlink on the way.
    fn parent(&self, n: &Name) -> Result<OwnedFd, UnpackError> {
        let mut fd = rustix::io::dup(&self.root).map_err(errno(&n.full))?;
        for part in &n.parents {
            let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            let next = match rustix::fs::openat2(&fd, part.as_str(), flags, Mode::empty(), resolve)
            {
                Ok(f) => f,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&fd, part.as_str(), Mode::from_raw_mode(0o755))
                        .map_err(errno(&n.full))?;
                    rustix::fs::openat2(&fd, part.as_str(), flags, Mode::empty(), resolve)
                        .map_err(errno(&n.full))?
                }
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
                    return Err(hostile(&n.full, "a parent directory is a symlink"));
                }
                Err(rustix::io::Errno::NOTDIR) => {
                    return Err(hostile(&n.full, "a parent is not a directory"));
                }
                Err(e) => return Err(errno(&n.full)(e)),
            };
            fd = next;
        }
        Ok(fd)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        let Some(n) = clean_name(&raw)? else {
            return Ok(());
        };
        let parent = self.parent(&n)?;
        if n.name == OPAQUE_MARKER {
            return set_xattr(parent.as_fd(), None, OPAQUE_XATTR, b"y", &n.full);
        }
        if let Some(target) = n.name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(parent.as_fd(), &n, target);
        }
        let existing = rustix::fs::statat(&parent, n.name.as_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
        let is_dir = kind == tar::EntryType::Directory;
        if let Some(st) = existing {
            let was_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if !(was_dir && is_dir) {
                remove_at(parent.as_fd(), &n.name, &n.full)?;
            }
        }
        let was_whited = self.whited.contains(&n.full);
        self.whiteout_devs.remove(&n.full);

        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?
            & 0o7777;
        let uid = header
            .uid()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        let gid = header
            .gid()
            .map_err(|e| UnpackError::Corrupt(e.to_string()))?;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let p = parent.as_fd();
        let name = n.name.as_str();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = rustix::fs::openat(
                    p,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno(&n.full))?;
                let mut file = File::from(fd);
                let copied = io::copy(entry, &mut file).map_err(stream_err)?;
                self.bytes += copied;
            }
            tar::EntryType::Directory => {
                let kept = existing
                    .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
                if !kept {
                    rustix::fs::mkdirat(p, name, Mode::from_raw_mode(0o755))
                        .map_err(errno(&n.full))?;
                }
                if was_whited {
                    set_xattr(p, Some(name), OPAQUE_XATTR, b"y", &n.full)?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("{}: symlink without target", n.full))
                    })?;
                rustix::fs::symlinkat(target.as_ref(), p, name).map_err(errno(&n.full))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Corrupt(e.to_string()))?
                    .ok_or_else(|| {
                        UnpackError::Corrupt(format!("{}: hardlink without target", n.full))
                    })?;
                let t = clean_name(&target)?
                    .ok_or_else(|| hostile(&n.full, "hardlink to the layer root"))?;
                let tparent = self.parent_existing(&t, &n.full)?;
                let st = rustix::fs::statat(&tparent, t.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|_| hostile(&n.full, "hardlink target is not in this layer"))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(hostile(&n.full, "hardlink to a directory"));
                }
                rustix::fs::linkat(&tparent, t.name.as_str(), p, name, AtFlags::empty())
                    .map_err(errno(&n.full))?;
                // A hardlink shares the target's inode and metadata.
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                rustix::fs::mknodat(
                    p,
                    name,
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(errno(&n.full))?;
            }
            other => {
                return Err(UnpackError::Unsupported(format!(
                    "{}: tar entry type {other:?}",
                    n.full
                )));
            }
        }

        rustix::fs::chownat(
            p,
            name,
            Some(rustix::fs::Uid::from_raw(uid as u32)),
            Some(rustix::fs::Gid::from_raw(gid as u32)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno(&n.full))?;
        if kind != tar::EntryType::Symlink {
            // After chown, which clears setuid/setgid.
            rustix::fs::chmodat(p, name, Mode::from_raw_mode(mode), AtFlags::empty())
                .map_err(errno(&n.full))?;
            if let Some(exts) = entry
                .pax_extensions()
                .map_err(|e| UnpackError::Corrupt(e.to_string()))?
            {
                for ext in exts {
                    let ext = ext.map_err(|e| UnpackError::Corrupt(e.to_string()))?;
                    let Ok(key) = ext.key() else { continue };
                    if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
                        if xattr.starts_with("trusted.overlay.") {
                            continue;
                        }
                        set_xattr(p, Some(name), xattr, ext.value_bytes(), &n.full)?;
                    }
                }
            }
        }
        if is_dir {
            self.dirs.push((n, mtime));
        } else {
            set_mtime(p, name, mtime, &n.full)?;
        }
        Ok(())
    }

    /// Opens the parent of an existing entry (a hardlink target) without
    /// creating anything.
    fn parent_existing(&self, t: &Name, shown: &str) -> Result<OwnedFd, UnpackError> {
        if t.parents.is_empty() {
            return rustix::io::dup(&self.root).map_err(errno(shown));
        }
        rustix::fs::openat2(
            &self.root,
            t.parents.join("/").as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|_| {
            hostile(
                shown,
                "hardlink target is outside the layer or behind a symlink",
            )
        })
    }

    fn whiteout(
        &mut self,
        parent: BorrowedFd<'_>,
        n: &Name,
        target: &str,
    ) -> Result<(), UnpackError> {
        if target.is_empty() || target == "." || target == ".." || target.contains('/') {
            return Err(hostile(&n.full, "bad whiteout name"));
        }
        let path = if n.parents.is_empty() {
            target.to_string()
        } else {
            format!("{}/{target}", n.parents.join("/"))
        };
        self.whited.insert(path.clone());
        match rustix::fs::statat(parent, target, AtFlags::SYMLINK_NOFOLLOW) {
            // Created by this layer already: the real entry wins; a
            // directory must hide what lower layers had there.
            Ok(st) => {
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    set_xattr(parent, Some(target), OPAQUE_XATTR, b"y", &path)?;
                }
                Ok(())
            }
            Err(_) => {
                rustix::fs::mknodat(
                    parent,
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(errno(&path))?;
                self.whiteout_devs.insert(path);
                Ok(())
            }
        }
    }

    /// Directory mtimes last, deepest first, since creating children
    /// changes them.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (n, mtime) in dirs.iter().rev() {
            let parent = match self.parent_existing(n, &n.full) {
                Ok(p) => p,
                Err(_) => continue, // replaced later in the layer
            };
            if rustix::fs::statat(&parent, n.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
            {
                set_mtime(parent.as_fd(), &n.name, *mtime, &n.full)?;
            }
        }
        Ok(())
    }
}

fn set_mtime(dir: BorrowedFd<'_>, name: &str, secs: i64, shown: &str) -> Result<(), UnpackError> {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(errno(shown))
}

/// Sets an xattr on `name` in `dir` (or on `dir` itself) without following
/// a symlink at `name`.
fn set_xattr(
    dir: BorrowedFd<'_>,
    name: Option<&str>,
    key: &str,
    value: &[u8],
    shown: &str,
) -> Result<(), UnpackError> {
    use std::os::fd::AsRawFd;
    let res = match name {
        None => rustix::fs::fsetxattr(dir, key, value, rustix::fs::XattrFlags::empty()),
        // The parent is reached through its descriptor, the last component
        // is not followed (l*xattr).
        Some(n) => rustix::fs::lsetxattr(
            format!("/proc/self/fd/{}/{n}", dir.as_raw_fd()).as_str(),
            key,
            value,
            rustix::fs::XattrFlags::empty(),
        ),
    };
    res.map_err(errno(shown))
}

/// Removes `name` in `dir`, recursively for directories, never following
/// symlinks.
fn remove_at(dir: BorrowedFd<'_>, name: &str, shown: &str) -> Result<(), UnpackError> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno(shown))?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rustix::fs::openat2(
            dir,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(errno(shown))?;
        let mut children = Vec::new();
        for e in rustix::fs::Dir::read_from(&sub).map_err(errno(shown))? {
            let e = e.map_err(errno(shown))?;
            let child = e.file_name().to_string_lossy().into_owned();
            if child != "." && child != ".." {
                children.push(child);
            }
        }
        for child in children {
            remove_at(sub.as_fd(), &child, shown)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(errno(shown))
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno(shown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// A tar entry for tests: raw name (no validation), type, data.
    struct E<'a> {
        name: &'a str,
        kind: tar::EntryType,
        data: &'a [u8],
        link: Option<&'a str>,
        mode: u32,
        uid: u64,
    }

    fn e<'a>(name: &'a str, kind: tar::EntryType) -> E<'a> {
        E {
            name,
            kind,
            data: b"",
            link: None,
            mode: if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
        }
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
        E {
            data,
            ..e(name, tar::EntryType::Regular)
        }
    }

    fn link<'a>(name: &'a str, kind: tar::EntryType, target: &'a str) -> E<'a> {
        E {
            link: Some(target),
            ..e(name, kind)
        }
    }

    fn tar(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for en in entries {
            let mut h = tar::Header::new_gnu();
            let name = en.name.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = en.link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(en.kind);
            h.set_size(en.data.len() as u64);
            h.set_mode(en.mode);
            h.set_uid(en.uid);
            h.set_gid(en.uid);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append(&h, en.data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_layer(
            bytes,
            Compression::None,
            &dir.path().join("l"),
            &UnpackLimits::default(),
        );
        (dir, r)
    }

    #[test]
    fn entries_keep_type_owner_mode_and_mtime() {
        let t = tar(&[
            e("./", tar::EntryType::Directory),
            E {
                mode: 0o4755,
                uid: 1000,
                ..file("bin/su", b"x")
            },
            link("bin/sh", tar::EntryType::Symlink, "/bin/busybox"),
            link("bin/su2", tar::EntryType::Link, "bin/su"),
            e("run/fifo", tar::EntryType::Fifo),
            E {
                mode: 0o700,
                uid: 1000,
                ..e("home/u", tar::EntryType::Directory)
            },
        ]);
        let (dir, r) = unpack(&t);
        let stats = r.unwrap();
        let l = dir.path().join("l");
        let su = std::fs::metadata(l.join("bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((su.uid(), su.gid()), (1000, 1000));
        assert_eq!(su.mtime(), 1_700_000_000);
        assert_eq!(su.nlink(), 2);
        assert_eq!(
            std::fs::read_link(l.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(
            std::fs::metadata(l.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let home = std::fs::metadata(l.join("home/u")).unwrap();
        assert_eq!(
            (home.permissions().mode() & 0o7777, home.uid()),
            (0o700, 1000)
        );
        assert_eq!(home.mtime(), 1_700_000_000);
        assert_eq!(stats.bytes, 1);
        assert_eq!(
            stats.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&t)))
        );
    }

    #[test]
    fn whiteouts_become_overlay_markers() {
        let t = tar(&[
            file("gone/.wh.old", b""),
            file("opq/-first", b"1"),
            file("opq/.wh..wh..opq", b""),
            file("opq/z", b"2"),
            // whiteout, then the directory re-created in the same layer
            file(".wh.redir", b""),
            e("redir", tar::EntryType::Directory),
            // directory first, then its whiteout
            e("redir2", tar::EntryType::Directory),
            file(".wh.redir2", b""),
            // a file replaced by a directory
            file("f2d", b"x"),
            e("f2d", tar::EntryType::Directory),
        ]);
        let (dir, r) = unpack(&t);
        r.unwrap();
        let l = dir.path().join("l");
        let wh = std::fs::symlink_metadata(l.join("gone/old")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        let opaque = |p: &Path| rustix::fs::lgetxattr(p, OPAQUE_XATTR, &mut [0u8; 4][..]).is_ok();
        assert!(opaque(&l.join("opq")));
        assert!(l.join("opq/-first").exists() && l.join("opq/z").exists());
        assert!(!l.join("opq/.wh..wh..opq").exists());
        assert!(l.join("redir").is_dir() && opaque(&l.join("redir")));
        assert!(l.join("redir2").is_dir() && opaque(&l.join("redir2")));
        assert!(l.join("f2d").is_dir());
    }

    #[test]
    fn compressions_give_the_same_tree_and_diff_id() {
        let t = tar(&[file("a", b"hello"), file("b/c", &[7u8; 5000])]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &t).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&t[..], 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        for (i, (bytes, c)) in [
            (&t, Compression::None),
            (&gz, Compression::Gzip),
            (&zs, Compression::Zstd),
        ]
        .into_iter()
        .enumerate()
        {
            let dest = dir.path().join(i.to_string());
            let s = unpack_layer(&bytes[..], c, &dest, &UnpackLimits::default()).unwrap();
            assert_eq!(std::fs::read(dest.join("b/c")).unwrap(), vec![7u8; 5000]);
            ids.push(s.diff_id);
        }
        assert!(ids.iter().all(|i| *i == ids[0]));
        // A truncated gzip stream fails and leaves nothing.
        let dest = dir.path().join("trunc");
        assert!(
            unpack_layer(
                &gz[..gz.len() - 10],
                Compression::Gzip,
                &dest,
                &UnpackLimits::default()
            )
            .is_err()
        );
        assert!(!dest.exists());
    }

    fn assert_hostile(t: &[u8], outside: &Path) {
        let (dir, r) = unpack(t);
        assert!(matches!(r, Err(UnpackError::Hostile { .. })), "{r:?}");
        assert!(!dir.path().join("l").exists(), "dest removed");
        assert!(!outside.exists(), "{} was written", outside.display());
    }

    #[test]
    fn hostile_names_and_links_are_refused() {
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("victim");
        let t = out.path().display().to_string();
        // A climb out of the layer to a path of this test's own (a fixed
        // one such as /tmp/x could exist already on a shared machine).
        let climb = format!("../../../../../../../../..{t}/victim");
        assert_hostile(&tar(&[file(&climb, b"x")]), &target);
        let abs = format!("{}/victim", t);
        assert_hostile(&tar(&[file(&abs, b"x")]), &target);
        assert_hostile(
            &tar(&[
                link("esc", tar::EntryType::Symlink, &t),
                file("esc/victim", b"x"),
            ]),
            &target,
        );
        std::fs::write(out.path().join("secret"), "s").unwrap();
        let rel = format!("../../../../../../../../..{t}/secret");
        assert_hostile(&tar(&[link("x", tar::EntryType::Link, &rel)]), &target);
        assert_hostile(
            &tar(&[
                link("esc", tar::EntryType::Symlink, &t),
                link("x", tar::EntryType::Link, "esc/secret"),
            ]),
            &target,
        );
        assert_eq!(
            std::fs::metadata(out.path().join("secret"))
                .unwrap()
                .nlink(),
            1
        );
    }

    #[test]
    fn limits_bound_bombs() {
        let t = tar(&[file("a", &[0u8; 100_000]), file("b", b"1"), file("c", b"2")]);
        let dir = tempfile::tempdir().unwrap();
        let small = UnpackLimits {
            max_bytes: 10_000,
            max_entries: 100,
        };
        let r = unpack_layer(&t[..], Compression::None, &dir.path().join("a"), &small);
        assert!(matches!(r, Err(UnpackError::Limit(_))), "{r:?}");
        let few = UnpackLimits {
            max_bytes: 1 << 30,
            max_entries: 2,
        };
        let r = unpack_layer(&t[..], Compression::None, &dir.path().join("b"), &few);
        assert!(matches!(r, Err(UnpackError::Limit(_))), "{r:?}");
        assert!(!dir.path().join("a").exists() && !dir.path().join("b").exists());
    }

    #[test]
    fn existing_destination_is_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), "k").unwrap();
        let r = unpack_layer(
            &tar(&[file("a", b"x")])[..],
            Compression::None,
            dir.path(),
            &UnpackLimits::default(),
        );
        assert!(r.is_err());
        assert!(dir.path().join("keep").exists());
    }

    #[test]
    fn pax_xattrs_are_kept_but_overlay_ones_dropped() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([
            ("SCHILY.xattr.user.crius", b"yes".as_slice()),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y".as_slice()),
        ])
        .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let (dir, r) = unpack(&b.into_inner().unwrap());
        r.unwrap();
        let f = dir.path().join("l/f");
        let mut buf = [0u8; 16];
        let n = rustix::fs::lgetxattr(&f, "user.crius", &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"yes");
        assert!(rustix::fs::lgetxattr(&f, OPAQUE_XATTR, &mut buf[..]).is_err());
    }

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar").unwrap(),
            Compression::None
        );
        assert!(Compression::from_media_type("application/x-evil").is_err());
    }
}
