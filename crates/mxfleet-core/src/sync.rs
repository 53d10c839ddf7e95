//! `SyncActor`: the account's long-poll sync loop, driven with `sync_once`.
//!
//! We drive the loop ourselves instead of matrix-sdk's `sync()`: that one returns on the first
//! error and sleeps a second between fast iterations, which lands on the next user message.
//! Here a successful sync is followed at once by the next long-poll, and any error fails the
//! actor with a classified [`AccountError`] so the `AccountActor` decides: back off and
//! restart, re-login, or give up. A sync that does not answer within its long-poll timeout plus
//! a margin is a stall and fails the same way (the watchdog).
//!
//! Each batch's messages are screened first (the gate and the rate limits, [`crate::screen`]):
//! what the bot will not answer is never stored. The rest are claimed in the inbox in the same
//! redb transaction that moves the sync position, so a crash replays a batch rather than losing
//! it, and replays are deduplicated.
//! Events that fail to decrypt wait in [`decryption_retry`] for their keys. Each batch's rooms
//! are recorded in [`Heard`], where the answers read their room's recent history.

mod backfill;
mod decryption_retry;

use std::{
    collections::{HashMap, HashSet},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, Stream, StreamExt};
use mxfleet_config::{AccountAuth, AccountSpec};
use mxfleet_matrix::{
    MatrixFailure, Normalised,
    matrix_sdk::{
        Client,
        config::{SyncSettings, SyncToken},
        deserialized_responses::TimelineEvent,
        ruma::{
            OwnedEventId, OwnedRoomId, OwnedUserId, UInt,
            api::client::filter::{Filter, FilterDefinition, RoomEventFilter},
        },
        sync::{JoinedRoomUpdate, State, SyncResponse},
    },
    normalise,
};
use mxfleet_message::{InboundMessage, Undecryptable};
use mxfleet_store::{InboxEntry, InboxState, Store, now_ms};
use mxfleet_telemetry::TraceParent;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use self::decryption_retry::{
    Decrypted, DecryptionRetries, Retried, join_retry, next_room_keys, try_decrypt,
};
use crate::{
    account::{AccountMsg, Synced},
    error::AccountError,
    heard::{Heard, RoomBatch},
    measure,
    rooms::MemberNames,
    screen::{Screen, Ticket},
    status::{AccountState, StatusBoard},
    upgrades::pending_upgrades,
};

/// Added to the long-poll timeout (with the per-request timeout) before a sync counts as stalled.
const REQUEST_MARGIN: Duration = Duration::from_secs(15);
/// How long a position moved only by quiet batches (nothing in them but the position) may stay
/// uncommitted: a restart replays at most this much of nothing.
const QUIET_COMMIT_INTERVAL: Duration = Duration::from_secs(300);

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
    /// What decides which messages are claimed at all.
    pub(crate) screen: Arc<Screen>,
    /// Where each room's recent messages are recorded for the answers' history.
    pub(crate) heard: Heard,
    /// The members' names kept for the answers, forgotten per room at its member changes.
    pub(crate) names: MemberNames,
}

/// Messages of the `SyncActor`.
pub(crate) enum SyncMsg {
    /// The loop ended; fail the actor with this.
    Failed(AccountError),
}

/// The running loop.
pub(crate) struct SyncState {
    task: JoinHandle<()>,
}

/// The rooms of stored room keys, as they arrive (`None` inside: some were missed).
type RoomKeys = Pin<Box<dyn Stream<Item = Option<Vec<OwnedRoomId>>> + Send>>;

impl Actor for SyncActor {
    type Msg = SyncMsg;
    type State = SyncState;
    type Arguments = SyncArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SyncMsg>,
        args: SyncArgs,
    ) -> Result<SyncState, ActorProcessingErr> {
        let span = info_span!(target: mxfleet_telemetry::LIFETIME_TARGET, parent: None,
            "sync_loop", account = %args.spec.id);
        let task = tokio::spawn(
            async move {
                let outcome = AssertUnwindSafe(sync_loop(&args)).catch_unwind().await;
                let failure = outcome.unwrap_or(AccountError::Panicked("the sync loop"));
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
async fn sync_loop(args: &SyncArgs) -> AccountError {
    let mut run = match SyncRun::start(args).await {
        Ok(run) => run,
        Err(e) => return e,
    };
    loop {
        // One trace per sync request: the messages it brought are answered as its children.
        let span = info_span!("sync", account = %args.spec.id, messages = tracing::field::Empty);
        let taken = async {
            let started = Instant::now();
            let response = run.next_response().await;
            let arrived = Instant::now();
            measure::observe(measure::SYNC_REQUEST, &args.spec.id, started.elapsed());
            run.take(response?, arrived).await
        }
        .instrument(span)
        .await;
        if let Err(e) = taken {
            return e;
        }
    }
}

/// One run of the loop: the position, the health, and the decryption retries.
struct SyncRun<'a> {
    args: &'a SyncArgs,
    /// The position (redb is its only source: matrix-sdk's own token is never used). Quiet
    /// batches move it here first and are committed at most every [`QUIET_COMMIT_INTERVAL`].
    token: Option<String>,
    /// When the position was last committed.
    committed_at: Instant,
    /// When the account's very first sync began: what was sent before is history.
    born_ms: u64,
    /// Whether that was in this run (the first sync's timeline is then all history).
    born_now: bool,
    healthy: bool,
    long_poll: Duration,
    stall_after: Duration,
    filter: FilterDefinition,
    /// Whether the account can read encrypted messages (password login).
    reads_encrypted: bool,
    retries: DecryptionRetries,
    /// Room keys stored by matrix-sdk, whichever way they came (to-device, forwarded,
    /// downloaded from the backup): earlier failures in their rooms are tried again at once.
    room_keys: Option<RoomKeys>,
    /// A retry woken by room keys runs on its own task, beside the sync: inside the select arm
    /// it would wait for matrix-sdk locks the pending (unpolled) sync holds.
    in_flight: Option<JoinHandle<Retried>>,
    /// Upgrades already handed on: an invite-only successor is not joined by asking again at
    /// every sync of the old room, but by the invite that follows.
    upgrades_seen: HashSet<OwnedRoomId>,
}

impl<'a> SyncRun<'a> {
    async fn start(args: &'a SyncArgs) -> Result<Self, AccountError> {
        let token = args.store.sync_position(&args.spec.id).await?;
        let now = now_ms();
        let born_ms = args.store.birth(&args.spec.id, now).await?;
        let long_poll = Duration::from_secs(args.spec.sync.sync_timeout_secs);
        let reads_encrypted = matches!(args.spec.auth, AccountAuth::Password(_));
        let room_keys = match reads_encrypted {
            true => room_keys(&args.client).await,
            false => None,
        };
        // Events a previous run could not decrypt wait again.
        let mut retries = DecryptionRetries::default();
        retries.restore(args.store.undecryptable(&args.spec.id).await?);
        Ok(Self {
            args,
            token,
            committed_at: Instant::now(),
            born_ms,
            born_now: born_ms == now,
            healthy: false,
            long_poll,
            stall_after: long_poll
                + REQUEST_MARGIN
                + Duration::from_secs(args.spec.sync.sync_stall_secs),
            filter: filter(args.spec.sync.sync_timeline_limit),
            reads_encrypted,
            retries,
            room_keys,
            in_flight: None,
            upgrades_seen: HashSet::new(),
        })
    }

    /// The next sync response; while it is pending, retries decryption when room keys arrive.
    async fn next_response(&mut self) -> Result<SyncResponse, AccountError> {
        // The first request of a run does not long-poll: it shows the account live at once,
        // and it differs from the long-poll a previous process may have left in flight (Synapse
        // would otherwise answer it from that request's response cache, up to 30 s later).
        let wait = if self.healthy {
            self.long_poll
        } else {
            Duration::ZERO
        };
        let mut settings = SyncSettings::default()
            .timeout(wait)
            .filter(self.filter.clone().into());
        // Without a committed position the sync starts afresh, whatever token matrix-sdk kept
        // from a run that died before committing.
        settings = settings.token(match &self.token {
            Some(token) => SyncToken::Specific(token.clone()),
            None => SyncToken::NoToken,
        });
        let sync = tokio::time::timeout(self.stall_after, self.args.client.sync_once(settings));
        tokio::pin!(sync);
        let outcome = loop {
            tokio::select! {
                outcome = &mut sync => break outcome,
                Some(rooms) = next_room_keys(&mut self.room_keys), if self.retries.waiting() && self.in_flight.is_none() => {
                    if self.retries.waits_in(rooms.as_deref()) {
                        let batch = self.retries.take();
                        let (client, user) = (self.args.client.clone(), self.args.user_id.clone());
                        let attempt = try_decrypt(client, user, batch);
                        self.in_flight = Some(tokio::spawn(attempt.in_current_span()));
                    }
                }
                retried = join_retry(&mut self.in_flight) => {
                    self.in_flight = None;
                    match retried {
                        Ok((late, still)) => {
                            self.retries.put_back(still);
                            self.deliver_late(late).await?;
                        }
                        Err(e) => warn!(error = %e, "a decryption retry failed; its events are dropped"),
                    }
                }
            }
        };
        match outcome {
            Err(_) => Err(MatrixFailure::new(
                mxfleet_matrix::FailureClass::Transient,
                format!(
                    "sync stalled: no answer within {} s",
                    self.stall_after.as_secs()
                ),
            )
            .into()),
            Ok(Err(e)) => Err(MatrixFailure::from_sdk("sync", &e).into()),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Claims the batch's messages (committing the new position with them) and hands what the
    /// account acts on to it.
    async fn take(&mut self, response: SyncResponse, arrived: Instant) -> Result<(), AccountError> {
        let (mut entries, utds) = if self.token.is_none() && self.born_now {
            let rooms = response.rooms.joined.len();
            info!(rooms, "first sync: existing history is not answered");
            (Vec::new(), Vec::new())
        } else {
            let (mut entries, utds) = self.read_batch(&response).await?;
            if self.token.is_none() {
                // A first sync again (an earlier one never committed): what was sent since the
                // account's birth is answered, what came before is history.
                let born = self.born_ms;
                entries.retain(|e| e.message.origin_server_ts_ms > born);
                info!(
                    answered = entries.len(),
                    "first sync resumed: messages since the account's first start are answered"
                );
            }
            (entries, utds)
        };
        // Keys may have arrived (to-device, or from the backup): try the earlier failures.
        let keys_may_have_arrived = !response.to_device.is_empty();
        if self.token.is_some() && self.retries.due(keys_may_have_arrived, now_ms()) {
            let late = self
                .retries
                .retry(&self.args.client, &self.args.user_id)
                .await;
            entries.extend(self.claim_late(late).await?);
        }
        let invites: Vec<OwnedRoomId> = response.rooms.invited.keys().cloned().collect();
        let mut upgrades = pending_upgrades(&self.args.client, response.rooms.joined.keys());
        upgrades.retain(|u| self.upgrades_seen.insert(u.old.clone()));
        let quiet =
            entries.is_empty() && response.rooms.is_empty() && response.to_device.is_empty();
        let fresh = if commit_due(quiet, self.token.is_some(), self.committed_at.elapsed()) {
            self.claim(&response.next_batch, entries).await?
        } else {
            Vec::new()
        };
        self.token = Some(response.next_batch);
        self.mark_healthy();
        Span::current().record("messages", fresh.len());
        let synced = Synced {
            fresh,
            invites,
            utds,
            upgrades,
            trace: TraceParent::of(&Span::current()),
            arrived: Some(arrived),
        };
        self.hand_on(synced)
    }

    /// Screens `entries` and claims those worth answering, moving the sync position to `token`
    /// in the same transaction; returns the newly claimed ones with their tickets.
    async fn claim(
        &mut self,
        token: &str,
        entries: Vec<InboxEntry<InboundMessage>>,
    ) -> Result<Vec<(InboundMessage, Ticket)>, AccountError> {
        let screened = self.args.screen.sift(entries).await;
        let mut tickets: HashMap<String, Ticket> = HashMap::new();
        let entries = screened
            .into_iter()
            .map(|(entry, ticket)| {
                tickets.insert(entry.event_id.clone(), ticket);
                entry
            })
            .collect();
        let (store, account) = (&self.args.store, self.args.spec.id.as_str());
        let fresh = store.commit_sync(account, token, entries).await?;
        self.committed_at = Instant::now();
        Ok(fresh
            .into_iter()
            .map(|entry| {
                let ticket = tickets.remove(&entry.event_id).unwrap_or(Ticket::Admitted);
                (entry.message, ticket)
            })
            .collect())
    }

    /// The messages and undecryptable events of a batch's joined rooms, each room's gap (if its
    /// timeline was limited) backfilled before its timeline.
    async fn read_batch(
        &mut self,
        response: &SyncResponse,
    ) -> Result<(Vec<InboxEntry<InboundMessage>>, Vec<Undecryptable>), AccountError> {
        let (mut entries, mut utds) = (Vec::new(), Vec::new());
        // Records of the events that wait for their keys, kept before the batch commits.
        let mut waiting = Vec::new();
        for (room_id, update) in &response.rooms.joined {
            if members_may_have_changed(update) {
                self.args.names.changed(room_id);
            }
            let gap = match (
                &update.timeline.prev_batch,
                self.args.client.get_room(room_id),
            ) {
                (Some(prev_batch), Some(room)) if update.timeline.limited => {
                    let since = self.token.as_deref();
                    backfill::gap(&room, &self.args.store, prev_batch, since, self.bounds()).await?
                }
                _ => Vec::new(),
            };
            let mut heard = RoomBatch {
                limited: update.timeline.limited,
                ..RoomBatch::default()
            };
            for event in gap.iter().chain(&update.timeline.events) {
                note_room_event(&mut heard, event);
                match normalise(room_id, event, &self.args.user_id) {
                    // An access-token account's device keys are not its own: whatever
                    // matrix-sdk managed to decrypt is not treated as read.
                    Normalised::Message(message)
                        if !self.reads_encrypted && event.encryption_info().is_some() =>
                    {
                        utds.push(Undecryptable {
                            room_id: message.room_id,
                            event_id: message.event_id,
                            sender: message.sender,
                            session_id: None,
                            reason: "access-token account".into(),
                        });
                    }
                    Normalised::Message(message) => {
                        heard.messages.push(message.clone());
                        entries.push(claim(message));
                    }
                    Normalised::Undecryptable(utd) => {
                        warn!(%room_id, event_id = %utd.event_id, sender = %utd.sender, reason = %utd.reason, "could not decrypt a message; retried when keys arrive");
                        let kept = self
                            .retries
                            .remember(room_id, event.raw().clone(), now_ms());
                        waiting.extend(kept);
                        utds.push(utd);
                    }
                    Normalised::Ignored(reason) => debug!(%room_id, reason, "event ignored"),
                    Normalised::Malformed { event_id, reason } => {
                        warn!(%room_id, event_id = event_id.as_deref().unwrap_or("?"), %reason, "malformed event skipped")
                    }
                }
            }
            self.args.heard.record(room_id, heard);
        }
        let account = self.args.spec.id.as_str();
        self.args.store.save_undecryptable(account, waiting).await?;
        Ok((entries, utds))
    }

    /// How far back a gap is backfilled.
    fn bounds(&self) -> backfill::Bounds<'_> {
        let spec = &self.args.spec;
        let max_age_ms = spec.sync.catch_up_max_age_secs.saturating_mul(1000);
        backfill::Bounds {
            account: &spec.id,
            oldest_ms: now_ms().saturating_sub(max_age_ms).max(self.born_ms),
            max_events: usize::try_from(spec.sync.backfill_max_events).unwrap_or(usize::MAX),
        }
    }

    fn mark_healthy(&mut self) {
        let (board, account) = (&self.args.board, self.args.spec.id.as_str());
        let now = now_ms();
        board.synced(account, now);
        if !self.healthy {
            self.healthy = true;
            board.transition(account, AccountState::Syncing, None);
        }
    }

    /// Sends the account what it acts on, if anything.
    fn hand_on(&self, synced: Synced) -> Result<(), AccountError> {
        let news = !(synced.fresh.is_empty()
            && synced.invites.is_empty()
            && synced.utds.is_empty()
            && synced.upgrades.is_empty());
        if news && self.args.parent.cast(AccountMsg::Synced(synced)).is_err() {
            return Err(AccountError::ChildGone("account actor"));
        }
        Ok(())
    }

    /// Claims messages that decrypted on a retry (the keys came late), counts them, and drops
    /// their records (and those of events given up on) from the store. Their catch-up age
    /// counts from when the bot first saw them.
    async fn claim_late(
        &mut self,
        late: Vec<Decrypted>,
    ) -> Result<Vec<InboxEntry<InboundMessage>>, AccountError> {
        let account = self.args.spec.id.as_str();
        let mut done = self.retries.take_forgotten();
        done.extend(late.iter().map(|d| d.message.event_id.to_string()));
        self.args.store.forget_undecryptable(account, done).await?;
        if !late.is_empty() {
            let n = late.len() as u64;
            self.args.board.update(account, |s| s.decrypted_late += n);
            let messages = late.iter().map(|d| d.message.clone());
            self.args.heard.record_late(messages);
        }
        let entries = late
            .into_iter()
            .map(|Decrypted { message, first_seen_ms }| {
                info!(room_id = %message.room_id, event_id = %message.event_id, "decrypted a message that had failed before: its keys came late");
                InboxEntry {
                    seen_at_ms: Some(first_seen_ms),
                    ..claim(message)
                }
            })
            .collect();
        Ok(entries)
    }

    /// Claims and hands on messages decrypted between syncs, at the current sync position.
    async fn deliver_late(&mut self, late: Vec<Decrypted>) -> Result<(), AccountError> {
        // Retries begin after the first sync, so there is a position to commit at.
        let Some(token) = self.token.clone().filter(|_| !late.is_empty()) else {
            return Ok(());
        };
        let entries = self.claim_late(late).await?;
        let fresh = self.claim(&token, entries).await?;
        self.hand_on(Synced {
            fresh,
            ..Synced::default()
        })
    }
}

/// Whether a batch's position is committed now. A quiet batch (nothing in it but the new
/// position: the empty answer of an idle long-poll) waits while there is a committed position and
/// the last commit is recent: replaying it after a crash loses nothing, and a thousand idle
/// accounts would otherwise commit (with an fsync) 33 times a second.
fn commit_due(quiet: bool, has_position: bool, since_commit: Duration) -> bool {
    !quiet || !has_position || since_commit >= QUIET_COMMIT_INTERVAL
}

/// Notes in `batch` what `event` means for the room's log besides being a message: the room's
/// creation (the log then holds the room's whole history) or a redaction.
fn note_room_event(batch: &mut RoomBatch, event: &TimelineEvent) {
    let raw = event.raw();
    match raw.get_field::<String>("type").ok().flatten().as_deref() {
        Some("m.room.create") => batch.creation = true,
        Some("m.room.redaction") => {
            // Top-level before room version 11, inside the content since.
            let top = raw.get_field::<OwnedEventId>("redacts").ok().flatten();
            let content = || {
                raw.get_field::<serde_json::Value>("content")
                    .ok()
                    .flatten()
                    .and_then(|c| c.get("redacts")?.as_str().map(str::to_owned))
                    .and_then(|id| OwnedEventId::try_from(id).ok())
            };
            batch.redacted.extend(top.or_else(content));
        }
        _ => {}
    }
}

/// Whether `update` may change a member's name: it has a member event (in its state or its
/// timeline) or a gap.
fn members_may_have_changed(update: &JoinedRoomUpdate) -> bool {
    let is_member = |kind: Option<String>| kind.as_deref() == Some("m.room.member");
    let (State::Before(state) | State::After(state)) = &update.state;
    update.timeline.limited
        || state
            .iter()
            .any(|e| is_member(e.get_field("type").ok().flatten()))
        || update
            .timeline
            .events
            .iter()
            .any(|e| is_member(e.raw().get_field("type").ok().flatten()))
}

/// The sync filter: lazy-loaded members, at most `timeline_limit` events per room, and no
/// presence, typing notices or read receipts. A bot reads none of them, and each would end the
/// long-poll of every bot sharing a room with whoever types, reads or comes online: a sync
/// response processed (matrix-sdk's store transactions included) for nothing.
fn filter(timeline_limit: u32) -> FilterDefinition {
    let mut filter = FilterDefinition::with_lazy_loading();
    filter.room.timeline.limit = Some(UInt::from(timeline_limit));
    filter.presence = Filter::ignore_all();
    filter.room.ephemeral = RoomEventFilter::ignore_all();
    filter
}

/// The stream of rooms whose keys matrix-sdk stored.
async fn room_keys(client: &Client) -> Option<RoomKeys> {
    let keys = client.encryption().room_keys_received_stream().await?;
    // `None` inside: some were missed (the stream lagged), the rooms are unknown.
    let rooms = keys.map(|keys| {
        keys.ok()
            .map(|k| k.into_iter().map(|k| k.room_id).collect())
    });
    Some(Box::pin(rooms))
}

fn claim(message: InboundMessage) -> InboxEntry<InboundMessage> {
    InboxEntry {
        event_id: message.event_id.to_string(),
        claimed_at_ms: now_ms(),
        seq: 0,
        // The first attempt is counted with the claim, in the same transaction (one commit
        // fewer per message); a process that dies before it begins counts it all the same.
        attempts: 1,
        seen_at_ms: None,
        state: InboxState::Pending,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_batches_wait_for_their_commit_while_a_recent_position_is_committed() {
        let recent = Duration::from_secs(30);
        let cases = [
            // (quiet, has a committed position, since the last commit, commit now)
            (false, true, recent, true),
            (false, false, recent, true),
            (true, false, recent, true),
            (true, true, recent, false),
            (true, true, QUIET_COMMIT_INTERVAL, true),
        ];
        for (quiet, has_position, since, due) in cases {
            assert_eq!(
                commit_due(quiet, has_position, since),
                due,
                "quiet {quiet}, position {has_position}, {since:?}"
            );
        }
    }
    #[test]
    fn member_events_and_gaps_may_change_names() {
        use mxfleet_matrix::matrix_sdk::ruma::serde::Raw;
        let event = |kind: &str| {
            let json = serde_json::json!({"type": kind, "event_id": "$e", "sender": "@a:hs",
                "origin_server_ts": 1, "content": {}, "state_key": "@a:hs"});
            Raw::new(&json).expect("serialised").cast_unchecked()
        };
        let in_timeline = |kind: &str| {
            let mut update = JoinedRoomUpdate::default();
            update.timeline.events = vec![TimelineEvent::from_plaintext(event(kind))];
            update
        };
        let in_state = |kind: &str, after: bool| {
            let mut update = JoinedRoomUpdate::default();
            let events = vec![event(kind).cast_unchecked()];
            update.state = match after {
                true => State::After(events),
                false => State::Before(events),
            };
            update
        };
        let gap = {
            let mut update = JoinedRoomUpdate::default();
            update.timeline.limited = true;
            update
        };
        let cases = [
            ("nothing", JoinedRoomUpdate::default(), false),
            ("a message", in_timeline("m.room.message"), false),
            (
                "a member event in the timeline",
                in_timeline("m.room.member"),
                true,
            ),
            (
                "a member event before the timeline",
                in_state("m.room.member", false),
                true,
            ),
            (
                "a member event after the timeline",
                in_state("m.room.member", true),
                true,
            ),
            ("another state event", in_state("m.room.topic", true), false),
            ("a gap", gap, true),
        ];
        for (what, update, changed) in cases {
            assert_eq!(members_may_have_changed(&update), changed, "{what}");
        }
    }
}
