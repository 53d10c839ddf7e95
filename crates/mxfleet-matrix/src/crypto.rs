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
