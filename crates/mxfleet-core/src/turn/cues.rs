//! Cues while an answer is prepared: the ack reaction on the message and typing notices.
//!
//! Cues go out beside the answer, not before it: the backend is asked at once. They wait until
//! `cue_delay_ms` after the message was received (250 ms by default) and are skipped if the
//! answer is visible by then: a fast answer comes alone, instead of waiting behind the ack
//! reaction's send, and a slow one is acknowledged within the delay. Once the answer is recorded they are cleared on a task of their
//! own, so a redaction held back by a 429 never holds up the room's next message.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

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
    /// Starts the cues `conv` asks for on `message`, received at `received`.
    pub(crate) fn start<R: RoomPort>(
        room: &R,
        message: &InboundMessage,
        conv: &ConversationConfig,
        account: &str,
        received: Instant,
    ) -> Self {
        let visible = Arc::new(AtomicBool::new(false));
        // Cue tasks outlive the message's span (which ends with the answer); they get their own.
        let span =
            info_span!(parent: None, "cues", account = %account, event_id = %message.event_id);
        let due = received + Duration::from_millis(conv.cue_delay_ms);
        let ack = conv.ack_reaction().map(str::to_owned).map(|key| {
            let (room, visible) = (room.clone(), visible.clone());
            let event = message.event_id.clone();
            let txn = transaction_id(event.as_str(), "ack");
            tokio::spawn(
                async move {
                    if !still_wanted(due, &visible).await {
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
                    if !still_wanted(due, &visible).await {
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

/// Waits until `due`; whether the cue is still wanted (the answer is not visible yet).
async fn still_wanted(due: Instant, visible: &AtomicBool) -> bool {
    tokio::time::sleep_until(due).await;
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
        let cues = Cues::start(&room, &question(), &conversation(0), "bot", Instant::now());
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
    async fn by_default_cues_wait_for_a_slow_answer_counting_from_receipt() {
        let conv = ConversationConfig::default();
        assert_eq!(conv.cue_delay_ms, 250);
        // A fast answer (visible after 200 ms) comes alone.
        let room = room();
        let cues = Cues::start(&room, &question(), &conv, "bot", Instant::now());
        tokio::time::sleep(Duration::from_millis(200)).await;
        cues.visible().store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cues.clear(room.clone(), &question())
            .await
            .expect("cleared");
        assert!(room.did().is_empty(), "{:?}", room.did());
        // A slow one received 100 ms before its cues were started: they show 250 ms after
        // receipt, not after the start.
        let room = self::room();
        let received = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cues = Cues::start(&room, &question(), &conv, "bot", received);
        tokio::time::sleep(Duration::from_millis(149)).await;
        assert!(room.did().is_empty(), "not before 250 ms");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let did = room.did();
        assert!(reacted(&did) && did.contains(&Did::Typing(true)), "{did:?}");
        cues.clear(room.clone(), &question())
            .await
            .expect("cleared");
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_cue_delay_a_fast_answer_gets_no_cues_and_a_slow_one_does() {
        let room = room();
        let cues = Cues::start(
            &room,
            &question(),
            &conversation(500),
            "bot",
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        cues.visible().store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(600)).await;
        cues.clear(room.clone(), &question())
            .await
            .expect("cleared");
        assert!(room.did().is_empty(), "{:?}", room.did());

        let room = self::room();
        let cues = Cues::start(
            &room,
            &question(),
            &conversation(500),
            "bot",
            Instant::now(),
        );
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
