//! Answering claimed messages: one ordered queue per room, rooms and accounts in parallel.
//!
//! A worker per room takes the room's messages in order. For each: an answer a previous process
//! left mid-stream is finished as interrupted; otherwise the gate decides; commands are answered
//! directly; anything else gets the ack reaction and typing notices, the conversation (memory
//! plus the thread's or room's recent history) goes to the routed backend, and the
//! `StreamEditor` streams the answer into the room. The outcome is recorded in the inbox; a
//! message whose answer could not be sent stays pending and is handled after the next start.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::stream;
use mxfleet_backend::{Backend, ChatMessage, ChatRequest, Role};
use mxfleet_config::{AccountAuth, AccountSpec, StreamMode};
use mxfleet_matrix::{
    Attachment, InboundMessage, MatrixFailure, Media, MentionList, Normalised, Placement,
    Undecryptable, ensure_can_send,
    inbound::UNSEEN,
    location_content,
    matrix_sdk::{
        Client, Room,
        room::{IncludeRelations, MessagesOptions, RelationsOptions},
        ruma::{
            OwnedEventId, OwnedRoomId, OwnedUserId, UInt,
            api::client::receipt::create_receipt::v3::ReceiptType,
            events::{
                receipt::ReceiptThread, relation::RelationType,
                room::message::RoomMessageEventContent,
            },
        },
    },
    media::{MediaError, download},
    normalise,
    polls::{read_vote, send_poll},
    react, redact, send_content, transaction_id,
};
use mxfleet_store::{Draft, InboxEntry, InboxState, Store, Turn, now_ms};
use ractor::ActorRef;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
};
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::{
    actions::{self, Action, FoundAction},
    commands::{self, Command},
    crypto::CryptoMsg,
    gate::{self, Access, Me, RoomFacts, Verdict},
    otp::{self, OtpMsg, OtpOutcome},
    status::StatusBoard,
    stream_editor::{
        Delivered, EditorMsg, MAX_PART_BYTES, MatrixSink, StreamJob, StreamSettings, deliver,
        finish_interrupted,
    },
    upgrades,
};

/// How often typing notices are renewed while an answer is prepared.
const TYPING_REFRESH: Duration = Duration::from_secs(3);

/// The account's current `StreamEditor`, replaced when the editor is restarted.
pub(crate) type EditorHandle = ChildHandle<EditorMsg>;
/// The account's current `OtpGate`, if self-approval is on.
pub(crate) type OtpHandle = ChildHandle<OtpMsg>;
/// The account's current `CryptoActor` (password accounts).
pub(crate) type CryptoHandle = ChildHandle<CryptoMsg>;

/// A child actor of the account, shared with the room workers and replaced when the child is
/// restarted.
pub(crate) struct ChildHandle<M>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M> Default for ChildHandle<M> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<M> Clone for ChildHandle<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> ChildHandle<M> {
    /// The current child, if one is running.
    pub(crate) fn get(&self) -> Option<ActorRef<M>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the child; returns the previous one.
    pub(crate) fn set(&self, child: Option<ActorRef<M>>) -> Option<ActorRef<M>> {
        std::mem::replace(
            &mut *self
                .0
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            child,
        )
    }

    /// Whether `cell` is the current child.
    pub(crate) fn is(&self, cell: &ractor::ActorCell) -> bool {
        self.get().is_some_and(|c| c.get_id() == cell.get_id())
    }
}
/// Rooms this process joined from a DM invite. matrix-sdk marks them direct in the account
/// data, but that round trip can finish after the first message arrives.
pub(crate) type JoinedDms = Arc<RwLock<std::collections::HashSet<String>>>;

/// The reply workers of one account.
pub(crate) struct Responder {
    context: Arc<ReplyContext>,
    /// When the last undecryptable-message notice went out, per (room, Megolm session).
    utd_notices: HashMap<(String, String), std::time::Instant>,
    queues: HashMap<String, mpsc::UnboundedSender<InboxEntry<InboundMessage>>>,
    workers: JoinSet<()>,
    stop: watch::Sender<bool>,
}

/// What the responder needs from its account.
pub(crate) struct ResponderArgs {
    pub(crate) spec: Arc<AccountSpec>,
    pub(crate) client: Client,
    pub(crate) user_id: OwnedUserId,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) store: Store,
    pub(crate) board: StatusBoard,
    pub(crate) access: Access,
    pub(crate) editor: EditorHandle,
    pub(crate) otp: OtpHandle,
    pub(crate) joined_dms: JoinedDms,
    pub(crate) crypto: CryptoHandle,
}

struct ReplyContext {
    account: String,
    spec: Arc<AccountSpec>,
    client: Client,
    user_id: OwnedUserId,
    routing: Routing,
    access: Access,
    store: Store,
    board: StatusBoard,
    editor: EditorHandle,
    otp: OtpHandle,
    joined_dms: JoinedDms,
    crypto: CryptoHandle,
    catch_up_max_age_ms: u64,
}

/// A backend chosen for a message.
struct RouteBackend {
    name: String,
    model: Option<String>,
    backend: Arc<dyn Backend>,
}

/// The account's backends: its own, and the room and user overrides.
struct Routing {
    default: RouteBackend,
    rooms: HashMap<String, RouteBackend>,
    users: HashMap<String, RouteBackend>,
}

impl Responder {
    /// Workers for one account's messages.
    pub(crate) fn new(args: ResponderArgs) -> Self {
        let routing = Routing::new(&args.spec, args.backend);
        let context = Arc::new(ReplyContext {
            account: args.spec.id.clone(),
            catch_up_max_age_ms: args.spec.catch_up_max_age_secs.saturating_mul(1000),
            spec: args.spec,
            client: args.client,
            user_id: args.user_id,
            routing,
            access: args.access,
            store: args.store,
            board: args.board,
            editor: args.editor,
            otp: args.otp,
            joined_dms: args.joined_dms,
            crypto: args.crypto,
        });
        let (stop, _) = watch::channel(false);
        Self {
            context,
            utd_notices: HashMap::new(),
            queues: HashMap::new(),
            workers: JoinSet::new(),
            stop,
        }
    }

    /// Queues `entry` for an answer, or skips it if it is too old.
    pub(crate) fn dispatch(&mut self, entry: InboxEntry<InboundMessage>) {
        let ctx = &self.context;
        if ctx.board.is_fleet_user(&entry.message.sender) {
            let reason = "sent by another account of this fleet".to_owned();
            self.record_skip(entry.event_id, reason);
            return;
        }
        let age_ms = now_ms().saturating_sub(entry.message.origin_server_ts_ms);
        if age_ms > ctx.catch_up_max_age_ms {
            info!(
                account = %ctx.account,
                event_id = %entry.event_id,
                age_secs = age_ms / 1000,
                "message older than catch_up_max_age_secs: skipped"
            );
            ctx.board.update(&ctx.account, |s| s.skipped_old += 1);
            let reason = format!("older than catch_up_max_age_secs ({} s)", age_ms / 1000);
            self.record_skip(entry.event_id, reason);
            return;
        }
        ctx.board.update(&ctx.account, |s| s.messages_in += 1);
        let room = entry.message.room_id.clone();
        let queue = self.queues.entry(room.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = info_span!(parent: None, "room", account = %ctx.account, room = %room);
            self.workers
                .spawn(room_worker(ctx.clone(), rx, self.stop.subscribe()).instrument(span));
            tx
        });
        if queue.send(entry).is_err() {
            // The worker died (it only does by panicking); the message stays pending in the inbox.
            error!(account = %self.context.account, "room worker is gone; message left pending");
            self.queues.remove(&room);
        }
    }

    /// Counts an undecryptable message and, at most once per room and Megolm session within
    /// `utd_notice_cooldown_secs`, says so in the room (where the bot talks with the sender).
    /// The room is never left over it; the sync retries decryption when keys arrive.
    pub(crate) fn report_undecryptable(&mut self, utd: Undecryptable) {
        let ctx = self.context.clone();
        ctx.board.update(&ctx.account, |s| s.undecryptable += 1);
        if ctx.board.is_fleet_user(&utd.sender) {
            return;
        }
        // An access-token account can never decrypt: one notice per room is enough.
        let token_account = matches!(ctx.spec.auth, AccountAuth::AccessToken(_));
        let session = match (token_account, &utd.session_id) {
            (true, _) => String::new(),
            (false, Some(session)) => session.clone(),
            (false, None) => utd.sender.clone(),
        };
        let key = (utd.room_id.clone(), session);
        let cooldown = Duration::from_secs(ctx.spec.conversation.utd_notice_cooldown_secs);
        let now = std::time::Instant::now();
        if self
            .utd_notices
            .get(&key)
            .is_some_and(|last| now.duration_since(*last) < cooldown)
        {
            return;
        }
        self.utd_notices.insert(key, now);
        let span = info_span!(parent: None, "undecryptable", account = %ctx.account, room = %utd.room_id, event_id = %utd.event_id);
        tokio::spawn(async move { post_utd_notice(&ctx, utd).await }.instrument(span));
    }

    fn record_skip(&self, event_id: String, reason: String) {
        let (store, account) = (self.context.store.clone(), self.context.account.clone());
        tokio::spawn(async move {
            if let Err(e) = store
                .finish(&account, &event_id, InboxState::Skipped { reason })
                .await
            {
                warn!(%account, %event_id, error = %e, "could not record a skipped message");
            }
        });
    }

    /// Lets in-flight answers finish within `deadline`, then aborts the rest. Queued messages
    /// stay pending in the inbox and are answered after the next start.
    pub(crate) async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        self.queues.clear();
        let drained = tokio::time::timeout(deadline, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                account = %self.context.account,
                workers = self.workers.len(),
                "reply workers did not finish within the shutdown deadline; aborted"
            );
            self.workers.abort_all();
        }
    }
}

async fn room_worker(
    ctx: Arc<ReplyContext>,
    mut queue: mpsc::UnboundedReceiver<InboxEntry<InboundMessage>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let entry = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return,
            entry = queue.recv() => match entry { Some(entry) => entry, None => return },
        };
        let span = info_span!(parent: None, "message", account = %ctx.account, room = %entry.message.room_id, event_id = %entry.event_id);
        handle(&ctx, entry.message).instrument(span).await;
    }
}

/// Handles one message and records the outcome.
async fn handle(ctx: &ReplyContext, mut message: InboundMessage) {
    let room = OwnedRoomId::try_from(message.room_id.as_str())
        .ok()
        .and_then(|id| ctx.client.get_room(&id));
    let Some(room) = room else {
        return skip(ctx, &message.event_id, "not in the room").await;
    };

    // An answer a previous process left mid-stream is finished, not started again.
    match ctx.store.draft(&ctx.account, &message.event_id).await {
        Ok(Some(draft)) if draft.parts.iter().any(|p| p.event_id.is_some()) => {
            return resume_interrupted(ctx, &room, &message, &draft).await;
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not read the draft; answering afresh"),
    }

    // A vote on the bot's poll is addressed to the bot, in the words of the chosen answer.
    if let Some(Attachment::PollResponse { poll_id, answers }) = &message.attachment {
        let Some(text) = vote_text(ctx, &room, poll_id, answers).await else {
            return skip(
                ctx,
                &message.event_id,
                "a vote on a poll that is not the bot's",
            )
            .await;
        };
        message.body = text;
        message.mentions = Some(MentionList {
            user_ids: vec![ctx.user_id.to_string()],
            room: false,
        });
    }

    let facts = room_facts(ctx, &room).await;
    let me = Me {
        user_id: ctx.user_id.to_string(),
        display_name: member_name(&room, ctx.user_id.as_str()).await,
    };
    let conv = &ctx.spec.conversation;
    match gate::decide(conv, &ctx.access, &facts, &me, &message) {
        Verdict::Answer => {}
        Verdict::Ignore(gate::NOT_ALLOWLISTED) if conv.otp_self_approval => {
            match ctx.store.is_approved(&ctx.account, &message.sender).await {
                Ok(true) => {}
                Ok(false) => return otp_gate(ctx, &room, &message).await,
                Err(e) => {
                    warn!(error = %e, "could not read approvals; message left pending");
                    return;
                }
            }
        }
        Verdict::Ignore(reason) => {
            debug!(reason, "not answered");
            return skip(ctx, &message.event_id, reason).await;
        }
    }
    let Ok(event_id) = OwnedEventId::try_from(message.event_id.as_str()) else {
        return skip(ctx, &message.event_id, "bad event id").await;
    };
    if conv.read_receipts {
        let thread = ReceiptThread::Unthreaded;
        if let Err(e) = room
            .send_single_receipt(ReceiptType::Read, thread, event_id.clone())
            .await
        {
            debug!(error = %e, "read receipt not sent");
        }
    }

    let key = conversation_key(&message);
    let placement = placement(ctx, &message, &event_id, facts.is_dm);
    let route = ctx.routing.pick(&message.sender, &facts);

    // A voice message becomes its transcript (after the gate: nothing is sent to a
    // transcription service that the bot would not answer).
    if let Some(Attachment::Audio(media)) = &message.attachment {
        match transcribe_voice(ctx, media).await {
            Ok(text) => {
                info!(chars = text.len(), "voice message transcribed");
                message.body = text;
            }
            Err(reply) => {
                return reply_directly(ctx, &room, &message, &key, placement, reply).await;
            }
        }
    }

    if let Some(command) = commands::parse(
        &message.body,
        me.user_id.as_str(),
        me.display_name.as_deref(),
    ) {
        let text = run_command(ctx, &command, &key, &message, route).await;
        return reply_directly(ctx, &room, &message, &key, placement, text).await;
    }

    // Cues go out beside the answer, not before it: the backend is asked at once. With
    // `cue_delay_ms`, they are skipped when the answer is visible by then.
    let visible = Arc::new(AtomicBool::new(false));
    // Cue tasks outlive the message's span (which ends with the answer); they get their own.
    let cue_span =
        info_span!(parent: None, "cues", account = %ctx.account, event_id = %message.event_id);
    let cue_delay = Duration::from_millis(conv.cue_delay_ms);
    let wait_for_cue = {
        let visible = visible.clone();
        move || {
            let visible = visible.clone();
            async move {
                if !cue_delay.is_zero() {
                    tokio::time::sleep(cue_delay).await;
                }
                !visible.load(Ordering::Relaxed)
            }
        }
    };
    let ack = conv.ack_reaction.clone().map(|key| {
        let (room, event_id) = (room.clone(), event_id.clone());
        let txn = transaction_id(&message.event_id, "ack");
        let wanted = wait_for_cue();
        tokio::spawn(
            async move {
                if !wanted.await {
                    return None;
                }
                react(&room, &event_id, &key, txn)
                    .await
                    .inspect_err(|e| warn!(error = %e, "could not add the ack reaction"))
                    .ok()
            }
            .instrument(cue_span.clone()),
        )
    });

    let typing = conv.typing_notices.then(|| {
        let room = room.clone();
        let wanted = wait_for_cue();
        tokio::spawn(async move {
            if !wanted.await {
                return;
            }
            loop {
                if let Err(e) = room.typing_notice(true).await {
                    debug!(error = %e, "typing notice not sent");
                }
                tokio::time::sleep(TYPING_REFRESH).await;
            }
        })
    });

    let mut history = conversation(ctx, &room, &message, &key, facts.is_dm).await;
    if route.backend.accepts_images()
        && let Some(Attachment::File(media)) = &message.attachment
        && let Some(current) = history.last_mut()
    {
        attach_image(ctx, media, current).await;
    }
    let request = ChatRequest {
        messages: history,
        account: ctx.account.clone(),
        room_id: message.room_id.clone(),
        thread_root: message.thread_root.clone(),
        sender: message.sender.clone(),
    };
    debug!(backend = %route.name, turns = request.messages.len(), "asking the backend");
    let action = FoundAction::default();
    let answer = actions::split_actions(route.backend.stream(request), action.clone());
    let started = std::time::Instant::now();
    let mut outcome = stream_answer(
        ctx,
        &room,
        &message,
        placement.clone(),
        answer,
        stream_settings(ctx),
        Some(visible),
    )
    .await;
    let action = action
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let (Ok(delivered), Some(action)) = (&mut outcome, action) {
        send_asked_action(&room, &message, &placement, &action, &mut delivered.text).await;
    }

    let backend_ms = started.elapsed().as_millis() as u64;
    ctx.board.update(&ctx.account, |s| {
        s.backend_ms_total += backend_ms;
        s.backend_answers += 1;
    });
    // The outcome is recorded before the cues are cleaned up: a redaction held back by a 429
    // must not leave a delivered answer pending.
    record(ctx, &message, &key, outcome, true).await;
    // Cleaning up the cues does not hold up the room's next message.
    let txn = transaction_id(&message.event_id, "ack.redact");
    tokio::spawn(
        async move {
            if let Some(typing) = typing {
                // A finished task never started typing (the answer came first).
                let skipped = typing.is_finished();
                typing.abort();
                if !skipped {
                    let _ = room.typing_notice(false).await;
                }
            }
            if let Some(ack) = ack
                && let Ok(Some(ack)) = ack.await
                && let Err(e) = redact(&room, &ack, txn).await
            {
                warn!(error = %e, "could not remove the ack reaction");
            }
        }
        .instrument(cue_span.clone()),
    );
}

/// Sends the poll or location the backend asked for after its answer, and notes it in the
/// answer's text (for the conversation memory).
async fn send_asked_action(
    room: &Room,
    message: &InboundMessage,
    placement: &Placement,
    action: &Action,
    text: &mut String,
) {
    let (sent, note) = match action {
        Action::Poll(poll) => {
            let txn = transaction_id(&message.event_id, "poll");
            let sent = send_poll(room, &poll.question, &poll.answers, placement, txn).await;
            let note = format!("[poll] {}: {}", poll.question, poll.answers.join(" / "));
            (sent, note)
        }
        Action::Location {
            geo_uri,
            description,
        } => {
            let txn = transaction_id(&message.event_id, "location");
            let content = location_content(description, geo_uri, placement);
            let sent = send_content(room, content, txn, "sharing a location").await;
            (sent, format!("[location] {description} ({geo_uri})"))
        }
    };
    match sent {
        Ok(id) => {
            info!(event_id = %id, "{note}");
            text.push_str(&format!("\n\n{note}"));
        }
        Err(e) => warn!(error = %e, "could not send what the backend asked for: {note}"),
    }
}

/// A vote on one of the bot's polls as the words the backend gets; `None` if the poll is not
/// the bot's (or cannot be read).
async fn vote_text(
    ctx: &ReplyContext,
    room: &Room,
    poll_id: &str,
    answers: &[String],
) -> Option<String> {
    let poll_id = OwnedEventId::try_from(poll_id).ok()?;
    match read_vote(room, &ctx.user_id, &poll_id, answers).await {
        Ok(Some(vote)) => Some(format!(
            "[my vote in your poll \"{}\"] {}",
            vote.question,
            vote.chosen.join(", ")
        )),
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "could not read the poll voted on");
            None
        }
    }
}

/// Answers `message` with `text` in one message, without the backend (commands, refusals).
async fn reply_directly(
    ctx: &ReplyContext,
    room: &Room,
    message: &InboundMessage,
    key: &str,
    placement: Placement,
    text: String,
) {
    let settings = StreamSettings {
        mode: StreamMode::Off,
        ..stream_settings(ctx)
    };
    let answer: mxfleet_backend::TextStream = Box::pin(stream::iter([Ok(text)]));
    let outcome = stream_answer(ctx, room, message, placement, answer, settings, None).await;
    record(ctx, message, key, outcome, false).await
}

/// Downloads the image `media` (if it is one) and attaches it to `current`, whose text then no
/// longer says the backend cannot see it. On failure the text stays as it is.
async fn attach_image(ctx: &ReplyContext, media: &Media, current: &mut ChatMessage) {
    let Some(mimetype) = media
        .mimetype
        .as_deref()
        .filter(|m| m.starts_with("image/"))
    else {
        return;
    };
    match download(&ctx.client, media, ctx.spec.max_media_bytes).await {
        Ok(bytes) => {
            info!(bytes = bytes.len(), "image passed to the backend");
            current
                .images
                .push(mxfleet_backend::Image::new(mimetype, &media.name, &bytes));
            current.content = current.content.replace(UNSEEN, "; attached]");
        }
        Err(e) => warn!(error = %e, "image not passed to the backend"),
    }
}

/// The words of a voice message, or the reply saying why there are none (the details go to
/// the log, not to the room).
async fn transcribe_voice(ctx: &ReplyContext, media: &Media) -> Result<String, String> {
    let Some(stt) = &ctx.spec.transcription else {
        info!("voice message, but no transcription backend is configured");
        return Err(
            "🎤 I got a voice message, but I cannot listen to it: speech-to-text is \
                    not set up for me. Please type your message, or ask my operator to set \
                    `transcription` (see docs/conversations.md, \"Voice messages\")."
                .into(),
        );
    };
    let audio = download(&ctx.client, media, ctx.spec.max_media_bytes)
        .await
        .map_err(|e| {
            warn!(error = %e, "voice message not downloaded");
            match e {
                MediaError::TooLarge { .. } => {
                    format!("🎤 That voice message is too long for me to listen to ({e}).")
                }
                _ => "🎤 I could not download that voice message; please try again.".to_owned(),
            }
        })?;
    let mimetype = media
        .mimetype
        .as_deref()
        .unwrap_or("application/octet-stream");
    let text = mxfleet_backend::transcribe(stt, audio, &media.name, mimetype)
        .await
        .map_err(|e| {
            warn!(backend = %stt.backend_name, error = %e, "transcription failed");
            "🎤 I could not transcribe that voice message; please try again or type it.".to_owned()
        })?;
    if text.is_empty() {
        return Err("🎤 I could not make out any words in that voice message.".into());
    }
    Ok(text)
}

/// Hands the answer to the `StreamEditor` (or streams it here if the editor is restarting).
async fn stream_answer(
    ctx: &ReplyContext,
    room: &Room,
    message: &InboundMessage,
    placement: Placement,
    answer: mxfleet_backend::TextStream,
    settings: StreamSettings,
    visible: Option<Arc<AtomicBool>>,
) -> Result<Delivered, MatrixFailure> {
    let mut sink = MatrixSink {
        room: room.clone(),
        account: ctx.account.clone(),
        store: ctx.store.clone(),
        answering: message.event_id.clone(),
        placement,
        draft: Draft {
            room_id: message.room_id.clone(),
            parts: Vec::new(),
        },
        visible,
        own_keys: !matches!(ctx.spec.auth, AccountAuth::AccessToken(_)),
    };
    let editor = ctx.editor.get();
    let Some(editor) = editor else {
        return deliver(answer, &settings, &mut sink).await;
    };
    let (reply, outcome) = oneshot::channel();
    let job = StreamJob {
        sink,
        stream: answer,
        settings,
        span: Span::current(),
    };
    if editor
        .cast(EditorMsg::Deliver(Box::new(job), reply))
        .is_err()
    {
        return Err(MatrixFailure::new(
            mxfleet_matrix::FailureClass::Transient,
            "the stream editor is gone",
        ));
    }
    outcome.await.unwrap_or_else(|_| {
        Err(MatrixFailure::new(
            mxfleet_matrix::FailureClass::Transient,
            "the stream editor stopped during the answer",
        ))
    })
}

/// Records a delivery: memory, counters, inbox.
async fn record(
    ctx: &ReplyContext,
    message: &InboundMessage,
    key: &str,
    outcome: Result<Delivered, MatrixFailure>,
    remember: bool,
) {
    match outcome {
        Ok(d) => {
            info!(
                reply = %d.first_event_id,
                parts = d.parts,
                edits = d.edits,
                first_visible_ms = d.first_visible.map(|t| t.as_millis() as u64),
                backend_error = d.backend_error.as_deref(),
                rate_limited = d.rate_limited,
                "answered"
            );
            ctx.board.update(&ctx.account, |s| s.replies_out += 1);
            if remember {
                let name = sender_name(ctx, message).await;
                let turns = vec![
                    Turn {
                        role: "user".into(),
                        name: Some(name),
                        text: message.body.clone(),
                        event_id: message.event_id.clone(),
                        ts_ms: message.origin_server_ts_ms,
                    },
                    Turn {
                        role: "assistant".into(),
                        name: None,
                        text: d.text.clone(),
                        event_id: d.first_event_id.clone(),
                        ts_ms: now_ms().max(message.origin_server_ts_ms + 1),
                    },
                ];
                let keep = ctx.spec.conversation.history_max_messages.max(2);
                if let Err(e) = ctx.store.remember(&ctx.account, key, turns, keep).await {
                    warn!(error = %e, "could not store the conversation turn");
                }
            }
            let state = InboxState::Answered {
                reply_event_id: d.first_event_id,
            };
            finish(ctx, &message.event_id, state).await;
        }
        Err(e) => {
            error!(error = %e, "could not send the answer; it stays pending until the next start")
        }
    }
}

/// A DM from an unknown sender under OTP self-approval: the `OtpGate` decides, the sender gets
/// its answer (never the code).
async fn otp_gate(ctx: &ReplyContext, room: &Room, message: &InboundMessage) {
    let gate = ctx.otp.get();
    let Some(gate) = gate else {
        warn!("OTP gate not running; message left pending");
        return;
    };
    let (reply, outcome) = oneshot::channel();
    let check = OtpMsg::Check {
        sender: message.sender.clone(),
        room_id: message.room_id.clone(),
        body: message.body.clone(),
        reply,
    };
    if gate.cast(check).is_err() {
        warn!("OTP gate gone; message left pending");
        return;
    }
    let outcome = match outcome.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return warn!(error = %e, "OTP gate failed; message left pending"),
        Err(_) => return warn!("OTP gate stopped; message left pending"),
    };
    if matches!(outcome, OtpOutcome::Challenged { .. }) {
        ctx.board.update(&ctx.account, |s| s.otp_challenges += 1);
    }
    let Some(text) = otp::reply_text(&outcome) else {
        return skip(
            ctx,
            &message.event_id,
            "OTP gate: no reply (locked out or throttled)",
        )
        .await;
    };
    let settings = StreamSettings {
        mode: StreamMode::Off,
        ..stream_settings(ctx)
    };
    let answer: mxfleet_backend::TextStream = Box::pin(stream::iter([Ok(text)]));
    let outcome = stream_answer(ctx, room, message, Placement::Plain, answer, settings, None).await;
    record(ctx, message, "", outcome, false).await;
}

async fn post_utd_notice(ctx: &ReplyContext, utd: Undecryptable) {
    let Some(room) = OwnedRoomId::try_from(utd.room_id.as_str())
        .ok()
        .and_then(|id| ctx.client.get_room(&id))
    else {
        return;
    };
    let facts = room_facts(ctx, &room).await;
    let me = Me {
        user_id: ctx.user_id.to_string(),
        display_name: None,
    };
    if !gate::may_talk(
        &ctx.spec.conversation,
        &ctx.access,
        &facts,
        &me,
        &utd.sender,
    ) {
        debug!("no notice: the bot does not talk with this sender here");
        return;
    }
    let device = ctx
        .client
        .device_id()
        .map_or_else(|| "?".to_owned(), ToString::to_string);
    let name = member_name(&room, &utd.sender).await;
    let who = gate::sanitize_display_name(name.as_deref(), &utd.sender);
    let text = if matches!(ctx.spec.auth, AccountAuth::AccessToken(_)) {
        warn!(
            "an encrypted message arrived, but access-token accounts cannot decrypt: \
             switch this account to password login to read encrypted rooms"
        );
        format!(
            "🔒 I cannot read encrypted messages here (this bot account logs in with an access \
             token, which has no encryption keys), so I have not read {who}'s message. Ask the \
             operator to switch it to password login."
        )
    } else {
        format!(
            "🔒 I could not decrypt a message from {who}: its keys have not reached my device \
             ({device}) yet. I will answer it as soon as they arrive. If this keeps happening, \
             verify this bot's device or send the message again."
        )
    };
    let token_account = matches!(ctx.spec.auth, AccountAuth::AccessToken(_));
    if token_account
        && let Err(e) = ensure_can_send(&room, false, "the undecryptable-message notice").await
    {
        // An access-token account cannot speak in an encrypted room either; the status and
        // this log line are where it says so.
        warn!(error = %e, "not sent");
        return;
    }
    let content = RoomMessageEventContent::notice_plain(text);
    let txn = transaction_id(&utd.event_id, "utd");
    match send_content(
        &room,
        content,
        txn,
        "posting an undecryptable-message notice",
    )
    .await
    {
        Ok(_) => ctx
            .board
            .update(&ctx.account, |s| s.undecryptable_notices += 1),
        Err(e) => warn!(error = %e, "could not post the undecryptable-message notice"),
    }
}

async fn resume_interrupted(
    ctx: &ReplyContext,
    room: &Room,
    message: &InboundMessage,
    draft: &Draft,
) {
    match finish_interrupted(room, &message.event_id, draft).await {
        Ok(first) => {
            info!("finished an answer interrupted by a restart");
            let state = InboxState::Answered {
                reply_event_id: first.unwrap_or_default(),
            };
            finish(ctx, &message.event_id, state).await;
        }
        Err(e) => {
            error!(error = %e, "could not finish an interrupted answer; retried at the next start")
        }
    }
}

async fn run_command(
    ctx: &ReplyContext,
    command: &Command,
    key: &str,
    message: &InboundMessage,
    route: &RouteBackend,
) -> String {
    match command {
        Command::Help => commands::HELP.to_owned(),
        Command::Verify(word) => verify_word(ctx, message, *word).await,
        Command::Unknown(word) => format!("Unknown command `!{word}`.\n\n{}", commands::HELP),
        Command::New => match ctx
            .store
            .reset_memory(&ctx.account, key, message.origin_server_ts_ms)
            .await
        {
            Ok(()) => "Started a new conversation: earlier messages here are forgotten.".to_owned(),
            Err(e) => {
                warn!(error = %e, "could not reset the conversation");
                "Sorry, I could not reset the conversation (storage error).".to_owned()
            }
        },
        Command::Status => {
            let status = ctx.board.account(&ctx.account);
            let state = status
                .as_ref()
                .map_or("unknown".to_owned(), |s| s.state.to_string());
            let memory = ctx
                .store
                .memory(&ctx.account, key)
                .await
                .map(|m| m.turns.len())
                .unwrap_or(0);
            let conv = &ctx.spec.conversation;
            format!(
                "**{}** is `{state}`\n\n- backend: `{}` ({})\n- model: `{}`\n- streaming: `{:?}`\n- remembered turns here: {memory}\n- DMs: `{:?}`, rooms: `{:?}`, mentions: `{:?}`",
                ctx.account,
                route.name,
                route.backend.kind(),
                route.model.as_deref().unwrap_or("-"),
                conv.stream_mode,
                conv.dm_policy,
                conv.room_policy,
                conv.mention_mode,
            )
        }
    }
}

/// Hands a `verify …` word to the `CryptoActor`; returns what to answer.
async fn verify_word(
    ctx: &ReplyContext,
    message: &InboundMessage,
    word: commands::VerifyWord,
) -> String {
    let crypto = ctx.crypto.get();
    let (Some(crypto), Ok(user)) = (crypto, OwnedUserId::try_from(message.sender.as_str())) else {
        return "This bot account cannot verify devices (it does not own an encryption device)."
            .into();
    };
    let (reply, answer) = oneshot::channel();
    if crypto.cast(CryptoMsg::Word { user, word, reply }).is_err() {
        return "Verification is not available right now; try again in a moment.".into();
    }
    answer.await.unwrap_or_else(|_| {
        "Verification is not available right now; try again in a moment.".into()
    })
}

/// The conversation for the backend: remembered turns plus the thread's (or room's) recent
/// history from the homeserver, after the last `!new`, oldest first, ending with `message`.
async fn conversation(
    ctx: &ReplyContext,
    room: &Room,
    message: &InboundMessage,
    key: &str,
    is_dm: bool,
) -> Vec<ChatMessage> {
    let limit = ctx.spec.conversation.history_max_messages;
    let memory = match ctx.store.memory(&ctx.account, key).await {
        Ok(memory) => memory,
        Err(e) => {
            warn!(error = %e, "could not read the conversation memory");
            Default::default()
        }
    };
    let mut turns: Vec<Turn> = memory.turns;
    if limit > 0 {
        for m in server_history(ctx, room, message, limit).await {
            if turns.iter().any(|t| t.event_id == m.event_id) {
                continue;
            }
            let name = sender_name(ctx, &m).await;
            turns.push(Turn {
                role: "user".into(),
                name: Some(name),
                text: m.body,
                event_id: m.event_id,
                ts_ms: m.origin_server_ts_ms,
            });
        }
    }
    turns.retain(|t| {
        t.ts_ms > memory.reset_at_ms
            && t.ts_ms <= message.origin_server_ts_ms
            && t.event_id != message.event_id
    });
    turns.sort_by_key(|t| t.ts_ms);
    let excess = turns.len().saturating_sub(limit);
    turns.drain(..excess);
    let current = Turn {
        role: "user".into(),
        name: Some(sender_name(ctx, message).await),
        text: message.body.clone(),
        event_id: message.event_id.clone(),
        ts_ms: message.origin_server_ts_ms,
    };
    turns.push(current);
    turns
        .into_iter()
        .map(|t| {
            let role = if t.role == "assistant" {
                Role::Assistant
            } else {
                Role::User
            };
            // In a DM there is one speaker; in a group room the backend needs to know who.
            let name = t.name.filter(|_| role == Role::User && !is_dm);
            ChatMessage {
                role,
                content: t.text,
                name,
                images: Vec::new(),
            }
        })
        .collect()
}

/// Recent messages of the thread (through the relations API) or of the room's main timeline,
/// not the bot's own, older than `message`.
async fn server_history(
    ctx: &ReplyContext,
    room: &Room,
    message: &InboundMessage,
    limit: usize,
) -> Vec<InboundMessage> {
    let limit_u = UInt::try_from(limit as u64).unwrap_or(UInt::MAX);
    let events = match &message.thread_root {
        Some(root) => {
            let Ok(root_id) = OwnedEventId::try_from(root.as_str()) else {
                return Vec::new();
            };
            let mut events = Vec::new();
            match room.event(&root_id, None).await {
                Ok(event) => events.push(event),
                Err(e) => debug!(error = %e, "thread root not fetched"),
            }
            let options = RelationsOptions {
                include_relations: IncludeRelations::RelationsOfType(RelationType::Thread),
                limit: Some(limit_u),
                ..Default::default()
            };
            match room.relations(root_id, options).await {
                Ok(relations) => events.extend(relations.chunk),
                Err(e) => warn!(error = %e, "could not fetch the thread's history"),
            }
            events
        }
        None => {
            let mut options = MessagesOptions::backward();
            options.limit = limit_u;
            match room.messages(options).await {
                Ok(messages) => messages.chunk,
                Err(e) => {
                    warn!(error = %e, "could not fetch the room's history");
                    Vec::new()
                }
            }
        }
    };
    let room_id = room.room_id();
    events
        .iter()
        .filter_map(|e| match normalise(room_id, e, &ctx.user_id) {
            Normalised::Message(m) => Some(m),
            _ => None,
        })
        .filter(|m| message.thread_root.is_some() || m.thread_root.is_none())
        .filter(|m| !ctx.board.is_fleet_user(&m.sender))
        .collect()
}

/// Where the answer to `message` goes: its thread, a rich reply, or plainly into the room.
fn placement(
    ctx: &ReplyContext,
    message: &InboundMessage,
    event_id: &OwnedEventId,
    is_dm: bool,
) -> Placement {
    let rich = ctx.spec.conversation.reply_to_message;
    match message
        .thread_root
        .as_deref()
        .and_then(|r| OwnedEventId::try_from(r).ok())
    {
        Some(root) => Placement::Thread {
            root,
            latest: event_id.clone(),
            rich,
        },
        // In a DM a rich reply to every message is noise; it helps in busy rooms.
        None if rich && !is_dm => Placement::ReplyTo(event_id.clone()),
        None => Placement::Plain,
    }
}

/// The memory key of the conversation `message` belongs to: the room, or the room's thread.
fn conversation_key(message: &InboundMessage) -> String {
    match &message.thread_root {
        Some(root) => format!("{}|{root}", message.room_id),
        None => message.room_id.clone(),
    }
}

fn stream_settings(ctx: &ReplyContext) -> StreamSettings {
    let conv = &ctx.spec.conversation;
    StreamSettings {
        mode: conv.stream_mode,
        min_initial_chars: conv.stream_min_initial_chars,
        throttle: Duration::from_millis(conv.edit_throttle_ms),
        max_edits: conv.max_edits_per_message,
        max_part_bytes: MAX_PART_BYTES,
    }
}

/// What the gate needs to know about `room`.
async fn room_facts(ctx: &ReplyContext, room: &Room) -> RoomFacts {
    RoomFacts {
        room_id: room.room_id().to_string(),
        is_dm: is_dm(room, &ctx.joined_dms).await,
        aliases: upgrades::aliases_of(room),
        predecessors: upgrades::confirmed_predecessors(&ctx.client, room),
    }
}

/// Whether `room` is a DM: the account data says so, or this process joined it from a DM invite
/// (the account data may lag behind).
pub(crate) async fn is_dm(room: &Room, joined_dms: &JoinedDms) -> bool {
    let direct = room.is_direct().await.unwrap_or_else(|e| {
        warn!(error = %e, "could not tell whether the room is a DM; treating it as a group room");
        false
    });
    direct
        || joined_dms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(room.room_id().as_str())
}

async fn member_name(room: &Room, user_id: &str) -> Option<String> {
    let user_id = OwnedUserId::try_from(user_id).ok()?;
    let member = room.get_member_no_sync(&user_id).await.ok().flatten()?;
    member.display_name().map(str::to_owned)
}

async fn sender_name(ctx: &ReplyContext, message: &InboundMessage) -> String {
    let room = OwnedRoomId::try_from(message.room_id.as_str())
        .ok()
        .and_then(|id| ctx.client.get_room(&id));
    let name = match room {
        Some(room) => member_name(&room, &message.sender).await,
        None => None,
    };
    gate::sanitize_display_name(name.as_deref(), &message.sender)
}

async fn skip(ctx: &ReplyContext, event_id: &str, reason: &str) {
    let state = InboxState::Skipped {
        reason: reason.to_owned(),
    };
    finish(ctx, event_id, state).await;
}

async fn finish(ctx: &ReplyContext, event_id: &str, state: InboxState) {
    if let Err(e) = ctx.store.finish(&ctx.account, event_id, state).await {
        error!(error = %e, "could not record the outcome; the message may be answered again after a restart");
    }
}

impl Routing {
    /// The account's backend plus one per override (an override whose backend cannot be built
    /// falls back to the account's, with an error logged).
    fn new(spec: &AccountSpec, backend: Arc<dyn Backend>) -> Self {
        let default = RouteBackend {
            name: spec.backend_name.clone(),
            model: spec.backend.model().map(str::to_owned),
            backend,
        };
        let build = |key: &String, route: &mxfleet_config::Route| match mxfleet_backend::build(
            &route.backend,
        ) {
            Ok(backend) => Some((
                key.clone(),
                RouteBackend {
                    name: route.backend_name.clone(),
                    model: route.backend.model().map(str::to_owned),
                    backend,
                },
            )),
            Err(e) => {
                error!(account = %spec.id, %key, error = %e, "override backend unusable; the account's backend answers instead");
                None
            }
        };
        Self {
            rooms: spec
                .room_routes
                .iter()
                .filter_map(|(k, r)| build(k, r))
                .collect(),
            users: spec
                .user_routes
                .iter()
                .filter_map(|(k, r)| build(k, r))
                .collect(),
            default,
        }
    }

    /// The user's override, else the room's (by id, alias, or the id of a room it upgraded),
    /// else the account's backend.
    fn pick(&self, sender: &str, room: &RoomFacts) -> &RouteBackend {
        self.users
            .get(sender)
            .or_else(|| room.names().find_map(|r| self.rooms.get(r)))
            .unwrap_or(&self.default)
    }
}
