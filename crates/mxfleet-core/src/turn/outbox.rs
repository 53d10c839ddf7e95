//! The outbox: where a delivery's sends go, a room, with the draft kept in redb.
//!
//! The draft (with the transaction id of each message) is saved before the first attempt of a
//! send and after each send or edit, so a restart finds an answer left mid-stream and finishes
//! it with an "interrupted" edit ([`finish_interrupted`]) instead of starting a second one.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use mxfleet_matrix::{
    FailureClass, MatrixFailure, Placement, edit_content,
    format::render_markdown,
    matrix_sdk::ruma::{EventId, OwnedEventId},
    message_content, transaction_id,
};
use mxfleet_store::{Draft, DraftPart, Store};
use tracing::warn;

use super::room::{Attempts, RoomPort};
use crate::{stream_editor::AnswerSink, texts};

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
        if let Some(stored) = self.draft.parts.get_mut(part) {
            stored.txn_id = txn_id.to_string();
        }
        self.save().await;
        // Only the first message is a rich reply; the later ones stay in the thread, if any.
        let placement = match (&self.placement, part) {
            (Placement::ReplyTo(_), 1..) => Placement::Plain,
            (p, _) => p.clone(),
        };
        let content = message_content(&render_markdown(text), &placement);
        let event_id = self
            .room
            .send(content.into(), txn_id, "sending the answer", Attempts::Once)
            .await?;
        if let Some(visible) = &self.visible {
            visible.store(true, Ordering::Relaxed);
        }
        if let Some(stored) = self.draft.parts.get_mut(part) {
            stored.event_id = Some(event_id.to_string());
            stored.shown = text.to_owned();
        }
        self.save().await;
        Ok(event_id)
    }

    async fn edit(&mut self, part: usize, n: u32, text: &str) -> Result<(), MatrixFailure> {
        let original = self.event_id(part)?;
        let txn_id = transaction_id(self.answering.as_str(), &format!("{part}.e{n}"));
        let content = edit_content(&original, &render_markdown(text));
        self.room
            .send(content.into(), txn_id, "editing the answer", Attempts::Once)
            .await?;
        if let Some(stored) = self.draft.parts.get_mut(part) {
            stored.shown = text.to_owned();
            stored.edits = n;
        }
        self.save().await;
        Ok(())
    }
}

impl<R> RoomSink<R> {
    async fn save(&self) {
        if let Err(e) = self
            .store
            .save_draft(&self.account, self.answering.as_str(), &self.draft)
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
    let text = texts::interrupted(&part.shown);
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
