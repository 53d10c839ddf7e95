//! Outbox drafts and conversation memory.

use super::*;

impl Store {
    /// The draft of the answer to `event_id`, if one was started.
    pub async fn draft(&self, account: &str, event_id: &str) -> Result<Option<Draft>, StoreError> {
        let key = (account.to_owned(), event_id.to_owned());
        self.blocking(move |s| s.get_pair_json(DRAFTS, "drafts", &key))
            .await
    }

    /// Saves the draft of the answer to `event_id`, on disk when this returns.
    pub async fn save_draft(
        &self,
        account: &str,
        event_id: &str,
        draft: &Draft,
    ) -> Result<(), StoreError> {
        self.put_draft(account, event_id, draft, redb::Durability::Immediate)
            .await
    }

    /// Saves the draft of the answer to `event_id` without waiting for the disk: this process
    /// reads it back at once, and it reaches the disk with the store's next durable commit (a
    /// crash before that loses it). For what only this process's later attempts need.
    pub async fn stage_draft(
        &self,
        account: &str,
        event_id: &str,
        draft: &Draft,
    ) -> Result<(), StoreError> {
        self.put_draft(account, event_id, draft, redb::Durability::None)
            .await
    }

    /// Puts the draft of the answer to `event_id`, committed with `durability`.
    async fn put_draft(
        &self,
        account: &str,
        event_id: &str,
        draft: &Draft,
        durability: redb::Durability,
    ) -> Result<(), StoreError> {
        let (account, event_id, bytes) = (account.to_owned(), event_id.to_owned(), to_json(draft));
        self.blocking(move |s| {
            s.write_with(durability, |tx| {
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
}
