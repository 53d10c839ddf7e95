//! Sync positions, the inbox (claims, attempts, outcomes, arrival order), undecryptable events and
//! births: the exactly-once record of every inbound message.

use super::*;

impl Store {
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
        self.remove_record(SYNC_POSITIONS, account).await
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

    /// How many messages `account` has in its inbox, whatever their state.
    pub async fn inbox_len(&self, account: &str) -> Result<u64, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(INBOX).map_err(|e| s.err(e))?;
            let range = table
                .range((account.as_str(), "")..)
                .map_err(|e| s.err(e))?;
            let mut count = 0u64;
            for row in range {
                let (key, _) = row.map_err(|e| s.err(e))?;
                if key.value().0 != account {
                    break;
                }
                count = count.saturating_add(1);
            }
            Ok(count)
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
}
