//! The embedded store (redb) under `state.dir`: one file, `forewarn.redb`,
//! ACID transactions, crash-safe by default. It holds all durable state:
//! the engine's per-partition state and the consumer positions
//! ([`engine`]), and the outbox with its dead letters
//! (`notify::outbox`). Each component owns its tables; the daemon commits
//! a batch's engine changes, outbox entries and positions in one
//! transaction (`daemon::Pipeline::start_commit`).
//!
//! redb locks the file: one daemon per state dir. The CLI opens the same
//! file when the daemon is stopped and goes through the admin API when it
//! is not (see `forewarn dead-letters`). A file that cannot be opened is
//! reported as damaged, never replaced silently (`--reset-state`).

pub mod customers;
pub mod engine;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub const FILE_NAME: &str = "forewarn.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state store {path} is in use by another forewarn process (one daemon per state.dir); stop it, or use the admin API of the running daemon")]
    Locked { path: PathBuf },
    #[error("cannot open the state store {path}: {error}; check that state.dir is writable and on a local disk")]
    Open { path: PathBuf, error: String },
    #[error("the state store {path} is damaged and cannot be opened ({error}). forewarn does not start on damaged state: starting empty would lose every open deadline and could send notifications twice. Restore the file from a backup, or start once with `forewarn run --reset-state` to move it aside and start with empty state")]
    Damaged { path: PathBuf, error: String },
    #[error("state store: {0}")]
    Db(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A handle to the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `dir/forewarn.redb`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_path_buf(),
            error: e.to_string(),
        })?;
        let path = dir.join(FILE_NAME);
        let existed = path.metadata().is_ok_and(|m| m.len() > 0);
        let db = redb::Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                StoreError::Open {
                    path: path.clone(),
                    error: io.to_string(),
                }
            }
            other if existed => StoreError::Damaged {
                path: path.clone(),
                error: other.to_string(),
            },
            other => StoreError::Open {
                path: path.clone(),
                error: other.to_string(),
            },
        })?;
        Ok(Store {
            db: Arc::new(db),
            path,
        })
    }

    /// `--reset-state`: opens the store, and when it is damaged moves the
    /// file aside (`forewarn.redb.damaged-<epoch ms>`, never deleted) and
    /// starts an empty one. Returns the store and where the old file went.
    pub fn open_or_reset(dir: &Path) -> Result<(Store, Option<PathBuf>), StoreError> {
        match Store::open(dir) {
            Err(StoreError::Damaged { path, error }) => {
                let aside = dir.join(format!(
                    "{FILE_NAME}.damaged-{}",
                    crate::event::now_millis()
                ));
                std::fs::rename(&path, &aside).map_err(|e| StoreError::Open {
                    path: path.clone(),
                    error: format!("it is damaged ({error}) and cannot be moved aside: {e}"),
                })?;
                Ok((Store::open(dir)?, Some(aside)))
            }
            other => other.map(|s| (s, None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn db(&self) -> &redb::Database {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_store_is_refused_with_the_way_out_then_moved_aside_on_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 8192]).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("garbage does not open");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("--reset-state") && text.contains(FILE_NAME),
            "{text}"
        );

        let (store, aside) = Store::open_or_reset(dir.path()).unwrap();
        let aside = aside.expect("moved aside");
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            vec![0x5a; 8192],
            "kept, not deleted"
        );
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("forewarn.redb.damaged-"));
        drop(store);
        // A healthy store is left alone by --reset-state.
        let (_, aside) = Store::open_or_reset(dir.path()).unwrap();
        assert!(aside.is_none());
    }
}
