//! `StreamEditor`: turns a backend's token stream into Matrix sends and `m.replace` edits.
//!
//! With `stream_mode = "edit_in_place"` the first message goes out once
//! `stream_min_initial_chars` have arrived; after that the message is edited no more often than
//! `edit_throttle_ms`, each edit showing the latest text (deltas in between are coalesced), and
//! at most `max_edits_per_message` edits per message, one of which is always kept for the final
//! edit, which holds exactly the full answer. A 429 pushes the next edit past its `retry_after`;
//! the final edit waits for it. Answers longer than a message are cut on paragraph or code-block
//! boundaries into further messages. With `stream_mode = "off"` the whole answer is sent once.
//!
//! Every send goes through the outbox: the draft (with its transaction id) is saved before the
//! first attempt and after each send or edit, so a restart finds an answer left mid-stream and
//! finishes it with an "interrupted" edit instead of starting a second one.
//!
//! The actor owns the running deliveries of its account: stopping it (account stop) aborts them,
//! and their drafts are finished on the next start.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use mxfleet_backend::TextStream;
use mxfleet_config::StreamMode;
use mxfleet_matrix::{
    FailureClass, MatrixFailure, Placement, edit_content, ensure_can_send,
    format::{cut, render_markdown},
    matrix_sdk::{Room, ruma::OwnedEventId},
    message_content, send_content, send_content_once, transaction_id,
};
use mxfleet_store::{Draft, DraftPart, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::{
    sync::oneshot,
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tracing::{Instrument, Span, debug, warn};

/// The most bytes of Markdown in one message; the edit of a message carries its text twice
/// (fallback and `m.new_content`), as plain text and HTML, within Matrix's 64 KiB event limit.
pub(crate) const MAX_PART_BYTES: usize = 8000;
/// How many times one send or edit is retried before the answer fails.
const SEND_ATTEMPTS: u32 = 10;
/// The wait after a 429 without `retry_after`.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(2);

/// How one answer is streamed.
#[derive(Debug, Clone)]
pub(crate) struct StreamSettings {
    pub(crate) mode: StreamMode,
    pub(crate) min_initial_chars: usize,
    pub(crate) throttle: Duration,
    pub(crate) max_edits: u32,
    pub(crate) max_part_bytes: usize,
}

/// What a delivery did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Delivered {
    /// The full text shown (the backend's answer, plus an error note if it failed).
    pub(crate) text: String,
    /// The event id of the first message.
    pub(crate) first_event_id: String,
    /// Messages used.
    pub(crate) parts: usize,
    /// Edits sent, over all messages.
    pub(crate) edits: u32,
    /// From the backend's first token to the first message being accepted by the homeserver.
    pub(crate) first_visible: Option<Duration>,
    /// The backend's error, if the stream ended with one.
    pub(crate) backend_error: Option<String>,
    /// Sends and edits the homeserver refused with 429.
    pub(crate) rate_limited: u32,
}

/// Where a delivery's sends go: Matrix in production, a recorder in tests.
pub(crate) trait AnswerSink: Send {
    /// Sends message `part` for the first time, showing `text`; returns its event id.
    fn send_new(
        &mut self,
        part: usize,
        text: &str,
    ) -> impl Future<Output = Result<String, MatrixFailure>> + Send;
    /// Edits message `part` to show `text`; this is edit number `n` of that message.
    fn edit(
        &mut self,
        part: usize,
        n: u32,
        text: &str,
    ) -> impl Future<Output = Result<(), MatrixFailure>> + Send;
}

/// One answer to stream into a room.
pub(crate) struct StreamJob {
    pub(crate) sink: MatrixSink,
    pub(crate) stream: TextStream,
    pub(crate) settings: StreamSettings,
    pub(crate) span: Span,
}

/// The editor actor.
pub(crate) struct StreamEditor;

/// Messages of the editor.
pub(crate) enum EditorMsg {
    /// Stream an answer; the outcome goes to the sender.
    Deliver(
        Box<StreamJob>,
        oneshot::Sender<Result<Delivered, MatrixFailure>>,
    ),
}

/// The running deliveries.
pub(crate) struct EditorState {
    running: JoinSet<()>,
}

impl Actor for StreamEditor {
    type Msg = EditorMsg;
    type State = EditorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<EditorMsg>,
        _args: (),
    ) -> Result<EditorState, ActorProcessingErr> {
        Ok(EditorState {
            running: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<EditorMsg>,
        message: EditorMsg,
        state: &mut EditorState,
    ) -> Result<(), ActorProcessingErr> {
        while state.running.try_join_next().is_some() {}
        match message {
            EditorMsg::Deliver(job, reply) => {
                let StreamJob {
                    mut sink,
                    stream,
                    settings,
                    span,
                } = *job;
                state.running.spawn(
                    async move {
                        let outcome = deliver(stream, &settings, &mut sink).await;
                        let _ = reply.send(outcome);
                    }
                    .instrument(span),
                );
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<EditorMsg>,
        state: &mut EditorState,
    ) -> Result<(), ActorProcessingErr> {
        state.running.abort_all();
        Ok(())
    }
}

/// Streams `stream` into `sink` following `settings`.
pub(crate) async fn deliver<S: AnswerSink>(
    mut stream: TextStream,
    settings: &StreamSettings,
    sink: &mut S,
) -> Result<Delivered, MatrixFailure> {
    let mut w = Writer::new(settings);
    let mut next_flush: Option<Instant> = None;
    let mut backend_error = None;
    loop {
        let timer = async {
            match next_flush {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            delta = stream.next() => match delta {
                Some(Ok(delta)) => w.push(&delta),
                Some(Err(e)) => {
                    backend_error = Some(e.to_string());
                    break;
                }
                None => break,
            },
                        () = timer => {
                w.flush(sink, false).await?;
            }
        }
        if settings.mode == StreamMode::EditInPlace {
            next_flush = w.next_flush_at();
            if next_flush.is_some_and(|at| at <= Instant::now()) {
                w.flush(sink, false).await?;

                next_flush = w.next_flush_at();
            }
        }
    }
    drop(stream);
    match (&backend_error, w.text.trim().is_empty()) {
        (Some(e), true) => {
            w.text = format!("Sorry, I could not get an answer from the backend: {e}")
        }
        (Some(e), false) => w.text.push_str(&format!(
            "\n\n⚠️ The answer is incomplete: the backend failed ({e})."
        )),
        (None, true) => w.text = "(the backend returned an empty answer)".into(),
        (None, false) => {}
    }
    w.flush(sink, true).await?;
    Ok(Delivered {
        first_event_id: w.first_event_id.clone().unwrap_or_default(),
        parts: w.parts.len(),
        edits: w.parts.iter().map(|p| p.edits).sum(),
        first_visible: w.first_visible,
        rate_limited: w.rate_limited,
        text: w.text,
        backend_error,
    })
}

/// The state of one delivery.
struct Writer<'a> {
    settings: &'a StreamSettings,
    text: String,
    /// Bytes of `text` already in finished messages.
    closed: usize,
    /// Text the current message starts with (a reopened code fence).
    carry: String,
    parts: Vec<PartState>,
    last_send: Option<Instant>,
    blocked_until: Option<Instant>,
    first_token: Option<Instant>,
    first_visible: Option<Duration>,
    first_event_id: Option<String>,
    rate_limited: u32,
}

#[derive(Debug, Default)]
struct PartState {
    shown: Option<String>,
    edits: u32,
}

impl<'a> Writer<'a> {
    fn new(settings: &'a StreamSettings) -> Self {
        Self {
            settings,
            text: String::new(),
            closed: 0,
            carry: String::new(),
            parts: vec![PartState::default()],
            last_send: None,
            blocked_until: None,
            first_token: None,
            first_visible: None,
            first_event_id: None,
            rate_limited: 0,
        }
    }

    fn push(&mut self, delta: &str) {
        if self.first_token.is_none() && !delta.is_empty() {
            self.first_token = Some(Instant::now());
        }
        self.text.push_str(delta);
    }

    fn current(&self) -> String {
        format!("{}{}", self.carry, &self.text[self.closed..])
    }

    fn part(&mut self) -> &mut PartState {
        if self.parts.is_empty() {
            self.parts.push(PartState::default());
        }
        let last = self.parts.len() - 1;
        &mut self.parts[last]
    }

    /// When the next intermediate flush is due, if one is wanted.
    fn next_flush_at(&mut self) -> Option<Instant> {
        let current = self.current();
        let settings = self.settings;
        let part = self.part();
        let dirty = part.shown.as_deref() != Some(current.as_str()) && !current.trim().is_empty();
        if !dirty {
            return None;
        }
        if part.shown.is_none() {
            let enough = current.chars().count() >= settings.min_initial_chars
                || current.len() > settings.max_part_bytes;
            return enough.then(|| self.blocked_until.unwrap_or_else(Instant::now));
        }
        // One edit of each message is kept for the final text.
        if part.edits + 1 >= settings.max_edits && current.len() <= settings.max_part_bytes {
            return None;
        }
        let after_throttle = self
            .last_send
            .map_or_else(Instant::now, |t| t + settings.throttle);
        Some(
            self.blocked_until
                .map_or(after_throttle, |b| b.max(after_throttle)),
        )
    }

    /// Shows the latest text: cuts off full messages, then sends or edits the current one. A
    /// final flush retries until it lands; an intermediate one gives up on 429s and transient
    /// errors (the next flush carries the text).
    async fn flush<S: AnswerSink>(
        &mut self,
        sink: &mut S,
        last: bool,
    ) -> Result<(), MatrixFailure> {
        loop {
            let current = self.current();
            if current.len() <= self.settings.max_part_bytes {
                break;
            }
            let c = cut(&current, self.settings.max_part_bytes);
            self.show(sink, &c.head, true).await?;
            self.closed += c.consumed.saturating_sub(self.carry.len());
            self.carry = c.carry;
            self.parts.push(PartState::default());
        }
        let current = self.current();
        if current.trim().is_empty() {
            return Ok(());
        }
        if last {
            return self.show(sink, current.trim_end(), true).await;
        }
        match self.show(sink, &current, false).await {
            Err(f)
                if matches!(
                    f.class,
                    FailureClass::RateLimited(_) | FailureClass::Transient
                ) =>
            {
                debug!(error = %f, "intermediate update deferred");
                Ok(())
            }
            other => other,
        }
    }

    /// Sends or edits the current message to show `text`; `must` retries until it lands.
    async fn show<S: AnswerSink>(
        &mut self,
        sink: &mut S,
        text: &str,
        must: bool,
    ) -> Result<(), MatrixFailure> {
        let index = self.parts.len() - 1;
        if self.parts[index].shown.as_deref() == Some(text) {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            if let Some(until) = self.blocked_until {
                if !must && Instant::now() < until {
                    return Err(MatrixFailure::new(
                        FailureClass::RateLimited(None),
                        "waiting for retry_after",
                    ));
                }
                sleep_until(until).await;
                self.blocked_until = None;
            }
            let part = &self.parts[index];
            let result = match &part.shown {
                None => sink.send_new(index, text).await.map(Some),
                Some(_) => sink.edit(index, part.edits + 1, text).await.map(|()| None),
            };
            match result {
                Ok(new_event) => {
                    let now = Instant::now();
                    self.last_send = Some(now);
                    let part = &mut self.parts[index];
                    if part.shown.is_some() {
                        part.edits += 1;
                    }
                    part.shown = Some(text.to_owned());
                    if let Some(event_id) = new_event
                        && self.first_event_id.is_none()
                    {
                        self.first_event_id = Some(event_id);
                        self.first_visible =
                            self.first_token.map(|t| now.saturating_duration_since(t));
                    }

                    return Ok(());
                }
                Err(f) => {
                    attempt += 1;
                    let wait = match f.class {
                        FailureClass::RateLimited(after) => {
                            self.rate_limited += 1;
                            after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
                        }
                        FailureClass::Transient => {
                            Duration::from_millis(500 * 2u64.pow(attempt.min(4)))
                        }
                        _ => return Err(f),
                    };
                    self.blocked_until = Some(Instant::now() + wait);
                    if !must || attempt >= SEND_ATTEMPTS {
                        return Err(f);
                    }
                    warn!(error = %f, wait_ms = wait.as_millis() as u64, "send failed; retrying");
                }
            }
        }
    }
}

/// Sends into a Matrix room through the outbox.
pub(crate) struct MatrixSink {
    pub(crate) room: Room,
    pub(crate) account: String,
    pub(crate) store: Store,
    /// The event being answered: transaction ids and the draft key derive from it.
    pub(crate) answering: String,
    pub(crate) placement: Placement,
    pub(crate) draft: Draft,
    /// Set once the first message is out (the cues watch it).
    pub(crate) visible: Option<Arc<AtomicBool>>,
    /// Whether the account's device keys are its own (false: access token; encrypted rooms are
    /// refused).
    pub(crate) own_keys: bool,
}

impl MatrixSink {
    async fn save(&self) {
        if let Err(e) = self
            .store
            .save_draft(&self.account, &self.answering, &self.draft)
            .await
        {
            warn!(error = %e, "could not save the answer's draft");
        }
    }

    fn event_id(&self, part: usize) -> Result<OwnedEventId, MatrixFailure> {
        self.draft
            .parts
            .get(part)
            .and_then(|p| p.event_id.as_deref())
            .and_then(|id| OwnedEventId::try_from(id).ok())
            .ok_or_else(|| {
                MatrixFailure::new(FailureClass::Fatal, "editing a message that was never sent")
            })
    }
}

impl AnswerSink for MatrixSink {
    async fn send_new(&mut self, part: usize, text: &str) -> Result<String, MatrixFailure> {
        // The shared send path checks the room's encryption; only an access-token account's
        // refusal is added here.
        if !self.own_keys {
            ensure_can_send(&self.room, false, "sending the answer").await?;
        }
        let txn_id = transaction_id(&self.answering, &part.to_string());
        if self.draft.parts.len() <= part {
            self.draft.parts.resize_with(part + 1, DraftPart::default);
        }
        self.draft.parts[part].txn_id = txn_id.to_string();
        self.save().await;
        // Only the first message is a rich reply; the later ones stay in the thread, if any.
        let placement = match (&self.placement, part) {
            (Placement::ReplyTo(_), 1..) => Placement::Plain,
            (p, _) => p.clone(),
        };
        let content = message_content(&render_markdown(text), &placement);
        let event_id = send_content_once(&self.room, content, txn_id, "sending the answer").await?;
        if let Some(visible) = &self.visible {
            visible.store(true, Ordering::Relaxed);
        }
        let stored = &mut self.draft.parts[part];
        stored.event_id = Some(event_id.to_string());
        stored.shown = text.to_owned();
        self.save().await;
        Ok(event_id.to_string())
    }

    async fn edit(&mut self, part: usize, n: u32, text: &str) -> Result<(), MatrixFailure> {
        let original = self.event_id(part)?;
        let txn_id = transaction_id(&self.answering, &format!("{part}.e{n}"));
        let content = edit_content(&original, &render_markdown(text));
        send_content_once(&self.room, content, txn_id, "editing the answer").await?;
        let stored = &mut self.draft.parts[part];
        stored.shown = text.to_owned();
        stored.edits = n;
        self.save().await;
        Ok(())
    }
}

/// Finishes an answer a previous process left mid-stream: its last message gets an
/// "interrupted" edit (sent with a stable transaction id). Returns the first message's id.
pub(crate) async fn finish_interrupted(
    room: &Room,
    answering: &str,
    draft: &Draft,
) -> Result<Option<String>, MatrixFailure> {
    let Some((index, part)) = draft
        .parts
        .iter()
        .enumerate()
        .rev()
        .find(|(_, p)| p.event_id.is_some())
    else {
        return Ok(None);
    };
    let original = part
        .event_id
        .as_deref()
        .and_then(|id| OwnedEventId::try_from(id).ok())
        .ok_or_else(|| MatrixFailure::new(FailureClass::Fatal, "bad event id in draft"))?;
    let text = format!(
        "{}\n\n*(interrupted: mxfleet restarted before this answer was complete)*",
        part.shown.trim_end()
    );
    let txn_id = transaction_id(answering, &format!("{index}.interrupted"));
    send_content(
        room,
        edit_content(&original, &render_markdown(&text)),
        txn_id,
        "finishing an interrupted answer",
    )
    .await?;
    Ok(draft.parts.first().and_then(|p| p.event_id.clone()))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use futures_util::stream;
    use mxfleet_backend::BackendError;
    use tokio::time::sleep;

    use super::*;

    /// Records what reaches the room; fails the calls listed in `failures` (by call index).
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(usize, Option<u32>, String, Instant)>,
        failures: VecDeque<(usize, FailureClass)>,
    }

    impl Recorder {
        fn fail(&mut self) -> Option<MatrixFailure> {
            let n = self.calls.len();
            match self.failures.front() {
                Some((at, class)) if *at == n => {
                    let class = *class;

                    self.failures.pop_front();
                    // A failed call is not recorded; the next one gets its slot.
                    Some(MatrixFailure::new(class, "injected"))
                }
                _ => None,
            }
        }

        fn final_texts(&self) -> Vec<String> {
            let parts = self.calls.iter().map(|c| c.0).max().map_or(0, |m| m + 1);
            (0..parts)
                .map(|p| {
                    self.calls
                        .iter()
                        .rev()
                        .find(|c| c.0 == p)
                        .map(|c| c.2.clone())
                        .unwrap_or_default()
                })
                .collect()
        }
    }

    impl AnswerSink for Recorder {
        async fn send_new(&mut self, part: usize, text: &str) -> Result<String, MatrixFailure> {
            if let Some(f) = self.fail() {
                return Err(f);
            }
            self.calls
                .push((part, None, text.to_owned(), Instant::now()));
            Ok(format!("$p{part}"))
        }

        async fn edit(&mut self, part: usize, n: u32, text: &str) -> Result<(), MatrixFailure> {
            if let Some(f) = self.fail() {
                return Err(f);
            }
            self.calls
                .push((part, Some(n), text.to_owned(), Instant::now()));
            Ok(())
        }
    }

    fn settings(mode: StreamMode) -> StreamSettings {
        StreamSettings {
            mode,
            min_initial_chars: 10,
            throttle: Duration::from_millis(500),
            max_edits: 5,
            max_part_bytes: 2000,
        }
    }

    /// A backend stream of `n` deltas "wNN " arriving every `gap`.
    fn slow_stream(n: usize, gap: Duration) -> (TextStream, String) {
        let words: Vec<String> = (0..n).map(|i| format!("w{i:02} ")).collect();
        let full = words.concat();
        let s = stream::iter(words).then(move |w| async move {
            sleep(gap).await;
            Ok::<_, BackendError>(w)
        });
        (Box::pin(s), full)
    }

    #[tokio::test(start_paused = true)]
    async fn edits_are_throttled_capped_and_the_last_holds_the_full_text() {
        let (stream, full) = slow_stream(100, Duration::from_millis(50));
        let mut sink = Recorder::default();
        let settings = settings(StreamMode::EditInPlace);
        let d = deliver(stream, &settings, &mut sink)
            .await
            .map_err(|e| e.message);
        let d = d.unwrap_or_default();
        assert_eq!(d.text, full);
        assert_eq!(sink.final_texts(), [full.trim_end()]);
        // First send as soon as 10 characters were there (3 words), not at the end.
        assert_eq!(sink.calls[0].1, None);
        assert!(sink.calls[0].2.len() >= 10 && sink.calls[0].2.len() < 20);
        let edits: Vec<_> = sink.calls.iter().filter(|c| c.1.is_some()).collect();
        assert!(
            edits.len() as u32 <= settings.max_edits,
            "{} edits",
            edits.len()
        );
        assert_eq!(d.edits as usize, edits.len());
        // Every update but the final one respects the throttle.
        let n = sink.calls.len();
        for pair in sink.calls[..n - 1].windows(2) {
            assert!(pair[1].3 - pair[0].3 >= settings.throttle, "{pair:?}");
        }
        assert!(
            d.first_visible
                .is_some_and(|t| t < Duration::from_millis(200))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deltas_between_edits_are_coalesced() {
        let (stream, full) = slow_stream(40, Duration::from_millis(10));
        let mut sink = Recorder::default();
        let settings = StreamSettings {
            max_edits: 100,
            ..settings(StreamMode::EditInPlace)
        };
        let d = deliver(stream, &settings, &mut sink)
            .await
            .map_err(|e| e.message)
            .unwrap_or_default();
        // 400 ms of stream with a 500 ms throttle: the first send and the final edit only.
        assert_eq!(sink.calls.len(), 2, "{:?}", sink.calls);
        assert_eq!(d.text, full);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_delay_edits_and_the_final_text_still_lands() {
        let (stream, full) = slow_stream(60, Duration::from_millis(50));
        let mut sink = Recorder::default();
        let wait = Duration::from_secs(3);
        sink.failures = VecDeque::from([
            (1, FailureClass::RateLimited(Some(wait))),
            (3, FailureClass::RateLimited(Some(wait))),
            (3, FailureClass::RateLimited(None)),
            (3, FailureClass::Transient),
        ]);
        let d = deliver(stream, &settings(StreamMode::EditInPlace), &mut sink)
            .await
            .map_err(|e| e.message)
            .unwrap_or_default();
        assert_eq!(sink.final_texts(), [full.trim_end()]);
        assert_eq!(d.text, full);
        // Nothing was sent within retry_after of a 429.
        assert!(sink.calls[1].3 - sink.calls[0].3 >= wait);
    }

    #[tokio::test(start_paused = true)]
    async fn long_answers_continue_in_new_messages_and_off_mode_sends_once() {
        let paragraph = format!("{}\n\n", "lorem ipsum ".repeat(20));
        let full = paragraph.repeat(30);
        for mode in [StreamMode::EditInPlace, StreamMode::Off] {
            let chunks: Vec<Result<String, BackendError>> =
                (0..30).map(|_| Ok(paragraph.clone())).collect();
            let mut sink = Recorder::default();
            let d = deliver(Box::pin(stream::iter(chunks)), &settings(mode), &mut sink)
                .await
                .map_err(|e| e.message)
                .unwrap_or_default();
            let parts = sink.final_texts();
            assert!(parts.len() >= 4, "{mode:?}: {} parts", parts.len());
            assert!(parts.iter().all(|p| p.len() <= 2000));
            let joined = parts.join("\n\n");
            assert_eq!(
                joined.matches("lorem").count(),
                full.matches("lorem").count()
            );
            assert_eq!(d.parts, parts.len());
            if mode == StreamMode::Off {
                assert!(
                    sink.calls.iter().all(|c| c.1.is_none()),
                    "off mode never edits"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_backend_keeps_its_partial_answer_and_says_so() {
        let items = vec![
            Ok("partial answer here ".to_owned()),
            Err(BackendError::Timeout),
        ];
        let mut sink = Recorder::default();
        let d = deliver(
            Box::pin(stream::iter(items)),
            &settings(StreamMode::EditInPlace),
            &mut sink,
        )
        .await
        .map_err(|e| e.message)
        .unwrap_or_default();
        assert!(d.text.starts_with("partial answer here") && d.text.contains("backend failed"));
        assert_eq!(sink.final_texts(), [d.text.trim_end()]);
    }
}
