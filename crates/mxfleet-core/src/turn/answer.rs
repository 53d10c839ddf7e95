//! The one place that sequences a turn's effects. [`handle`] gathers what [`plan`] needs,
//! asks it for a [`Step`], and carries the step out; [`answer`] runs the backend path: cues,
//! history, the backend's stream through the `StreamEditor`, the actions it asked for, the
//! record, and the cues cleared.

use std::{
    sync::{Arc, OnceLock, atomic::AtomicBool},
    time::{Duration, Instant},
};

use mxfleet_backend::{ChatRequest, TextStream, stream_retrying_once};
use mxfleet_matrix::Placement;
use mxfleet_message::{Attachment, InboundMessage};
use mxfleet_store::Draft;
use tracing::{Span, debug, info, info_span, warn};

use super::{
    actions::{self, FoundAction},
    commands,
    context::TurnContext,
    cues::Cues,
    history, media,
    outbox::{Earlier, Overhead, RoomSink, starting_draft},
    plan::{self, Approval, Known, Step},
    record::{self, Remember},
    room::RoomPort,
};
use crate::{
    children,
    error::AccountError,
    gate::{Me, RoomFacts},
    measure,
    otp::{self, OtpMsg, OtpOutcome},
    screen::Ticket,
    stream_editor::{Delivered, Delivery, EditorMsg, StreamSettings},
    texts,
};

/// How long the OTP gate may take to decide (one redb read and write).
const OTP_DEADLINE: Duration = Duration::from_secs(10);
/// How long a reply without the backend (a command, a refusal) may take to be delivered.
const DIRECT_REPLY_DEADLINE: Duration = Duration::from_secs(300);

/// Handles one claimed message of `room` (its `attempt`-th attempt, counting those of earlier
/// processes) and records what became of it; an error means it stays pending (its answer could
/// not be delivered, or a child could not be asked). A message the screen found over a rate
/// limit (`ticket`) gets the room's notice instead of an answer.
pub(crate) async fn handle<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    mut message: InboundMessage,
    attempt: u32,
    ticket: Ticket,
    received: Instant,
) -> Result<(), AccountError> {
    let known = Gathered::of(ctx, room, &message, attempt).await;
    let mut receipt_due = ctx.spec.conversation.read_receipts;
    loop {
        let step = plan::plan(&known.about(ctx, &message));
        debug!(?step, "planned");
        if step.passed_gate() && std::mem::take(&mut receipt_due) {
            read_receipt(room, &message).await;
        }
        let facts = &known.facts;
        let costly = matches!(
            step,
            Step::Transcribe(_) | Step::Command(_) | Step::Answer { .. }
        );
        if let (true, Ticket::TellLimited(which)) = (costly, ticket) {
            return tell_limited(ctx, room, &message, &known, which).await;
        }
        match step {
            Step::Resume => match &known.draft {
                Some(draft) => return record::resume_interrupted(ctx, room, &message, draft).await,
                None => return Ok(()),
            },
            Step::Skip(reason) => return record::skip(ctx, &message, reason).await,
            Step::Hold(reason) => {
                warn!(reason, "message left pending");
                return Ok(());
            }
            Step::Challenge => return challenge(ctx, room, &message, &known).await,
            Step::Transcribe(voice) => match media::transcribe_voice(ctx, &voice).await {
                // Planned again with its words: a command, or a question for the backend.
                Ok(words) => (message.body, message.attachment) = (words, None),
                Err(reply) => return reply_directly(ctx, room, &message, &known, reply).await,
            },
            Step::Command(command) => {
                let route = ctx.routing.pick(&message.sender, facts);
                let key = message.conversation_key();
                let reply = commands::run(ctx, &command, &key, &message, route).await;
                return reply_directly(ctx, room, &message, &known, reply).await;
            }
            Step::Answer { words } => {
                message.body = words.unwrap_or(message.body);
                return answer(ctx, room, &message, &known, received).await;
            }
        }
    }
}

/// Tells the room that `message` is over the account's rate limit `which` (the screen lets one
/// such message a minute through for it) instead of answering.
async fn tell_limited<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    known: &Gathered,
    which: &str,
) -> Result<(), AccountError> {
    ctx.board.update(&ctx.account, |s| s.rate_limited += 1);
    measure::count(measure::SKIPPED, &ctx.account, "rate_limited", 1);
    info!(limit = which, "over the rate limit: the room is told");
    let text = texts::rate_limited(&ctx.spec.conversation.limits);
    reply_directly(ctx, room, message, known, text).await
}

/// What is read about a message before its step is planned.
struct Gathered {
    facts: RoomFacts,
    me: Me,
    draft: Option<Draft>,
    /// Whether an earlier attempt at the message began (in this process or an earlier one).
    retried: bool,
    approval: Approval,
    vote: Option<String>,
}

impl Gathered {
    /// Reads what [`plan`] needs about the `attempt`-th attempt at `message` in `room`.
    async fn of<R: RoomPort>(
        ctx: &TurnContext,
        room: &R,
        message: &InboundMessage,
        attempt: u32,
    ) -> Self {
        let facts = room.facts().await;
        let me = Me {
            user_id: ctx.user_id.clone(),
            display_name: room.member_name(&ctx.user_id).await,
        };
        let retried = attempt > 1;
        Self {
            // A draft is only written during an attempt, and the first is counted before it
            // begins: a first attempt has none to read.
            draft: match retried {
                true => read_draft(ctx, message).await,
                false => None,
            },
            retried,
            approval: approval(ctx, message, &facts).await,
            vote: media::vote_words(room, message).await,
            facts,
            me,
        }
    }

    /// The plan's view of `message`.
    fn about<'a>(&'a self, ctx: &'a TurnContext, message: &'a InboundMessage) -> Known<'a> {
        Known {
            message,
            room: &self.facts,
            me: &self.me,
            conversation: &ctx.spec.conversation,
            access: &ctx.access,
            approval: self.approval,
            draft: self.draft.as_ref(),
            vote: self.vote.as_deref(),
        }
    }

    /// What earlier attempts at the message left for this one's sends.
    fn earlier(&self) -> Earlier<'_> {
        Earlier {
            draft: self.draft.as_ref(),
            retried: self.retried,
        }
    }
}

/// Asks the backend and streams its answer into the room.
async fn answer<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    known: &Gathered,
    received: Instant,
) -> Result<(), AccountError> {
    let facts = &known.facts;
    let conv = &ctx.spec.conversation;
    let key = message.conversation_key();
    let placement = plan::placement(message, conv.reply_to_message, facts.is_dm);
    let route = ctx.routing.pick(&message.sender, facts);
    let cues = Cues::start(room, message, conv, &ctx.account, received.into());

    let mut conversation = history::conversation(ctx, room, message, &key, facts.is_dm).await;
    if route.backend.accepts_images()
        && let Some(Attachment::File(image)) = &message.attachment
        && let Some(current) = conversation.last_mut()
    {
        media::attach_image(ctx, image, current).await;
    }
    // The backend call's span, named and tagged by OpenTelemetry's GenAI conventions; the
    // backend is handed its trace context.
    // The backend records the usage it reports on it (`gen_ai.usage.*`).
    let backend_span = info_span!("backend", backend = %route.name,
        "gen_ai.operation.name" = "chat", "gen_ai.request.model" = tracing::field::Empty,
        "gen_ai.system" = route.backend.kind(),
        "gen_ai.usage.input_tokens" = tracing::field::Empty,
        "gen_ai.usage.output_tokens" = tracing::field::Empty);
    if let Some(model) = &route.model {
        backend_span.record("gen_ai.request.model", model.as_str());
    }
    let request = ChatRequest {
        messages: conversation,
        account: ctx.account.clone(),
        room_id: message.room_id.to_string(),
        thread_root: message.thread_root.as_ref().map(ToString::to_string),
        sender: message.sender.to_string(),
        traceparent: mxfleet_telemetry::traceparent(&backend_span),
    };
    debug!(backend = %route.name, turns = request.messages.len(), "asking the backend");
    let found = FoundAction::default();
    let backend = route.backend.clone();
    let start = move || stream_retrying_once(backend, request);
    let asked = match &route.gate {
        Some(gate) => gate.gated(start),
        None => start(),
    };
    let started = Instant::now();
    let first_text = Arc::new(OnceLock::new());
    let asked: TextStream = Box::pin(InSpan {
        inner: asked,
        span: backend_span,
        first_token: Some((started, ctx.account.clone())),
        first_text: first_text.clone(),
    });
    let stream = actions::split_actions(asked, found.clone());
    let earlier = known.earlier();
    let mut sink = room_sink(
        ctx,
        room,
        message,
        &placement,
        earlier,
        Some(cues.visible()),
    );
    sink.received = Some(received);
    sink.overhead = Some(Overhead {
        before_backend: started.saturating_duration_since(received),
        first_text,
    });
    let delivery = Delivery::new(
        stream,
        StreamSettings::of(conv),
        sink,
        ctx.wrap_up.clone(),
        Span::current(),
    );
    let mut outcome = deliver(ctx, delivery, route.deadline).await;
    if let (Ok(delivered), Some(action)) = (&mut outcome, actions::take(&found)) {
        actions::send_asked(room, message, &placement, &action, &mut delivered.text).await;
    }
    if matches!(&outcome, Ok(delivered) if delivered.backend_error.is_some()) {
        ctx.board.update(&ctx.account, |s| {
            s.backend_errors = s.backend_errors.saturating_add(1)
        });
    }
    let backend_took = started.elapsed();
    let backend_ms = u64::try_from(backend_took.as_millis()).unwrap_or(u64::MAX);
    ctx.board
        .update(&ctx.account, |s| s.observe_backend(backend_ms));
    measure::observe(measure::BACKEND, &ctx.account, backend_took);
    if outcome.is_ok() {
        measure::observe(measure::REPLY_COMPLETE, &ctx.account, received.elapsed());
    }
    // The outcome is recorded before the cues are cleared: a redaction held back by a 429 must
    // not leave a delivered answer pending.
    let recorded = record::record(ctx, room, message, &key, outcome, Remember::Yes).await;
    cues.clear(room.clone(), message);
    recorded
}

/// Answers `message` with `text` in one message, without the backend (commands, refusals).
async fn reply_directly<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    known: &Gathered,
    text: String,
) -> Result<(), AccountError> {
    let conv = &ctx.spec.conversation;
    let placement = plan::placement(message, conv.reply_to_message, known.facts.is_dm);
    let key = message.conversation_key();
    let earlier = known.earlier();
    send_at_once(ctx, room, message, &placement, earlier, &key, text).await
}

/// Sends `text` as one message answering `message` and records it (not remembered).
async fn send_at_once<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    placement: &Placement,
    earlier: Earlier<'_>,
    key: &str,
    text: String,
) -> Result<(), AccountError> {
    let settings = StreamSettings::of(&ctx.spec.conversation).at_once();
    let sink = room_sink(ctx, room, message, placement, earlier, None);
    let delivery = Delivery::new(
        once(text),
        settings,
        sink,
        ctx.wrap_up.clone(),
        Span::current(),
    );
    let outcome = deliver(ctx, delivery, DIRECT_REPLY_DEADLINE).await;
    record::record(ctx, room, message, key, outcome, Remember::No).await
}

/// A DM from an unknown sender under OTP self-approval: the `OtpGate` decides, the sender gets
/// its answer (never the code).
async fn challenge<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    known: &Gathered,
) -> Result<(), AccountError> {
    let outcome = ask_otp_gate(ctx, message).await?;
    if matches!(outcome, OtpOutcome::Challenged { .. }) {
        ctx.board.update(&ctx.account, |s| s.otp_challenges += 1);
    }
    let Some(text) = otp::reply_text(&outcome) else {
        let reason = "OTP gate: no reply (locked out or throttled)";
        return record::skip(ctx, message, reason).await;
    };
    let earlier = known.earlier();
    send_at_once(ctx, room, message, &Placement::Plain, earlier, "", text).await
}

async fn ask_otp_gate(
    ctx: &TurnContext,
    message: &InboundMessage,
) -> Result<OtpOutcome, AccountError> {
    let gate = ctx
        .children
        .otp
        .get()
        .ok_or(AccountError::ChildGone("OTP gate"))?;
    let check = |reply| OtpMsg::Check {
        sender: message.sender.clone(),
        room_id: message.room_id.clone(),
        body: message.body.clone(),
        reply,
    };
    let called = gate.call(check, Some(OTP_DEADLINE)).await;
    Ok(children::answer("OTP gate", OTP_DEADLINE, called)??)
}

/// Runs `delivery` on the `StreamEditor` (inline while it restarts), for at most `deadline`.
async fn deliver(
    ctx: &TurnContext,
    delivery: Delivery,
    deadline: Duration,
) -> Result<Delivered, AccountError> {
    let Some(editor) = ctx.children.editor.get() else {
        return Ok(delivery.run.await?);
    };
    let called = editor
        .call(|reply| EditorMsg::Deliver(delivery, reply), Some(deadline))
        .await;
    Ok(children::answer("stream editor", deadline, called)??)
}

/// Where the answer to `message` goes: `room`, through the outbox, knowing what an `earlier`
/// attempt tried to send.
fn room_sink<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    placement: &Placement,
    earlier: Earlier<'_>,
    visible: Option<Arc<AtomicBool>>,
) -> RoomSink<R> {
    RoomSink {
        room: room.clone(),
        account: ctx.account.clone(),
        store: ctx.store.clone(),
        answering: message.event_id.clone(),
        placement: placement.clone(),
        draft: starting_draft(message.room_id.as_str(), earlier),
        visible,
        received: None,
        overhead: None,
        own_keys: ctx.owns_keys(),
    }
}

/// A stream polled inside `span` (the backend call's): the span lasts as long as the stream.
/// Its first text is timed from when the backend was asked, for the account named.
struct InSpan {
    inner: TextStream,
    span: Span,
    first_token: Option<(Instant, String)>,
    /// Set to when its first text came.
    first_text: Arc<OnceLock<Instant>>,
}

impl futures_util::Stream for InSpan {
    type Item = <TextStream as futures_util::Stream>::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let polled = this.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled
            && let Some((asked, account)) = this.first_token.take()
        {
            let now = Instant::now();
            let _ = this.first_text.set(now);
            measure::observe(
                measure::BACKEND_FIRST_TOKEN,
                &account,
                now.saturating_duration_since(asked),
            );
        }
        polled
    }
}

/// A stream of just `text`.
fn once(text: String) -> TextStream {
    Box::pin(futures_util::stream::iter([Ok(text)]))
}

/// The outbox draft of an answer to `message`, if one was saved (a read failure answers afresh).
async fn read_draft(ctx: &TurnContext, message: &InboundMessage) -> Option<Draft> {
    ctx.store
        .draft(&ctx.account, message.event_id.as_str())
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "could not read the draft; answering afresh");
            None
        })
}

/// Whether the sender of a DM approved themselves, when OTP self-approval is on.
async fn approval(ctx: &TurnContext, message: &InboundMessage, facts: &RoomFacts) -> Approval {
    if !(ctx.spec.conversation.otp_self_approval && facts.is_dm) {
        return Approval::NotAsked;
    }
    match ctx
        .store
        .is_approved(&ctx.account, message.sender.as_str())
        .await
    {
        Ok(true) => Approval::Approved,
        Ok(false) => Approval::NotApproved,
        Err(e) => {
            warn!(error = %e, "could not read approvals");
            Approval::Unknown
        }
    }
}

async fn read_receipt<R: RoomPort>(room: &R, message: &InboundMessage) {
    if let Err(e) = room.read_receipt(&message.event_id).await {
        debug!(error = %e, "read receipt not sent");
    }
}

#[cfg(test)]
mod tests {
    use mxfleet_matrix::matrix_sdk::ruma::{EventId, OwnedRoomId, UserId};
    use mxfleet_store::now_ms;

    use super::*;
    use crate::{
        testing::{self, Scripted, claim, context, pending},
        texts,
        turn::room::fake::{Did, FakeRoom},
    };

    fn room_id() -> OwnedRoomId {
        testing::room("!dm:hs")
    }

    fn message(id: &str, sender: &str, body: &str, ts: u64) -> InboundMessage {
        InboundMessage {
            origin_server_ts_ms: ts,
            ..testing::said("!dm:hs", id, sender, body)
        }
    }

    /// Waits until `room` saw `what` (the cues are cleared on a task of their own).
    async fn eventually(room: &FakeRoom, what: impl Fn(&[Did]) -> bool) -> Vec<Did> {
        for _ in 0..200 {
            let did = room.did();
            if what(&did) {
                return did;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        room.did()
    }

    fn bodies(room: &FakeRoom) -> Vec<String> {
        room.sent()
            .iter()
            .filter(|s| s["type"] == "m.room.message")
            .map(|s| s["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_dm_is_answered_with_cues_and_remembered() {
        // Cues on receipt (by default an answer this fast would come alone), and a backend
        // slower than the cue tasks' first turn: an answer visible before its cues were due
        // would rightly come without them (once seen under load, with the answer sent quickly).
        let backend = Scripted::slow("Hello **Ann**", Duration::from_millis(50));
        let config = "dm_policy = \"open\"\ncue_delay_ms = 0";
        let (ctx, _dir) = context(config, backend.clone()).await;
        let me = UserId::parse("@bot:hs").expect("a user id");
        let ann = UserId::parse("@ann:hs").expect("a user id");
        let room = FakeRoom::new(&room_id(), true)
            .name(&me, "Helper")
            .name(&ann, "Ann");
        let question = message("$q", "@ann:hs", "hi there", now_ms());
        claim(&ctx, &question).await;

        let _ = handle(
            &ctx,
            &room,
            question.clone(),
            1,
            Ticket::Admitted,
            Instant::now(),
        )
        .await;

        assert_eq!(bodies(&room), ["Hello **Ann**"]);
        let sent = room.sent();
        let answer = sent
            .iter()
            .find(|s| s["type"] == "m.room.message")
            .expect("an answer");
        assert_eq!(
            answer["content"]["formatted_body"], "<p>Hello <strong>Ann</strong></p>",
            "rendered from Markdown"
        );
        assert!(
            answer["content"]["m.relates_to"].is_null(),
            "no rich reply in a DM"
        );
        let reaction = sent
            .iter()
            .find(|s| s["type"] == "m.reaction")
            .expect("the ack reaction");
        assert_eq!(reaction["content"]["m.relates_to"]["key"], "👀");
        assert_eq!(reaction["content"]["m.relates_to"]["event_id"], "$q");
        let did = eventually(&room, |d| d.iter().any(|d| matches!(d, Did::Redacted(_)))).await;
        assert!(did.contains(&Did::Typing(true)), "{did:?}");
        assert!(did.contains(&Did::Typing(false)), "{did:?}");
        assert!(
            did.iter().any(|d| matches!(d, Did::Redacted(_))),
            "ack removed: {did:?}"
        );

        let request = backend.requests().pop().expect("the backend was asked");
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.messages[0].content, "hi there");
        assert_eq!(request.messages[0].name, None, "no names in a DM");
        assert_eq!(pending(&ctx).await, 0, "recorded as answered");
        let memory = ctx.store.memory("bot", "!dm:hs").await.expect("memory");
        let remembered: Vec<&str> = memory.turns.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(remembered, ["hi there", "Hello **Ann**"]);
    }

    #[tokio::test]
    async fn a_room_question_sees_its_history_and_gets_a_rich_reply() {
        let backend = Scripted::new("ok");
        let extra = "room_policy = \"open\"\nmention_mode = \"mention\"\nack_reaction = \"\"";
        let (ctx, _dir) = context(extra, backend.clone()).await;
        let bob = UserId::parse("@bob:hs").expect("a user id");
        let now = now_ms();
        let in_thread = InboundMessage {
            thread_root: Some(EventId::parse("$root").expect("an event id")),
            ..message("$t", "@bob:hs", "in a thread", now - 3)
        };
        let room = FakeRoom::new(&room_id(), false)
            .name(&bob, "Bob <script>")
            .said(message("$1", "@bob:hs", "earlier words", now - 5))
            .said(in_thread);
        let question = message("$q", "@bob:hs", "@bot:hs what did I say?", now);
        claim(&ctx, &question).await;

        let _ = handle(&ctx, &room, question, 1, Ticket::Admitted, Instant::now()).await;

        let request = backend.requests().pop().expect("the backend was asked");
        let said: Vec<(&str, Option<&str>)> = request
            .messages
            .iter()
            .map(|m| (m.content.as_str(), m.name.as_deref()))
            .collect();
        assert_eq!(
            said,
            [
                ("earlier words", Some("Bob script")),
                ("@bot:hs what did I say?", Some("Bob script")),
            ],
            "the thread's message is not the room's history; names are sanitised"
        );
        let sent = room.sent();
        assert_eq!(
            sent[0]["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
            "$q"
        );
        assert!(
            sent.iter().all(|s| s["type"] != "m.reaction"),
            "ack_reaction off"
        );
    }

    #[tokio::test]
    async fn commands_are_answered_without_the_backend_and_not_remembered() {
        let backend = Scripted::new("never");
        let (ctx, _dir) = context("dm_policy = \"open\"", backend.clone()).await;
        let room = FakeRoom::new(&room_id(), true);
        let question = message("$q", "@ann:hs", "!help", now_ms());
        claim(&ctx, &question).await;

        let _ = handle(&ctx, &room, question, 1, Ticket::Admitted, Instant::now()).await;

        assert_eq!(bodies(&room), [texts::HELP]);
        assert!(backend.requests().is_empty());
        assert!(
            room.sent().iter().all(|s| s["type"] != "m.reaction"),
            "no cues"
        );
        let memory = ctx.store.memory("bot", "!dm:hs").await.expect("memory");
        assert!(memory.turns.is_empty());
        assert_eq!(pending(&ctx).await, 0);
    }

    #[tokio::test]
    async fn a_message_over_the_rate_limit_gets_the_notice_and_not_the_backend() {
        let backend = Scripted::new("an answer");
        let (ctx, _dir) = context("dm_policy = \"open\"", backend.clone()).await;
        let room = FakeRoom::new(&room_id(), true);
        let question = message("$q", "@ann:hs", "hi", now_ms());
        claim(&ctx, &question).await;
        let _ = handle(
            &ctx,
            &room,
            question,
            1,
            Ticket::TellLimited("per_sender"),
            Instant::now(),
        )
        .await;

        let limits = &ctx.spec.conversation.limits;
        assert_eq!(bodies(&room), [texts::rate_limited(limits)]);
        assert!(backend.requests().is_empty());
        assert_eq!(ctx.board.account("bot").map(|s| s.rate_limited), Some(1));
        assert_eq!(pending(&ctx).await, 0, "recorded");
    }

    // Paused time: the sends' retries (with their backoff) take no real time.
    #[tokio::test(start_paused = true)]
    async fn a_refused_message_is_recorded_and_an_unsent_answer_stays_pending() {
        let backend = Scripted::new("ok");
        let (ctx, _dir) = context("", backend.clone()).await;
        let room = FakeRoom::new(&room_id(), true);
        let stranger = message("$s", "@stranger:hs", "hi", now_ms());
        claim(&ctx, &stranger).await;
        let _ = handle(&ctx, &room, stranger, 1, Ticket::Admitted, Instant::now()).await;
        assert!(room.sent().is_empty() && backend.requests().is_empty());
        assert_eq!(pending(&ctx).await, 0, "skipped is recorded");

        let (ctx, _dir) = context("dm_policy = \"open\"\nack_reaction = \"\"", backend).await;
        let down = FakeRoom::new(&room_id(), true).refusing_sends();
        let question = message("$q", "@ann:hs", "hi", now_ms());
        claim(&ctx, &question).await;
        let _ = handle(&ctx, &down, question, 1, Ticket::Admitted, Instant::now()).await;
        assert_eq!(pending(&ctx).await, 1, "left for the next start");
    }

    #[tokio::test]
    async fn a_vote_on_the_bots_poll_is_answered_in_its_words() {
        let backend = Scripted::new("Monday it is");
        let (ctx, _dir) = context("dm_policy = \"open\"", backend.clone()).await;
        let poll = EventId::parse("$poll").expect("an event id");
        let vote = mxfleet_matrix::polls::PollVote {
            question: "Which day?".into(),
            chosen: vec!["Monday".into()],
        };
        let room = FakeRoom::new(&room_id(), true).poll(&poll, vote);
        let ballot = InboundMessage {
            attachment: Some(Attachment::PollResponse {
                poll_id: poll.clone(),
                answers: vec!["answer-1".into()],
            }),
            ..message("$v", "@ann:hs", "", now_ms())
        };
        claim(&ctx, &ballot).await;

        let _ = handle(&ctx, &room, ballot, 1, Ticket::Admitted, Instant::now()).await;

        let request = backend.requests().pop().expect("the backend was asked");
        assert_eq!(
            request.last_user_message(),
            "[my vote in your poll \"Which day?\"] Monday"
        );
        assert_eq!(bodies(&room), ["Monday it is"]);
    }
}
