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

use std::{collections::HashSet, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures_util::{FutureExt, Stream, StreamExt};
use mxfleet_config::{AccountAuth, AccountSpec};
use mxfleet_matrix::{
    FailureClass, InboundMessage, MatrixFailure, Normalised, Undecryptable,
    matrix_sdk::{
        Client,
        config::SyncSettings,
        ruma::{
            OwnedRoomId, OwnedUserId,
            api::client::filter::FilterDefinition,
            events::{AnySyncTimelineEvent, room::encrypted::OriginalSyncRoomEncryptedEvent},
            serde::Raw,
        },
    },
    normalise,
};
use mxfleet_store::{InboxEntry, InboxState, Store, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::{task::JoinHandle, time::Instant};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    account::AccountMsg,
    status::{AccountState, StatusBoard},
    upgrades::pending_upgrades,
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
    let mut retries = DecryptionRetries::default();
    let reads_encrypted = matches!(args.spec.auth, AccountAuth::Password(_));
    // Room keys stored by matrix-sdk, whichever way they came (to-device, forwarded, downloaded
    // from the backup): earlier failures in their rooms are tried again at once.
    let mut room_keys = match reads_encrypted {
        true => args
            .client
            .encryption()
            .room_keys_received_stream()
            .await
            .map(|keys| {
                // `None`: some were missed (the stream lagged), the rooms are unknown.
                Box::pin(keys.map(|keys| {
                    keys.ok()
                        .map(|k| k.into_iter().map(|k| k.room_id).collect())
                }))
            }),
        false => None,
    };

    // A retry woken by room keys runs on its own task, beside the sync: inside the select arm
    // it would wait for matrix-sdk locks the pending (unpolled) sync holds.
    let mut in_flight: Option<JoinHandle<Retried>> = None;
    // Upgrades already handed on: an invite-only successor is not joined by asking again at
    // every sync of the old room, but by the invite that follows.
    let mut upgrades_seen = HashSet::new();

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
        let sync = tokio::time::timeout(stall_after, args.client.sync_once(settings));
        tokio::pin!(sync);
        let outcome = loop {
            tokio::select! {
                outcome = &mut sync => break outcome,
                Some(rooms) = next_room_keys(&mut room_keys), if retries.waiting() && in_flight.is_none() => {
                    if retries.waits_in(rooms.as_deref()) {
                        let batch = retries.take();
                        let attempt = try_decrypt(args.client.clone(), args.user_id.clone(), batch);
                        in_flight = Some(tokio::spawn(attempt.in_current_span()));
                    }
                }
                retried = join_retry(&mut in_flight) => {
                    in_flight = None;
                    match retried {
                        Ok((late, still)) => {
                            retries.put_back(still);
                            if let Err(failure) = deliver_late(args, token.as_deref(), late).await {
                                return failure;
                            }
                        }
                        Err(e) => warn!(error = %e, "a decryption retry failed; its events are dropped"),
                    }
                }
            }
        };
        let response = match outcome {
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
        let mut utds = Vec::new();
        if first_sync {
            info!(
                rooms = response.rooms.joined.len(),
                "first sync: existing history is not answered"
            );
        } else {
            for (room_id, update) in &response.rooms.joined {
                for event in &update.timeline.events {
                    match normalise(room_id, event, &args.user_id) {
                        // An access-token account's device keys are not its own: whatever
                        // matrix-sdk managed to decrypt is not treated as read.
                        Normalised::Message(message)
                            if !reads_encrypted && event.encryption_info().is_some() =>
                        {
                            utds.push(Undecryptable {
                                room_id: message.room_id,
                                event_id: message.event_id,
                                sender: message.sender,
                                session_id: None,
                                reason: "access-token account".into(),
                            });
                        }
                        Normalised::Message(message) => entries.push(claim(message)),
                        Normalised::Undecryptable(utd) => {
                            warn!(%room_id, event_id = %utd.event_id, sender = %utd.sender, reason = %utd.reason, "could not decrypt a message; retried when keys arrive");
                            retries.remember(room_id, event.raw().clone());
                            utds.push(utd);
                        }
                        Normalised::Ignored(reason) => debug!(%room_id, reason, "event ignored"),
                        Normalised::Malformed { event_id, reason } => {
                            warn!(%room_id, event_id = event_id.as_deref().unwrap_or("?"), %reason, "malformed event skipped")
                        }
                    }
                }
            }
            // Keys may have arrived (to-device, or from the backup): try the earlier failures.
            if retries.due(!response.to_device.is_empty()) {
                let late = retries.retry(&args.client, &args.user_id).await;
                entries.extend(claim_late(args, late));
            }
        }
        let invites: Vec<OwnedRoomId> = response.rooms.invited.keys().cloned().collect();
        let mut upgrades = pending_upgrades(&args.client, response.rooms.joined.keys());
        upgrades.retain(|u| upgrades_seen.insert(u.old.clone()));

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
        let news =
            !(fresh.is_empty() && invites.is_empty() && utds.is_empty() && upgrades.is_empty());
        if news
            && args
                .parent
                .cast(AccountMsg::Synced {
                    fresh,
                    invites,
                    utds,
                    upgrades,
                })
                .is_err()
        {
            return MatrixFailure::new(FailureClass::Transient, "the account actor is gone");
        }
    }
}

/// An event waiting for its keys: its room, the event, when it failed first.
type Pending = (OwnedRoomId, Raw<AnySyncTimelineEvent>, Instant);

/// What a retry decrypted, and what still waits.
type Retried = (Vec<InboundMessage>, Vec<Pending>);

/// Events that failed to decrypt, tried again when keys may have arrived: when matrix-sdk stores
/// room keys for their room, after a sync that carried to-device events, and every 30 s (each
/// failed try also asks matrix-sdk to look in the server-side key backup, which it does with
/// its own back-off). Bounded in number and age.
#[derive(Default)]
struct DecryptionRetries {
    pending: Vec<Pending>,
    last_try: Option<Instant>,
}

impl DecryptionRetries {
    const MAX: usize = 256;
    const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    const INTERVAL: Duration = Duration::from_secs(30);

    fn remember(&mut self, room_id: &OwnedRoomId, raw: Raw<AnySyncTimelineEvent>) {
        if self.pending.len() >= Self::MAX {
            self.pending.remove(0);
        }
        self.pending.push((room_id.clone(), raw, Instant::now()));
    }

    /// Whether any event waits for keys.
    fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether an event waits in one of `rooms` (`None`: rooms unknown, say yes).
    fn waits_in(&self, rooms: Option<&[OwnedRoomId]>) -> bool {
        rooms.is_none_or(|rooms| self.pending.iter().any(|(room, _, _)| rooms.contains(room)))
    }

    fn due(&mut self, keys_may_have_arrived: bool) -> bool {
        let now = Instant::now();
        self.pending
            .retain(|(_, _, at)| now.duration_since(*at) < Self::MAX_AGE);
        let interval_passed = self
            .last_try
            .is_none_or(|t| now.duration_since(t) >= Self::INTERVAL);
        !self.pending.is_empty() && (keys_may_have_arrived || interval_passed)
    }

    /// Takes every pending event for a try.
    fn take(&mut self) -> Vec<Pending> {
        self.last_try = Some(Instant::now());
        std::mem::take(&mut self.pending)
    }

    /// Keeps the events a try could not decrypt.
    fn put_back(&mut self, still: Vec<Pending>) {
        let room = Self::MAX.saturating_sub(self.pending.len());
        self.pending
            .splice(0..0, still.into_iter().rev().take(room).rev());
    }

    /// Tries every pending event; returns the ones that now decrypt to messages.
    async fn retry(&mut self, client: &Client, own_user: &OwnedUserId) -> Vec<InboundMessage> {
        let batch = self.take();
        let (decrypted, still) = try_decrypt(client.clone(), own_user.clone(), batch).await;
        self.put_back(still);
        decrypted
    }
}

/// Tries to decrypt `batch`; returns the messages it now yields and the events still waiting.
async fn try_decrypt(client: Client, own_user: OwnedUserId, batch: Vec<Pending>) -> Retried {
    let mut decrypted = Vec::new();
    let mut still = Vec::new();
    for (room_id, raw, at) in batch {
        let Some(room) = client.get_room(&room_id) else {
            continue;
        };
        let encrypted = raw.cast_ref_unchecked::<OriginalSyncRoomEncryptedEvent>();
        match room.decrypt_event(encrypted, None).await {
            Ok(event) => match normalise(&room_id, &event, &own_user) {
                Normalised::Message(message) => decrypted.push(message),
                Normalised::Undecryptable(_) => still.push((room_id, raw, at)),
                _ => {}
            },
            Err(e) => {
                debug!(%room_id, error = %e, "decryption retry failed");
                still.push((room_id, raw, at));
            }
        }
    }
    (decrypted, still)
}

/// The outcome of the retry in flight. Never resolves without one.
async fn join_retry(
    in_flight: &mut Option<JoinHandle<Retried>>,
) -> Result<Retried, tokio::task::JoinError> {
    match in_flight {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The rooms of the next batch of stored room keys (`None` inside: unknown). Never resolves
/// without a stream.
async fn next_room_keys<S>(stream: &mut Option<S>) -> Option<Option<Vec<OwnedRoomId>>>
where
    S: Stream<Item = Option<Vec<OwnedRoomId>>> + Unpin,
{
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Claims messages that decrypted on a retry (the keys came late), and counts them.
fn claim_late(
    args: &SyncArgs,
    late: Vec<InboundMessage>,
) -> impl Iterator<Item = InboxEntry<InboundMessage>> {
    if !late.is_empty() {
        let n = late.len() as u64;
        args.board.update(&args.spec.id, |s| s.decrypted_late += n);
    }
    late.into_iter().map(|message| {
        info!(room_id = %message.room_id, event_id = %message.event_id, "decrypted a message that had failed before: its keys came late");
        claim(message)
    })
}

/// Claims and hands on messages decrypted between syncs, at the current sync position.
async fn deliver_late(
    args: &SyncArgs,
    token: Option<&str>,
    late: Vec<InboundMessage>,
) -> Result<(), MatrixFailure> {
    // Retries begin after the first sync, so there is a position to commit at.
    let Some(token) = token.filter(|_| !late.is_empty()) else {
        return Ok(());
    };
    let entries = claim_late(args, late).collect();
    let fresh = args
        .store
        .commit_sync(&args.spec.id, token, entries)
        .await
        .map_err(|e| MatrixFailure::new(FailureClass::Fatal, e.to_string()))?;
    let synced = AccountMsg::Synced {
        fresh,
        invites: Vec::new(),
        utds: Vec::new(),
        upgrades: Vec::new(),
    };
    args.parent
        .cast(synced)
        .map_err(|_| MatrixFailure::new(FailureClass::Transient, "the account actor is gone"))
}

fn claim(message: InboundMessage) -> InboxEntry<InboundMessage> {
    InboxEntry {
        event_id: message.event_id.clone(),
        claimed_at_ms: now_ms(),
        state: InboxState::Pending,
        message,
    }
}

#[cfg(test)]
mod tests {
    use mxfleet_matrix::matrix_sdk::ruma::owned_room_id;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_decryptions_are_retried_when_keys_may_have_arrived_or_every_30_s() {
        let mut retries = DecryptionRetries::default();
        assert!(!retries.due(true), "nothing pending");
        let raw = Raw::from_json(
            serde_json::value::to_raw_value(&serde_json::json!({"type": "m.room.encrypted"}))
                .unwrap_or_else(|_| Box::<serde_json::value::RawValue>::default()),
        );
        retries.remember(&owned_room_id!("!r:hs"), raw);
        assert!(retries.due(false), "first try at once");
        retries.last_try = Some(Instant::now());
        assert!(!retries.due(false));
        assert!(retries.due(true), "to-device events may carry the keys");
        tokio::time::advance(DecryptionRetries::INTERVAL).await;
        assert!(retries.due(false), "the backup may have delivered them");
        // Room keys stored for the room (or for unknown rooms) wake the retry; others do not.
        assert!(retries.waiting());
        assert!(retries.waits_in(Some(&[owned_room_id!("!r:hs")])));
        assert!(
            retries.waits_in(None),
            "a lagged key stream tries everything"
        );
        assert!(!retries.waits_in(Some(&[owned_room_id!("!other:hs")])));
        tokio::time::advance(DecryptionRetries::MAX_AGE).await;
        assert!(!retries.due(true), "given up after a day");
        assert!(!retries.waiting());
        assert!(retries.pending.is_empty());
    }
}
