//! Sessions, store secrets and re-login requests: what lets an account restore instead of logging in.

use super::*;

impl Store {
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
        self.remove_record(SESSIONS, account).await
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
}
