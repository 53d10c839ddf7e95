//! `SyncActor`: the account's long-poll sync loop, driven with `sync_once`.
//!
//! We drive the loop ourselves instead of matrix-sdk's `sync()`: that one returns on the first
//! error and sleeps a second between fast iterations, which lands on the next user message.
//! Here a successful sync is followed at once by the next long-poll, and any error fails the
//! actor with a classified [`MatrixFailure`] so the `AccountActor` decides: back off and restart,
//! re-login, or give up. A sync that does not answer within its long-poll timeout plus a margin
//! is a stall and fails the same way (the watchdog).
//!
//! Each batch's messages are claimed in the inbox in the same redb transaction that moves the
//! sync position, so a crash replays a batch rather than losing it, and replays are deduplicated.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures_util::FutureExt;
use mxfleet_config::AccountSpec;
use mxfleet_matrix::{
    FailureClass, InboundMessage, MatrixFailure, Normalised,
    matrix_sdk::{
        Client,
        config::SyncSettings,
        ruma::{OwnedRoomId, OwnedUserId, api::client::filter::FilterDefinition},
    },
    normalise,
};
use mxfleet_store::{InboxEntry, InboxState, Store, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    account::AccountMsg,
    status::{AccountState, StatusBoard},
};

/// Added to the long-poll timeout (with the per-request timeout) before a sync counts as stalled.
const REQUEST_MARGIN: Duration = Duration::from_secs(15);

/// The sync child of an account.
pub(crate) struct SyncActor;

/// What a `SyncActor` needs.
pub(crate) struct SyncArgs {
    pub(crate) spec: Arc<AccountSpec>,
    pub(crate) client: Client,
    pub(crate) user_id: OwnedUserId,
    pub(crate) store: Store,
    pub(crate) board: StatusBoard,
    pub(crate) parent: ActorRef<AccountMsg>,
}

/// Messages of the `SyncActor`.
pub(crate) enum SyncMsg {
    /// The loop ended; fail the actor with this.
    Failed(MatrixFailure),
}

/// The running loop.
pub(crate) struct SyncState {
    task: JoinHandle<()>,
}

impl Actor for SyncActor {
    type Msg = SyncMsg;
    type State = SyncState;
    type Arguments = SyncArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SyncMsg>,
        args: SyncArgs,
    ) -> Result<SyncState, ActorProcessingErr> {
        let span = info_span!(parent: None, "sync", account = %args.spec.id);
        let task = tokio::spawn(
            async move {
                let outcome = AssertUnwindSafe(sync_loop(&args)).catch_unwind().await;
                let failure = outcome.unwrap_or_else(|_| {
                    MatrixFailure::new(FailureClass::Transient, "the sync loop panicked")
                });
                // If the actor is already gone, nobody is waiting for this.
                let _ = myself.cast(SyncMsg::Failed(failure));
            }
            .instrument(span),
        );
        Ok(SyncState { task })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SyncMsg>,
        message: SyncMsg,
        _state: &mut SyncState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SyncMsg::Failed(failure) => Err(Box::new(failure)),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SyncMsg>,
        state: &mut SyncState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.abort();
        Ok(())
    }
}

/// Syncs until something fails; returns the failure.
async fn sync_loop(args: &SyncArgs) -> MatrixFailure {
    let account = args.spec.id.as_str();
    let mut token = match args.store.sync_position(account).await {
        Ok(token) => token,
        Err(e) => return MatrixFailure::new(FailureClass::Fatal, e.to_string()),
    };
    let long_poll = Duration::from_secs(args.spec.sync_timeout_secs);
    let stall_after = long_poll + REQUEST_MARGIN + Duration::from_secs(args.spec.sync_stall_secs);
    let filter = FilterDefinition::with_lazy_loading();
    let mut healthy = false;

    loop {
        let first_sync = token.is_none();
        // The first request of a run does not long-poll: it shows the account live at once,
        // and it differs from the long-poll a previous process may have left in flight (Synapse
        // would otherwise answer it from that request's response cache, up to 30 s later).
        let wait = if healthy { long_poll } else { Duration::ZERO };
        let mut settings = SyncSettings::default()
            .timeout(wait)
            .filter(filter.clone().into());
        if let Some(token) = &token {
            settings = settings.token(token.clone());
        }
        let response =
            match tokio::time::timeout(stall_after, args.client.sync_once(settings)).await {
                Err(_) => {
                    return MatrixFailure::new(
                        FailureClass::Transient,
                        format!("sync stalled: no answer within {} s", stall_after.as_secs()),
                    );
                }
                Ok(Err(e)) => return MatrixFailure::from_sdk("sync", &e),
                Ok(Ok(response)) => response,
            };

        let mut entries = Vec::new();
        if first_sync {
            info!(
                rooms = response.rooms.joined.len(),
                "first sync: existing history is not answered"
            );
        } else {
            for (room_id, update) in &response.rooms.joined {
                for event in &update.timeline.events {
                    match normalise(room_id, event, &args.user_id) {
                        Normalised::Message(message) => entries.push(claim(message)),
                        Normalised::Ignored(reason) => debug!(%room_id, reason, "event ignored"),
                        Normalised::Malformed { event_id, reason } => {
                            warn!(%room_id, event_id = event_id.as_deref().unwrap_or("?"), %reason, "malformed event skipped")
                        }
                    }
                }
            }
        }
        let invites: Vec<OwnedRoomId> = response.rooms.invited.keys().cloned().collect();

        let fresh = match args
            .store
            .commit_sync(account, &response.next_batch, entries)
            .await
        {
            Ok(fresh) => fresh,
            Err(e) => return MatrixFailure::new(FailureClass::Fatal, e.to_string()),
        };
        token = Some(response.next_batch);

        let now = now_ms();
        args.board.update(account, |s| s.last_sync_ms = Some(now));
        if !healthy {
            healthy = true;
            args.board.transition(account, AccountState::Syncing, None);
        }
        let news = !(fresh.is_empty() && invites.is_empty());
        if news
            && args
                .parent
                .cast(AccountMsg::Synced { fresh, invites })
                .is_err()
        {
            return MatrixFailure::new(FailureClass::Transient, "the account actor is gone");
        }
    }
}

fn claim(message: InboundMessage) -> InboxEntry<InboundMessage> {
    InboxEntry {
        event_id: message.event_id.clone(),
        claimed_at_ms: now_ms(),
        state: InboxState::Pending,
        message,
    }
}
