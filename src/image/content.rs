//! The content store: registry blobs (manifests, configs, compressed layers)
//! by digest under `root/content`.
//!
//! A blob becomes visible only after its bytes were verified against its
//! digest: downloads go to `ingest/<hex>` and are renamed into
//! `blobs/sha256/<hex>`. A partial `ingest` file survives a restart and is
//! resumed by the next pull of the same blob.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Reading, writing, syncing or renaming a blob file failed.
    #[error("{path}: {source}")]
    Io {
        /// The blob or partial file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A digest that is not `sha256:` followed by 64 lowercase hex digits (it would also not be a
    /// safe file name).
    #[error("unsupported or malformed digest {0:?}")]
    BadDigest(String),
    /// Written bytes do not hash to the expected digest, or their length differs from the expected
    /// size; the partial file is deleted.
    #[error("content of {expected} does not match: got {actual} ({size} bytes)")]
    Mismatch {
        /// The digest the blob was written under.
        expected: String,
        /// The sha256 digest of what was written.
        actual: String,
        /// Bytes written.
        size: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Splits `sha256:<64 lowercase hex>` and returns the hex; anything else is
/// refused, so a digest can never name a path outside the store.
pub fn digest_hex(digest: &str) -> Result<&str, ContentError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| ContentError::BadDigest(digest.into()))?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(hex)
    } else {
        Err(ContentError::BadDigest(digest.into()))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Blob storage rooted at one directory.
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Creates the directories if needed.
    pub fn open(dir: &Path) -> Result<ContentStore, ContentError> {
        let store = ContentStore {
            blobs: dir.join("blobs/sha256"),
            ingest: dir.join("ingest"),
        };
        for d in [&store.blobs, &store.ingest] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        Ok(store)
    }

    /// Path of a verified blob (which may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// Whether a verified blob is present.
    pub fn contains(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Size of a verified blob, if present.
    pub fn size(&self, digest: &str) -> Option<u64> {
        self.blob_path(digest)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
    }

    /// Reads a whole (small) verified blob: manifests and configs.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ContentError> {
        let p = self.blob_path(digest)?;
        std::fs::read(&p).map_err(io(&p))
    }

    /// Stores small content whose bytes are all in memory, verifying them.
    pub fn write_verified(&self, digest: &str, bytes: &[u8]) -> Result<(), ContentError> {
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ContentError::Mismatch {
                expected: digest.into(),
                actual,
                size: bytes.len() as u64,
            });
        }
        if self.contains(digest) {
            return Ok(());
        }
        let mut w = self.ingest(digest)?;
        w.restart()?;
        w.write(bytes)?;
        w.commit(Some(bytes.len() as u64))
    }

    /// Starts or resumes writing the blob `digest`.
    pub fn ingest(&self, digest: &str) -> Result<Ingest, ContentError> {
        let hex = digest_hex(digest)?;
        let path = self.ingest.join(hex);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let offset = file.metadata().map_err(io(&path))?.len();
        Ok(Ingest {
            digest: digest.to_string(),
            final_path: self.blobs.join(hex),
            path,
            file,
            offset,
        })
    }

    /// Deletes a verified blob; missing is fine.
    pub fn remove(&self, digest: &str) -> Result<(), ContentError> {
        let p = self.blob_path(digest)?;
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p)(e)),
            _ => Ok(()),
        }
    }

    /// Discards partial downloads older than `max_age` (left by a crash or
    /// a pull that was never retried).
    pub fn prune_ingest(&self, max_age: Duration) -> Result<usize, ContentError> {
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.ingest).map_err(io(&self.ingest))? {
            let entry = entry.map_err(io(&self.ingest))?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > max_age)
                .unwrap_or(true);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Digests of all verified blobs.
    pub fn list(&self) -> Vec<String> {
        std::fs::read_dir(&self.blobs)
            .map(|d| {
                d.flatten()
                    .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Total bytes and files of verified blobs.
    pub fn usage(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut files = 0;
        if let Ok(entries) = std::fs::read_dir(&self.blobs) {
            for m in entries.flatten().filter_map(|e| e.metadata().ok()) {
                bytes += m.len();
                files += 1;
            }
        }
        (bytes, files)
    }
}

/// A blob being written. Bytes already on disk from an earlier attempt are
/// kept (see [`Ingest::offset`]) so a download can resume with a range request.
pub struct Ingest {
    digest: String,
    path: PathBuf,
    final_path: PathBuf,
    file: File,
    offset: u64,
}

impl Ingest {
    /// Bytes already present from an earlier attempt.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The partial file, to re-read what an earlier attempt stored.
    pub fn partial_path(&self) -> &Path {
        &self.path
    }

    /// Drops what an earlier attempt stored (the server ignored a range).
    pub fn restart(&mut self) -> Result<(), ContentError> {
        self.file.set_len(0).map_err(io(&self.path))?;
        self.offset = 0;
        Ok(())
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ContentError> {
        self.file.write_all(bytes).map_err(io(&self.path))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Verifies the whole file against the digest (and `size`, when known),
    /// syncs it and moves it into place. A mismatch deletes the partial file.
    pub fn commit(self, size: Option<u64>) -> Result<(), ContentError> {
        self.file.sync_all().map_err(io(&self.path))?;
        let mut hasher = Sha256::new();
        let mut f = File::open(&self.path).map_err(io(&self.path))?;
        let n = std::io::copy(&mut f, &mut hasher).map_err(io(&self.path))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != self.digest || size.is_some_and(|s| s != n) {
            let _ = std::fs::remove_file(&self.path);
            return Err(ContentError::Mismatch {
                expected: self.digest,
                actual,
                size: n,
            });
        }
        std::fs::rename(&self.path, &self.final_path).map_err(io(&self.final_path))
    }

    /// Moves the file into place when the caller already verified the bytes
    /// while streaming them (no second read).
    pub fn commit_prehashed(self, actual: &str) -> Result<(), ContentError> {
        if actual != self.digest {
            let _ = std::fs::remove_file(&self.path);
            return Err(ContentError::Mismatch {
                expected: self.digest,
                actual: actual.into(),
                size: self.offset,
            });
        }
        self.file.sync_all().map_err(io(&self.path))?;
        std::fs::rename(&self.path, &self.final_path).map_err(io(&self.final_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_before_touching_paths() {
        assert!(digest_hex("sha256:../../etc/passwd").is_err());
        assert!(digest_hex("md5:abc").is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&sha256_digest(b"x")).is_ok());
    }

    #[test]
    fn ingest_resumes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let data = b"hello content store";
        let d = sha256_digest(data);
        let mut w = cs.ingest(&d).unwrap();
        w.write(&data[..5]).unwrap();
        drop(w); // a crash mid-download
        let mut w = cs.ingest(&d).unwrap();
        assert_eq!(w.offset(), 5);
        w.write(&data[5..]).unwrap();
        w.commit(Some(data.len() as u64)).unwrap();
        assert!(cs.contains(&d));
        assert_eq!(cs.read(&d).unwrap(), data);
    }

    #[test]
    fn mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha256_digest(b"right");
        let mut w = cs.ingest(&d).unwrap();
        w.write(b"wrong").unwrap();
        assert!(matches!(w.commit(None), Err(ContentError::Mismatch { .. })));
        assert!(!cs.contains(&d));
        assert_eq!(cs.ingest(&d).unwrap().offset(), 0);
        assert!(cs.write_verified(&d, b"wrong").is_err());
        cs.write_verified(&d, b"right").unwrap();
        assert!(cs.contains(&d));
    }

    #[test]
    fn old_partials_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let mut w = cs.ingest(&sha256_digest(b"a")).unwrap();
        w.write(b"partial").unwrap();
        assert_eq!(cs.prune_ingest(Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(cs.prune_ingest(Duration::ZERO).unwrap(), 1);
    }
}
