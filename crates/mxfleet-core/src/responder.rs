//! Answering claimed messages: one ordered queue per room, rooms and accounts in parallel.
//!
//! A worker per room takes the room's messages in order, asks the backend, sends the answer with
//! a transaction id derived from the message, and records the outcome in the inbox. A message
//! whose answer could not be sent stays pending and is answered after the next start; a message
//! older than `catch_up_max_age_secs` is skipped and counted.

use std::{collections::HashMap, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use mxfleet_backend::{Backend, ChatMessage, ChatRequest, Role, collect};
use mxfleet_matrix::{
    FailureClass, InboundMessage, MatrixFailure,
    matrix_sdk::{Client, ruma::OwnedRoomId},
    send_reply,
};
use mxfleet_store::{InboxEntry, InboxState, Store, now_ms};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::{Instrument, error, info, info_span, warn};

use crate::status::StatusBoard;

/// Sends retried this many times on transient errors before the message is left pending.
const SEND_ATTEMPTS: usize = 4;

/// The reply workers of one account.
pub(crate) struct Responder {
    context: Arc<ReplyContext>,
    queues: HashMap<String, mpsc::UnboundedSender<InboxEntry<InboundMessage>>>,
    workers: JoinSet<()>,
    stop: watch::Sender<bool>,
}

struct ReplyContext {
    account: String,
    client: Client,
    backend: Arc<dyn Backend>,
    store: Store,
    board: StatusBoard,
    catch_up_max_age_ms: u64,
}

impl Responder {
    /// Workers for `account`'s messages.
    pub(crate) fn new(
        account: &str,
        client: Client,
        backend: Arc<dyn Backend>,
        store: Store,
        board: StatusBoard,
        catch_up_max_age_secs: u64,
    ) -> Self {
        let context = Arc::new(ReplyContext {
            account: account.to_owned(),
            client,
            backend,
            store,
            board,
            catch_up_max_age_ms: catch_up_max_age_secs.saturating_mul(1000),
        });
        let (stop, _) = watch::channel(false);
        Self {
            context,
            queues: HashMap::new(),
            workers: JoinSet::new(),
            stop,
        }
    }

    /// Queues `entry` for an answer, or skips it if it is too old.
    pub(crate) fn dispatch(&mut self, entry: InboxEntry<InboundMessage>) {
        let ctx = &self.context;
        if ctx.board.is_fleet_user(&entry.message.sender) {
            let reason = "sent by another account of this fleet".to_owned();
            self.record_skip(entry.event_id, reason);
            return;
        }
        let age_ms = now_ms().saturating_sub(entry.message.origin_server_ts_ms);
        if age_ms > ctx.catch_up_max_age_ms {
            info!(
                account = %ctx.account,
                event_id = %entry.event_id,
                age_secs = age_ms / 1000,
                "message older than catch_up_max_age_secs: skipped"
            );
            ctx.board.update(&ctx.account, |s| s.skipped_old += 1);
            let reason = format!("older than catch_up_max_age_secs ({} s)", age_ms / 1000);
            self.record_skip(entry.event_id, reason);
            return;
        }
        ctx.board.update(&ctx.account, |s| s.messages_in += 1);
        let room = entry.message.room_id.clone();
        let queue = self.queues.entry(room.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let span = info_span!(parent: None, "room", account = %ctx.account, room = %room);
            self.workers
                .spawn(room_worker(ctx.clone(), rx, self.stop.subscribe()).instrument(span));
            tx
        });
        if queue.send(entry).is_err() {
            // The worker died (it only does by panicking); the message stays pending in the inbox.
            error!(account = %self.context.account, "room worker is gone; message left pending");
            self.queues.remove(&room);
        }
    }

    fn record_skip(&self, event_id: String, reason: String) {
        let (store, account) = (self.context.store.clone(), self.context.account.clone());
        tokio::spawn(async move {
            if let Err(e) = store
                .finish(&account, &event_id, InboxState::Skipped { reason })
                .await
            {
                warn!(%account, %event_id, error = %e, "could not record a skipped message");
            }
        });
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
            warn!(
                account = %self.context.account,
                workers = self.workers.len(),
                "reply workers did not finish within the shutdown deadline; aborted"
            );
            self.workers.abort_all();
        }
    }
}

async fn room_worker(
    ctx: Arc<ReplyContext>,
    mut queue: mpsc::UnboundedReceiver<InboxEntry<InboundMessage>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let entry = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return,
            entry = queue.recv() => match entry { Some(entry) => entry, None => return },
        };
        let span = info_span!(parent: None, "message", account = %ctx.account, room = %entry.message.room_id, event_id = %entry.event_id);
        answer(&ctx, entry.message).instrument(span).await;
    }
}

/// Answers one message and records the outcome.
async fn answer(ctx: &ReplyContext, message: InboundMessage) {
    let Ok(room_id) = OwnedRoomId::try_from(message.room_id.as_str()) else {
        return finish(
            ctx,
            &message.event_id,
            InboxState::Skipped {
                reason: "bad room id".into(),
            },
        )
        .await;
    };
    let Some(room) = ctx.client.get_room(&room_id) else {
        return finish(
            ctx,
            &message.event_id,
            InboxState::Skipped {
                reason: "not in the room".into(),
            },
        )
        .await;
    };

    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: message.body.clone(),
        }],
    };
    let started = std::time::Instant::now();
    let text = match collect(ctx.backend.as_ref(), request).await {
        Ok(text) if !text.trim().is_empty() => text,
        Ok(_) => "(the backend returned an empty answer)".to_owned(),
        Err(e) => {
            warn!(backend = ctx.backend.kind(), error = %e, "backend failed");
            format!("Sorry, I could not get an answer from the backend: {e}")
        }
    };
    let backend_ms = started.elapsed().as_millis() as u64;

    let send = || send_reply(&room, &message.event_id, &text);
    let sent = send
        .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(500)).with_max_times(SEND_ATTEMPTS).with_jitter())
        .when(|f: &MatrixFailure| matches!(f.class, FailureClass::Transient | FailureClass::RateLimited(_)))
        .adjust(|f: &MatrixFailure, delay| match f.class {
            FailureClass::RateLimited(Some(after)) => Some(delay.map_or(after, |d| d.max(after))),
            _ => delay,
        })
        .notify(|f: &MatrixFailure, delay| warn!(error = %f, ?delay, "sending the reply failed; retrying"))
        .await;
    match sent {
        Ok(reply_event_id) => {
            info!(backend_ms, reply = %reply_event_id, "answered");
            ctx.board.update(&ctx.account, |s| s.replies_out += 1);
            finish(
                ctx,
                &message.event_id,
                InboxState::Answered {
                    reply_event_id: reply_event_id.to_string(),
                },
            )
            .await;
        }
        Err(e) => {
            error!(error = %e, "could not send the reply; it stays pending until the next start")
        }
    }
}

async fn finish(ctx: &ReplyContext, event_id: &str, state: InboxState) {
    if let Err(e) = ctx.store.finish(&ctx.account, event_id, state).await {
        error!(error = %e, "could not record the outcome; the message may be answered again after a restart");
    }
}
