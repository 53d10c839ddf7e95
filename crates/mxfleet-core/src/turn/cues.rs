//! Cues while an answer is prepared: the ack reaction on the message and typing notices.
//!
//! Cues go out beside the answer, not before it: the backend is asked at once. With
//! `cue_delay_ms` they wait that long and are skipped if the answer is visible by then (saving
//! two events per fast answer). Once the answer is recorded they are cleared on a task of their
//! own, so a redaction held back by a 429 never holds up the room's next message.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mxfleet_config::ConversationConfig;
use mxfleet_matrix::{matrix_sdk::ruma::OwnedEventId, reaction_content, transaction_id};
use mxfleet_message::InboundMessage;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, debug, info_span, warn};

use super::room::{Attempts, RoomPort};

/// How often typing notices are renewed while an answer is prepared.
const TYPING_REFRESH: Duration = Duration::from_secs(3);

/// The cues of one message.
pub(crate) struct Cues {
    visible: Arc<AtomicBool>,
    ack: Option<JoinHandle<Option<OwnedEventId>>>,
    typing: Option<JoinHandle<()>>,
    span: Span,
}

impl Cues {
    /// Starts the cues `conv` asks for on `message`.
    pub(crate) fn start<R: RoomPort>(
        room: &R,
        message: &InboundMessage,
        conv: &ConversationConfig,
        account: &str,
    ) -> Self {
        let visible = Arc::new(AtomicBool::new(false));
        // Cue tasks outlive the message's span (which ends with the answer); they get their own.
        let span =
            info_span!(parent: None, "cues", account = %account, event_id = %message.event_id);
        let delay = Duration::from_millis(conv.cue_delay_ms);
        let ack = conv.ack_reaction().map(str::to_owned).map(|key| {
            let (room, visible) = (room.clone(), visible.clone());
            let event = message.event_id.clone();
            let txn = transaction_id(event.as_str(), "ack");
            tokio::spawn(
                async move {
                    if !still_wanted(delay, &visible).await {
                        return None;
                    }
                    let content = reaction_content(&event, &key).into();
                    room.send(content, txn, "reacting", Attempts::Retried)
                        .await
                        .inspect_err(|e| warn!(error = %e, "could not add the ack reaction"))
                        .ok()
                }
                .instrument(span.clone()),
            )
        });
        let typing = conv.typing_notices.then(|| {
            let (room, visible) = (room.clone(), visible.clone());
            tokio::spawn(
                async move {
                    if !still_wanted(delay, &visible).await {
                        return;
                    }
                    loop {
                        if let Err(e) = room.typing(true).await {
                            debug!(error = %e, "typing notice not sent");
                        }
                        tokio::time::sleep(TYPING_REFRESH).await;
                    }
                }
                .instrument(span.clone()),
            )
        });
        Self {
            visible,
            ack,
            typing,
            span,
        }
    }

    /// Set by the delivery once the answer's first message is out.
    pub(crate) fn visible(&self) -> Arc<AtomicBool> {
        self.visible.clone()
    }

    /// Stops the typing notice and removes the ack reaction, on a task of their own; returns it.
    pub(crate) fn clear<R: RoomPort>(self, room: R, message: &InboundMessage) -> JoinHandle<()> {
        let txn = transaction_id(message.event_id.as_str(), "ack.redact");
        let Self {
            ack, typing, span, ..
        } = self;
        tokio::spawn(
            async move {
                if let Some(typing) = typing {
                    // A finished task never started typing (the answer came first).
                    let started = !typing.is_finished();
                    typing.abort();
                    if started && let Err(e) = room.typing(false).await {
                        debug!(error = %e, "typing notice not stopped");
                    }
                }
                let ack = match ack {
                    Some(task) => task.await.ok().flatten(),
                    None => None,
                };
                if let Some(ack) = ack
                    && let Err(e) = room.redact(&ack, txn).await
                {
                    warn!(error = %e, "could not remove the ack reaction");
                }
            }
            .instrument(span),
        )
    }
}

/// Waits `delay`; whether the cue is still wanted (the answer is not visible yet).
async fn still_wanted(delay: Duration, visible: &AtomicBool) -> bool {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    !visible.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        testing::{self, accounts},
        turn::room::fake::{Did, FakeRoom},
    };

    fn conversation(cue_delay_ms: u64) -> ConversationConfig {
        let mut spec = accounts(&[("bot", "")]).remove("bot").expect("the account");
        spec.conversation.cue_delay_ms = cue_delay_ms;
        spec.conversation
    }

    fn question() -> InboundMessage {
        testing::said("!r:hs", "$q", "@ann:hs", "hi")
    }

    fn room() -> FakeRoom {
        FakeRoom::new(&testing::room("!r:hs"), false)
    }

    fn reacted(did: &[Did]) -> bool {
        did.iter()
            .any(|d| matches!(d, Did::Sent(_, s) if s["type"] == "m.reaction"))
    }

    #[tokio::test(start_paused = true)]
    async fn cues_go_out_at_once_and_are_cleared_after_the_answer() {
        let room = room();
        let cues = Cues::start(&room, &question(), &conversation(0), "bot");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let did = room.did();
        assert!(reacted(&did) && did.contains(&Did::Typing(true)), "{did:?}");
        cues.clear(room.clone(), &question())
            .await
            .expect("cleared");
        let did = room.did();
        assert!(did.contains(&Did::Typing(false)), "{did:?}");
        assert!(did.contains(&Did::Redacted("$sent1".into())), "{did:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_cue_delay_a_fast_answer_gets_no_cues_and_a_slow_one_does() {
        let room = room();
        let cues = Cues::start(&room, &question(), &conversation(500), "bot");
        tokio::time::sleep(Duration::from_millis(100)).await;
        cues.visible().store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(600)).await;
        cues.clear(room.clone(), &question())
            .await
            .expect("cleared");
        assert!(room.did().is_empty(), "{:?}", room.did());

        let room = self::room();
        let cues = Cues::start(&room, &question(), &conversation(500), "bot");
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(room.did().is_empty(), "not before the delay");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(reacted(&room.did()) && room.did().contains(&Did::Typing(true)));
        cues.clear(room.clone(), &question())
            .await
            .expect("cleared");
        assert!(room.did().contains(&Did::Redacted("$sent1".into())));
    }
}
