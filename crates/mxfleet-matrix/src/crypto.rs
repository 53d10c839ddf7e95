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
        api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier},
    },
};

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
}

impl Ownership {
    /// A line for status and logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::AlreadyOwned => "bot_owned: cross-signing set up, device signed",
            Self::Bootstrapped => "bot_owned: cross-signing bootstrapped now, device signed",
            Self::ForeignIdentity => {
                "bot_owned: the account already has a cross-signing identity made elsewhere and \
                 its keys are not on this device; import its recovery key, or reset the identity \
                 from another client"
            }
        }
    }
}

/// Makes the bot own its cross-signing identity (see the module docs).
pub async fn ensure_bot_owned(
    client: &Client,
    user_id: &OwnedUserId,
    password: &str,
) -> Result<Ownership, MatrixFailure> {
    let encryption = client.encryption();
    encryption.wait_for_e2ee_initialization_tasks().await;
    if encryption
        .cross_signing_status()
        .await
        .is_some_and(|s| s.is_complete())
    {
        return Ok(Ownership::AlreadyOwned);
    }
    let existing = encryption.get_user_identity(user_id).await.map_err(|e| {
        MatrixFailure::new(
            FailureClass::Transient,
            format!("reading the identity: {e}"),
        )
    })?;
    if existing.is_some() {
        // `bootstrap_cross_signing_if_needed` would do nothing here; say so instead.
        return Ok(Ownership::ForeignIdentity);
    }
    match encryption.bootstrap_cross_signing_if_needed(None).await {
        Ok(()) => {}
        Err(e) => {
            let Some(info) = e.as_uiaa_response() else {
                return Err(MatrixFailure::from_sdk("bootstrapping cross-signing", &e));
            };
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

/// How secret storage and the key backup stand after [`ensure_recovery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// Set up, with every secret on this device.
    Enabled,
    /// Secrets (cross-signing keys, backup key) were imported with the recovery key.
    Recovered,
    /// Recovery was set up now; keep this key (a secret).
    Created(String),
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
            Ok(Some(RecoveryOutcome::Created(key)))
        }
        (RecoveryState::Disabled | RecoveryState::Unknown, _) => Ok(None),
    }
}
