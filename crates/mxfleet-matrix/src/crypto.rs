//! Cross-signing ownership of a bot's own device.
//!
//! `bot_owned`: the bot creates its cross-signing identity (master, self-signing, user-signing
//! keys), uploads it answering the server's password step (UIAA), and signs its own device, so
//! other users see the device as its owner's. Idempotent: once the private keys are in the
//! account's crypto store, later starts find them and do nothing. An identity that exists on the
//! server without its keys here (made by another client) is reported, never reset.

use matrix_sdk::{
    Client,
    ruma::{
        OwnedUserId,
        api::client::uiaa::{
            AuthData, AuthType, MatrixUserIdentifier, Password, UiaaInfo, UserIdentifier,
        },
    },
};

use mxfleet_config::Secret;

use crate::{FailureClass, MatrixFailure};

/// How the bot's cross-signing identity stands after [`ensure_bot_owned`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The identity and its private keys were already here.
    AlreadyOwned,
    /// The identity was created now and the device signed.
    Bootstrapped,
    /// The account has an identity on the server whose private keys are not on this device.
    ForeignIdentity,
    /// The server wants the upload approved out of band (OAuth / MAS) at this URL first.
    NeedsApproval(String),
}

impl Ownership {
    /// A line for status and logs.
    pub fn describe(&self) -> String {
        if let Self::NeedsApproval(url) = self {
            return format!(
                "bot_owned: the homeserver wants the cross-signing upload approved: open {url} \
                 signed in as the bot's user; mxfleet retries every 30 s"
            );
        }
        match self {
            Self::AlreadyOwned => "bot_owned: cross-signing set up, device signed",
            Self::Bootstrapped => "bot_owned: cross-signing bootstrapped now, device signed",
            Self::ForeignIdentity => {
                "bot_owned: the account already has a cross-signing identity made elsewhere and \
                 its keys are not on this device; import its recovery key, or reset the identity \
                 from another client"
            }
            Self::NeedsApproval(_) => "",
        }
        .to_owned()
    }
}

/// Makes the bot own its cross-signing identity (see the module docs).
///
/// Judged by the server's view, fetched fresh: the keys in the local store alone prove nothing,
/// because matrix-sdk keeps a new identity's private keys before its upload succeeds. An upload
/// refused (approval pending, a network failure) is therefore retried with the same keys; with
/// `upload_pending` (the last upload was refused) it is retried even when the local store
/// already counts the identity and the device's signature as there — a refused upload can leave
/// matrix-sdk believing so.
pub async fn ensure_bot_owned(
    client: &Client,
    user_id: &OwnedUserId,
    password: &str,
    upload_pending: bool,
) -> Result<Ownership, MatrixFailure> {
    let encryption = client.encryption();
    encryption.wait_for_e2ee_initialization_tasks().await;
    let transient = |what: &str, e: &dyn std::fmt::Display| {
        MatrixFailure::new(FailureClass::Transient, format!("{what}: {e}"))
    };
    // A keys query for our own user: it also clears local private keys the server's identity
    // does not match (an identity reset elsewhere).
    let on_server = encryption
        .request_user_identity(user_id)
        .await
        .map_err(|e| transient("reading the identity", &e))?;
    let keys_here = encryption
        .cross_signing_status()
        .await
        .is_some_and(|s| s.is_complete());
    let device_signed = encryption
        .get_own_device()
        .await
        .map_err(|e| transient("reading the own device", &e))?
        .is_some_and(|d| d.is_cross_signed_by_owner());
    match (on_server.is_some(), keys_here, device_signed) {
        (true, true, true) if !upload_pending => return Ok(Ownership::AlreadyOwned),
        // `bootstrap_cross_signing` would replace it; say so instead.
        (true, false, _) => return Ok(Ownership::ForeignIdentity),
        // Not uploaded yet, or uploaded without the device's signature: (re)upload our keys.
        _ => {}
    }
    match encryption.bootstrap_cross_signing(None).await {
        Ok(()) => {}
        Err(e) => {
            let Some(info) = e.as_uiaa_response() else {
                return Err(MatrixFailure::from_sdk("bootstrapping cross-signing", &e));
            };
            if let Some(url) = approval_url(info) {
                return Ok(Ownership::NeedsApproval(url));
            }
            let mut step = Password::new(
                UserIdentifier::Matrix(MatrixUserIdentifier::from(user_id.clone())),
                password.to_owned(),
            );
            step.session = info.session.clone();
            encryption
                .bootstrap_cross_signing(Some(AuthData::Password(step)))
                .await
                .map_err(|e| {
                    MatrixFailure::from_sdk("bootstrapping cross-signing (password step)", &e)
                })?;
        }
    }
    Ok(Ownership::Bootstrapped)
}

/// The approval URL of a server that authorises the cross-signing upload out of band (the
/// `m.oauth` / `org.matrix.cross_signing_reset` stage), when no password stage is offered.
pub fn approval_url(info: &UiaaInfo) -> Option<String> {
    let password = info
        .flows
        .iter()
        .any(|f| f.stages.contains(&AuthType::Password));
    if password {
        return None;
    }
    let params: serde_json::Value = serde_json::from_str(info.params.as_ref()?.get()).ok()?;
    ["m.oauth", "org.matrix.cross_signing_reset"]
        .iter()
        .find_map(|stage| params[*stage]["url"].as_str())
        .map(str::to_owned)
}

/// How secret storage and the key backup stand after [`ensure_recovery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// Set up, with every secret on this device.
    Enabled,
    /// Secrets (cross-signing keys, backup key) were imported with the recovery key.
    Recovered,
    /// Recovery was set up now; keep this key (a [`Secret`]: its `Debug` prints `[redacted]`).
    Created(Secret),
    /// Secret storage exists but this device lacks its secrets and no recovery key is known.
    NeedsKey,
}

impl RecoveryOutcome {
    /// A line for status and logs (never the key).
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Enabled => "enabled: secret storage and key backup",
            Self::Recovered => {
                "recovered with the recovery key: cross-signing and key backup restored"
            }
            Self::Created(_) => "set up now: key backup on, recovery key kept in the data dir",
            Self::NeedsKey => {
                "secret storage exists but this device lacks its secrets: set recovery_key (or \
                 `mxfleet recovery-key import`)"
            }
        }
    }
}

/// Imports the secrets with `key` when secret storage exists but this device lacks them (a new
/// device, a lost store); with `create`, sets recovery (secret storage + key backup) up when the
/// account has none. Call before [`ensure_bot_owned`]: a recovered identity needs no bootstrap.
pub async fn ensure_recovery(
    client: &Client,
    key: Option<&str>,
    create: bool,
) -> Result<Option<RecoveryOutcome>, MatrixFailure> {
    use matrix_sdk::encryption::recovery::RecoveryState;
    let encryption = client.encryption();
    encryption.wait_for_e2ee_initialization_tasks().await;
    let recovery = encryption.recovery();
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        MatrixFailure::new(FailureClass::Transient, format!("{what}: {e}"))
    };
    match (recovery.state(), key) {
        (RecoveryState::Enabled, _) => Ok(Some(RecoveryOutcome::Enabled)),
        (RecoveryState::Incomplete, Some(key)) => {
            recovery.recover(key).await.map_err(|e| {
                MatrixFailure::new(
                    FailureClass::Fatal,
                    format!("recovering with the recovery key: {e} (is it the right key?)"),
                )
            })?;
            Ok(Some(RecoveryOutcome::Recovered))
        }
        (RecoveryState::Incomplete, None) => Ok(Some(RecoveryOutcome::NeedsKey)),
        (RecoveryState::Disabled, _) if create => {
            let key = recovery
                .enable()
                .wait_for_backups_to_upload()
                .await
                .map_err(|e| failed("setting up recovery", &e))?;
            Ok(Some(RecoveryOutcome::Created(Secret::new(key))))
        }
        (RecoveryState::Disabled | RecoveryState::Unknown, _) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: serde_json::Value) -> UiaaInfo {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("bad UIAA fixture: {e}"))
    }

    #[test]
    fn an_oauth_only_upload_surfaces_its_approval_url() {
        let oauth = info(serde_json::json!({
            "flows": [{"stages": ["org.matrix.cross_signing_reset"]}],
            "params": {"org.matrix.cross_signing_reset": {"url": "https://auth.example/reset"}},
            "session": "s"
        }));
        assert_eq!(
            approval_url(&oauth).as_deref(),
            Some("https://auth.example/reset")
        );
        let password = info(serde_json::json!({
            "flows": [{"stages": ["m.login.password"]}],
            "params": {},
            "session": "s"
        }));
        assert_eq!(approval_url(&password), None);
        let url = Ownership::NeedsApproval("https://auth.example/reset".into()).describe();
        assert!(url.contains("https://auth.example/reset"));
    }

    #[test]
    fn a_created_recovery_key_never_prints() {
        let key = "EsTc 1234 abcd wxyz";
        let outcome = RecoveryOutcome::Created(Secret::new(key));
        for shown in [
            format!("{outcome:?}"),
            format!("{outcome:#?}"),
            outcome.describe().to_owned(),
        ] {
            assert!(!shown.contains(key), "{shown}");
        }
    }
}
