//! Turns: answering claimed messages, one ordered queue per room, rooms and accounts in
//! parallel.
//!
//! A worker per room takes the room's messages in order and hands each to [`answer::handle`],
//! which gathers what is known, asks the pure [`plan`] what to do, and carries it out. Messages
//! a previous process claimed but never answered are dispatched here too, at connect. A
//! message whose answer could not be sent stays pending in the inbox and is handled after the
//! next start.
//!
//! - [`plan`]: the decision (pure, table-tested);
//! - [`answer`]: the effects, in order;
//! - [`room`]: the room as the pipeline sees it (a port, faked in tests);
//! - [`history`], [`media`], [`commands`], [`cues`], [`actions`], [`routing`], [`notices`],
//!   [`outbox`], [`record`]: one concern each.

pub(crate) mod actions;
pub(crate) mod answer;
pub(crate) mod commands;
pub(crate) mod context;
pub(crate) mod cues;
pub(crate) mod history;
pub(crate) mod media;
pub(crate) mod notices;
pub(crate) mod outbox;
pub(crate) mod plan;
pub(crate) mod record;
pub(crate) mod room;
pub(crate) mod routing;

use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use mxfleet_matrix::matrix_sdk::ruma::OwnedRoomId;
use mxfleet_message::{InboundMessage, Undecryptable};
use mxfleet_store::{InboxEntry, StoreFault, now_ms};

use mxfleet_telemetry::TraceParent;

use crate::{
    error::AccountError,
    measure,
    screen::{FROM_FLEET, Ticket, too_old},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::{Instrument, error, info, info_span, warn};

use self::{
    context::{TurnArgs, TurnContext},
    notices::UtdNotices,
    room::MatrixRoom,
};

/// Attempts to answer one message before giving up on it (a crash of the process during an
/// attempt counts too, so a message that kills the process is not tried forever).
const MAX_ATTEMPTS: u32 = 5;
/// The wait before the second attempt; it doubles with each further one.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// How often a message waiting for a failed store tries again.
pub(crate) const STORAGE_RETRY: Duration = Duration::from_secs(2);

/// Messages that may wait in one room's queue; past it (a flood while the room's worker is busy
/// answering) new ones are skipped with the reason recorded, so no room can grow the process
/// without bound.
pub(crate) const ROOM_BACKLOG_MAX: usize = 2000;

/// A message in its room's queue.
struct Queued {
    message: InboundMessage,
    /// What the screen decided.
    ticket: Ticket,
    /// When it was received (its sync response arrived) or else queued: its answer's latency
    /// counts from here.
    queued_at: Instant,
    /// The trace of the sync that brought it (empty for one a previous process left).
    trace: TraceParent,
    /// Whether its first attempt was counted when it was claimed (a fresh claim of this
    /// process); else each attempt is counted as it begins.
    counted: bool,
}

/// How a message reached the account.
pub(crate) struct Arrival {
    /// The trace of the sync that brought it (empty for one a previous process left).
    pub(crate) trace: TraceParent,
    /// When its sync response arrived (`None`: its latency counts from when it is queued).
    pub(crate) at: Option<Instant>,
    /// Whether its first attempt was counted with its claim (fresh claims of this process).
    pub(crate) counted: bool,
}

/// How long answers that were told to wrap up get to send their final edit.
const WRAP_UP_GRACE: Duration = Duration::from_secs(5);

/// The per-room answer queues of one account.
pub(crate) struct Turns {
    context: Arc<TurnContext>,
    notices: UtdNotices,
    queues: HashMap<OwnedRoomId, mpsc::Sender<Queued>>,
    workers: JoinSet<()>,
    /// Workers take no new message.
    stop: watch::Sender<bool>,
    /// Answers still streaming end with their final edit.
    wrap_up: watch::Sender<bool>,
}

impl Turns {
    /// Workers for one account's messages.
    pub(crate) fn new(args: TurnArgs) -> Self {
        let (stop, _) = watch::channel(false);
        let (wrap_up, wrapping_up) = watch::channel(false);
        Self {
            context: Arc::new(TurnContext::new(args, wrapping_up)),
            notices: UtdNotices::default(),
            queues: HashMap::new(),
            workers: JoinSet::new(),
            stop,
            wrap_up,
        }
    }

    /// Queues a message a previous process claimed but never answered, or skips it: sent by
    /// another bot of the fleet, or older than `catch_up_max_age_secs` (its age now, or for a
    /// message decrypted late its age when the bot first saw it). A previous process screened
    /// it already; these two checks may have changed their verdict since.
    pub(crate) fn dispatch_pending(&mut self, entry: InboxEntry<InboundMessage>) {
        let ctx = self.context.clone();
        if ctx.board.is_fleet_user(entry.message.sender.as_str()) {
            return self.skip_later(entry.message, FROM_FLEET.into());
        }
        if let Some(age_ms) = too_old(&entry, ctx.catch_up_max_age_ms(), now_ms()) {
            let message = entry.message;
            info!(account = %ctx.account, event_id = %message.event_id, age_secs = age_ms / 1000,
                "message older than catch_up_max_age_secs: skipped");
            ctx.board.update(&ctx.account, |s| s.skipped_old += 1);
            measure::count(measure::SKIPPED, &ctx.account, "too_old", 1);
            let reason = format!("older than catch_up_max_age_secs ({} s)", age_ms / 1000);
            return self.skip_later(message, reason);
        }
        let arrival = Arrival {
            trace: TraceParent::default(),
            at: None,
            counted: false,
        };
        self.dispatch(entry.message, Ticket::Admitted, arrival);
    }

    /// Queues `message` in its room as its `ticket` says (the screen judged it); past the room's
    /// backlog it is skipped.
    pub(crate) fn dispatch(&mut self, message: InboundMessage, ticket: Ticket, arrival: Arrival) {
        let ctx = self.context.clone();
        ctx.board.update(&ctx.account, |s| s.messages_in += 1);
        let room = message.room_id.clone();
        let queue = self.queues.entry(room.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(ROOM_BACKLOG_MAX);
            let span = info_span!(target: mxfleet_telemetry::LIFETIME_TARGET, parent: None,
                "room", account = %ctx.account, room = %room);
            let worker = room_worker(ctx.clone(), rx, self.stop.subscribe());
            self.workers.spawn(worker.instrument(span));
            tx
        });
        let queued = Queued {
            message,
            ticket,
            queued_at: arrival.at.unwrap_or_else(Instant::now),
            trace: arrival.trace,
            counted: arrival.counted,
        };
        match queue.try_send(queued) {
            Ok(()) => ctx.board.update(&ctx.account, |s| {
                s.messages_waiting = s.messages_waiting.saturating_add(1);
            }),
            Err(mpsc::error::TrySendError::Full(Queued { message, .. })) => {
                warn!(account = %ctx.account, room = %room, waiting = ROOM_BACKLOG_MAX,
                    "the room's backlog is full: message skipped");
                ctx.board.update(&ctx.account, |s| s.rate_limited += 1);
                measure::count(measure::SKIPPED, &ctx.account, "backlog_full", 1);
                let reason = format!("the room's backlog is full ({ROOM_BACKLOG_MAX} waiting)");
                self.skip_later(message, reason);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The worker died (it only does by panicking); the message stays pending in the
                // inbox.
                error!(account = %ctx.account, "room worker is gone; message left pending");
                self.queues.remove(&room);
            }
        }
    }

    /// Counts an undecryptable message and, within limits, says so in the room.
    pub(crate) fn report_undecryptable(&mut self, utd: Undecryptable) {
        self.notices.report(&self.context, utd);
    }

    /// Lets in-flight answers finish within `drain`; answers still streaming then end with
    /// their "interrupted" edit (within [`WRAP_UP_GRACE`]), and what is left is aborted. Queued
    /// messages stay pending in the inbox and are answered after the next start.
    pub(crate) async fn shutdown(mut self, drain: Duration) {
        let _ = self.stop.send(true);
        self.queues.clear();
        // What waited stays pending in the inbox; the next connection queues it again.
        let ctx = &self.context;
        ctx.board.update(&ctx.account, |s| s.messages_waiting = 0);
        if self.drain_within(drain).await {
            return;
        }
        info!(account = %self.context.account, workers = self.workers.len(),
            "answers still streaming at the drain deadline: ending them as interrupted");
        let _ = self.wrap_up.send(true);
        if !self.drain_within(WRAP_UP_GRACE).await {
            warn!(
                account = %self.context.account,
                workers = self.workers.len(),
                "reply workers did not finish their final edits in time; aborted"
            );
            self.workers.abort_all();
        }
    }

    /// Waits up to `deadline` for every worker to end; whether they did.
    async fn drain_within(&mut self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await
        .is_ok()
    }

    /// Records, on a task, that `message` is skipped for `reason`.
    fn skip_later(&self, message: InboundMessage, reason: String) {
        let ctx = self.context.clone();
        tokio::spawn(async move {
            let _ = record::skip(&ctx, &message, &reason).await;
        });
    }
}

/// Answers the messages of one room, in order, until stopped.
async fn room_worker(
    ctx: Arc<TurnContext>,
    mut queue: mpsc::Receiver<Queued>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Queued {
            message,
            ticket,
            queued_at,
            trace,
            counted,
        } = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return,
            queued = queue.recv() => match queued { Some(queued) => queued, None => return },
        };
        ctx.board.update(&ctx.account, |s| {
            s.messages_waiting = s.messages_waiting.saturating_sub(1);
        });
        let span = info_span!(parent: None, "message", account = %ctx.account, room = %message.room_id,
            event_id = %message.event_id, trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
        trace.adopt(&span);
        // With traces exported, every log line of the message names its trace and span.
        if let Some((trace_id, span_id)) = mxfleet_telemetry::trace_and_span_id(&span) {
            span.record("trace_id", trace_id);
            span.record("span_id", span_id);
        }
        let handle = |message, attempt| handle_in_room(&ctx, message, attempt, ticket, queued_at);
        attempt(&ctx, &message, counted, &mut stop, handle)
            .instrument(span)
            .await;
        let took = queued_at.elapsed();
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        ctx.board.update(&ctx.account, |s| s.turns.observe(took_ms));
        measure::observe(measure::TURN, &ctx.account, took);
    }
}

/// Answers `message`, trying again while its failures may pass (the room's later messages
/// wait: answers stay in order), and gives up after [`MAX_ATTEMPTS`]. A panic while answering
/// stays with this message.
async fn attempt<F, Fut>(
    ctx: &TurnContext,
    message: &InboundMessage,
    counted: bool,
    stop: &mut watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(InboundMessage, u32) -> Fut,
    Fut: Future<Output = Result<(), AccountError>>,
{
    let mut wait = FIRST_RETRY;
    let mut counted = counted;
    loop {
        let begun = match std::mem::take(&mut counted) {
            true => Ok(1),
            false => {
                ctx.store
                    .begin_attempt(&ctx.account, message.event_id.as_str())
                    .await
            }
        };
        let attempt = match begun {
            Ok(n) => n,
            // A full disk: the message waits (and the room's later ones behind it) until
            // the attempt can be counted; it is not given up on for want of space.
            Err(e) if matches!(e.fault(), StoreFault::Exhausted | StoreFault::Unavailable) => {
                warn!(error = %e, "storage fault: the message waits for the store");
                tokio::select! {
                    _ = stop.wait_for(|stopping| *stopping) => return,
                    () = tokio::time::sleep(STORAGE_RETRY) => {}
                }
                continue;
            }
            Err(e) => {
                return error!(error = %e, "could not count the attempt; message left pending");
            }
        };
        if attempt > MAX_ATTEMPTS {
            let reason = format!("no answer after {MAX_ATTEMPTS} attempts");
            return record::give_up(ctx, message, "attempts", &reason).await;
        }
        let handled = AssertUnwindSafe(handle(message.clone(), attempt))
            .catch_unwind()
            .await;
        let failure = match handled {
            Ok(Ok(())) => return,
            Ok(Err(e)) if !e.is_retryable() => {
                return record::give_up(ctx, message, "permanent", &e.to_string()).await;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "panicked while answering".to_owned(),
        };
        warn!(attempt, error = %failure, wait_ms = wait.as_millis() as u64, "answering failed; trying again");
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = wait.saturating_mul(2);
    }
}

/// Handles `message` (its `attempt`-th attempt) in its room; a room the account is not in is
/// skipped.
async fn handle_in_room(
    ctx: &TurnContext,
    message: InboundMessage,
    attempt: u32,
    ticket: Ticket,
    received: Instant,
) -> Result<(), AccountError> {
    match ctx.rooms.get(&message.room_id) {
        Some(room) => {
            let room = MatrixRoom::new(room, ctx.rooms.clone());
            answer::handle(ctx, &room, message, attempt, ticket, received).await
        }
        None => record::skip(ctx, &message, "not in the room").await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use mxfleet_matrix::{FailureClass, MatrixFailure};
    use mxfleet_store::InboxState;

    use super::*;
    use crate::testing::{Scripted, claim, context, said, turn_args};

    #[tokio::test]
    async fn a_flooded_room_waits_with_a_bounded_backlog_and_sheds_the_rest() {
        let (args, _dir) = turn_args("", Scripted::new("")).await;
        let board = args.board.clone();
        let mut turns = Turns::new(args);
        // Nothing runs between these dispatches (one thread): the worker takes none yet.
        let extra = 5;
        for i in 0..ROOM_BACKLOG_MAX + extra {
            let message = said("!busy:hs", &format!("$m{i}"), "@spammer:hs", "spam");
            let arrival = Arrival {
                trace: TraceParent::default(),
                at: None,
                counted: true,
            };
            turns.dispatch(message, Ticket::Admitted, arrival);
        }
        let shed = board.account("bot").map(|s| s.rate_limited);
        assert_eq!(shed, Some(extra as u64));
        let waiting = board.account("bot").map(|s| s.messages_waiting);
        assert_eq!(waiting, Some(ROOM_BACKLOG_MAX as u64));
        turns.shutdown(Duration::from_secs(1)).await;
        // What waited stays pending in the inbox, and is no longer counted as waiting.
        assert_eq!(board.account("bot").map(|s| s.messages_waiting), Some(0));
    }

    fn transient() -> AccountError {
        MatrixFailure::new(FailureClass::Transient, "homeserver down").into()
    }

    /// Runs `attempt` on a claimed message with a handler that answers the n-th call (1-based)
    /// with `outcome(n)`; returns the calls made, the inbox state and the failed count.
    async fn run(outcome: impl Fn(u32) -> Result<(), AccountError>) -> (u32, String, u64) {
        let (ctx, _dir) = context("", Scripted::new("")).await;
        let message = said("!r:hs", "$m", "@ann:hs", "hi");
        claim(&ctx, &message).await;
        let calls = AtomicU32::new(0);
        let (_stop, mut stopping) = watch::channel(false);
        let handler = |_message, _attempt| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let result = outcome(n);
            async move {
                // A handler that panics: the panic stays with this message.
                if matches!(&result, Err(AccountError::Panicked(_))) {
                    panic!("a poison message");
                }
                result
            }
        };
        attempt(&ctx, &message, false, &mut stopping, handler).await;
        let entry = ctx
            .store
            .entry::<serde_json::Value>("bot", "$m")
            .await
            .expect("the inbox");
        let state = entry
            .map(|e| match &e.state {
                InboxState::Failed { reason } => format!("failed: {reason}"),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        let failed = ctx.board.account("bot").map_or(0, |s| s.messages_failed);
        (calls.load(Ordering::SeqCst), state, failed)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_that_may_pass_are_tried_again_and_then_given_up() {
        // Two panics, then it works: answered on the third attempt.
        let (calls, state, failed) = run(|n| match n {
            1 | 2 => Err(AccountError::Panicked("the handler")),
            _ => Ok(()),
        })
        .await;
        assert_eq!((calls, failed), (3, 0));
        assert_eq!(state, "Pending", "the handler records its own outcome");

        // Never works: given up after MAX_ATTEMPTS, with the reason.
        let (calls, state, failed) = run(|_| Err(transient())).await;
        assert_eq!((calls, failed), (MAX_ATTEMPTS, 1));
        assert!(state.starts_with("failed: no answer after"), "{state}");

        // A failure that cannot pass: given up at once.
        let forbidden = || -> AccountError {
            MatrixFailure::new(FailureClass::Fatal, "M_FORBIDDEN: you may not speak").into()
        };
        let (calls, state, failed) = run(|_| Err(forbidden())).await;
        assert_eq!((calls, failed), (1, 1));
        assert!(state.contains("M_FORBIDDEN"), "{state}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_keeps_crashing_the_process_is_given_up() {
        let (ctx, _dir) = context("", Scripted::new("")).await;
        let message = said("!r:hs", "$m", "@ann:hs", "hi");
        claim(&ctx, &message).await;
        // Earlier processes began MAX_ATTEMPTS attempts and never finished them.
        for _ in 0..MAX_ATTEMPTS {
            ctx.store.begin_attempt("bot", "$m").await.expect("counted");
        }
        let (_stop, mut stopping) = watch::channel(false);
        let calls = AtomicU32::new(0);
        let handler = |_message, _attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        };
        attempt(&ctx, &message, false, &mut stopping, handler).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "not tried again");
        assert_eq!(ctx.board.account("bot").map(|s| s.messages_failed), Some(1));
    }
}
