//! `AccountActor`: one per configured account; owns its client and supervises its children.
//!
//! Lifecycle: `Starting` → connect (restore or log in, on a task so the mailbox stays free) →
//! spawn the `SyncActor` → `Syncing`. A failed sync is classified: transient failures restart the
//! sync after a backoff (`Backoff`), a soft logout re-logs in into the same device, an auth
//! failure ends the account normally as `auth_failed`, a permanent one as `failed`. Ending
//! normally (not crashing) is what keeps the fleet supervisor from restarting it in a loop.

use std::{path::PathBuf, sync::Arc, time::Duration};

use mxfleet_backend::Backend;
use mxfleet_config::{AccessPolicy, AccountAuth, AccountSpec};
use mxfleet_matrix::{
    Connection, FailureClass, InboundMessage, MatrixFailure, Undecryptable, connect,
    matrix_sdk::ruma::OwnedRoomId,
};
use mxfleet_store::{InboxEntry, Store, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span, warn};

use crate::{
    crypto::{CryptoActor, CryptoArgs},
    gate::{self, Access, InviteVerdict, RoomFacts},
    otp::{OtpArgs, OtpGate, OtpMsg, OtpPolicy},
    responder::{CryptoHandle, EditorHandle, JoinedDms, OtpHandle, Responder, ResponderArgs},
    restart::{RestartPolicy, RestartTracker},
    status::{AccountState, ChildState, StatusBoard},
    stream_editor::StreamEditor,
    sync::{SyncActor, SyncArgs},
    upgrades::{self, Upgrade},
};

/// Stop reason of an account whose credentials were rejected.
pub const REASON_AUTH_FAILED: &str = "auth_failed";
/// Stop reason of an account with a permanent error.
pub const REASON_FAILED: &str = "failed";
/// Stop reason of an account stopped on request (shutdown, operator).
pub const REASON_STOPPED: &str = "stopped";

/// How long in-flight replies get when the account stops.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Invite joins are retried this many times (Synapse may not have the room ready yet).
const JOIN_ATTEMPTS: usize = 3;

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
}

/// Messages of the account actor.
pub(crate) enum AccountMsg {
    /// (Re)connect: restore or log in.
    Connect,
    /// The connect task finished.
    Connected(Result<Connection, MatrixFailure>),
    /// Spawn the sync child.
    StartSync,
    /// A sync batch committed new messages or invites, or met undecryptable events.
    Synced {
        /// Newly claimed messages.
        fresh: Vec<InboxEntry<InboundMessage>>,
        /// Rooms the bot is invited to.
        invites: Vec<OwnedRoomId>,
        /// Events that could not be decrypted.
        utds: Vec<Undecryptable>,
        /// Rooms the bot is in that were upgraded to rooms it has not joined.
        upgrades: Vec<Upgrade>,
    },
}

/// The account actor's state.
pub(crate) struct AccountRuntime {
    args: AccountArgs,
    connection: Option<Connection>,
    sync: Option<ActorRef<crate::sync::SyncMsg>>,
    responder: Option<Responder>,
    tracker: RestartTracker,
    editor: EditorHandle,
    otp: OtpHandle,
    joined_dms: JoinedDms,
    crypto: CryptoHandle,
    access: Access,
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
        let tracker = RestartTracker::new(args.policy.clone());
        Ok(AccountRuntime {
            args,
            connection: None,
            sync: None,
            responder: None,
            tracker,
            editor: EditorHandle::default(),
            otp: OtpHandle::default(),
            joined_dms: JoinedDms::default(),
            crypto: CryptoHandle::default(),
            access: Access::default(),
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
                    state.on_failure(&myself, failure, Retry::Connect).await
                }
                AccountMsg::StartSync => state.start_sync(&myself).await,
                AccountMsg::Synced {
                    fresh,
                    invites,
                    utds,
                    upgrades,
                } => {
                    state.join_invites(invites);
                    state.follow_upgrades(upgrades);
                    if let Some(responder) = state.responder.as_mut() {
                        utds.into_iter()
                            .for_each(|utd| responder.report_undecryptable(utd));
                        fresh
                            .into_iter()
                            .for_each(|entry| responder.dispatch(entry));
                    }
                }
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
        let is_sync = |cell: &ractor::ActorCell| {
            state
                .sync
                .as_ref()
                .is_some_and(|s| s.get_id() == cell.get_id())
        };
        match event {
            SupervisionEvent::ActorFailed(cell, error) if is_sync(&cell) => {
                state.sync = None;
                let failure = match error.downcast_ref::<MatrixFailure>() {
                    Some(failure) => failure.clone(),
                    None => MatrixFailure::new(
                        FailureClass::Transient,
                        format!("sync actor crashed: {error}"),
                    ),
                };
                let span = info_span!("account", account = %state.args.spec.id);
                state
                    .on_failure(&myself, failure, Retry::Sync)
                    .instrument(span)
                    .await;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) if is_sync(&cell) => {
                state.sync = None;
                warn!(account = %state.args.spec.id, ?reason, "sync actor stopped; restarting it");
                myself.cast(AccountMsg::StartSync)?;
            }
            SupervisionEvent::ActorFailed(cell, error) if state.editor.is(&cell) => {
                // Deliveries in flight are lost with it; their drafts are finished at the next
                // start, and their messages stay pending.
                warn!(account = %state.args.spec.id, %error, "stream editor crashed; restarting it");
                state.spawn_editor(&myself).await;
            }
            SupervisionEvent::ActorFailed(cell, error) if state.crypto.is(&cell) => {
                warn!(account = %state.args.spec.id, %error, "crypto actor crashed; restarting it");
                state.spawn_crypto(&myself).await;
            }
            SupervisionEvent::ActorFailed(cell, error) if state.otp.is(&cell) => {
                // Its state is all in redb: a new gate carries on where it stopped.
                warn!(account = %state.args.spec.id, %error, "OTP gate crashed; restarting it");
                state.spawn_otp_gate(&myself).await;
            }
            _ => {}
        }
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
                .stop_and_wait(Some(REASON_STOPPED.into()), Some(DRAIN_DEADLINE))
                .await;
        }
        if let Some(responder) = state.responder.take() {
            responder.shutdown(DRAIN_DEADLINE).await;
        }
        let children = [
            state.editor.set(None).map(|c| c.get_cell()),
            state.crypto.set(None).map(|c| c.get_cell()),
            state.otp.set(None).map(|c| c.get_cell()),
        ];
        for child in children.into_iter().flatten() {
            child.stop(Some(REASON_STOPPED.into()));
        }
        let id = &state.args.spec.id;
        state.args.board.update(id, |s| {
            s.sync = ChildState::Stopped;
            s.stream_editor = ChildState::Stopped;
            s.otp_gate = s.otp_gate.map(|_| ChildState::Stopped);
            s.crypto = s.crypto.map(|_| ChildState::Stopped);
        });
        if state
            .args
            .board
            .account(id)
            .is_some_and(|s| !matches!(s.state, AccountState::AuthFailed | AccountState::Failed))
        {
            state.args.board.transition(id, AccountState::Stopped, None);
        }
        Ok(())
    }
}

/// What to retry after a transient failure.
#[derive(Debug, Clone, Copy)]
enum Retry {
    Connect,
    Sync,
}

impl AccountRuntime {
    fn id(&self) -> &str {
        &self.args.spec.id
    }

    fn start_connect(&mut self, myself: &ActorRef<AccountMsg>) {
        self.args
            .board
            .transition(self.id(), AccountState::Connecting, None);
        let (spec, store, data_dir) = (
            self.args.spec.clone(),
            self.args.store.clone(),
            self.args.data_dir.clone(),
        );
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

    async fn on_connected(&mut self, myself: &ActorRef<AccountMsg>, connection: Connection) {
        let (user_id, device_id) = (
            connection.user_id.to_string(),
            connection.device_id.to_string(),
        );
        self.args.board.update(self.id(), |s| {
            s.user_id = Some(user_id);
            s.device_id = Some(device_id);
        });
        if let Some(old) = self.responder.take() {
            old.shutdown(DRAIN_DEADLINE).await;
        }
        if self.editor.get().is_none() {
            self.spawn_editor(myself).await;
        }
        let conv = &self.args.spec.conversation;
        let wants_otp = conv.otp_self_approval && conv.dm_policy == AccessPolicy::Allowlist;
        let otp_running = self.otp.get().is_some();
        if wants_otp && !otp_running {
            self.spawn_otp_gate(myself).await;
        }
        let encryption = match self.args.spec.auth {
            AccountAuth::Password(_) => "available (own device and crypto store)",
            AccountAuth::AccessToken(_) => {
                "unavailable: access-token login has no device keys (use a password)"
            }
        };
        self.args
            .board
            .update(self.id(), |s| s.encryption = Some(encryption.to_owned()));
        self.access = Access::new(
            &self.args.spec.conversation,
            resolve_aliases(
                &connection.client,
                &self.args.spec.conversation.room_allowlist,
            )
            .await,
        );
        let mut responder = Responder::new(ResponderArgs {
            spec: self.args.spec.clone(),
            client: connection.client.clone(),
            user_id: connection.user_id.clone(),
            backend: self.args.backend.clone(),
            store: self.args.store.clone(),
            board: self.args.board.clone(),
            access: self.access.clone(),
            editor: self.editor.clone(),
            otp: self.otp.clone(),
            joined_dms: self.joined_dms.clone(),
            crypto: self.crypto.clone(),
        });
        // Messages claimed but never answered: by a previous process, or queued in the
        // responder drained above (a reconnect after a soft logout).
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
                    .for_each(|entry| responder.dispatch(entry));
            }
            Err(e) => error!(error = %e, "could not read pending messages"),
        }

        self.responder = Some(responder);
        self.connection = Some(connection);
        if matches!(self.args.spec.auth, AccountAuth::Password(_)) {
            self.spawn_crypto(myself).await;
        }
        let _ = myself.cast(AccountMsg::StartSync);
    }

    async fn start_sync(&mut self, myself: &ActorRef<AccountMsg>) {
        let Some(connection) = &self.connection else {
            return;
        };
        if self.sync.is_some() {
            return;
        }
        let args = SyncArgs {
            spec: self.args.spec.clone(),
            client: connection.client.clone(),
            user_id: connection.user_id.clone(),
            store: self.args.store.clone(),
            board: self.args.board.clone(),
            parent: myself.clone(),
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
                let failure = MatrixFailure::new(
                    FailureClass::Transient,
                    format!("could not start the sync actor: {e}"),
                );
                self.on_failure(myself, failure, Retry::Sync).await;
            }
        }
    }

    async fn on_failure(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        failure: MatrixFailure,
        retry: Retry,
    ) {
        let has_password = matches!(self.args.spec.auth, AccountAuth::Password(_));
        match failure.class {
            FailureClass::Auth { soft_logout: true } if has_password => {
                warn!(error = %failure, "soft logout: logging in again into the same device");
                if let Err(e) = self.mark_relogin().await {
                    return self.end(
                        myself,
                        AccountState::Failed,
                        format!("{failure}; and {e}"),
                        REASON_FAILED,
                    );
                }
                self.connection = None;
                self.schedule(myself, failure, Retry::Connect, None);
            }
            FailureClass::Auth { .. } => self.end(
                myself,
                AccountState::AuthFailed,
                failure.to_string(),
                REASON_AUTH_FAILED,
            ),
            FailureClass::Fatal => self.end(
                myself,
                AccountState::Failed,
                failure.to_string(),
                REASON_FAILED,
            ),
            FailureClass::RateLimited(after) => self.schedule(myself, failure, retry, after),
            FailureClass::Transient => self.schedule(myself, failure, retry, None),
        }
    }

    /// Restarts `retry` after the backoff.
    fn schedule(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        failure: MatrixFailure,
        retry: Retry,
        at_least: Option<Duration>,
    ) {
        let decision = self
            .tracker
            .failed(Instant::now(), rand::random::<f64>(), at_least);
        let until = now_ms() + decision.delay.as_millis() as u64;
        self.args
            .board
            .transition(self.id(), AccountState::Backoff, Some(failure.to_string()));
        self.args.board.update(self.id(), |s| {
            s.backoff_until_ms = Some(until);
            s.restarts += 1;
            if matches!(retry, Retry::Sync) {
                s.sync = ChildState::Restarting;
            }
        });
        info!(
            delay_ms = decision.delay.as_millis() as u64,
            attempt = decision.attempt,
            parked = decision.parked,
            what = ?retry,
            "restarting after backoff"
        );
        let message: fn() -> AccountMsg = match retry {
            Retry::Connect => || AccountMsg::Connect,
            Retry::Sync => || AccountMsg::StartSync,
        };
        ractor::time::send_after(decision.delay, myself.get_cell(), message);
    }

    /// Ends the account without a crash, so nothing restarts it.
    fn end(
        &mut self,
        myself: &ActorRef<AccountMsg>,
        state: AccountState,
        error: String,
        reason: &str,
    ) {
        error!(%error, "account stopped: {reason}");
        self.args.board.transition(self.id(), state, Some(error));
        myself.stop(Some(reason.to_owned()));
    }

    async fn mark_relogin(&self) -> Result<(), mxfleet_store::StoreError> {
        if let Some(mut session) = self.args.store.session(self.id()).await? {
            session.needs_relogin = true;
            self.args.store.save_session(self.id(), &session).await?;
        }
        Ok(())
    }

    /// Starts the `StreamEditor` child; without one, answers are streamed by the room workers.
    async fn spawn_editor(&mut self, myself: &ActorRef<AccountMsg>) {
        let editor = match Actor::spawn_linked(None, StreamEditor, (), myself.get_cell()).await {
            Ok((editor, _)) => Some(editor),
            Err(e) => {
                warn!(error = %e, "could not start the stream editor; answers are streamed inline");
                None
            }
        };
        let state = if editor.is_some() {
            ChildState::Running
        } else {
            ChildState::Stopped
        };
        self.args
            .board
            .update(self.id(), |s| s.stream_editor = state);
        self.editor.set(editor);
    }

    /// Starts the `CryptoActor` for the current connection.
    async fn spawn_crypto(&mut self, myself: &ActorRef<AccountMsg>) {
        let Some(connection) = &self.connection else {
            return;
        };
        let args = CryptoArgs {
            spec: self.args.spec.clone(),
            client: connection.client.clone(),
            user_id: connection.user_id.clone(),
            board: self.args.board.clone(),
            store: self.args.store.clone(),
        };
        if let Some(old) = self.crypto.set(None) {
            old.stop(None);
        }
        let (actor, state) =
            match Actor::spawn_linked(None, CryptoActor, args, myself.get_cell()).await {
                Ok((crypto, _)) => (Some(crypto), ChildState::Running),
                Err(e) => {
                    warn!(error = %e, "could not start the crypto actor");
                    (None, ChildState::Stopped)
                }
            };
        self.crypto.set(actor);
        self.args
            .board
            .update(self.id(), |s| s.crypto = Some(state));
    }

    /// Starts the `OtpGate` child; without one, unknown senders' DMs stay pending.
    async fn spawn_otp_gate(&mut self, myself: &ActorRef<AccountMsg>) {
        let conv = &self.args.spec.conversation;
        let args = OtpArgs {
            account: self.args.spec.id.clone(),
            store: self.args.store.clone(),
            policy: OtpPolicy {
                ttl: Duration::from_secs(conv.otp_ttl_secs),
                cooldown: Duration::from_secs(conv.otp_cooldown_secs),
            },
        };
        let gate: Option<ActorRef<OtpMsg>> =
            match Actor::spawn_linked(None, OtpGate, args, myself.get_cell()).await {
                Ok((gate, _)) => Some(gate),
                Err(e) => {
                    warn!(error = %e, "could not start the OTP gate");
                    None
                }
            };
        let state = if gate.is_some() {
            ChildState::Running
        } else {
            ChildState::Restarting
        };
        self.args
            .board
            .update(self.id(), |s| s.otp_gate = Some(state));
        self.otp.set(gate);
    }

    /// Follows each room upgrade the gate would follow (see `upgrades`).
    fn follow_upgrades(&self, upgrades: Vec<Upgrade>) {
        let Some(connection) = &self.connection else {
            return;
        };
        for upgrade in upgrades {
            let client = connection.client.clone();
            let store = self.args.store.clone();
            let spec = self.args.spec.clone();
            let access = self.access.clone();
            let joined_dms = self.joined_dms.clone();
            let span = info_span!(parent: None, "upgrade", account = %spec.id, room = %upgrade.old);
            tokio::spawn(
                async move {
                    upgrades::follow(&client, &store, &spec, &access, &joined_dms, upgrade).await;
                }
                .instrument(span),
            );
        }
    }

    /// Joins or rejects each invite as `auto_join` and the access policies say.
    fn join_invites(&self, invites: Vec<OwnedRoomId>) {
        let Some(connection) = &self.connection else {
            return;
        };
        for room_id in invites {
            let client = connection.client.clone();
            let conversation = self.args.spec.conversation.clone();
            let access = self.access.clone();
            let joined_dms = self.joined_dms.clone();
            let span =
                info_span!(parent: None, "invite", account = %self.args.spec.id, room = %room_id);
            tokio::spawn(
                async move {
                    use backon::{ExponentialBuilder, Retryable};
                    let Some(room) = client.get_room(&room_id) else {
                        return;
                    };
                    let inviter = match room.invite_details().await {
                        Ok(invite) => invite.inviter_id.to_string(),
                        Err(e) => {
                            warn!(error = %e, "invite without details; left alone");
                            return;
                        }
                    };
                    let facts = RoomFacts {
                        room_id: room_id.to_string(),
                        is_dm: room.is_direct().await.unwrap_or(false),
                        aliases: room.canonical_alias().into_iter().map(|a| a.to_string()).collect(),
                        predecessors: upgrades::confirmed_predecessors(&client, &room),
                    };
                    match gate::decide_invite(&conversation, &access, &facts, &inviter) {
                        InviteVerdict::Join => {
                            let join = || client.join_room_by_id(&room_id);
                            match join
                                .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(500)).with_max_times(JOIN_ATTEMPTS))
                                .await
                            {
                                Ok(_) => {
                                    if facts.is_dm {
                                        joined_dms
                                            .write()
                                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                                            .insert(room_id.to_string());
                                    }
                                    info!(%inviter, dm = facts.is_dm, "joined room on invite");
                                }
                                Err(e) => warn!(error = %MatrixFailure::from_sdk("joining", &e), "could not join invited room"),
                            }
                        }
                        InviteVerdict::Reject(reason) => match room.leave().await {
                            Ok(()) => info!(%inviter, reason, "invite rejected"),
                            Err(e) => warn!(error = %e, "could not reject the invite"),
                        },
                        InviteVerdict::Leave => info!(%inviter, "invite left alone (auto_join = off)"),
                    }
                }
                .instrument(span),
            );
        }
    }
}

/// Room ids of the aliases in `entries` (room ids are kept as they are); aliases that do not
/// resolve are logged and left out.
async fn resolve_aliases(
    client: &mxfleet_matrix::matrix_sdk::Client,
    entries: &[String],
) -> Vec<String> {
    use mxfleet_matrix::matrix_sdk::ruma::OwnedRoomAliasId;
    let mut ids = Vec::new();
    for entry in entries.iter().filter(|e| e.starts_with('#')) {
        let Ok(alias) = OwnedRoomAliasId::try_from(entry.as_str()) else {
            warn!(alias = %entry, "not a valid room alias");
            continue;
        };
        match client.resolve_room_alias(&alias).await {
            Ok(response) => ids.push(response.room_id.to_string()),
            Err(e) => {
                warn!(alias = %entry, error = %e, "room alias not resolved; it matches only rooms that carry it")
            }
        }
    }
    ids
}
