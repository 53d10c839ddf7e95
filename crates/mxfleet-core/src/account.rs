//! `AccountActor`: one per configured account; owns its client and supervises its children.
//!
//! Lifecycle: `Starting` → connect (restore or log in, on a task so the mailbox stays free) →
//! spawn the `SyncActor` → `Syncing`. A failure is classified by its type ([`AccountError`]):
//! transient failures restart the connect or the sync after a backoff (`Backoff`), a soft
//! logout re-logs in into the same device, an auth failure ends the account normally as
//! `auth_failed`, a permanent one as `failed`. Ending normally (not crashing) is what keeps the
//! fleet supervisor from restarting it in a loop.
//!
//! Its children besides the sync (stream editor, crypto actor, OTP gate) are kept in
//! [`Children`], shared with the room workers; [`invites`] answers invites and follows room
//! upgrades, decided by the gate before any join.

mod invites;

use std::{path::PathBuf, sync::Arc, time::Duration};

use mxfleet_backend::Backend;
use mxfleet_config::{AccessPolicy, AccountAuth, AccountSpec};
use mxfleet_matrix::{
    Connection, FailureClass, MatrixFailure, connect, matrix_sdk::ruma::OwnedRoomId,
};
use mxfleet_message::{InboundMessage, Undecryptable};
use mxfleet_store::{Store, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span, warn};

use crate::{
    children::{Child, Children},
    crypto::CryptoArgs,
    error::AccountError,
    gate::Access,
    heard::Heard,
    homeservers::Homeservers,
    measure,
    otp::{OtpArgs, OtpPolicy},
    restart::{RestartDecision, RestartPolicy, RestartTracker},
    rooms::{JoinedDms, Rooms},
    screen::{Screen, Ticket},
    status::{AccountState, ChildState, StatusBoard},
    sync::{SyncActor, SyncArgs, SyncMsg},
    turn::{Arrival, Turns, context::TurnArgs},
    upgrades::Upgrade,
};

/// Stop reason of an account whose credentials were rejected.
pub const REASON_AUTH_FAILED: &str = "auth_failed";
/// Stop reason of an account whose running session was ended by the homeserver (a hard
/// logout: the token revoked, the device deleted). Its state is `auth_failed` too; with
/// `relogin = "auto"` the fleet logs it in again as a new device.
pub const REASON_LOGGED_OUT: &str = "logged_out";
/// Stop reason of an account with a permanent error.
pub const REASON_FAILED: &str = "failed";
/// Stop reason of an account stopped on request (shutdown, operator).
pub const REASON_STOPPED: &str = "stopped";

/// The longest wait between two tries of a `degraded` account.
const DEGRADED_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long the sync child gets to stop.
const SYNC_STOP_DEADLINE: Duration = Duration::from_secs(5);

/// The account actor.
pub(crate) struct AccountActor;

/// What an account actor needs.
#[derive(Clone)]
pub(crate) struct AccountArgs {
    pub(crate) spec: Arc<AccountSpec>,
    pub(crate) store: Store,
    pub(crate) board: StatusBoard,
    pub(crate) data_dir: PathBuf,
    pub(crate) policy: RestartPolicy,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) homeservers: Homeservers,
    /// How long answers in flight get when the account stops (`shutdown_drain_secs`).
    pub(crate) drain: Duration,
}

/// Messages of the account actor.
pub(crate) enum AccountMsg {
    /// (Re)connect: restore or log in.
    Connect,
    /// The connect task finished.
    Connected(Result<Connection, MatrixFailure>),
    /// Spawn the sync child.
    StartSync,
    /// A retry scheduled after a failure (see `AccountRuntime::schedule`).
    Retry {
        /// What to retry.
        what: Retry,
        /// Which failure's retry it is.
        generation: u64,
    },
    /// A sync batch committed new messages or invites, or met undecryptable events.
    Synced(Synced),
}

/// What a sync batch brought that the account acts on.
#[derive(Default)]
pub(crate) struct Synced {
    /// Newly claimed messages, each with what the screen decided.
    pub(crate) fresh: Vec<(InboundMessage, Ticket)>,
    /// Rooms the bot is invited to.
    pub(crate) invites: Vec<OwnedRoomId>,
    /// Events that could not be decrypted.
    pub(crate) utds: Vec<Undecryptable>,
    /// Rooms the bot is in that were upgraded to rooms it has not joined.
    pub(crate) upgrades: Vec<Upgrade>,
    /// The sync request's trace: the messages' spans are its children.
    pub(crate) trace: mxfleet_telemetry::TraceParent,
    /// When the sync response arrived: the messages' latencies count from here (`None`:
    /// decrypted between syncs, they count from when they are queued).
    pub(crate) arrived: Option<std::time::Instant>,
}

/// The account actor's state.
pub(crate) struct AccountRuntime {
    args: AccountArgs,
    connection: Option<Live>,
    sync: Option<ActorRef<SyncMsg>>,
    turns: Option<Turns>,
    tracker: RestartTracker,
    children: Children,
    /// Kept across reconnects (see [`JoinedDms`]).
    joined_dms: JoinedDms,
    /// The generation of the retry due; older ones are stale.
    retry_generation: u64,
    /// Waits for the homeserver to answer again during an outage.
    outage_waiter: Option<tokio::task::JoinHandle<()>>,
}

/// A connection and what was learned with it.
struct Live {
    connection: Connection,
    rooms: Rooms,
    access: Access,
    screen: Arc<Screen>,
}

/// What to retry after a transient failure.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Retry {
    Connect,
    Sync,
}

impl Actor for AccountActor {
    type Msg = AccountMsg;
    type State = AccountRuntime;
    type Arguments = AccountArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AccountMsg>,
        args: AccountArgs,
    ) -> Result<AccountRuntime, ActorProcessingErr> {
        args.board
            .transition(&args.spec.id, AccountState::Starting, None);
        // Nothing that can fail on the network happens here: a failing pre_start counts as a
        // crash, and auth failures must end the account normally instead.
        myself.cast(AccountMsg::Connect)?;
        Ok(AccountRuntime {
            tracker: RestartTracker::new(args.policy.clone()),
            args,
            connection: None,
            sync: None,
            turns: None,
            children: Children::default(),
            joined_dms: JoinedDms::default(),
            retry_generation: 0,
            outage_waiter: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AccountMsg>,
        message: AccountMsg,
        state: &mut AccountRuntime,
    ) -> Result<(), ActorProcessingErr> {
        let span = info_span!("account", account = %state.args.spec.id);
        async {
            match message {
                AccountMsg::Connect => state.start_connect(&myself),
                AccountMsg::Connected(Ok(connection)) => {
                    state.on_connected(&myself, connection).await
                }
                AccountMsg::Connected(Err(failure)) => {
                    state
                        .on_failure(&myself, failure.into(), Retry::Connect)
                        .await
                }
                AccountMsg::StartSync => state.start_sync(&myself).await,
                AccountMsg::Retry { what, generation } => {
                    state.on_retry(&myself, what, generation).await
                }
                AccountMsg::Synced(synced) => state.on_synced(synced),
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AccountMsg>,
        event: SupervisionEvent,
        state: &mut AccountRuntime,
    ) -> Result<(), ActorProcessingErr> {
        let span = info_span!("account", account = %state.args.spec.id);
        state
            .on_child_event(&myself, event)
            .instrument(span)
            .await?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AccountMsg>,
        state: &mut AccountRuntime,
    ) -> Result<(), ActorProcessingErr> {
        // Reverse order of start: first the sync (no new work), then the replies in flight.
        if let Some(sync) = state.sync.take() {
            let _ = sync
                .stop_and_wait(Some(REASON_STOPPED.into()), Some(SYNC_STOP_DEADLINE))
                .await;
        }
        if let Some(turns) = state.turns.take() {
            turns.shutdown(state.args.drain).await;
        }
        state.children.stop_all(REASON_STOPPED);
        if let Some(waiter) = state.outage_waiter.take() {
            waiter.abort();
        }
        let (board, id) = (&state.args.board, state.args.spec.id.as_str());
        board.update(id, |s| {
            s.sync = ChildState::Stopped;
            s.stream_editor = ChildState::Stopped;
            s.otp_gate = s.otp_gate.map(|_| ChildState::Stopped);
            s.crypto = s.crypto.map(|_| ChildState::Stopped);
        });
        let ended = board
            .account(id)
            .is_some_and(|s| matches!(s.state, AccountState::AuthFailed | AccountState::Failed));
        if !ended {
            board.transition(id, AccountState::Stopped, None);
        }
        Ok(())
    }
}

impl AccountRuntime {
    fn id(&self) -> &str {
        &self.args.spec.id
    }

    fn start_connect(&mut self, myself: &ActorRef<AccountMsg>) {
        self.args
            .board
            .transition(self.id(), AccountState::Connecting, None);
        let (spec, store) = (self.args.spec.clone(), self.args.store.clone());
        let data_dir = self.args.data_dir.clone();
        let me = myself.clone();
        let span = info_span!(parent: None, "connect", account = %spec.id);
        tokio::spawn(
            async move {
                let result = connect(&spec, &store, &data_dir).await;
                let _ = me.cast(AccountMsg::Connected(result));
            }
            .instrument(span),
        );
    }

    /// Connected: children up, turns ready (with what a previous process left pending), sync.
    async fn on_connected(&mut self, myself: &ActorRef<AccountMsg>, connection: Connection) {
        let (user_id, device_id) = (
            connection.user_id.to_string(),
            connection.device_id.to_string(),
        );
        let encryption = match self.args.spec.auth {
            AccountAuth::Password(_) => "available (own device and crypto store)",
            AccountAuth::AccessToken(_) => {
                "unavailable: access-token login has no device keys (use a password)"
            }
        };
        self.args.board.update(self.id(), |s| {
            s.user_id = Some(user_id);
            s.device_id = Some(device_id);
            s.encryption = Some(encryption.to_owned());
        });
        if let Some(old) = self.turns.take() {
            old.shutdown(self.args.drain).await;
        }
        self.start_children(myself).await;
        let (spec, client) = (&self.args.spec, &connection.client);
        let listed = spec.conversation.room_allowlist.iter();
        let named = listed.chain(spec.room_routes.keys()).cloned().collect();
        let aliases = invites::resolve_aliases(client, named).await;
        // A new connection starts with empty logs: what happened while away is fetched.
        let heard = Heard::new(spec.conversation.history_max_messages);
        let rooms = Rooms::new(connection.client.clone(), self.joined_dms.clone(), heard);
        let allowed = spec.conversation.room_allowlist.iter();
        let access = Access::new(
            &spec.conversation,
            allowed.filter_map(|entry| aliases.get(entry).cloned()),
        );
        let screen = Screen::new(
            self.args.spec.clone(),
            access.clone(),
            rooms.clone(),
            connection.user_id.clone(),
            self.args.board.clone(),
        );
        let live = Live {
            rooms,
            access,
            screen: Arc::new(screen),
            connection,
        };
        let mut turns = Turns::new(TurnArgs {
            spec: self.args.spec.clone(),
            client: live.connection.client.clone(),
            rooms: live.rooms.clone(),
            user_id: live.connection.user_id.clone(),
            backend: self.args.backend.clone(),
            store: self.args.store.clone(),
            board: self.args.board.clone(),
            access: live.access.clone(),
            aliases,
            children: self.children.clone(),
        });
        self.dispatch_pending(&mut turns).await;
        self.turns = Some(turns);
        if matches!(self.args.spec.auth, AccountAuth::Password(_)) {
            let crypto = self.crypto_args(&live);
            self.children.spawn_crypto(myself.get_cell(), crypto).await;
        }
        self.connection = Some(live);
        let _ = myself.cast(AccountMsg::StartSync);
    }

    /// The stream editor and, with self-approval, the OTP gate (each unless already running).
    async fn start_children(&mut self, myself: &ActorRef<AccountMsg>) {
        if self.children.editor.get().is_none() {
            let board = &self.args.board;
            let (id, parent) = (self.args.spec.id.as_str(), myself.get_cell());
            self.children.spawn_editor(parent, board, id).await;
        }
        let conv = &self.args.spec.conversation;
        let wants_otp = conv.otp_self_approval && conv.dm_policy == AccessPolicy::Allowlist;
        if wants_otp && self.children.otp.get().is_none() {
            self.spawn_otp_gate(myself).await;
        }
    }

    async fn spawn_otp_gate(&mut self, myself: &ActorRef<AccountMsg>) {
        let conv = &self.args.spec.conversation;
        let args = OtpArgs {
            account: self.args.spec.id.clone(),
            store: self.args.store.clone(),
            policy: OtpPolicy {
                ttl: Duration::from_secs(conv.otp_ttl_secs),
                cooldown: Duration::from_secs(conv.otp_cooldown_secs),
                challenges_per_hour: conv.otp_challenges_per_hour,
            },
        };
        let parent = myself.get_cell();
        self.children
            .spawn_otp_gate(parent, args, &self.args.board)
            .await;
    }

    /// Messages claimed but never answered: by a previous process, or queued in turns drained
    /// by a reconnect (after a soft logout).
    async fn dispatch_pending(&self, turns: &mut Turns) {
        match self.args.store.pending::<InboundMessage>(self.id()).await {
            Ok((pending, corrupt)) => {
                for e in corrupt {
                    error!(error = %e, "corrupt inbox entry left in place");
                }
                if !pending.is_empty() {
                    info!(count = pending.len(), "answering messages left pending");
                }
                pending
                    .into_iter()
                    .for_each(|entry| turns.dispatch_pending(entry));
            }
            Err(e) => error!(error = %e, "could not read pending messages"),
        }
    }

    fn on_synced(&mut self, synced: Synced) {
        if let Some(live) = &self.connection {
            let (spec, store) = (&self.args.spec, &self.args.store);
            invites::answer_invites(&live.rooms, spec, &live.access, synced.invites);
            invites::follow_upgrades(&live.rooms, store, spec, &live.access, synced.upgrades);
        }
        if let Some(turns) = self.turns.as_mut() {
            for utd in synced.utds {
                turns.report_undecryptable(utd);
            }
            for (message, ticket) in synced.fresh {
                let arrival = Arrival {
                    trace: synced.trace.clone(),
                    at: synced.arrived,
                    // Claimed by this process's sync, with its first attempt counted.
                    counted: true,
                };
                turns.dispatch(message, ticket, arrival);
            }
        }
    }

    async fn start_sync(&mut self, myself: &ActorRef<AccountMsg>) {
        let Some(live) = &self.connection else {
            return;
        };
        if self.sync.is_some() {
            return;
        }
        let args = SyncArgs {
            spec: self.args.spec.clone(),
            client: live.connection.client.clone(),
            user_id: live.connection.user_id.clone(),
            store: self.args.store.clone(),
            board: self.args.board.clone(),
            parent: myself.clone(),
            screen: live.screen.clone(),
            heard: live.rooms.heard().clone(),
            names: live.rooms.names().clone(),
        };
        match Actor::spawn_linked(None, SyncActor, args, myself.get_cell()).await {
            Ok((sync, _)) => {
                self.tracker.started(Instant::now());
                self.sync = Some(sync);
                self.args
                    .board
                    .update(self.id(), |s| s.sync = ChildState::Running);
            }
            Err(e) => {
                warn!(error = %e, "could not start the sync actor");
                let failure = AccountError::ChildGone("sync actor");
                self.on_failure(myself, failure, Retry::Sync).await;
            }
        }
    }

    /// A child failed or stopped: the sync is restarted after a backoff (or the account ends,
    /// as its failure says); the other children are restarted at once.
    async fn on_child_event(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        event: SupervisionEvent,
    ) -> Result<(), ActorProcessingErr> {
        let is_sync = |cell: &ractor::ActorCell| {
            self.sync
                .as_ref()
                .is_some_and(|s| s.get_id() == cell.get_id())
        };
        match event {
            SupervisionEvent::ActorFailed(cell, error) if is_sync(&cell) => {
                self.sync = None;
                let failure = match error.downcast::<AccountError>() {
                    Ok(failure) => *failure,
                    Err(other) => {
                        warn!(error = %other, "the sync actor crashed");
                        AccountError::Panicked("the sync actor")
                    }
                };
                self.on_failure(myself, failure, Retry::Sync).await;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) if is_sync(&cell) => {
                self.sync = None;
                warn!(?reason, "sync actor stopped; restarting it");
                myself.cast(AccountMsg::StartSync)?;
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                self.restart_child(myself, &cell, &error.to_string()).await
            }
            _ => {}
        }
        Ok(())
    }

    async fn restart_child(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        cell: &ractor::ActorCell,
        error: &str,
    ) {
        match self.children.which(cell) {
            Some(Child::Editor) => {
                // Deliveries in flight are lost with it; their drafts are finished at the next
                // start, and their messages stay pending.
                warn!(%error, "stream editor crashed; restarting it");
                let (board, id) = (&self.args.board, self.args.spec.id.as_str());
                self.children
                    .spawn_editor(myself.get_cell(), board, id)
                    .await;
            }
            Some(Child::Crypto) => {
                warn!(%error, "crypto actor crashed; restarting it");
                if let Some(live) = &self.connection {
                    let crypto = self.crypto_args(live);
                    self.children.spawn_crypto(myself.get_cell(), crypto).await;
                }
            }
            Some(Child::OtpGate) => {
                // Its state is all in redb: a new gate carries on where it stopped.
                warn!(%error, "OTP gate crashed; restarting it");
                self.spawn_otp_gate(myself).await;
            }
            None => {}
        }
    }

    async fn on_failure(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        failure: AccountError,
        retry: Retry,
    ) {
        let has_password = matches!(self.args.spec.auth, AccountAuth::Password(_));
        match failure.class() {
            FailureClass::Auth { soft_logout: true } if has_password => {
                warn!(error = %failure, "soft logout: logging in again into the same device");
                // The mark is committed before the reconnect that reads it.
                if let Err(e) = mark_relogin(&self.args.store, self.id()).await {
                    let failure = AccountError::Store(e);
                    return self.end(myself, AccountState::Failed, &failure, REASON_FAILED);
                }
                self.retire_connection().await;
                let decision = self.tracker.failed(Instant::now(), rand::random(), None);
                self.schedule(myself, &failure, Retry::Connect, decision, false);
            }
            // A session that synced and then died was logged out; a rejected login or token
            // is a credentials problem.
            FailureClass::Auth { .. } => {
                let reason = match retry {
                    Retry::Sync => REASON_LOGGED_OUT,
                    Retry::Connect => REASON_AUTH_FAILED,
                };
                self.end(myself, AccountState::AuthFailed, &failure, reason)
            }
            FailureClass::Fatal => self.end(myself, AccountState::Failed, &failure, REASON_FAILED),
            FailureClass::RateLimited(after) => {
                let decision = self.tracker.failed(Instant::now(), rand::random(), after);
                self.schedule(myself, &failure, retry, decision, false);
            }
            FailureClass::Transient => self.back_off(myself, &failure, retry).await,
            FailureClass::Storage => {
                // Not the account's doing either: not counted towards parking, and retried
                // often (a retry is a local check and one sync) so it resumes soon after space
                // returns.
                let mut decision = self.tracker.outage(Instant::now(), rand::random());
                decision.delay = decision.delay.min(DEGRADED_RETRY_MAX);
                self.schedule(myself, &failure, retry, decision, false);
            }
        }
    }

    /// Backs off after a transient failure. An outage (the homeserver does not answer a
    /// probe either) is not the account's doing: it is not counted towards parking, and the
    /// account retries the moment its homeserver answers again.
    async fn back_off(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        failure: &AccountError,
        retry: Retry,
    ) {
        let homeserver = self.args.spec.homeserver.clone();
        let outage = !self.args.homeservers.answers(&homeserver).await;
        let (now, unit) = (Instant::now(), rand::random::<f64>());
        let decision = match outage {
            true => self.tracker.outage(now, unit),
            false => self.tracker.failed(now, unit, None),
        };
        let generation = self.schedule(myself, failure, retry, decision, outage);
        if outage {
            let back = self.args.homeservers.back_up(&homeserver);
            let me = myself.clone();
            let waiter = tokio::spawn(async move {
                back.await;
                let _ = me.cast(AccountMsg::Retry {
                    what: retry,
                    generation,
                });
            });
            if let Some(old) = self.outage_waiter.replace(waiter) {
                old.abort();
            }
        }
    }

    /// Restarts `retry` after `decision`'s delay; returns the retry's generation (a retry of an
    /// older generation is stale and ignored).
    fn schedule(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        failure: &AccountError,
        retry: Retry,
        decision: RestartDecision,
        outage: bool,
    ) -> u64 {
        let delay_ms = u64::try_from(decision.delay.as_millis()).unwrap_or(u64::MAX);
        let until = now_ms().saturating_add(delay_ms);
        let board = &self.args.board;
        let state = match failure.class() {
            FailureClass::Storage => AccountState::Degraded,
            _ => AccountState::Backoff,
        };
        board.transition(self.id(), state, Some(failure.to_string()));
        measure::count(
            measure::RESTARTS,
            self.id(),
            restart_reason(failure.class()),
            1,
        );
        board.update(self.id(), |s| {
            s.backoff_until_ms = Some(until);
            s.restarts += 1;
            if matches!(retry, Retry::Sync) {
                s.sync = ChildState::Restarting;
            }
        });
        info!(
            delay_ms,
            attempt = decision.attempt,
            parked = decision.parked,
            outage,
            what = ?retry,
            "restarting after backoff"
        );
        self.retry_generation = self.retry_generation.wrapping_add(1);
        let generation = self.retry_generation;
        let message = move || AccountMsg::Retry {
            what: retry,
            generation,
        };
        ractor::time::send_after(decision.delay, myself.get_cell(), message);
        generation
    }

    /// A scheduled retry arrived: carried out unless a newer failure or the other waker of the
    /// same retry came first.
    async fn on_retry(&mut self, myself: &ActorRef<AccountMsg>, what: Retry, generation: u64) {
        if generation != self.retry_generation {
            return;
        }
        self.retry_generation = self.retry_generation.wrapping_add(1);
        if let Some(waiter) = self.outage_waiter.take() {
            waiter.abort();
        }
        // After a storage fault the database may need opening again before anything else.
        if let Err(e) = self.args.store.recover().await {
            return self.on_failure(myself, AccountError::Store(e), what).await;
        }
        match what {
            Retry::Connect => self.start_connect(myself),
            Retry::Sync => self.start_sync(myself).await,
        }
    }

    /// Lets go of the current client before another one is built for the same device: its
    /// turns are drained and its crypto actor stopped, so nothing keeps it (and the account's
    /// store lock) alive. What was in flight stays pending in the inbox.
    async fn retire_connection(&mut self) {
        if let Some(turns) = self.turns.take() {
            turns.shutdown(self.args.drain).await;
        }
        if let Some(crypto) = self.children.crypto.set(None) {
            crypto.stop(None);
        }
        self.connection = None;
    }

    /// What the `CryptoActor` of `live` needs.
    fn crypto_args(&self, live: &Live) -> CryptoArgs {
        CryptoArgs {
            spec: self.args.spec.clone(),
            client: live.connection.client.clone(),
            user_id: live.connection.user_id.clone(),
            board: self.args.board.clone(),
            store: self.args.store.clone(),
        }
    }

    /// Ends the account without a crash, so nothing restarts it.
    fn end(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        state: AccountState,
        failure: &AccountError,
        reason: &str,
    ) {
        error!(error = %failure, "account stopped: {reason}");
        self.args
            .board
            .transition(self.id(), state, Some(failure.to_string()));
        myself.stop(Some(reason.to_owned()));
    }
}

/// Marks the stored session so the next connect logs in again with the password, same device.
async fn mark_relogin(store: &Store, account: &str) -> Result<(), mxfleet_store::StoreError> {
    if let Some(mut session) = store.session(account).await? {
        session.needs_relogin = true;
        store.save_session(account, &session).await?;
    }
    Ok(())
}

/// The `reason` label a restart after a failure of `class` is counted under.
fn restart_reason(class: FailureClass) -> &'static str {
    match class {
        FailureClass::Transient => "network",
        FailureClass::RateLimited(_) => "rate_limited",
        FailureClass::Auth { .. } => "auth",
        FailureClass::Storage => "storage",
        FailureClass::Fatal => "fatal",
    }
}
