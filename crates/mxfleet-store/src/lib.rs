//! mxfleet's durable state: one redb database per process, typed tables keyed by account.
//!
//! What lives here, and why it is committed the moment it changes (a killed actor runs no
//! cleanup):
//! - **sessions**: tokens and device id, so a restart never logs in again;
//! - **store passphrases**: generated once per account for the matrix-sdk sqlite store;
//! - **sync positions** and the **inbox**: the next sync token is committed in the same
//!   transaction as the events of the batch it ends, so a crash either replays the batch (and the
//!   inbox deduplicates it) or has both; each inbox entry is then finished once it is answered.
//!
//! redb is a blocking API: every `async` method runs its transaction on the blocking pool.

mod conversation;
mod error;
mod inbox;
mod lock;
mod otp;
mod records;
mod retention;
mod sessions;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use error::{StoreError, StoreFault};
pub use lock::DirLock;
pub use records::{
    Draft, DraftPart, InboxEntry, InboxState, Memory, OtpChallenge, StoredSession,
    StoredUndecryptable, Turn,
};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const PASSPHRASES: TableDefinition<&str, &str> = TableDefinition::new("store_passphrases");
const SYNC_POSITIONS: TableDefinition<&str, &str> = TableDefinition::new("sync_positions");
const INBOX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("inbox");
const DRAFTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("drafts");
const MEMORY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("memory");
const OTP: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("otp_challenges");
const APPROVED: TableDefinition<(&str, &str), u64> = TableDefinition::new("approved_senders");
const RECOVERY_KEYS: TableDefinition<&str, &str> = TableDefinition::new("recovery_keys");
/// Per account, the `seq` of the last claimed inbox entry.
const INBOX_SEQ: TableDefinition<&str, u64> = TableDefinition::new("inbox_seq");
/// Per account and event, an encrypted event waiting for its keys.
const UNDECRYPTABLE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("undecryptable");
/// Per account, when its very first sync began (ms since the epoch): messages sent before are
/// history, messages after are answered, even if that first sync never completed.
const BIRTHS: TableDefinition<&str, u64> = TableDefinition::new("account_births");
/// Per account, when an operator (or `relogin = "auto"`) asked for a fresh login as a new
/// device (ms since the epoch); cleared when the new session is saved.
const RELOGINS: TableDefinition<&str, u64> = TableDefinition::new("relogins");

/// mxfleet's database. Cheap to clone.
///
/// After a failed write (a full disk) redb refuses further use until the database is opened
/// again; [`Store::recover`] does that, for every clone at once.
#[derive(Clone)]
pub struct Store {
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: Arc<PathBuf>,
    /// Set when an error said the database must be opened again.
    needs_reopen: Arc<AtomicBool>,
}

impl Store {
    /// Opens (or creates) the database at `path`. Fails with [`StoreError::Locked`] if another
    /// process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db: Arc::new(RwLock::new(Some(Arc::new(create(path)?)))),
            path: Arc::new(path.into()),
            needs_reopen: Arc::new(AtomicBool::new(false)),
        };
        store.init_tables()?;
        Ok(store)
    }

    /// The size of the database file in bytes (0 if it cannot be read), for metrics.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(self.path.as_ref()).map_or(0, |m| m.len())
    }

    /// Opens the database again if a failed write left it refusing further use (redb's
    /// "previous I/O error"); a no-op otherwise. Fails, with nothing changed, while the disk
    /// is still full.
    pub async fn recover(&self) -> Result<(), StoreError> {
        if !self.needs_reopen.load(Ordering::SeqCst) {
            return Ok(());
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.reopen())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !self.needs_reopen.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The file lock is per open file: the old handle must be gone before the new one.
        if let Some(old) = slot.take() {
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break drop(db),
                    Err(still_used) if std::time::Instant::now() < deadline => {
                        old = still_used;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(still_used) => {
                        *slot = Some(still_used);
                        return Err(StoreError::Unavailable(
                            "the database is still in use; not reopened yet".into(),
                        ));
                    }
                }
            }
        }
        let db = create(&self.path)?;
        *slot = Some(Arc::new(db));
        self.needs_reopen.store(false, Ordering::SeqCst);
        tracing::info!(path = %self.path.display(), "database opened again after a storage fault");
        Ok(())
    }

    /// The open database, or an error while it is being opened again.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the database is being opened again".into()))
    }

    fn init_tables(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(SESSIONS)?;
            tx.open_table(PASSPHRASES)?;
            tx.open_table(SYNC_POSITIONS)?;
            tx.open_table(INBOX)?;
            tx.open_table(DRAFTS)?;
            tx.open_table(MEMORY)?;
            tx.open_table(OTP)?;
            tx.open_table(APPROVED)?;
            tx.open_table(RECOVERY_KEYS)?;
            tx.open_table(INBOX_SEQ)?;
            tx.open_table(BIRTHS)?;
            tx.open_table(UNDECRYPTABLE)?;
            tx.open_table(RELOGINS)?;
            Ok(())
        })
    }

    /// Removes `account`'s record from the per-account table `def`.
    async fn remove_record<V: redb::Value + Send + 'static>(
        &self,
        def: TableDefinition<'static, &'static str, V>,
        account: &str,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(def)?.remove(account.as_str())?;
                Ok(())
            })
        })
        .await
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        table: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(def).map_err(|e| self.err(e))?;
        let Some(value) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                table,
                key: key.to_owned(),
                source,
            })
    }

    fn get_str(
        &self,
        def: TableDefinition<&str, &str>,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(def).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_owned()))
    }

    fn get_pair_json<T: DeserializeOwned>(
        &self,
        def: TableDefinition<(&str, &str), &[u8]>,
        table: &'static str,
        key: &(String, String),
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(def).map_err(|e| self.err(e))?;
        let Some(value) = t
            .get((key.0.as_str(), key.1.as_str()))
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                table,
                key: format!("{}/{}", key.0, key.1),
                source,
            })
    }

    /// Runs `f` in a write transaction, committed to disk when this returns.
    fn write<R>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, StoreError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// Runs `f` in a write transaction committed with `durability`. `Durability::None` does not
    /// wait for the disk: later transactions of this process see the change at once, and it
    /// reaches the disk with the next durable commit (of any account); a crash before that
    /// loses it.
    fn write_with<R>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, StoreError> {
        let mut tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(durability).map_err(|e| self.err(e))?;
        let out = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        let error = db_error(&self.path, e);
        if let StoreError::Database { source, .. } = &error
            && matches!(**source, redb::Error::PreviousIo)
        {
            self.needs_reopen.store(true, Ordering::SeqCst);
        }
        error
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a reopen waits for transactions in flight on the old handle.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens (or creates) the database file; a corrupt file is named with what to do.
fn create(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.into() },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::CorruptDatabase {
                path: path.into(),
                detail,
            }
        }
        // "Not a redb database: magic number mismatch" and the like.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::CorruptDatabase {
                path: path.into(),
                detail: io.to_string(),
            }
        }
        other => db_error(path, other),
    })
}

/// Whether an I/O error means the disk (or quota) is full.
fn is_exhausted(error: &std::io::Error) -> bool {
    // ENOSPC and EDQUOT.
    error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(error.raw_os_error(), Some(28 | 122))
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.into(),
        source: Box::new(e.into()),
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs to JSON cannot fail: no maps with non-string keys.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests;
