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
//! and their drafts are finished on the next start. The streaming rules live in [`writer`];
//! where the sends go is an [`AnswerSink`] (a room through the outbox in production, a recorder
//! in tests), so nothing here knows Matrix rooms.

mod writer;

use std::{future::Future, pin::Pin, time::Duration};

use futures_util::StreamExt;
use mxfleet_backend::TextStream;
use mxfleet_config::{ConversationConfig, StreamMode};
use mxfleet_matrix::{MatrixFailure, matrix_sdk::ruma::OwnedEventId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::{
    sync::watch,
    task::JoinSet,
    time::{Instant, sleep_until},
};
use tracing::{Instrument, Span, warn};

use writer::Writer;

use crate::texts;

/// The most bytes of Markdown in one message; the edit of a message carries its text twice
/// (fallback and `m.new_content`), as plain text and HTML, within Matrix's 64 KiB event limit.
pub(crate) const MAX_PART_BYTES: usize = 8000;

/// How one answer is streamed.
#[derive(Debug, Clone)]
pub(crate) struct StreamSettings {
    /// Edit in place, or send once.
    pub(crate) mode: StreamMode,
    /// Characters before the first send.
    pub(crate) min_initial_chars: usize,
    /// Least time between two updates.
    pub(crate) throttle: Duration,
    /// Most edits per message, the final one included.
    pub(crate) max_edits: u32,
    /// Most bytes of Markdown per message.
    pub(crate) max_part_bytes: usize,
    /// Most characters of one answer; the rest is not read.
    pub(crate) max_answer_chars: usize,
    /// Most messages of one answer.
    pub(crate) max_answer_parts: usize,
}

impl StreamSettings {
    /// How `conversation` streams its answers.
    pub(crate) fn of(conversation: &ConversationConfig) -> Self {
        Self {
            mode: conversation.stream_mode,
            min_initial_chars: conversation.stream_min_initial_chars,
            throttle: Duration::from_millis(conversation.edit_throttle_ms),
            max_edits: conversation.max_edits_per_message,
            max_part_bytes: MAX_PART_BYTES,
            max_answer_chars: conversation.max_answer_chars,
            max_answer_parts: conversation.max_answer_parts,
        }
    }

    /// The same, sent once when complete (direct replies: commands, refusals, the OTP gate).
    pub(crate) fn at_once(self) -> Self {
        Self {
            mode: StreamMode::Off,
            ..self
        }
    }
}

/// What a delivery did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Delivered {
    /// The full text shown (the backend's answer, plus an error note if it failed).
    pub(crate) text: String,
    /// The event id of the first message, once one was sent.
    pub(crate) first_event_id: Option<OwnedEventId>,
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
    /// The answer reached `max_answer_chars` or `max_answer_parts` and was cut there.
    pub(crate) cut: bool,
}

/// Where a delivery's sends go: Matrix in production, a recorder in tests.
pub(crate) trait AnswerSink: Send {
    /// Sends message `part` for the first time, showing `text`; returns its event id.
    fn send_new(
        &mut self,
        part: usize,
        text: &str,
    ) -> impl Future<Output = Result<OwnedEventId, MatrixFailure>> + Send;
    /// Edits message `part` to show `text`; this is edit number `n` of that message.
    fn edit(
        &mut self,
        part: usize,
        n: u32,
        text: &str,
    ) -> impl Future<Output = Result<(), MatrixFailure>> + Send;
}

/// What a delivery ends with.
pub(crate) type Outcome = Result<Delivered, MatrixFailure>;

/// One answer being streamed into a room: [`deliver`] over a sink, ready to run.
pub(crate) struct Delivery {
    /// The delivery itself.
    pub(crate) run: Pin<Box<dyn Future<Output = Outcome> + Send>>,
    /// The span of the message it answers.
    pub(crate) span: Span,
}

impl Delivery {
    /// Streams `stream` into `sink` following `settings`, when run, until `wrap_up`.
    pub(crate) fn new<S: AnswerSink + 'static>(
        stream: TextStream,
        settings: StreamSettings,
        mut sink: S,
        wrap_up: WrapUp,
        span: Span,
    ) -> Self {
        let run = Box::pin(async move { deliver(stream, &settings, &mut sink, wrap_up).await });
        Self { run, span }
    }
}

/// The editor actor.
pub(crate) struct StreamEditor;

/// Messages of the editor.
pub(crate) enum EditorMsg {
    /// Run a delivery; its outcome is the reply.
    Deliver(Delivery, RpcReplyPort<Outcome>),
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
            EditorMsg::Deliver(Delivery { run, span }, reply) => {
                state.running.spawn(
                    async move {
                        // The caller may have stopped waiting (its deadline passed).
                        let _ = reply.send(run.await);
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

/// Tells running deliveries to wrap up (the account is stopping): stop reading the backend and
/// end the answer with its "interrupted" edit.
pub(crate) type WrapUp = watch::Receiver<bool>;

/// Streams `stream` into `sink` following `settings`, until it ends or `wrap_up` says so.
pub(crate) async fn deliver<S: AnswerSink>(
    mut stream: TextStream,
    settings: &StreamSettings,
    sink: &mut S,
    mut wrap_up: WrapUp,
) -> Result<Delivered, MatrixFailure> {
    let mut w = Writer::new(settings);
    let mut next_flush: Option<Instant> = None;
    let mut backend_error = None;
    let mut interrupted = false;
    loop {
        let timer = async {
            match next_flush {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Biased: text that is already there is taken before a due flush shows what came
        // before it, so a burst (or a whole answer at once) is one send, not a send and edits.
        tokio::select! {
            biased;
            () = wrapping_up(&mut wrap_up) => {
                interrupted = true;
                break;
            }
            delta = stream.next() => match delta {
                Some(Ok(delta)) => {
                    if !w.push(&delta) {
                        warn!(
                            chars = settings.max_answer_chars,
                            parts = settings.max_answer_parts,
                            "the answer reached its length limit; the rest is not read"
                        );
                        break;
                    }
                }
                Some(Err(e)) => {
                    // The room is told an id; what the backend said (an error body may quote
                    // a key or an internal URL) goes to the log only.
                    let id = format!("{:08x}", rand::random::<u32>());
                    warn!(error_id = %id, error = %e, "the backend failed; the answer says so");
                    backend_error = Some((id, e.to_string()));
                    break;
                }
                None => break,
            },
            () = timer => w.flush(sink, false).await?,
        }
        if settings.mode == StreamMode::EditInPlace {
            next_flush = w.next_flush_at();
        }
    }
    drop(stream);
    w.cap_parts();
    let error_id = backend_error.as_ref().map(|(id, _)| id.as_str());
    let ending = texts::answer_ending(error_id, w.is_empty(), interrupted, w.was_cut());
    w.conclude(ending);
    w.flush(sink, true).await?;
    Ok(w.delivered(backend_error.map(|(_, detail)| detail)))
}

/// Resolves once `wrap_up` says so (never, if its sender is gone).
async fn wrapping_up(wrap_up: &mut WrapUp) {
    if wrap_up.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use futures_util::stream;
    use mxfleet_backend::BackendError;
    use mxfleet_matrix::FailureClass;
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
        async fn send_new(
            &mut self,
            part: usize,
            text: &str,
        ) -> Result<OwnedEventId, MatrixFailure> {
            if let Some(f) = self.fail() {
                return Err(f);
            }
            self.calls
                .push((part, None, text.to_owned(), Instant::now()));
            OwnedEventId::try_from(format!("$p{part}"))
                .map_err(|e| MatrixFailure::new(FailureClass::Fatal, e.to_string()))
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

    /// A wrap-up signal that never comes.
    fn never() -> WrapUp {
        watch::channel(false).1
    }

    fn settings(mode: StreamMode) -> StreamSettings {
        StreamSettings {
            mode,
            min_initial_chars: 10,
            throttle: Duration::from_millis(500),
            max_edits: 5,
            max_part_bytes: 2000,
            max_answer_chars: 100_000,
            max_answer_parts: 20,
        }
    }

    /// A backend that never stops: "word " forever, one every millisecond.
    fn runaway() -> TextStream {
        Box::pin(
            stream::repeat_with(|| "word ".to_owned()).then(|w| async move {
                sleep(Duration::from_millis(1)).await;
                Ok::<_, BackendError>(w)
            }),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_runaway_answer_is_cut_at_its_limits_and_says_so() {
        for mode in [StreamMode::EditInPlace, StreamMode::Off] {
            // The character cap: 3,000 characters, however many parts.
            let by_chars = StreamSettings {
                max_answer_chars: 3_000,
                ..settings(mode)
            };
            let mut sink = Recorder::default();
            let d = tokio::time::timeout(
                Duration::from_secs(60),
                deliver(runaway(), &by_chars, &mut sink, never()),
            )
            .await;
            let d = d
                .map_err(|_| "never ended")
                .and_then(|d| d.map_err(|_| "failed"));
            let d = d.unwrap_or_default();
            assert_eq!(d.text.matches("word").count(), 600, "{mode:?}");
            let parts = sink.final_texts();
            let last = parts.last().map(String::as_str).unwrap_or_default();
            assert!(last.ends_with(texts::ANSWER_CUT), "{mode:?}: {last:?}");
            // The part cap: 3 messages of at most 2,000 bytes, the note inside the last one.
            let by_parts = StreamSettings {
                max_answer_parts: 3,
                ..settings(mode)
            };
            let mut sink = Recorder::default();
            let d = tokio::time::timeout(
                Duration::from_secs(60),
                deliver(runaway(), &by_parts, &mut sink, never()),
            )
            .await;
            let d = d
                .map_err(|_| "never ended")
                .and_then(|d| d.map_err(|_| "failed"));
            assert_eq!(d.map(|d| d.parts), Ok(3), "{mode:?}");
            let parts = sink.final_texts();
            assert_eq!(parts.len(), 3, "{mode:?}");
            assert!(parts.iter().all(|p| p.len() <= 2000), "{mode:?}");
            assert!(
                parts[2].ends_with(texts::ANSWER_CUT),
                "{mode:?}: {:?}",
                parts[2]
            );
            assert!(
                parts[2].len() > 1500,
                "the last part is used: {}",
                parts[2].len()
            );
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
        let d = deliver(stream, &settings, &mut sink, never())
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
    async fn text_that_arrived_together_is_sent_together() {
        // A backend whose whole answer is there at once (a fast model, a burst off the wire):
        // one message with all of it, not a first send of three words and an edit.
        let words: Vec<String> = (0..20).map(|i| format!("w{i:02} ")).collect();
        let full = words.concat();
        let ready: TextStream = Box::pin(stream::iter(words.into_iter().map(Ok)));
        let mut sink = Recorder::default();
        let settings = settings(StreamMode::EditInPlace);
        let d = deliver(ready, &settings, &mut sink, never())
            .await
            .map_err(|e| e.message);
        assert_eq!(d.map(|d| d.edits), Ok(0));
        let texts: Vec<&str> = sink.calls.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(texts, [full.trim_end()]);
    }

    #[tokio::test(start_paused = true)]
    async fn deltas_between_edits_are_coalesced() {
        let (stream, full) = slow_stream(40, Duration::from_millis(10));
        let mut sink = Recorder::default();
        let settings = StreamSettings {
            max_edits: 100,
            ..settings(StreamMode::EditInPlace)
        };
        let d = deliver(stream, &settings, &mut sink, never())
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
        let d = deliver(
            stream,
            &settings(StreamMode::EditInPlace),
            &mut sink,
            never(),
        )
        .await
        .map_err(|e| e.message)
        .unwrap_or_default();
        assert_eq!(sink.final_texts(), [full.trim_end()]);
        assert_eq!(d.text, full);
        // Nothing was sent within retry_after of a 429.
        assert!(sink.calls[1].3 - sink.calls[0].3 >= wait);
    }

    #[tokio::test(start_paused = true)]
    async fn a_homeserver_asking_to_wait_forever_panics_nothing() {
        let (stream, _) = slow_stream(30, Duration::from_millis(50));
        let mut sink = Recorder {
            failures: VecDeque::from([(1, FailureClass::RateLimited(Some(Duration::MAX)))]),
            ..Recorder::default()
        };
        let d = deliver(
            stream,
            &settings(StreamMode::EditInPlace),
            &mut sink,
            never(),
        )
        .await;
        // The delivery ends (with the 429 it could not wait out) instead of panicking.
        assert!(d.is_err() || !sink.calls.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_network_outage_of_tens_of_seconds_is_waited_out_not_cut_short() {
        let (stream, full) = slow_stream(30, Duration::from_millis(50));
        let mut sink = Recorder::default();
        // The homeserver is unreachable for a while at the first send, and again at the
        // final edit (each try takes the backoff before it): the answer still lands whole.
        let outage = |at| std::iter::repeat_n((at, FailureClass::Transient), 6);
        sink.failures = outage(0).chain(outage(1)).collect();
        let settings = StreamSettings {
            max_edits: 0,
            ..settings(StreamMode::EditInPlace)
        };
        let d = deliver(stream, &settings, &mut sink, never()).await;
        let d = d.map_err(|e| e.message);
        assert!(d.is_ok(), "{d:?}");
        assert_eq!(sink.final_texts(), [full.trim_end()]);
    }

    #[tokio::test(start_paused = true)]
    async fn long_answers_continue_in_new_messages_and_off_mode_sends_once() {
        let paragraph = format!("{}\n\n", "lorem ipsum ".repeat(20));
        let full = paragraph.repeat(30);
        for mode in [StreamMode::EditInPlace, StreamMode::Off] {
            let chunks: Vec<Result<String, BackendError>> =
                (0..30).map(|_| Ok(paragraph.clone())).collect();
            let mut sink = Recorder::default();
            let d = deliver(
                Box::pin(stream::iter(chunks)),
                &settings(mode),
                &mut sink,
                never(),
            )
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
            never(),
        )
        .await
        .map_err(|e| e.message)
        .unwrap_or_default();
        assert!(d.text.starts_with("partial answer here") && d.text.contains("backend failed"));
        // The room sees an error id, never what the backend said.
        assert!(
            !d.text.contains(&BackendError::Timeout.to_string()),
            "{}",
            d.text
        );
        assert!(d.backend_error.is_some_and(|e| e.contains("timed out")));
        assert_eq!(sink.final_texts(), [d.text.trim_end()]);
    }
}
