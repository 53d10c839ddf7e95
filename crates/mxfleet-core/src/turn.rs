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

use std::{collections::HashMap, sync::Arc, time::Duration};

use mxfleet_matrix::matrix_sdk::ruma::OwnedRoomId;
use mxfleet_message::{InboundMessage, Undecryptable};
use mxfleet_store::{InboxEntry, now_ms};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::{Instrument, error, info, info_span};

use self::{
    context::{TurnArgs, TurnContext},
    notices::UtdNotices,
    room::MatrixRoom,
};

/// The per-room answer queues of one account.
pub(crate) struct Turns {
    context: Arc<TurnContext>,
    notices: UtdNotices,
    queues: HashMap<OwnedRoomId, mpsc::UnboundedSender<InboundMessage>>,
    workers: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Turns {
    /// Workers for one account's messages.
    pub(crate) fn new(args: TurnArgs) -> Self {
        let (stop, _) = watch::channel(false);
        Self {
            context: Arc::new(TurnContext::new(args)),
            notices: UtdNotices::default(),
            queues: HashMap::new(),
            workers: JoinSet::new(),
            stop,
        }
    }

    /// Queues `entry` for an answer, or skips it: sent by another bot of the fleet, or older
    /// than `catch_up_max_age_secs`.
    pub(crate) fn dispatch(&mut self, entry: InboxEntry<InboundMessage>) {
        let ctx = self.context.clone();
        let message = entry.message;
        if ctx.board.is_fleet_user(message.sender.as_str()) {
            return self.skip_later(message, "sent by another account of this fleet".into());
        }
        let age_ms = now_ms().saturating_sub(message.origin_server_ts_ms);
        if age_ms > ctx.catch_up_max_age_ms() {
            info!(account = %ctx.account, event_id = %message.event_id, age_secs = age_ms / 1000,
                "message older than catch_up_max_age_secs: skipped");
            ctx.board.update(&ctx.account, |s| s.skipped_old += 1);
            let reason = format!("older than catch_up_max_age_secs ({} s)", age_ms / 1000);
            return self.skip_later(message, reason);
        }
        ctx.board.update(&ctx.account, |s| s.messages_in += 1);
        let room = message.room_id.clone();
        let queue = self.queues.entry(room.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = info_span!(parent: None, "room", account = %ctx.account, room = %room);
            let worker = room_worker(ctx.clone(), rx, self.stop.subscribe());
            self.workers.spawn(worker.instrument(span));
            tx
        });
        if queue.send(message).is_err() {
            // The worker died (it only does by panicking); the message stays pending in the inbox.
            error!(account = %ctx.account, "room worker is gone; message left pending");
            self.queues.remove(&room);
        }
    }

    /// Counts an undecryptable message and, within limits, says so in the room.
    pub(crate) fn report_undecryptable(&mut self, utd: Undecryptable) {
        self.notices.report(&self.context, utd);
    }

    /// Lets in-flight answers finish within `deadline`, then aborts the rest. Queued messages
    /// stay pending in the inbox and are answered after the next start.
    pub(crate) async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        self.queues.clear();
        let drained = tokio::time::timeout(deadline, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                account = %self.context.account,
                workers = self.workers.len(),
                "reply workers did not finish within the shutdown deadline; aborted"
            );
            self.workers.abort_all();
        }
    }

    /// Records, on a task, that `message` is skipped for `reason`.
    fn skip_later(&self, message: InboundMessage, reason: String) {
        let ctx = self.context.clone();
        tokio::spawn(async move { record::skip(&ctx, &message, &reason).await });
    }
}

/// Answers the messages of one room, in order, until stopped.
async fn room_worker(
    ctx: Arc<TurnContext>,
    mut queue: mpsc::UnboundedReceiver<InboundMessage>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return,
            message = queue.recv() => match message { Some(message) => message, None => return },
        };
        let span = info_span!(parent: None, "message", account = %ctx.account, room = %message.room_id, event_id = %message.event_id);
        async {
            match ctx.rooms.get(&message.room_id) {
                Some(room) => {
                    let room = MatrixRoom::new(room, ctx.rooms.clone());
                    answer::handle(&ctx, &room, message).await;
                }
                None => record::skip(&ctx, &message, "not in the room").await,
            }
        }
        .instrument(span)
        .await;
    }
}
