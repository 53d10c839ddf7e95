//! Recording what became of a message: the inbox entry is finished (answered, skipped, or
//! failed for good), the conversation memory gets the exchange, the counters move. A message
//! whose answer could not be sent stays pending: its room worker tries again (see `turn.rs`).

use mxfleet_message::InboundMessage;
use mxfleet_store::{Draft, InboxState, StoreFault, Turn, now_ms};
use tracing::{debug, error, info, warn};

use super::{
    context::TurnContext,
    history::{speaker, turn_of},
    outbox::finish_interrupted,
    room::RoomPort,
};
use crate::{error::AccountError, measure, stream_editor::Delivered, turn::STORAGE_RETRY};

/// Whether an answer joins the conversation memory (commands and refusals do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remember {
    /// Keep the exchange.
    Yes,
    /// Do not.
    No,
}

/// Records a delivery: memory, counters, inbox. A failed delivery is returned, the message
/// left pending.
pub(crate) async fn record<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    key: &str,
    outcome: Result<Delivered, AccountError>,
    remember: Remember,
) -> Result<(), AccountError> {
    let delivered = outcome?;
    info!(
        reply = ?delivered.first_event_id,
        parts = delivered.parts,
        edits = delivered.edits,
        first_visible_ms = delivered.first_visible.map(|t| t.as_millis() as u64),
        backend_error = delivered.backend_error.as_deref(),
        rate_limited = delivered.rate_limited,
        cut = delivered.cut,
        "answered"
    );
    ctx.board.update(&ctx.account, |s| {
        s.replies_out += 1;
        s.answers_cut += u64::from(delivered.cut);
    });
    let reply_event_id = delivered
        .first_event_id
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    if remember == Remember::Yes {
        let turns = vec![
            turn_of(message, speaker(room, message).await),
            Turn {
                role: "assistant".into(),
                name: None,
                text: delivered.text,
                event_id: reply_event_id.clone(),
                ts_ms: now_ms().max(message.origin_server_ts_ms.saturating_add(1)),
            },
        ];
        let keep = ctx.spec.conversation.history_max_messages.max(2);
        if let Err(e) = ctx.store.remember(&ctx.account, key, turns, keep).await {
            warn!(error = %e, "could not store the conversation turn");
        }
    }
    finish(ctx, message, InboxState::Answered { reply_event_id }).await;
    Ok(())
}

/// Gives up on `message`: every attempt failed, or one could not be retried (`class`, a reason
/// of [`measure::FAILED`]), the last for `reason`. Counted, shown in the account's status.
pub(crate) async fn give_up(
    ctx: &TurnContext,
    message: &InboundMessage,
    class: &'static str,
    reason: &str,
) {
    error!(%reason, "gave up on a message");
    measure::count(measure::FAILED, &ctx.account, class, 1);
    ctx.board.update(&ctx.account, |s| {
        s.messages_failed += 1;
        s.last_error = Some(format!("gave up on message {}: {reason}", message.event_id));
    });
    let state = InboxState::Failed {
        reason: reason.to_owned(),
    };
    finish(ctx, message, state).await;
}

/// Records that `message` is not answered, and why.
pub(crate) async fn skip(
    ctx: &TurnContext,
    message: &InboundMessage,
    reason: &str,
) -> Result<(), AccountError> {
    debug!(reason, "not answered");
    let state = InboxState::Skipped {
        reason: reason.to_owned(),
    };
    finish(ctx, message, state).await;
    Ok(())
}

/// Finishes the answer a previous attempt left mid-stream, and records it.
pub(crate) async fn resume_interrupted<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    draft: &Draft,
) -> Result<(), AccountError> {
    let first = finish_interrupted(room, &message.event_id, draft).await?;
    info!("finished an answer an earlier attempt left mid-stream");
    let state = InboxState::Answered {
        reply_event_id: first.unwrap_or_default(),
    };
    finish(ctx, message, state).await;
    Ok(())
}

/// Finishes the inbox entry. Through a storage fault it keeps trying (a few minutes): an
/// answer that was sent but not recorded would be sent again after a restart.
async fn finish(ctx: &TurnContext, message: &InboundMessage, state: InboxState) {
    let event_id = message.event_id.as_str();
    let mut tries = 0u32;
    loop {
        let Err(e) = ctx
            .store
            .finish(&ctx.account, event_id, state.clone())
            .await
        else {
            return;
        };
        tries += 1;
        let waits = matches!(e.fault(), StoreFault::Exhausted | StoreFault::Unavailable);
        if !waits || tries >= FINISH_TRIES {
            return error!(error = %e, "could not record the outcome; the message may be answered again after a restart");
        }
        warn!(error = %e, "storage fault: the outcome waits to be recorded");
        tokio::time::sleep(STORAGE_RETRY).await;
    }
}

/// How many times an outcome is tried through a storage fault (with [`STORAGE_RETRY`] between).
const FINISH_TRIES: u32 = 150;
