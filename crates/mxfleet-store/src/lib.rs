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

mod lock;

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

pub use lock::DirLock;

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

/// A persisted Matrix session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The bot's user id.
    pub user_id: String,
    /// The bot's device id.
    pub device_id: String,
    /// The access token (a secret).
    pub access_token: String,
    /// The refresh token, if the server issued one (a secret).
    pub refresh_token: Option<String>,
    /// Set after a soft logout: the next start logs in again with the password, same device.
    #[serde(default)]
    pub needs_relogin: bool,
}

impl fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSession")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("needs_relogin", &self.needs_relogin)
            .finish()
    }
}

/// Where an inbox entry stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InboxState {
    /// Claimed, not yet answered.
    Pending,
    /// Answered with this event.
    Answered {
        /// The reply's event id.
        reply_event_id: String,
    },
    /// Deliberately not answered.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Given up on: every attempt failed (the last one's reason).
    Failed {
        /// Why the last attempt failed.
        reason: String,
    },
}

/// An encrypted event that could not be decrypted yet, kept so it is tried again after a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUndecryptable {
    /// Its room.
    pub room_id: String,
    /// The event as the homeserver sent it (JSON).
    pub event: String,
    /// When the bot first saw it (ms since the epoch).
    pub first_seen_ms: u64,
}

/// One inbound event claimed for handling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry<T> {
    /// The Matrix event id.
    pub event_id: String,
    /// When the entry was claimed (ms since the Unix epoch).
    pub claimed_at_ms: u64,
    /// The account's claim counter when it was claimed: pending entries are handled again in
    /// this order (arrival), not in the order of their keys. Set by the store.
    #[serde(default)]
    pub seq: u64,
    /// How many times handling it began (counted before each attempt, so a message that
    /// crashes the process is counted too).
    #[serde(default)]
    pub attempts: u32,
    /// When the bot first saw the event, if that differs from when it was claimed (a message
    /// that could only be decrypted later): its catch-up age counts from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at_ms: Option<u64>,
    /// Where it stands.
    pub state: InboxState,
    /// The normalised message.
    pub message: T,
}

/// The outbox record of an answer being sent: saved before each first send attempt (with the
/// transaction id) and after each send or edit, removed when the answer is finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// The room the answer goes to.
    pub room_id: String,
    /// The answer's messages, in order (long answers have several).
    pub parts: Vec<DraftPart>,
}

/// One message of an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftPart {
    /// The transaction id of the original send.
    pub txn_id: String,
    /// The event id, once the homeserver accepted the send.
    pub event_id: Option<String>,
    /// The text the message shows now.
    pub shown: String,
    /// Edits sent so far.
    pub edits: u32,
    /// The number of the last edit attempt's transaction id (`…e<n>`): an attempt with other
    /// text takes the next number, so a lost answer to an earlier attempt never swallows it.
    #[serde(default)]
    pub edit_seq: u32,
    /// A fingerprint of the text of that attempt (a retry of the same text reuses its id).
    #[serde(default)]
    pub edit_text: u64,
    /// The text of the latest send or edit attempt, saved before it: it may have landed even
    /// if its answer never came back, so an interrupted answer is finished with it.
    #[serde(default)]
    pub attempted: String,
    /// An earlier try of the first send had other text and may be what landed: once the send
    /// is confirmed, the message is edited to the text it should show.
    #[serde(default)]
    pub may_show_older: bool,
}

/// One remembered turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    /// Who said it (sanitised display name), for user turns.
    pub name: Option<String>,
    /// What was said.
    pub text: String,
    /// The event id of the message (the first part, for answers).
    pub event_id: String,
    /// When (ms since the Unix epoch).
    pub ts_ms: u64,
}

/// The memory of one conversation (a room's main timeline or a thread).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// `!new` was said at this time: nothing older belongs to the conversation.
    pub reset_at_ms: u64,
    /// The most recent turns, oldest first.
    pub turns: Vec<Turn>,
}

/// A one-time-code challenge of an unknown DM sender. The code is a secret: it is shown to the
/// operator only (CLI, admin API), never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpChallenge {
    /// The six digits.
    pub code: String,
    /// The DM the challenge was issued in.
    pub room_id: String,
    /// When it was issued (ms since the Unix epoch).
    pub issued_ms: u64,
    /// When it stops being valid.
    pub expires_ms: u64,
    /// Wrong codes since the challenge was issued or the last lockout ended.
    pub attempts: u32,
    /// Locked out until then after too many wrong codes.
    pub locked_until_ms: Option<u64>,
}

impl fmt::Debug for OtpChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpChallenge")
            .field("code", &"[redacted]")
            .field("room_id", &self.room_id)
            .field("issued_ms", &self.issued_ms)
            .field("expires_ms", &self.expires_ms)
            .field("attempts", &self.attempts)
            .field("locked_until_ms", &self.locked_until_ms)
            .finish()
    }
}

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

    /// The saved session of `account`.
    pub async fn session(&self, account: &str) -> Result<Option<StoredSession>, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| s.get_json(SESSIONS, "sessions", &account))
            .await
    }

    /// Saves the session of `account`.
    pub async fn save_session(
        &self,
        account: &str,
        session: &StoredSession,
    ) -> Result<(), StoreError> {
        let (account, bytes) = (account.to_owned(), to_json(session));
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(SESSIONS)?
                    .insert(account.as_str(), bytes.as_slice())?;
                tx.open_table(RELOGINS)?.remove(account.as_str())?;
                Ok(())
            })
        })
        .await
    }

    /// Drops the session of `account` and asks its next connect to log in as a new device, in
    /// one transaction. The sync position goes too: the new device's empty stores need a full
    /// sync to know the rooms (what was already answered stays so, through the inbox).
    pub async fn request_relogin(&self, account: &str, now_ms: u64) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(SESSIONS)?.remove(account.as_str())?;
                tx.open_table(SYNC_POSITIONS)?.remove(account.as_str())?;
                tx.open_table(RELOGINS)?.insert(account.as_str(), now_ms)?;
                Ok(())
            })
        })
        .await
    }

    /// When a re-login of `account` as a new device was asked for, if one is still due.
    pub async fn relogin_requested(&self, account: &str) -> Result<Option<u64>, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(RELOGINS).map_err(|e| s.err(e))?;
            let value = table.get(account.as_str()).map_err(|e| s.err(e))?;
            Ok(value.map(|v| v.value()))
        })
        .await
    }

    /// The saved session of `account`, read on the calling thread.
    pub fn session_now(&self, account: &str) -> Result<Option<StoredSession>, StoreError> {
        self.get_json(SESSIONS, "sessions", account)
    }

    /// Saves the session of `account` now, on the calling thread (for matrix-sdk's synchronous
    /// session callback: a refreshed token is committed before it is used).
    pub fn save_session_now(
        &self,
        account: &str,
        session: &StoredSession,
    ) -> Result<(), StoreError> {
        let bytes = to_json(session);
        self.write(|tx| {
            tx.open_table(SESSIONS)?.insert(account, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Forgets the session of `account` (the next start logs in afresh).
    pub async fn delete_session(&self, account: &str) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(SESSIONS)?.remove(account.as_str())?;
                Ok(())
            })
        })
        .await
    }

    /// The store passphrase of `account`, generated with `generate` and saved on first use.
    pub async fn store_passphrase(
        &self,
        account: &str,
        generate: impl FnOnce() -> String + Send + 'static,
    ) -> Result<String, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                let mut table = tx.open_table(PASSPHRASES)?;
                let existing = table.get(account.as_str())?.map(|v| v.value().to_owned());
                if let Some(existing) = existing {
                    return Ok(existing);
                }
                let fresh = generate();
                table.insert(account.as_str(), fresh.as_str())?;
                Ok(fresh)
            })
        })
        .await
    }

    /// The recovery key mxfleet created for `account` (a secret), if any.
    pub async fn recovery_key(&self, account: &str) -> Result<Option<String>, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| s.get_str(RECOVERY_KEYS, &account))
            .await
    }

    /// Keeps the recovery key of `account` (created by mxfleet, or imported by the operator).
    pub async fn save_recovery_key(&self, account: &str, key: &str) -> Result<(), StoreError> {
        let (account, key) = (account.to_owned(), key.to_owned());
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(RECOVERY_KEYS)?
                    .insert(account.as_str(), key.as_str())?;
                Ok(())
            })
        })
        .await
    }

    /// The sync token to continue from; `None` before the first sync of the account.
    pub async fn sync_position(&self, account: &str) -> Result<Option<String>, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| s.get_str(SYNC_POSITIONS, &account))
            .await
    }

    /// When `account`'s very first sync began: the stored time, or `now_ms`, stored now.
    pub async fn birth(&self, account: &str, now_ms: u64) -> Result<u64, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                let mut births = tx.open_table(BIRTHS)?;
                if let Some(born) = births.get(account.as_str())? {
                    return Ok(born.value());
                }
                births.insert(account.as_str(), now_ms)?;
                Ok(now_ms)
            })
        })
        .await
    }

    /// Keeps `events` (by event id) of `account` that wait for their keys.
    pub async fn save_undecryptable(
        &self,
        account: &str,
        events: Vec<(String, StoredUndecryptable)>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                let mut table = tx.open_table(UNDECRYPTABLE)?;
                for (event_id, record) in &events {
                    let key = (account.as_str(), event_id.as_str());
                    table.insert(key, to_json(record).as_slice())?;
                }
                Ok(())
            })
        })
        .await
    }

    /// The events of `account` that wait for their keys (a record that does not decode is
    /// dropped: it would never decrypt).
    pub async fn undecryptable(
        &self,
        account: &str,
    ) -> Result<Vec<(String, StoredUndecryptable)>, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(UNDECRYPTABLE).map_err(|e| s.err(e))?;
            let mut found = Vec::new();
            let range = table
                .range((account.as_str(), "")..)
                .map_err(|e| s.err(e))?;
            for row in range {
                let (key, value) = row.map_err(|e| s.err(e))?;
                let (owner, event_id) = key.value();
                if owner != account {
                    break;
                }
                if let Ok(record) = serde_json::from_slice(value.value()) {
                    found.push((event_id.to_owned(), record));
                }
            }
            Ok(found)
        })
        .await
    }

    /// Forgets `account`'s events `event_ids` (decrypted, or given up on).
    pub async fn forget_undecryptable(
        &self,
        account: &str,
        event_ids: Vec<String>,
    ) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                let mut table = tx.open_table(UNDECRYPTABLE)?;
                for event_id in &event_ids {
                    table.remove((account.as_str(), event_id.as_str()))?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Forgets `account`'s sync position: its next sync starts afresh (without any token),
    /// answering what was sent since its birth and within the catch-up age.
    pub async fn forget_sync_position(&self, account: &str) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(SYNC_POSITIONS)?.remove(account.as_str())?;
                Ok(())
            })
        })
        .await
    }

    /// Commits a sync batch: claims each event not claimed before and moves the sync position
    /// to `next_batch`, in one transaction. Returns the newly claimed entries.
    pub async fn commit_sync<T>(
        &self,
        account: &str,
        next_batch: &str,
        entries: Vec<InboxEntry<T>>,
    ) -> Result<Vec<InboxEntry<T>>, StoreError>
    where
        T: Serialize + Send + 'static,
    {
        let (account, next_batch) = (account.to_owned(), next_batch.to_owned());
        self.blocking(move |s| {
            s.write(|tx| {
                let mut fresh = Vec::new();
                {
                    let mut inbox = tx.open_table(INBOX)?;
                    let mut seqs = tx.open_table(INBOX_SEQ)?;
                    let mut seq = seqs.get(account.as_str())?.map_or(0, |v| v.value());
                    for mut entry in entries {
                        let key = (account.as_str(), entry.event_id.as_str());
                        if inbox.get(key)?.is_some() {
                            continue;
                        }
                        seq = seq.saturating_add(1);
                        entry.seq = seq;
                        inbox.insert(key, to_json(&entry).as_slice())?;
                        fresh.push(entry);
                    }
                    seqs.insert(account.as_str(), seq)?;
                }
                tx.open_table(SYNC_POSITIONS)?
                    .insert(account.as_str(), next_batch.as_str())?;
                Ok(fresh)
            })
        })
        .await
    }

    /// The inbox entry of `event_id` for `account`, if claimed.
    pub async fn entry<T>(
        &self,
        account: &str,
        event_id: &str,
    ) -> Result<Option<InboxEntry<T>>, StoreError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let (account, event_id) = (account.to_owned(), event_id.to_owned());
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(INBOX).map_err(|e| s.err(e))?;
            let Some(value) = table
                .get((account.as_str(), event_id.as_str()))
                .map_err(|e| s.err(e))?
            else {
                return Ok(None);
            };
            serde_json::from_slice(value.value())
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    table: "inbox",
                    key: format!("{account}/{event_id}"),
                    source,
                })
        })
        .await
    }

    /// Which of `event_ids` are already in `account`'s inbox.
    pub async fn claimed(
        &self,
        account: &str,
        event_ids: Vec<String>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(INBOX).map_err(|e| s.err(e))?;
            let mut known = std::collections::HashSet::new();
            for id in event_ids {
                if table
                    .get((account.as_str(), id.as_str()))
                    .map_err(|e| s.err(e))?
                    .is_some()
                {
                    known.insert(id);
                }
            }
            Ok(known)
        })
        .await
    }

    /// Entries of `account` still pending (claimed before a crash or restart, not answered), in
    /// the order they were claimed. Corrupt entries are returned as errors in the second list,
    /// not dropped.
    pub async fn pending<T>(
        &self,
        account: &str,
    ) -> Result<(Vec<InboxEntry<T>>, Vec<StoreError>), StoreError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let account = account.to_owned();
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(INBOX).map_err(|e| s.err(e))?;
            let (mut pending, mut corrupt) = (Vec::new(), Vec::new());
            let range = table
                .range((account.as_str(), "")..)
                .map_err(|e| s.err(e))?;
            for row in range {
                let (key, value) = row.map_err(|e| s.err(e))?;
                let (owner, event_id) = key.value();
                if owner != account {
                    break;
                }
                match serde_json::from_slice::<InboxEntry<T>>(value.value()) {
                    Ok(entry) if entry.state == InboxState::Pending => pending.push(entry),
                    Ok(_) => {}
                    Err(source) => corrupt.push(StoreError::Corrupt {
                        table: "inbox",
                        key: format!("{owner}/{event_id}"),
                        source,
                    }),
                }
            }
            pending.sort_by_key(|e: &InboxEntry<T>| (e.seq, e.claimed_at_ms));
            Ok((pending, corrupt))
        })
        .await
    }

    /// The draft of the answer to `event_id`, if one was started.
    pub async fn draft(&self, account: &str, event_id: &str) -> Result<Option<Draft>, StoreError> {
        let key = (account.to_owned(), event_id.to_owned());
        self.blocking(move |s| s.get_pair_json(DRAFTS, "drafts", &key))
            .await
    }

    /// Saves the draft of the answer to `event_id`.
    pub async fn save_draft(
        &self,
        account: &str,
        event_id: &str,
        draft: &Draft,
    ) -> Result<(), StoreError> {
        let (account, event_id, bytes) = (account.to_owned(), event_id.to_owned(), to_json(draft));
        self.blocking(move |s| {
            s.write(|tx| {
                tx.open_table(DRAFTS)?
                    .insert((account.as_str(), event_id.as_str()), bytes.as_slice())?;
                Ok(())
            })
        })
        .await
    }

    /// The memory of conversation `key` (a room id, or `room_id|thread_root`).
    pub async fn memory(&self, account: &str, key: &str) -> Result<Memory, StoreError> {
        let pair = (account.to_owned(), key.to_owned());
        Ok(self
            .blocking(move |s| s.get_pair_json(MEMORY, "memory", &pair))
            .await?
            .unwrap_or_default())
    }

    /// Appends `turns` to conversation `key`, keeping the newest `keep`.
    pub async fn remember(
        &self,
        account: &str,
        key: &str,
        turns: Vec<Turn>,
        keep: usize,
    ) -> Result<(), StoreError> {
        self.update_memory(account, key, move |m| {
            m.turns.extend(turns);
            let excess = m.turns.len().saturating_sub(keep);
            m.turns.drain(..excess);
        })
        .await
    }

    /// Gives conversation `to` the memory of `from` (a room upgrade), unless `to` has its own.
    pub async fn inherit_memory(
        &self,
        account: &str,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        let inherited = self.memory(account, from).await?;
        if inherited.turns.is_empty() {
            return Ok(());
        }
        self.update_memory(account, to, move |m| {
            if m.turns.is_empty() {
                *m = inherited;
            }
        })
        .await
    }

    /// Forgets conversation `key` (`!new`): earlier turns and history are no longer sent.
    pub async fn reset_memory(
        &self,
        account: &str,
        key: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.update_memory(account, key, move |m| {
            m.turns.clear();
            m.reset_at_ms = at_ms;
        })
        .await
    }

    async fn update_memory(
        &self,
        account: &str,
        key: &str,
        change: impl FnOnce(&mut Memory) + Send + 'static,
    ) -> Result<(), StoreError> {
        let (account, key) = (account.to_owned(), key.to_owned());
        self.blocking(move |s| {
            s.write(|tx| {
                let mut table = tx.open_table(MEMORY)?;
                let k = (account.as_str(), key.as_str());
                let current = table.get(k)?.map(|v| v.value().to_vec());
                // A corrupt record is replaced rather than blocking the conversation forever.
                let mut memory: Memory = current
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                change(&mut memory);
                table.insert(k, to_json(&memory).as_slice())?;
                Ok(())
            })
        })
        .await
    }

    /// The OTP challenge of `sender` on `account`, if any.
    pub async fn otp_challenge(
        &self,
        account: &str,
        sender: &str,
    ) -> Result<Option<OtpChallenge>, StoreError> {
        let key = (account.to_owned(), sender.to_owned());
        self.blocking(move |s| s.get_pair_json(OTP, "otp_challenges", &key))
            .await
    }

    /// Saves (`Some`) or removes (`None`) the OTP challenge of `sender`.
    pub async fn set_otp_challenge(
        &self,
        account: &str,
        sender: &str,
        challenge: Option<&OtpChallenge>,
    ) -> Result<(), StoreError> {
        let (account, sender) = (account.to_owned(), sender.to_owned());
        let bytes = challenge.map(to_json);
        self.blocking(move |s| {
            s.write(|tx| {
                let mut table = tx.open_table(OTP)?;
                let key = (account.as_str(), sender.as_str());
                match &bytes {
                    Some(bytes) => {
                        table.insert(key, bytes.as_slice())?;
                    }
                    None => {
                        table.remove(key)?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Every OTP challenge, of one account or all: `(account, sender, challenge)`.
    pub async fn otp_challenges(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<(String, String, OtpChallenge)>, StoreError> {
        let account = account.map(str::to_owned);
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(OTP).map_err(|e| s.err(e))?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| s.err(e))? {
                let (key, value) = row.map_err(|e| s.err(e))?;
                let (owner, sender) = key.value();
                if account.as_deref().is_some_and(|a| a != owner) {
                    continue;
                }
                if let Ok(challenge) = serde_json::from_slice(value.value()) {
                    out.push((owner.to_owned(), sender.to_owned(), challenge));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Approves `sender` on `account` (and drops its challenge), in one transaction.
    pub async fn approve_sender(
        &self,
        account: &str,
        sender: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let (account, sender) = (account.to_owned(), sender.to_owned());
        self.blocking(move |s| {
            s.write(|tx| {
                let key = (account.as_str(), sender.as_str());
                tx.open_table(APPROVED)?.insert(key, at_ms)?;
                tx.open_table(OTP)?.remove(key)?;
                Ok(())
            })
        })
        .await
    }

    /// Every approved sender, of one account or all: `(account, sender, approved_at_ms)`.
    pub async fn approved_senders(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<(String, String, u64)>, StoreError> {
        let account = account.map(str::to_owned);
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(APPROVED).map_err(|e| s.err(e))?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| s.err(e))? {
                let (key, at) = row.map_err(|e| s.err(e))?;
                let (owner, sender) = key.value();
                if account.as_deref().is_none_or(|a| a == owner) {
                    out.push((owner.to_owned(), sender.to_owned(), at.value()));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Withdraws `sender`'s approval on `account` (and any challenge of theirs): their next DM
    /// is challenged again. Returns whether they were approved.
    pub async fn revoke_sender(&self, account: &str, sender: &str) -> Result<bool, StoreError> {
        let (account, sender) = (account.to_owned(), sender.to_owned());
        self.blocking(move |s| {
            s.write(|tx| {
                let key = (account.as_str(), sender.as_str());
                let was = tx.open_table(APPROVED)?.remove(key)?.is_some();
                tx.open_table(OTP)?.remove(key)?;
                Ok(was)
            })
        })
        .await
    }

    /// Whether `sender` was approved on `account` (by a one-time code).
    pub async fn is_approved(&self, account: &str, sender: &str) -> Result<bool, StoreError> {
        let (account, sender) = (account.to_owned(), sender.to_owned());
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(APPROVED).map_err(|e| s.err(e))?;
            let found = table
                .get((account.as_str(), sender.as_str()))
                .map_err(|e| s.err(e))?;
            Ok(found.is_some())
        })
        .await
    }

    /// Counts the beginning of an attempt to handle an inbox entry; returns the attempt's
    /// number (1 for the first). An entry that is not in the inbox counts as a first attempt.
    pub async fn begin_attempt(&self, account: &str, event_id: &str) -> Result<u32, StoreError> {
        let (account, event_id) = (account.to_owned(), event_id.to_owned());
        self.blocking(move |s| {
            s.write(|tx| {
                let mut inbox = tx.open_table(INBOX)?;
                let key = (account.as_str(), event_id.as_str());
                let current = inbox.get(key)?.map(|v| v.value().to_vec());
                let Some(bytes) = current else { return Ok(1) };
                let Ok(mut entry) = serde_json::from_slice::<InboxEntry<serde_json::Value>>(&bytes)
                else {
                    return Ok(1);
                };
                entry.attempts = entry.attempts.saturating_add(1);
                inbox.insert(key, to_json(&entry).as_slice())?;
                Ok(entry.attempts)
            })
        })
        .await
    }

    /// Records how an inbox entry ended.
    pub async fn finish(
        &self,
        account: &str,
        event_id: &str,
        state: InboxState,
    ) -> Result<(), StoreError> {
        let (account, event_id) = (account.to_owned(), event_id.to_owned());
        self.blocking(move |s| {
            s.write(|tx| {
                let mut inbox = tx.open_table(INBOX)?;
                let key = (account.as_str(), event_id.as_str());
                let current = inbox.get(key)?.map(|v| v.value().to_vec());
                let Some(bytes) = current else { return Ok(()) };
                let Ok(mut entry) = serde_json::from_slice::<InboxEntry<serde_json::Value>>(&bytes)
                else {
                    return Ok(());
                };
                entry.state = state;
                inbox.insert(key, to_json(&entry).as_slice())?;
                if entry.state != InboxState::Pending {
                    tx.open_table(DRAFTS)?.remove(key)?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Removes finished inbox entries claimed before `before_ms`. Returns how many went.
    pub async fn prune_inbox(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.blocking(move |s| {
            s.write(|tx| {
                let mut inbox = tx.open_table(INBOX)?;
                let removed = inbox.extract_if(|_, value| {
                    serde_json::from_slice::<InboxEntry<serde_json::Value>>(value).is_ok_and(|e| {
                        e.claimed_at_ms < before_ms && e.state != InboxState::Pending
                    })
                })?;
                Ok(removed.count())
            })
        })
        .await
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

    fn write<R>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, redb::Error>,
    ) -> Result<R, StoreError> {
        let tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
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
mod tests {
    use super::*;

    fn entry(id: &str) -> InboxEntry<String> {
        InboxEntry {
            event_id: id.into(),
            claimed_at_ms: now_ms(),
            seq: 0,
            attempts: 0,
            seen_at_ms: None,
            state: InboxState::Pending,
            message: format!("body of {id}"),
        }
    }

    #[tokio::test]
    async fn sync_batches_claim_each_event_once() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let store = Store::open(&dir.path().join("db.redb"))?;
        assert_eq!(store.sync_position("a").await?, None);
        let fresh = store
            .commit_sync("a", "s1", vec![entry("$1"), entry("$2")])
            .await?;
        assert_eq!(fresh.len(), 2);
        // The same batch replayed after a crash claims nothing new.
        let fresh = store
            .commit_sync("a", "s2", vec![entry("$2"), entry("$3")])
            .await?;
        assert_eq!(
            fresh
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            ["$3"]
        );
        assert_eq!(store.sync_position("a").await?.as_deref(), Some("s2"));
        // Another account's inbox is separate.
        assert_eq!(
            store.commit_sync("b", "x", vec![entry("$1")]).await?.len(),
            1
        );

        store
            .finish(
                "a",
                "$1",
                InboxState::Answered {
                    reply_event_id: "$r".into(),
                },
            )
            .await?;
        let (pending, corrupt) = store.pending::<String>("a").await?;
        assert!(corrupt.is_empty());
        assert_eq!(
            pending
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            ["$2", "$3"]
        );

        assert_eq!(store.prune_inbox(now_ms() + 1).await?, 1);
        Ok(())
    }

    #[tokio::test]
    async fn pending_entries_come_back_in_the_order_they_were_claimed() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let store = Store::open(&dir.path().join("db.redb"))?;
        // Event ids sort differently from arrival.
        store
            .commit_sync("a", "s1", vec![entry("$zeta"), entry("$alpha")])
            .await?;
        store
            .commit_sync("a", "s2", vec![entry("$mu"), entry("$alpha")])
            .await?;
        store.commit_sync("a", "s3", vec![entry("$beta")]).await?;
        let (pending, _) = store.pending::<String>("a").await?;
        let order: Vec<&str> = pending.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(order, ["$zeta", "$alpha", "$mu", "$beta"]);
        Ok(())
    }

    #[tokio::test]
    async fn sessions_and_passphrases_persist_across_reopen() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let path = dir.path().join("db.redb");
        let session = StoredSession {
            user_id: "@a:x".into(),
            device_id: "D".into(),
            access_token: "secret-token".into(),
            refresh_token: None,
            needs_relogin: false,
        };
        {
            let store = Store::open(&path)?;
            store.save_session("a", &session).await?;
            assert_eq!(store.store_passphrase("a", || "p1".into()).await?, "p1");
            assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
        }
        let store = Store::open(&path)?;
        assert_eq!(store.session("a").await?, Some(session.clone()));
        assert_eq!(store.store_passphrase("a", || "p2".into()).await?, "p1");
        assert!(!format!("{session:?}").contains("secret-token"));
        store.delete_session("a").await?;
        assert_eq!(store.session("a").await?, None);
        Ok(())
    }

    #[test]
    fn each_failure_says_whether_to_wait_retry_or_give_up() {
        let path = PathBuf::from("db.redb");
        let io = |code| std::io::Error::from_raw_os_error(code);
        let database = |e: redb::Error| StoreError::Database {
            path: path.clone(),
            source: Box::new(e),
        };
        let cases = [
            (database(redb::Error::Io(io(28))), StoreFault::Exhausted),
            (database(redb::Error::Io(io(122))), StoreFault::Exhausted),
            (database(redb::Error::Io(io(5))), StoreFault::Unavailable),
            (database(redb::Error::PreviousIo), StoreFault::Unavailable),
            (
                database(redb::Error::Corrupted("x".into())),
                StoreFault::Corrupt,
            ),
            (
                StoreError::Io {
                    path: path.clone(),
                    source: io(28),
                },
                StoreFault::Exhausted,
            ),
            (
                StoreError::Unavailable("reopening".into()),
                StoreFault::Unavailable,
            ),
            (
                StoreError::Locked { path: path.clone() },
                StoreFault::Permanent,
            ),
            (
                StoreError::CorruptDatabase {
                    path: path.clone(),
                    detail: "bad header".into(),
                },
                StoreFault::Corrupt,
            ),
        ];
        for (error, fault) in cases {
            assert_eq!(error.fault(), fault, "{error}");
        }
    }

    #[test]
    fn a_damaged_database_file_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mxfleet.redb");
        for garbage in [&b"not a database at all"[..], &[0x5a; 8192][..]] {
            std::fs::write(&path, garbage).expect("write");
            let error = Store::open(&path).err().expect("refused");
            assert_eq!(error.fault(), StoreFault::Corrupt, "{error}");
            let text = error.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("restore it from a backup"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_store_that_needs_no_reopen_recovers_as_a_no_op() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let store = Store::open(&dir.path().join("db.redb"))?;
        store.recover().await?;
        store.needs_reopen.store(true, Ordering::SeqCst);
        store.recover().await?;
        store
            .commit_sync("a", "s1", Vec::<InboxEntry<String>>::new())
            .await?;
        assert_eq!(store.sync_position("a").await?.as_deref(), Some("s1"));
        Ok(())
    }

    #[tokio::test]
    async fn a_relogin_drops_the_session_until_a_new_one_is_saved() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let store = Store::open(&dir.path().join("db.redb"))?;
        let session = StoredSession {
            user_id: "@a:x".into(),
            device_id: "D".into(),
            access_token: "t".into(),
            refresh_token: None,
            needs_relogin: false,
        };
        store.save_session("a", &session).await?;
        store.save_session("b", &session).await?;
        store
            .commit_sync("a", "s1", Vec::<InboxEntry<String>>::new())
            .await?;
        store.request_relogin("a", 42).await?;
        assert_eq!(store.session("a").await?, None);
        assert_eq!(store.sync_position("a").await?, None);
        assert_eq!(store.relogin_requested("a").await?, Some(42));
        assert_eq!(store.relogin_requested("b").await?, None, "per account");
        store.save_session("a", &session).await?;
        assert_eq!(store.relogin_requested("a").await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn drafts_end_with_their_inbox_entry_and_memory_is_capped() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Task(e.to_string()))?;
        let store = Store::open(&dir.path().join("db.redb"))?;
        store.commit_sync("a", "s1", vec![entry("$1")]).await?;
        let draft = Draft {
            room_id: "!r".into(),
            parts: vec![DraftPart {
                txn_id: "t0".into(),
                ..DraftPart::default()
            }],
        };
        store.save_draft("a", "$1", &draft).await?;
        assert_eq!(store.draft("a", "$1").await?, Some(draft));
        store
            .finish(
                "a",
                "$1",
                InboxState::Answered {
                    reply_event_id: "$r".into(),
                },
            )
            .await?;
        assert_eq!(store.draft("a", "$1").await?, None);

        let turn = |i: u64| Turn {
            role: "user".into(),
            name: None,
            text: format!("t{i}"),
            event_id: format!("${i}"),
            ts_ms: i,
        };
        store
            .remember("a", "!r", (0..5).map(turn).collect(), 3)
            .await?;
        let m = store.memory("a", "!r").await?;
        assert_eq!(
            m.turns.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
            ["t2", "t3", "t4"]
        );
        // A room upgrade: the new room inherits the memory, once, never over its own.
        store.inherit_memory("a", "!r", "!r2").await?;
        assert_eq!(store.memory("a", "!r2").await?, m);
        store.remember("a", "!r3", vec![turn(7)], 3).await?;
        store.inherit_memory("a", "!r", "!r3").await?;
        assert_eq!(store.memory("a", "!r3").await?.turns, vec![turn(7)]);
        store.reset_memory("a", "!r", 99).await?;
        let m = store.memory("a", "!r").await?;
        assert!(m.turns.is_empty() && m.reset_at_ms == 99);

        // Approvals: listed per account, withdrawn once.
        store.approve_sender("a", "@x:hs", 5).await?;
        store.approve_sender("b", "@y:hs", 6).await?;
        assert_eq!(
            store.approved_senders(Some("a")).await?,
            vec![("a".to_owned(), "@x:hs".to_owned(), 5)]
        );
        assert_eq!(store.approved_senders(None).await?.len(), 2);
        assert!(store.revoke_sender("a", "@x:hs").await?);
        assert!(!store.is_approved("a", "@x:hs").await?);
        assert!(
            !store.revoke_sender("a", "@x:hs").await?,
            "nothing left to revoke"
        );
        assert!(store.is_approved("b", "@y:hs").await?);
        assert_eq!(store.memory("a", "!other").await?, Memory::default());
        Ok(())
    }
}
