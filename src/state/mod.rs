//! The embedded store (redb) under `state.dir`: one file, `forewarn.redb`,
//! ACID transactions, crash-safe by default. Each component owns its
//! tables (the outbox today; episodes, windows, ledgers and positions as
//! they become durable) and writes them through short transactions here.
//!
//! redb locks the file: one daemon per state dir. The CLI opens the same
//! file when the daemon is stopped and goes through the admin API when it
//! is not (see `forewarn dead-letters`).

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
        let db = redb::Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn db(&self) -> &redb::Database {
        &self.db
    }
}
