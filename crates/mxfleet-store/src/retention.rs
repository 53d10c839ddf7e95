//! What is kept, and for how long: expired OTP challenges go, and an account that left the
//! configuration can be forgotten — every row it has in every table, its access token included.

use super::*;

/// How long an expired OTP challenge is kept (so the once-a-minute reissue limit still sees
/// it), after its expiry and any lockout.
const OTP_GRACE_MS: u64 = 3_600_000;

impl Store {
    /// Removes OTP challenges that expired (and whose lockout ended) over an hour before
    /// `now_ms`. Returns how many went.
    pub async fn prune_otp(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.blocking(move |s| {
            s.write(|tx| {
                let mut table = tx.open_table(OTP)?;
                let removed = table.extract_if(|_, value| {
                    serde_json::from_slice::<OtpChallenge>(value).is_ok_and(|c| {
                        let over = c.expires_ms.max(c.locked_until_ms.unwrap_or(0));
                        over.saturating_add(OTP_GRACE_MS) < now_ms
                    })
                })?;
                Ok(removed.count())
            })
        })
        .await
    }

    /// The accounts with a stored session (an access token).
    pub async fn session_accounts(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(move |s| {
            let tx = s.db()?.begin_read().map_err(|e| s.err(e))?;
            let table = tx.open_table(SESSIONS).map_err(|e| s.err(e))?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| s.err(e))? {
                let (key, _) = row.map_err(|e| s.err(e))?;
                out.push(key.value().to_owned());
            }
            Ok(out)
        })
        .await
    }

    /// Removes every row of `account` from every table — session and access token, store
    /// passphrase, recovery key, sync position, inbox, drafts, memory, OTP challenges and
    /// approvals — in one transaction. Returns how many rows went.
    pub async fn forget_account(&self, account: &str) -> Result<usize, StoreError> {
        let account = account.to_owned();
        self.blocking(move |s| {
            s.write(|tx| {
                let a = account.as_str();
                let mut removed = 0;
                removed += usize::from(tx.open_table(SESSIONS)?.remove(a)?.is_some());
                for def in [PASSPHRASES, SYNC_POSITIONS, RECOVERY_KEYS] {
                    removed += usize::from(tx.open_table(def)?.remove(a)?.is_some());
                }
                for def in [INBOX_SEQ, BIRTHS, RELOGINS] {
                    removed += usize::from(tx.open_table(def)?.remove(a)?.is_some());
                }
                for def in [INBOX, DRAFTS, MEMORY, OTP, UNDECRYPTABLE] {
                    removed += tx
                        .open_table(def)?
                        .extract_if(|(owner, _), _| owner == a)?
                        .count();
                }
                removed += tx
                    .open_table(APPROVED)?
                    .extract_if(|(owner, _), _| owner == a)?
                    .count();
                Ok(removed)
            })
        })
        .await
    }
}
