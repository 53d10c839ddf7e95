//! `CryptoActor`: the account's device ownership (cross-signing) and verification by chat, one
//! per password account.
//!
//! With `ownership_mode = "bot_owned"` it makes the bot own its cross-signing identity and sign
//! its device (see `mxfleet_matrix::crypto`), retrying transient failures every 30 s; with
//! `user_managed` it leaves cross-signing alone and puts what the owner needs to verify the
//! device (user id, device id, display name) in the status.
//!
//! Verification: a request (to-device, or in a room) from a user in `user_allowlist` (or the
//! bot's own user) is accepted; once the keys are exchanged the bot posts the seven SAS emoji in
//! the chat (the request's room, or the DM with that user) and waits: `verify yes` confirms,
//! `verify no` reports a mismatch, `verify show` repeats the emoji, `verify cancel` stops. The
//! bot never confirms on its own. Requests from anyone else are declined; a flow not finished
//! within `verification_timeout_secs` is cancelled.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use mxfleet_config::{AccountAuth, AccountSpec, OwnershipMode};
use mxfleet_matrix::{
    FailureClass,
    crypto::{Ownership, RecoveryOutcome, ensure_bot_owned, ensure_recovery},
    matrix_sdk::{
        Client, Room,
        encryption::verification::{
            SasState, SasVerification, Verification, VerificationRequest, VerificationRequestState,
        },
        event_handler::EventHandlerHandle,
        ruma::{
            OwnedRoomId, OwnedUserId,
            events::{
                key::verification::request::ToDeviceKeyVerificationRequestEvent,
                room::message::{
                    MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
                },
            },
        },
    },
    send_content, transaction_id,
};
use mxfleet_store::Store;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::{error::AccountError, status::StatusBoard, texts};

/// How long after a transient failure the bootstrap is tried again.
const RETRY: Duration = Duration::from_secs(30);

/// The words of a verification by chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyWord {
    /// The emoji match: confirm.
    Yes,
    /// They do not: cancel as a mismatch.
    No,
    /// Show the emoji again.
    Show,
    /// Stop the verification.
    Cancel,
}

/// The crypto child of an account.
pub(crate) struct CryptoActor;

/// What it needs.
pub(crate) struct CryptoArgs {
    pub(crate) spec: Arc<AccountSpec>,
    pub(crate) client: Client,
    pub(crate) user_id: OwnedUserId,
    pub(crate) board: StatusBoard,
    pub(crate) store: Store,
}

/// Its state: the arguments, the event handlers it registered, the verification flows.
pub(crate) struct CryptoState {
    args: CryptoArgs,
    handlers: Vec<EventHandlerHandle>,
    flows: HashMap<OwnedUserId, Flow>,
    /// A cross-signing upload was refused (approval pending, a failure): the next try uploads
    /// again whatever the local store says.
    upload_pending: bool,
}

/// One verification in progress, per user.
struct Flow {
    flow_id: String,
    request: VerificationRequest,
    sas: Option<SasVerification>,
    room: Option<Room>,
    emojis: Option<String>,
}

/// Its messages.
pub(crate) enum CryptoMsg {
    /// Make sure the ownership mode holds.
    Ensure,
    /// A verification request arrived (from the event handlers).
    Request {
        user: OwnedUserId,
        flow_id: String,
        room: Option<OwnedRoomId>,
    },
    /// A flow moved on (from its watcher task).
    Update {
        user: OwnedUserId,
        flow_id: String,
        update: FlowUpdate,
    },
    /// A `verify …` word from the chat; the answer to post goes back.
    Word {
        user: OwnedUserId,
        word: VerifyWord,
        reply: RpcReplyPort<String>,
    },
    /// The flow's time is up.
    Timeout { user: OwnedUserId, flow_id: String },
}

/// What a watcher saw.
pub(crate) enum FlowUpdate {
    Sas(SasVerification),
    Emojis(String),
    Done,
    Cancelled(String),
}

impl Actor for CryptoActor {
    type Msg = CryptoMsg;
    type State = CryptoState;
    type Arguments = CryptoArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CryptoMsg>,
        args: CryptoArgs,
    ) -> Result<CryptoState, ActorProcessingErr> {
        myself.cast(CryptoMsg::Ensure)?;
        // Event handlers only forward (matrix-sdk awaits them inside the sync).
        let me = myself.clone();
        let to_device =
            args.client
                .add_event_handler(move |ev: ToDeviceKeyVerificationRequestEvent| {
                    let me = me.clone();
                    async move {
                        let _ = me.cast(CryptoMsg::Request {
                            user: ev.sender,
                            flow_id: ev.content.transaction_id.to_string(),
                            room: None,
                        });
                    }
                });
        let me = myself.clone();
        let in_room =
            args.client
                .add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
                    let me = me.clone();
                    async move {
                        if let MessageType::VerificationRequest(_) = &ev.content.msgtype {
                            let _ = me.cast(CryptoMsg::Request {
                                user: ev.sender,
                                flow_id: ev.event_id.to_string(),
                                room: Some(room.room_id().to_owned()),
                            });
                        }
                    }
                });
        Ok(CryptoState {
            args,
            handlers: vec![to_device, in_room],
            flows: HashMap::new(),
            upload_pending: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CryptoMsg>,
        state: &mut CryptoState,
    ) -> Result<(), ActorProcessingErr> {
        for handle in state.handlers.drain(..) {
            state.args.client.remove_event_handler(handle);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<CryptoMsg>,
        message: CryptoMsg,
        state: &mut CryptoState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CryptoMsg::Ensure => {
                state.upload_pending =
                    ensure_ownership(&myself, &state.args, state.upload_pending).await;
            }
            CryptoMsg::Request {
                user,
                flow_id,
                room,
            } => state.on_request(&myself, user, flow_id, room).await,
            CryptoMsg::Update {
                user,
                flow_id,
                update,
            } => state.on_update(user, flow_id, update).await,
            CryptoMsg::Word { user, word, reply } => {
                let text = state.on_word(&user, word).await;
                let _ = reply.send(text);
            }
            CryptoMsg::Timeout { user, flow_id } => {
                if state.flows.get(&user).is_some_and(|f| f.flow_id == flow_id)
                    && let Some(flow) = state.flows.remove(&user)
                {
                    let _ = flow.request.cancel().await;
                    post(
                        &flow.room,
                        &flow.flow_id,
                        "timeout",
                        texts::VERIFICATION_TIMED_OUT,
                    )
                    .await;
                }
            }
        }
        Ok(())
    }
}

/// Makes the account's device owned as configured and shows how it stands; returns whether a
/// cross-signing upload is still owed (refused or failed), so the next try uploads again.
async fn ensure_ownership(
    myself: &ActorRef<CryptoMsg>,
    state: &CryptoArgs,
    upload_pending: bool,
) -> bool {
    let account = state.spec.id.as_str();
    let (line, upload_pending) = match (&state.spec.encryption.ownership_mode, &state.spec.auth) {
        (OwnershipMode::BotOwned, AccountAuth::Password(password)) => {
            // Recovery first: on a new device it restores the identity a bootstrap would
            // otherwise find foreign.
            let recovered = match recovery(state, false).await {
                Ok(outcome) => outcome.is_some(),
                Err(f) => {
                    warn!(account, error = %f, "recovery failed");
                    false
                }
            };
            let owned = ensure_bot_owned(
                &state.client,
                &state.user_id,
                password.expose(),
                upload_pending,
            )
            .await;
            // Secret storage keeps the cross-signing keys: only once the server holds them.
            let owns = matches!(owned, Ok(Ownership::AlreadyOwned | Ownership::Bootstrapped));
            if owns
                && !recovered
                && let Err(f) = recovery(state, true).await
            {
                warn!(account, error = %f, "setting up recovery failed");
            }
            match owned {
                Ok(ownership) => {
                    let line = ownership.describe();
                    info!(account, ownership = %line, "device ownership");
                    let refused = matches!(ownership, Ownership::NeedsApproval(_));
                    if refused {
                        ractor::time::send_after(RETRY, myself.get_cell(), || CryptoMsg::Ensure);
                    }
                    (line, refused)
                }
                Err(f)
                    if matches!(
                        f.class,
                        FailureClass::Transient | FailureClass::RateLimited(_)
                    ) =>
                {
                    warn!(account, error = %f, "cross-signing bootstrap failed; retrying in 30 s");
                    ractor::time::send_after(RETRY, myself.get_cell(), || CryptoMsg::Ensure);
                    (format!("bot_owned: bootstrap failed, retrying: {f}"), true)
                }
                Err(f) => {
                    warn!(account, error = %f, "cross-signing bootstrap failed");
                    (format!("bot_owned: bootstrap failed: {f}"), true)
                }
            }
        }
        _ => {
            let device = state
                .client
                .device_id()
                .map_or_else(|| "?".to_owned(), ToString::to_string);
            let line = format!(
                "user_managed: verify device {device} (\"{}\") of {} from the owner's client",
                state.spec.device_display_name, state.user_id
            );
            (line, false)
        }
    };
    state.board.update(account, |s| s.ownership = Some(line));
    upload_pending
}

/// Imports secrets with the known recovery key (configured, else kept in the data dir) if this
/// device lacks them; with `create`, sets recovery up if the account has none and keeps the key.
async fn recovery(
    state: &CryptoArgs,
    create: bool,
) -> Result<Option<RecoveryOutcome>, AccountError> {
    let account = state.spec.id.as_str();
    let kept = match &state.spec.recovery_key {
        Some(key) => Some(key.expose().to_owned()),
        None => state.store.recovery_key(account).await?,
    };
    let Some(outcome) = ensure_recovery(&state.client, kept.as_deref(), create).await? else {
        return Ok(None);
    };
    if let RecoveryOutcome::Created(key) = &outcome {
        state.store.save_recovery_key(account, key.expose()).await?;
    }
    info!(account, recovery = outcome.describe(), "recovery");
    let line = outcome.describe().to_owned();
    state.board.update(account, |s| s.recovery = Some(line));
    Ok(Some(outcome))
}

impl CryptoState {
    /// Whether `user` may verify with the bot: `user_allowlist`, or the bot's own user.
    fn trusted(&self, user: &OwnedUserId) -> bool {
        *user == self.args.user_id
            || self
                .args
                .spec
                .conversation
                .user_allowlist
                .iter()
                .any(|u| u == user.as_str())
    }

    async fn on_request(
        &mut self,
        myself: &ActorRef<CryptoMsg>,
        user: OwnedUserId,
        flow_id: String,
        room: Option<OwnedRoomId>,
    ) {
        let account = self.args.spec.id.as_str();
        let encryption = self.args.client.encryption();
        let Some(request) = encryption.get_verification_request(&user, &flow_id).await else {
            return;
        };
        if !self.trusted(&user) {
            info!(account, %user, "verification request declined: not in user_allowlist");
            let _ = request.cancel().await;
            return;
        }
        if let Some(old) = self.flows.remove(&user) {
            let _ = old.request.cancel().await;
        }
        // Watch before accepting: the other side may start the emoji flow the moment it sees
        // the acceptance, before a watcher started afterwards would be listening.
        spawn_watcher(
            myself.clone(),
            user.clone(),
            flow_id.clone(),
            request.clone(),
        );
        if let Err(e) = request.accept().await {
            warn!(account, %user, error = %e, "could not accept the verification request");
            return;
        }
        info!(account, %user, "verification request accepted");
        let room = match room {
            Some(id) => self.args.client.get_room(&id),
            None => dm_with(&self.args.client, &user).await,
        };
        post(&room, &flow_id, "accepted", texts::VERIFICATION_ACCEPTED).await;
        let timeout = Duration::from_secs(self.args.spec.encryption.verification_timeout_secs);
        let (u, f) = (user.clone(), flow_id.clone());
        ractor::time::send_after(timeout, myself.get_cell(), move || CryptoMsg::Timeout {
            user: u,
            flow_id: f,
        });
        self.flows.insert(
            user,
            Flow {
                flow_id,
                request,
                sas: None,
                room,
                emojis: None,
            },
        );
    }

    async fn on_update(&mut self, user: OwnedUserId, flow_id: String, update: FlowUpdate) {
        let Some(flow) = self.flows.get_mut(&user).filter(|f| f.flow_id == flow_id) else {
            return;
        };
        match update {
            FlowUpdate::Sas(sas) => flow.sas = Some(sas),
            FlowUpdate::Emojis(text) => {
                let message = texts::verification_emoji(&text);
                flow.emojis = Some(text);
                post(&flow.room, &flow.flow_id, "emoji", &message).await;
            }
            FlowUpdate::Done => {
                info!(account = %self.args.spec.id, %user, "verification done");
                post(&flow.room, &flow.flow_id, "done", texts::VERIFICATION_DONE).await;
                self.flows.remove(&user);
            }
            FlowUpdate::Cancelled(reason) => {
                info!(account = %self.args.spec.id, %user, %reason, "verification cancelled");
                let text = texts::verification_cancelled(&reason);
                post(&flow.room, &flow.flow_id, "cancelled", &text).await;
                self.flows.remove(&user);
            }
        }
    }

    async fn on_word(&mut self, user: &OwnedUserId, word: VerifyWord) -> String {
        let Some(flow) = self.flows.get(user) else {
            return texts::NO_VERIFICATION.into();
        };
        match (word, &flow.sas, &flow.emojis) {
            (VerifyWord::Show, _, Some(text)) => texts::verification_emoji_again(text),
            (VerifyWord::Show, _, None) => texts::VERIFICATION_WAITING_FOR_EMOJI.into(),
            (VerifyWord::Yes, Some(sas), Some(_)) => match sas.confirm().await {
                Ok(()) => texts::VERIFICATION_CONFIRMED.into(),
                Err(e) => texts::verification_confirm_failed(&e.to_string()),
            },
            (VerifyWord::No, Some(sas), Some(_)) => {
                let _ = sas.mismatch().await;
                self.flows.remove(user);
                texts::VERIFICATION_MISMATCH.into()
            }
            (VerifyWord::Yes | VerifyWord::No, _, _) => texts::VERIFICATION_NO_EMOJI_YET.into(),
            (VerifyWord::Cancel, sas, _) => {
                match sas {
                    Some(sas) => {
                        let _ = sas.cancel().await;
                    }
                    None => {
                        let _ = flow.request.cancel().await;
                    }
                }
                self.flows.remove(user);
                texts::VERIFICATION_CANCELLED_BY_WORD.into()
            }
        }
    }
}

/// Follows a request (and its SAS flow) and reports each step to the actor.
fn spawn_watcher(
    me: ActorRef<CryptoMsg>,
    user: OwnedUserId,
    flow_id: String,
    request: VerificationRequest,
) {
    let send = move |update: FlowUpdate| {
        let _ = me.cast(CryptoMsg::Update {
            user: user.clone(),
            flow_id: flow_id.clone(),
            update,
        });
    };
    // Subscribed before the task runs, and the current state first: no step is missed.
    let changes = request.changes();
    let current = request.state();
    tokio::spawn(async move {
        let mut states = futures_util::stream::iter([current]).chain(changes);
        while let Some(state) = states.next().await {
            match state {
                VerificationRequestState::Transitioned {
                    verification: Verification::SasV1(sas),
                } => {
                    if let Err(e) = sas.accept().await {
                        send(FlowUpdate::Cancelled(format!("could not accept: {e}")));
                        return;
                    }
                    send(FlowUpdate::Sas(sas.clone()));
                    let sas_changes = sas.changes();
                    let mut sas_states =
                        futures_util::stream::iter([sas.state()]).chain(sas_changes);
                    while let Some(s) = sas_states.next().await {
                        match s {
                            SasState::KeysExchanged { .. } => {
                                let text = sas.emoji().map_or_else(
                                    || "(the other client offered no emoji)".to_owned(),
                                    |emojis| {
                                        emojis
                                            .iter()
                                            .map(|e| format!("{} {}", e.symbol, e.description))
                                            .collect::<Vec<_>>()
                                            .join("  ·  ")
                                    },
                                );
                                send(FlowUpdate::Emojis(text));
                            }
                            SasState::Done { .. } => return send(FlowUpdate::Done),
                            SasState::Cancelled(info) => {
                                return send(FlowUpdate::Cancelled(info.reason().to_owned()));
                            }
                            _ => {}
                        }
                    }
                    return;
                }
                VerificationRequestState::Done => return send(FlowUpdate::Done),
                VerificationRequestState::Cancelled(info) => {
                    return send(FlowUpdate::Cancelled(info.reason().to_owned()));
                }
                _ => {}
            }
        }
    });
}

/// The DM with `user`: from the account data, else a joined two-member room with them.
async fn dm_with(client: &Client, user: &OwnedUserId) -> Option<Room> {
    if let Some(room) = client.get_dm_room(user) {
        return Some(room);
    }
    for room in client.joined_rooms() {
        if room.joined_members_count() == 2
            && room.get_member_no_sync(user).await.ok().flatten().is_some()
        {
            return Some(room);
        }
    }
    None
}

/// Posts `text` as a notice (encrypted in an encrypted room), with a stable transaction id.
async fn post(room: &Option<Room>, flow_id: &str, step: &str, text: &str) {
    let Some(room) = room else {
        warn!(step, "no room to post the verification step in");
        return;
    };
    let content = RoomMessageEventContent::notice_plain(text);
    let txn = transaction_id(flow_id, &format!("verify.{step}"));
    if let Err(e) = send_content(room, content, txn, "posting a verification step").await {
        warn!(step, error = %e, "could not post the verification step");
    }
}
