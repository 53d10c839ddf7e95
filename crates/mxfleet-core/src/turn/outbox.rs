//! The outbox: where a delivery's sends go, a room, with the draft kept in redb.
//!
//! The draft (with the transaction id of each message) is saved after each send or edit and
//! before each edit attempt, so a restart finds an answer left mid-stream and finishes it with
//! an "interrupted" edit ([`finish_interrupted`]) instead of starting a second one. Beside the
//! first attempt of a send it is kept without waiting for the disk: a later attempt at the
//! answer in this process starts from it ([`starting_draft`]) and corrects a send that landed
//! unconfirmed; a send's transaction id derives from the message answered, so after a crash
//! the homeserver still returns, not repeats, an earlier attempt's message — which a retried
//! attempt that finds no draft of it reads back and edits to its own text if it shows other
//! text.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mxfleet_matrix::{
    FailureClass, MatrixFailure, Placement, edit_content,
    format::render_markdown,
    matrix_sdk::ruma::{
        EventId, OwnedEventId, OwnedTransactionId, events::AnyMessageLikeEventContent,
    },
    message_content, transaction_id,
};
use mxfleet_store::{Draft, DraftPart, Store};
use tracing::{Instrument, info_span, warn};

use super::room::{Attempts, RoomPort};
use crate::{measure, stream_editor::AnswerSink, texts};

/// mxfleet's own time in an answer so far: what it took before the backend was asked, and
/// when the backend's first text came (the time from there to the first send is added).
pub(crate) struct Overhead {
    /// From the message received to the backend asked.
    pub(crate) before_backend: Duration,
    /// When the backend's first text came (unset: no text yet).
    pub(crate) first_text: Arc<OnceLock<Instant>>,
}

/// Sends an answer into a room through the outbox.
pub(crate) struct RoomSink<R> {
    /// The room.
    pub(crate) room: R,
    /// The account answering.
    pub(crate) account: String,
    /// Where the draft is kept.
    pub(crate) store: Store,
    /// The event being answered: transaction ids and the draft key derive from it.
    pub(crate) answering: OwnedEventId,
    /// Where the answer hangs.
    pub(crate) placement: Placement,
    /// The outbox record of the answer.
    pub(crate) draft: Draft,
    /// Set once the first message is out (the cues watch it).
    pub(crate) visible: Option<Arc<AtomicBool>>,
    /// When the message answered was received: the first message out is timed from it (once).
    pub(crate) received: Option<Instant>,
    /// mxfleet's own time before the backend, completed at the first send (once).
    pub(crate) overhead: Option<Overhead>,
    /// Whether the account's device keys are its own (false: access token; encrypted rooms are
    /// refused).
    pub(crate) own_keys: bool,
}

impl<R: RoomPort> AnswerSink for RoomSink<R> {
    async fn send_new(&mut self, part: usize, text: &str) -> Result<OwnedEventId, MatrixFailure> {
        // The room checks its encryption on every send; only an access-token account's refusal
        // is added here.
        if !self.own_keys {
            self.room
                .ensure_can_send(false, "sending the answer")
                .await?;
        }
        let txn_id = transaction_id(self.answering.as_str(), &part.to_string());
        if self.draft.parts.len() <= part {
            self.draft.parts.resize_with(part + 1, DraftPart::default);
        }
        // An earlier try of this send with other text may have landed without its answer
        // coming back: the homeserver then answers this one (same transaction id) with that
        // event, which shows the earlier text.
        if let Some(stored) = self.draft.parts.get_mut(part) {
            stored.txn_id = txn_id.to_string();
            if !stored.attempted.is_empty() && stored.attempted != text {
                stored.may_show_older = true;
            }
            text.clone_into(&mut stored.attempted);
        }
        // Only the first message is a rich reply; the later ones stay in the thread, if any.
        let placement = match (&self.placement, part) {
            (Placement::ReplyTo(_), 1..) => Placement::Plain,
            (p, _) => p.clone(),
        };
        let content = message_content(&render_markdown(text), &placement);
        // What the message must show if the homeserver returns an earlier try's event.
        let unsure = self.draft.parts.get(part).is_some_and(|p| p.may_show_older);
        let body = unsure.then(|| content.body().to_owned());
        if let Some(overhead) = self.overhead.take()
            && let Some(first_text) = overhead.first_text.get()
        {
            let own = overhead.before_backend.saturating_add(first_text.elapsed());
            measure::observe(measure::OVERHEAD, &self.account, own);
        }
        // The draft is kept for this process's later attempts at the answer
        // (`starting_draft`), which begin only after this one ends: beside the send, not
        // before it, and not synced to disk (the confirmation below is).
        let (_kept, sent) = tokio::join!(
            self.stage(),
            self.send(content.into(), txn_id, "sending the answer")
        );
        let event_id = sent?;
        if let Some(visible) = &self.visible {
            visible.store(true, Ordering::Relaxed);
        }
        if let Some(received) = self.received.take() {
            measure::observe(
                measure::REPLY_FIRST_VISIBLE,
                &self.account,
                received.elapsed(),
            );
        }
        if let Some(stored) = self.draft.parts.get_mut(part) {
            stored.event_id = Some(event_id.to_string());
            stored.shown = text.to_owned();
        }
        self.save().await;
        if let Some(body) = body {
            // Whichever text landed, the message ends up showing this one: edited unless it
            // does already (a failed edit is tried again with the send: the mark stays until it
            // lands).
            if !self.shows(&event_id, &body).await {
                self.edit(part, 1, text).await?;
            }
            if let Some(stored) = self.draft.parts.get_mut(part) {
                stored.may_show_older = false;
            }
            self.save().await;
        }
        Ok(event_id)
    }

    async fn edit(&mut self, part: usize, n: u32, text: &str) -> Result<(), MatrixFailure> {
        let original = self.event_id(part)?;
        let seq = self.edit_attempt(part, text).await;
        let txn_id = transaction_id(self.answering.as_str(), &format!("{part}.e{seq}"));
        let content = edit_content(&original, &render_markdown(text));
        self.send(content.into(), txn_id, "editing the answer")
            .await?;
        if let Some(stored) = self.draft.parts.get_mut(part) {
            stored.shown = text.to_owned();
            stored.edits = n;
        }
        self.save().await;
        Ok(())
    }
}

impl<R: RoomPort> RoomSink<R> {
    /// Whether `event` was sent with `body`: the send that returned it made it, or an earlier
    /// try with the same text did. Unknown (it could not be read) counts as no.
    async fn shows(&self, event: &EventId, body: &str) -> bool {
        match self.room.sent_body(event).await {
            Ok(sent) => sent.as_deref() == Some(body),
            Err(e) => {
                warn!(error = %e, "could not read back a sent message; editing it to be sure");
                false
            }
        }
    }

    /// Sends `content` once, in a `send` span, timed.
    async fn send(
        &self,
        content: AnyMessageLikeEventContent,
        txn_id: OwnedTransactionId,
        what: &'static str,
    ) -> Result<OwnedEventId, MatrixFailure> {
        let span = info_span!("send", account = %self.account, what);
        let started = Instant::now();
        let sent = self
            .room
            .send(content, txn_id, what, Attempts::Once)
            .instrument(span)
            .await;
        measure::observe(measure::SEND, &self.account, started.elapsed());
        sent
    }
}

impl<R> RoomSink<R> {
    /// The transaction number of an edit of message `part` to `text`: the last attempt's if it
    /// had the same text (a retry), else the next one, saved before the attempt.
    async fn edit_attempt(&mut self, part: usize, text: &str) -> u32 {
        let fingerprint = fingerprint(text);
        let Some(stored) = self.draft.parts.get_mut(part) else {
            return 1;
        };
        if stored.edit_seq > 0 && stored.edit_text == fingerprint {
            return stored.edit_seq;
        }
        text.clone_into(&mut stored.attempted);
        stored.edit_seq = stored
            .edit_seq
            .saturating_add(1)
            .max(stored.edits.saturating_add(1));
        stored.edit_text = fingerprint;
        let seq = stored.edit_seq;
        self.save().await;
        seq
    }

    /// Saves the draft, on disk when this returns.
    async fn save(&self) {
        self.keep(true).await;
    }

    /// Saves the draft for this process's later reads, without waiting for the disk.
    async fn stage(&self) {
        self.keep(false).await;
    }

    /// Saves the draft, `synced` to disk or not; a failure is logged (the answer goes on).
    async fn keep(&self, synced: bool) {
        let (store, account, event) = (&self.store, &self.account, self.answering.as_str());
        let kept = match synced {
            true => store.save_draft(account, event, &self.draft).await,
            false => store.stage_draft(account, event, &self.draft).await,
        };
        if let Err(e) = kept {
            warn!(error = %e, synced, "could not save the answer's draft");
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

/// What earlier attempts at an answer left for the next one's sends.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Earlier<'a> {
    /// The draft they kept, if any.
    pub(crate) draft: Option<&'a Draft>,
    /// Whether an earlier attempt began at all, in this process or in one that died.
    pub(crate) retried: bool,
}

/// The draft a new attempt at an answer in `room_id` starts from. A send's transaction id
/// derives from the message answered, so an earlier attempt's first send that landed without
/// its answer coming back is what the homeserver returns for this attempt's: the new attempt
/// must then correct it to its own text. So it starts from the sends the earlier attempts
/// tried when none of them was confirmed; when there was an earlier attempt but no draft of it
/// (a process that died before its draft reached the disk: it is kept beside the first send
/// without waiting for the disk), the first message may show older text whatever this attempt
/// sends, and is read back once sent and edited to it if it shows other text. Else (a first
/// attempt) it starts empty. (An earlier
/// attempt with a confirmed message is resumed instead, not answered again.)
pub(crate) fn starting_draft(room_id: &str, earlier: Earlier<'_>) -> Draft {
    let unconfirmed = earlier
        .draft
        .filter(|d| d.parts.iter().all(|p| p.event_id.is_none()))
        .map(|d| d.parts.clone())
        .unwrap_or_default();
    let parts = match unconfirmed.is_empty() && earlier.retried {
        true => vec![DraftPart {
            may_show_older: true,
            ..DraftPart::default()
        }],
        false => unconfirmed,
    };
    Draft {
        room_id: room_id.to_owned(),
        parts,
    }
}

/// Finishes an answer a previous process left mid-stream: its last message gets an
/// "interrupted" edit (sent with a stable transaction id). Returns the first message's id.
pub(crate) async fn finish_interrupted<R: RoomPort>(
    room: &R,
    answering: &EventId,
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
    // The latest attempt may have landed without its answer coming back: never show less.
    let latest = match part.attempted.is_empty() {
        true => &part.shown,
        false => &part.attempted,
    };
    let text = texts::interrupted(latest);
    let txn_id = transaction_id(answering.as_str(), &format!("{index}.interrupted"));
    let content = edit_content(&original, &render_markdown(&text));
    room.send(
        content.into(),
        txn_id,
        "finishing an interrupted answer",
        Attempts::Retried,
    )
    .await?;
    Ok(draft.parts.first().and_then(|p| p.event_id.clone()))
}

/// A stable fingerprint of `text` (FNV-1a, 64 bit): the same text gives the same number in any
/// process.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        testing::{self, event},
        turn::room::fake::{Did, FakeRoom},
    };

    /// A store in a temporary directory (kept while the guard lives) and a DM `!r:hs`.
    fn setup() -> (tempfile::TempDir, Store, FakeRoom) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(&dir.path().join("db.redb")).expect("a store");
        (dir, store, FakeRoom::new(&testing::room("!r:hs"), true))
    }

    /// A sink answering `$q` in `room`, its draft in `store`.
    fn sink(room: &FakeRoom, store: Store) -> RoomSink<FakeRoom> {
        RoomSink {
            room: room.clone(),
            account: "bot".into(),
            store,
            answering: event("$q"),
            placement: Placement::Plain,
            draft: Draft::default(),
            visible: None,
            received: None,
            overhead: None,
            own_keys: true,
        }
    }

    /// A sink for a later attempt at `$q` in `room`, which an earlier attempt that left
    /// `stored` (or no draft) preceded.
    fn retry_sink(room: &FakeRoom, store: Store, stored: Option<&Draft>) -> RoomSink<FakeRoom> {
        let mut retry = sink(room, store);
        let earlier = Earlier {
            draft: stored,
            retried: true,
        };
        retry.draft = starting_draft("!r:hs", earlier);
        retry
    }

    /// Asserts that the last thing sent into `room` is an edit to `text`.
    fn assert_last_edit_shows(room: &FakeRoom, text: &str) {
        let sent = room.sent();
        let last = sent.last().expect("sent something");
        assert_eq!(last["content"]["m.new_content"]["body"], text, "{sent:?}");
    }

    #[tokio::test]
    async fn every_edit_attempt_with_other_text_has_its_own_transaction_id() {
        let (_dir, store, room) = setup();
        let mut sink = sink(&room, store);
        sink.send_new(0, "one").await.expect("sent");
        // An attempt whose answer was lost, then the next text, then a retry of that text.
        for (n, text) in [(1, "one two"), (1, "one two three"), (1, "one two three")] {
            sink.edit(0, n, text).await.expect("edited");
        }
        let txns: Vec<String> = room
            .did()
            .into_iter()
            .filter_map(|d| match d {
                Did::Sent(txn, _) => Some(txn),
                _ => None,
            })
            .collect();
        assert_eq!(
            txns,
            [
                "mxfleet._q.0",
                "mxfleet._q.0.e1",
                "mxfleet._q.0.e2",
                "mxfleet._q.0.e2"
            ]
        );
    }

    #[tokio::test]
    async fn an_interrupted_answer_is_finished_with_the_latest_text_it_tried_to_show() {
        let (_dir, store, room) = setup();
        let mut sink = sink(&room, store.clone());
        sink.send_new(0, "one").await.expect("sent");
        // The final edit reaches the homeserver, its answer does not, and the process dies.
        let _ = room.clone().refusing_sends();
        let lost = sink.edit(0, 1, "one two three, the whole answer").await;
        assert!(lost.is_err());

        // The next start finishes the answer from the stored draft.
        let draft = store
            .draft("bot", "$q")
            .await
            .expect("read")
            .expect("a draft");
        let next = FakeRoom::new(&testing::room("!r:hs"), true);
        finish_interrupted(&next, &event("$q"), &draft)
            .await
            .expect("finished");
        let sent = next.sent();
        let body = sent[0]["content"]["m.new_content"]["body"]
            .as_str()
            .unwrap_or_default();
        assert!(
            body.starts_with("one two three, the whole answer"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_new_attempt_corrects_a_first_send_of_an_earlier_one_that_landed_unconfirmed() {
        let (_dir, store, room) = setup();
        // The first attempt's first send lands, its answer is lost, and the attempt fails.
        let mut first = sink(&room, store.clone());
        let lossy = room.clone().losing_answers();
        assert!(
            first
                .send_new(0, "the first attempt's opening")
                .await
                .is_err()
        );
        lossy.accepting_sends();

        // The next attempt in this process starts from what was kept and has other text; its
        // first send has the same transaction id, so the homeserver returns the first
        // attempt's event, which shows the older text.
        let stored = store.draft("bot", "$q").await.expect("read");
        let mut second = retry_sink(&room, store, stored.as_ref());
        second
            .send_new(0, "a short second answer")
            .await
            .expect("sent");
        assert_last_edit_shows(&room, "a short second answer");
    }

    #[test]
    fn a_new_attempt_starts_from_what_an_earlier_one_may_have_sent() {
        let tried = DraftPart {
            txn_id: "t0".into(),
            attempted: "earlier words".into(),
            ..DraftPart::default()
        };
        let confirmed = DraftPart {
            event_id: Some("$a".into()),
            ..tried.clone()
        };
        let draft = |parts: Vec<DraftPart>| Draft {
            room_id: "!r:hs".into(),
            parts,
        };
        let (unconfirmed, sent) = (draft(vec![tried.clone()]), draft(vec![confirmed]));
        let unknown = DraftPart {
            may_show_older: true,
            ..DraftPart::default()
        };
        // (the earlier draft, whether an earlier attempt began) → the parts to start from
        let cases = [
            (None, false, vec![]),
            (None, true, vec![unknown.clone()]),
            (Some(&unconfirmed), false, vec![tried.clone()]),
            (Some(&unconfirmed), true, vec![tried]),
            (Some(&sent), false, vec![]),
            (Some(&sent), true, vec![unknown]),
        ];
        for (draft, retried, parts) in cases {
            let started = starting_draft("!r:hs", Earlier { draft, retried });
            assert_eq!(started.parts, parts, "{draft:?}, retried: {retried}");
            assert_eq!(started.room_id, "!r:hs");
        }
    }

    #[tokio::test]
    async fn an_attempt_after_a_crash_corrects_a_first_send_whose_draft_was_lost() {
        let (_dir, store, room) = setup();
        // The first attempt's first send lands; the process dies before anything of its draft
        // reached the disk.
        let (_lost, lost_store, _) = setup();
        let mut first = sink(&room, lost_store);
        first
            .send_new(0, "the first attempt's opening")
            .await
            .expect("sent");

        // The next process's attempt has other text and finds no draft.
        let mut second = retry_sink(&room, store, None);
        second
            .send_new(0, "a short second answer")
            .await
            .expect("sent");
        assert_last_edit_shows(&room, "a short second answer");
    }

    #[tokio::test]
    async fn a_first_send_retried_with_more_text_is_followed_by_an_edit_to_it() {
        let (_dir, store, room) = setup();
        let mut sink = sink(&room, store);
        // The first try (with the text so far) lands without its answer coming back; the
        // retry has the same transaction id, so the homeserver returns that first event.
        let lossy = room.clone().losing_answers();
        assert!(sink.send_new(0, "the first words").await.is_err());
        lossy.accepting_sends();
        sink.send_new(0, "the first words and the rest")
            .await
            .expect("sent");
        // Had the correcting edit failed, the retried send would still correct it.
        assert!(!sink.draft.parts[0].may_show_older);
        assert_last_edit_shows(&room, "the first words and the rest");
    }

    #[tokio::test]
    async fn a_send_that_may_follow_an_earlier_one_is_edited_only_if_the_room_shows_other_text() {
        // A first try that never reached the homeserver: the retry makes the only message.
        let (_dir, store, room) = setup();
        let mut within = sink(&room, store.clone());
        let down = room.clone().refusing_sends();
        assert!(within.send_new(0, "the first words").await.is_err());
        down.accepting_sends();
        within
            .send_new(0, "the first words and the rest")
            .await
            .expect("sent");
        assert_eq!(room.sent().len(), 1, "{:?}", room.sent());
        assert!(!within.draft.parts[0].may_show_older);

        // An attempt after a restart that finds no draft, where the earlier process sent
        // nothing (a message that only waited in its room's queue).
        let room = FakeRoom::new(&testing::room("!r:hs"), true);
        let mut after = retry_sink(&room, store, None);
        after.send_new(0, "the answer").await.expect("sent");
        assert_eq!(room.sent().len(), 1, "{:?}", room.sent());
        assert!(!after.draft.parts[0].may_show_older);
    }
}
