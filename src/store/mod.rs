//! Persistent metadata of images, pods and containers.
//!
//! Records live in an embedded transactional store (redb) under `--root`, so a
//! `kill -9` or power loss leaves either the old or the new record, never half
//! of one. Values are JSON so that records can gain fields without migrations.
//! Only one daemon may own a root at a time; [`RootLock`] enforces that.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod group;

/// Errors from the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A grouped commit (see `group`) failed: the one error every change it
    /// held answers.
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
    /// The commit holding a change panicked before it finished.
    #[error("store commit did not finish")]
    CommitAborted,
    /// The redb database failed to open, begin, read or commit a transaction.
    #[error("store database: {0}")]
    Db(#[from] redb::Error),
    /// A stored record no longer decodes as its type (damaged, or written by an incompatible
    /// build).
    #[error("record {table}/{key} is corrupt: {source}")]
    Corrupt {
        /// The table holding it.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The JSON decode error.
        source: serde_json::Error,
    },
    /// A value could not be serialised to JSON for storing.
    #[error("encoding record {table}/{key}: {source}")]
    Encode {
        /// The table it was going into.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The JSON encode error.
        source: serde_json::Error,
    },
    /// The database was written by a newer crius; it is not opened, so no
    /// older code rewrites records it does not understand.
    #[error("store schema version {found} is newer than this crius understands ({supported})")]
    Schema {
        /// Schema version recorded in the database.
        found: u32,
        /// The newest schema this build reads.
        supported: u32,
    },
    /// A file operation on the state root failed (the root lock file).
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Another process holds the exclusive lock on the same state root.
    #[error("another crius (pid {pid}) already owns root {root}; stop it or use another --root")]
    Locked {
        /// The state root (`--root`) that is taken.
        root: PathBuf,
        /// The holder's pid as written in `crius.lock`; may be empty if it
        /// had not written it yet.
        pid: String,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The kinds of records, one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Pod sandbox records, by pod id.
    Pods,
    /// Container records, by container id.
    Containers,
    /// Pulled image records, by image id (config digest).
    Images,
    /// Unpacked layers by chain id: size and inode counts for ImageFsInfo.
    Layers,
    /// Daemon-wide values (schema version, pod CIDR).
    Meta,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Pods => "pods",
            Table::Containers => "containers",
            Table::Images => "images",
            Table::Layers => "layers",
            Table::Meta => "meta",
        }
    }

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

const ALL_TABLES: [Table; 5] = [
    Table::Pods,
    Table::Containers,
    Table::Images,
    Table::Layers,
    Table::Meta,
];
const SCHEMA_KEY: &str = "schema_version";
const SCHEMA_VERSION: u32 = 1;

/// The metadata store. Cheap to share behind an `Arc`. [`Store::put`] and
/// [`Store::delete`] that arrive together share one transaction (group
/// commit); [`Store::write`] groups changes explicitly.
pub struct Store {
    db: Database,
    group: group::Group,
}

/// A group of changes committed together or not at all.
pub struct Batch<'a> {
    txn: &'a redb::WriteTransaction,
}

impl Batch<'_> {
    /// Inserts or replaces a record.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(table, key, value)?;
        let mut t = self.txn.open_table(table.def())?;
        t.insert(key, bytes.as_slice())?;
        Ok(())
    }

    /// Deletes a record; returns whether it existed.
    pub fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let mut t = self.txn.open_table(table.def())?;
        Ok(t.remove(key)?.is_some())
    }
}

impl Store {
    /// Opens (or creates) the store file `meta.redb` in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = Database::create(dir.join("meta.redb"))?;
        let store = Store {
            db,
            group: group::Group::default(),
        };
        let found: Option<u32> = store.get(Table::Meta, SCHEMA_KEY)?;
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Schema {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
            None => store.write(|b| {
                for t in ALL_TABLES {
                    b.txn.open_table(t.def())?;
                }
                b.put(Table::Meta, SCHEMA_KEY, &SCHEMA_VERSION)
            })?,
        }
        Ok(store)
    }

    /// Runs `f` in one write transaction, committed durably if `f` succeeds.
    /// The commit waits for the disk (fsync): off the async workers.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&Batch<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        crate::sync::blocking(|| {
            let txn = self.db.begin_write()?;
            let r = f(&Batch { txn: &txn })?;
            txn.commit()?;
            Ok(r)
        })
    }

    /// Inserts or replaces one record; durable when it returns.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode(table, key, value)?;
        self.change(table, key, Some(bytes)).map(|_| ())
    }

    /// Deletes one record; returns whether it existed. Durable when it returns.
    pub fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        self.change(table, key, None)
    }

    /// One change through the group commit: off the async workers, as
    /// [`Store::write`].
    fn change(&self, table: Table, key: &str, value: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let change = group::Change {
            table,
            key: key.to_string(),
            value,
        };
        crate::sync::blocking(|| self.group.submit(change, |batch| self.commit(batch)))
    }

    /// Commits `batch` in one transaction; per change, whether its record
    /// existed before.
    fn commit(&self, batch: &[group::Change]) -> Result<Vec<bool>, StoreError> {
        let txn = self.db.begin_write()?;
        let mut existed = Vec::with_capacity(batch.len());
        for c in batch {
            let mut t = txn.open_table(c.table.def())?;
            existed.push(match &c.value {
                Some(v) => t.insert(c.key.as_str(), v.as_slice())?.is_some(),
                None => t.remove(c.key.as_str())?.is_some(),
            });
        }
        txn.commit()?;
        Ok(existed)
    }

    /// Reads one record.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(v) = t.get(key)? else {
            return Ok(None);
        };
        decode(table, key, v.value()).map(Some)
    }

    /// Reads every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            let key = k.value().to_string();
            let value = decode(table, &key, v.value())?;
            out.push((key, value));
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(table: Table, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        table: table.name(),
        key: key.to_string(),
        source,
    })
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table: table.name(),
        key: key.to_string(),
        source,
    })
}

/// An exclusive lock on a state root, held for the life of the daemon. The
/// kernel drops it when the process dies, so a crash never leaves it stale.
pub struct RootLock {
    _lock: Flock<File>,
}

impl RootLock {
    /// Takes the lock on `root/crius.lock` or fails naming the owner's pid.
    pub fn acquire(root: &Path) -> Result<RootLock, StoreError> {
        let path = root.join("crius.lock");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(StoreError::Locked {
                    root: root.to_path_buf(),
                    pid: pid.trim().to_string(),
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(RootLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
        n: u32,
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put(
                Table::Pods,
                "a",
                &Rec {
                    name: "x".into(),
                    n: 1,
                },
            )
            .unwrap();
            s.put(
                Table::Pods,
                "b",
                &Rec {
                    name: "y".into(),
                    n: 2,
                },
            )
            .unwrap();
            assert!(s.delete(Table::Pods, "b").unwrap());
            assert!(!s.delete(Table::Pods, "b").unwrap());
        }
        let s = Store::open(dir.path()).unwrap();
        let all: Vec<(String, Rec)> = s.list(Table::Pods).unwrap();
        assert_eq!(
            all,
            vec![(
                "a".into(),
                Rec {
                    name: "x".into(),
                    n: 1
                }
            )]
        );
        assert_eq!(s.get::<Rec>(Table::Containers, "a").unwrap(), None);
    }

    #[test]
    fn failed_batch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let r: Result<(), StoreError> = s.write(|b| {
            b.put(Table::Pods, "p", &1u32)?;
            b.put(Table::Containers, "c", &2u32)?;
            Err(StoreError::Schema {
                found: 0,
                supported: 0,
            })
        });
        assert!(r.is_err());
        assert_eq!(s.get::<u32>(Table::Pods, "p").unwrap(), None);
        assert_eq!(s.get::<u32>(Table::Containers, "c").unwrap(), None);
    }

    #[test]
    fn corrupt_record_is_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put(Table::Images, "i", &"text").unwrap();
        let err = s.get::<Rec>(Table::Images, "i").unwrap_err();
        assert!(err.to_string().contains("images/i"), "{err}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .put(Table::Meta, SCHEMA_KEY, &99u32)
            .unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Schema { found: 99, .. })
        ));
    }

    #[test]
    fn root_lock_is_exclusive_and_names_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let held = RootLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts just like another daemon would.
        let err = RootLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(held);
        RootLock::acquire(dir.path()).unwrap();
    }
}
