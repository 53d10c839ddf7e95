//! One-time-code challenges and the senders they approved.

use super::*;

impl Store {
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
}
