//! What can go wrong in the store, and what each failure means for the caller.

use super::*;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the database or directory.
    #[error("{path} is in use by another mxfleet process")]
    Locked {
        /// The locked file.
        path: PathBuf,
    },
    /// The database could not be opened, read or written.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The redb error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record did not decode; the entry is left as it is.
    #[error("stored record {table}/{key} is corrupt: {source}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Key of the record.
        key: String,
        /// Decode error.
        #[source]
        source: serde_json::Error,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The blocking task running a transaction panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// The database cannot be used for now (it is being opened again after a fault).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database file is damaged beyond what redb repairs by itself.
    #[error(
        "database {path} is corrupt ({detail}): stop mxfleet, move the file aside and restore it \
         from a backup (without it the accounts' sessions are gone: each needs `mxfleet relogin \
         ID` or allow_new_device to log in as a new device)"
    )]
    CorruptDatabase {
        /// The database file.
        path: PathBuf,
        /// redb's description.
        detail: String,
    },
}

/// What a store failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// The disk is full (or the quota spent): retry once space returns; nothing is lost.
    Exhausted,
    /// Another I/O failure, or the database is being opened again: retry after a backoff.
    Unavailable,
    /// A record or the database file is corrupt: retrying will not help.
    Corrupt,
    /// Anything else retrying will not fix (another process holds the database).
    Permanent,
}

impl StoreError {
    /// What the failure means: wait for space, retry, or give up.
    pub fn fault(&self) -> StoreFault {
        match self {
            Self::Database { source, .. } => match source.as_ref() {
                redb::Error::Io(io) if is_exhausted(io) => StoreFault::Exhausted,
                // redb refuses use after a failed write until reopened (see `Store::recover`).
                redb::Error::PreviousIo | redb::Error::Io(_) => StoreFault::Unavailable,
                redb::Error::Corrupted(_) => StoreFault::Corrupt,
                _ => StoreFault::Permanent,
            },
            Self::Io { source, .. } if is_exhausted(source) => StoreFault::Exhausted,
            Self::Io { .. } | Self::Task(_) | Self::Unavailable(_) => StoreFault::Unavailable,
            Self::Corrupt { .. } | Self::CorruptDatabase { .. } => StoreFault::Corrupt,
            Self::Locked { .. } => StoreFault::Permanent,
        }
    }
}
