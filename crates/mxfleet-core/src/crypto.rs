//! `CryptoActor`: the account's device ownership (cross-signing), one per password account.
//!
//! With `ownership_mode = "bot_owned"` it makes the bot own its cross-signing identity and sign
//! its device (see `mxfleet_matrix::crypto`), retrying transient failures every 30 s; with
//! `user_managed` it leaves cross-signing alone and puts what the owner needs to verify the
//! device (user id, device id, display name) in the status.

use std::{sync::Arc, time::Duration};

use mxfleet_config::{AccountAuth, AccountSpec, OwnershipMode};
use mxfleet_matrix::{
    FailureClass,
    crypto::ensure_bot_owned,
    matrix_sdk::{Client, ruma::OwnedUserId},
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use crate::status::StatusBoard;

/// How long after a transient failure the bootstrap is tried again.
const RETRY: Duration = Duration::from_secs(30);

/// The crypto child of an account.
pub(crate) struct CryptoActor;

/// What it needs.
pub(crate) struct CryptoArgs {
    pub(crate) spec: Arc<AccountSpec>,
    pub(crate) client: Client,
    pub(crate) user_id: OwnedUserId,
    pub(crate) board: StatusBoard,
}

/// Its messages.
pub(crate) enum CryptoMsg {
    /// Make sure the ownership mode holds.
    Ensure,
}

impl Actor for CryptoActor {
    type Msg = CryptoMsg;
    type State = CryptoArgs;
    type Arguments = CryptoArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CryptoMsg>,
        args: CryptoArgs,
    ) -> Result<CryptoArgs, ActorProcessingErr> {
        myself.cast(CryptoMsg::Ensure)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<CryptoMsg>,
        message: CryptoMsg,
        state: &mut CryptoArgs,
    ) -> Result<(), ActorProcessingErr> {
        let CryptoMsg::Ensure = message;
        let account = state.spec.id.as_str();
        let line = match (&state.spec.ownership_mode, &state.spec.auth) {
            (OwnershipMode::BotOwned, AccountAuth::Password(password)) => {
                match ensure_bot_owned(&state.client, &state.user_id, password.expose()).await {
                    Ok(ownership) => {
                        info!(
                            account,
                            ownership = ownership.describe(),
                            "device ownership"
                        );
                        ownership.describe().to_owned()
                    }
                    Err(f)
                        if matches!(
                            f.class,
                            FailureClass::Transient | FailureClass::RateLimited(_)
                        ) =>
                    {
                        warn!(account, error = %f, "cross-signing bootstrap failed; retrying in 30 s");
                        ractor::time::send_after(RETRY, myself.get_cell(), || CryptoMsg::Ensure);
                        format!("bot_owned: bootstrap failed, retrying: {f}")
                    }
                    Err(f) => {
                        warn!(account, error = %f, "cross-signing bootstrap failed");
                        format!("bot_owned: bootstrap failed: {f}")
                    }
                }
            }
            _ => {
                let device = state
                    .client
                    .device_id()
                    .map_or_else(|| "?".to_owned(), ToString::to_string);
                format!(
                    "user_managed: verify device {device} (\"{}\") of {} from the owner's client",
                    state.spec.device_display_name, state.user_id
                )
            }
        };
        state.board.update(account, |s| s.ownership = Some(line));
        Ok(())
    }
}
