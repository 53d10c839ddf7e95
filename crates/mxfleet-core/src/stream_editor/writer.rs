//! The streaming rules of one answer: when to send the first message, when to edit it, where
//! to cut a long answer into further messages, and how to wait out 429s. The writer keeps the
//! text and what each message shows; the sink does the sending.

use std::time::Duration;

use mxfleet_matrix::{FailureClass, MatrixFailure, format::cut, matrix_sdk::ruma::OwnedEventId};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use super::{AnswerSink, Delivered, StreamSettings};
use crate::texts;

/// How long a send that must land (the first message, the final edit) keeps trying through
/// transient failures — a network cut, a homeserver restart — before the delivery fails (the
/// room worker then tries the message again, and an answer already visible would be finished
/// as interrupted). The answer's text is in hand meanwhile.
const MUST_SEND_PATIENCE: Duration = Duration::from_secs(120);
/// The longest wait between two tries of a send.
const MAX_SEND_WAIT: Duration = Duration::from_secs(8);
/// The wait after a 429 without `retry_after`.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(2);
/// Room kept in the last allowed message for the "answer cut" note.
const CUT_NOTE_RESERVE: usize = texts::ANSWER_CUT.len() + 2;

/// The state of one delivery.
pub(super) struct Writer<'a> {
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
    first_event_id: Option<OwnedEventId>,
    rate_limited: u32,
    /// Characters in `text`.
    chars: usize,
    /// When `text` is this long, the message count is checked again.
    next_parts_check: usize,
    /// The answer reached a limit and was cut.
    cut: bool,
}

/// What one message of the answer shows so far.
#[derive(Debug, Default)]
struct PartState {
    shown: Option<String>,
    edits: u32,
}

impl<'a> Writer<'a> {
    /// A delivery that has received nothing yet.
    pub(super) fn new(settings: &'a StreamSettings) -> Self {
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
            chars: 0,
            next_parts_check: 0,
            cut: false,
        }
    }

    /// Takes the backend's next delta; false once the answer reached `max_answer_chars` or
    /// `max_answer_parts` (the text then ends at the limit, and nothing more is wanted).
    pub(super) fn push(&mut self, delta: &str) -> bool {
        if self.first_token.is_none() && !delta.is_empty() {
            self.first_token = Some(Instant::now());
        }
        let room = self.settings.max_answer_chars.saturating_sub(self.chars);
        let taken = match delta.char_indices().nth(room) {
            Some((at, _)) => {
                self.cut = true;
                delta.get(..at).unwrap_or_default()
            }
            None => delta,
        };
        self.text.push_str(taken);
        self.chars = self.chars.saturating_add(taken.chars().count());
        // The count of messages is checked every quarter message, not on every delta.
        if self.text.len() >= self.next_parts_check {
            self.cap_parts();
            self.next_parts_check = self
                .text
                .len()
                .saturating_add(self.settings.max_part_bytes / 4);
        }
        !self.cut
    }

    /// Cuts the text where its last allowed message ends, if it would need more messages than
    /// `max_answer_parts` (leaving room there for the note a cut answer ends with).
    pub(super) fn cap_parts(&mut self) {
        let max = self.settings.max_part_bytes;
        let (mut closed, mut carry, mut messages) =
            (self.closed, self.carry.clone(), self.parts.len());
        loop {
            let current = format!("{carry}{}", self.text.get(closed..).unwrap_or_default());
            let last_allowed = messages >= self.settings.max_answer_parts;
            let limit = match (last_allowed, self.cut) {
                (true, true) => max.saturating_sub(CUT_NOTE_RESERVE),
                _ => max,
            };
            if current.len() <= limit {
                return;
            }
            if !last_allowed {
                // As `flush` will cut it.
                let c = cut(&current, max);
                closed = closed.saturating_add(c.consumed.saturating_sub(carry.len()));
                carry = c.carry;
                messages = messages.saturating_add(1);
                continue;
            }
            let c = cut(&current, max.saturating_sub(CUT_NOTE_RESERVE));
            // The head closes a code block left open; the text keeps that.
            let head = c.head.strip_prefix(carry.as_str()).unwrap_or(&c.head);
            if self.text.is_char_boundary(closed) {
                self.text.truncate(closed);
                self.text.push_str(head);
            }
            self.cut = true;
            return;
        }
    }

    /// Whether the answer reached a limit and was cut.
    pub(super) fn was_cut(&self) -> bool {
        self.cut
    }

    /// Whether nothing but whitespace arrived.
    pub(super) fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }

    /// Ends the text with `ending`: appended, or replacing an empty answer.
    pub(super) fn conclude(&mut self, ending: Option<texts::Ending>) {
        match ending {
            Some(texts::Ending::Append(tail)) => self.text.push_str(&tail),
            Some(texts::Ending::Replace(text)) => self.text = text,
            None => {}
        }
    }

    /// What the delivery did, once it is over.
    pub(super) fn delivered(self, backend_error: Option<String>) -> Delivered {
        Delivered {
            first_event_id: self.first_event_id,
            parts: self.parts.len(),
            edits: self.parts.iter().map(|p| p.edits).sum(),
            first_visible: self.first_visible,
            rate_limited: self.rate_limited,
            text: self.text,
            backend_error,
            cut: self.cut,
        }
    }

    /// The text of the current (last) message: the carried-over fence and what is not in
    /// finished messages yet.
    fn current(&self) -> String {
        let open = self.text.get(self.closed..).unwrap_or_default();
        format!("{}{open}", self.carry)
    }

    fn part(&mut self) -> &mut PartState {
        if self.parts.is_empty() {
            self.parts.push(PartState::default());
        }
        let last = self.parts.len() - 1;
        &mut self.parts[last]
    }

    /// When the next intermediate flush is due, if one is wanted.
    pub(super) fn next_flush_at(&mut self) -> Option<Instant> {
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
        if part.edits.saturating_add(1) >= settings.max_edits
            && current.len() <= settings.max_part_bytes
        {
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
    pub(super) async fn flush<S: AnswerSink>(
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
        let (mut attempt, began) = (0u32, Instant::now());
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
                Some(_) => sink
                    .edit(index, part.edits.saturating_add(1), text)
                    .await
                    .map(|()| None),
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
                    // A 429 is the homeserver pacing us: waited out, not counted.
                    let wait = match f.class {
                        FailureClass::RateLimited(after) => {
                            self.rate_limited += 1;
                            after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
                        }
                        FailureClass::Transient => {
                            attempt = attempt.saturating_add(1);
                            MAX_SEND_WAIT.min(Duration::from_millis(500 * 2u64.pow(attempt.min(5))))
                        }
                        _ => return Err(f),
                    };
                    // `wait` comes from the homeserver: no arithmetic on it may overflow.
                    let now = Instant::now();
                    self.blocked_until =
                        Some(now.checked_add(wait).unwrap_or(now + MUST_SEND_PATIENCE));
                    let patience_left = began.elapsed().saturating_add(wait) < MUST_SEND_PATIENCE;
                    if !must || !patience_left {
                        return Err(f);
                    }
                    warn!(error = %f, wait_ms = wait.as_millis() as u64, "send failed; retrying");
                }
            }
        }
    }
}
