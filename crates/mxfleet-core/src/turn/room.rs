//! [`RoomPort`]: what the answer pipeline reads from a room and does to it, and its matrix-sdk
//! implementation [`MatrixRoom`].
//!
//! The pipeline is written against the port, not against matrix-sdk's `Room`, so its effects
//! (history, cues, sends, records) are unit-tested with a fake room that records what reaches
//! it, the way matrix-sdk-ui tests its timeline against a fake `RoomDataProvider`.

use std::future::Future;

use mxfleet_matrix::{
    MatrixFailure, Normalised, ensure_can_send, event_body,
    matrix_sdk::{
        Room,
        deserialized_responses::TimelineEvent,
        room::{IncludeRelations, MessagesOptions, RelationsOptions},
        ruma::{
            EventId, OwnedEventId, OwnedTransactionId, UInt, UserId,
            api::client::receipt::create_receipt::v3::ReceiptType,
            events::{AnyMessageLikeEventContent, receipt::ReceiptThread, relation::RelationType},
        },
    },
    normalise,
    polls::{PollVote, read_vote},
    redact, send_content, send_content_once,
};
use mxfleet_message::InboundMessage;
use tracing::{debug, warn};

use crate::{gate::RoomFacts, rooms::Rooms};

/// How a send is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempts {
    /// matrix-sdk retries 429s and server errors itself.
    Retried,
    /// Once: a 429 comes back at once (the stream editor keeps collecting text meanwhile).
    Once,
}

/// A room, as the answer pipeline uses it.
pub(crate) trait RoomPort: Clone + Send + Sync + 'static {
    /// What the gate needs to know about the room.
    fn facts(&self) -> impl Future<Output = RoomFacts> + Send;

    /// `user`'s display name in the room, if known.
    fn member_name(&self, user: &UserId) -> impl Future<Output = Option<String>> + Send;

    /// Up to `limit` recent messages of the thread of `thread` (its root and replies) or, with
    /// `None`, of the room's main timeline; not the bot's own. Failures are logged and give
    /// what could be read.
    fn recent_messages(
        &self,
        thread: Option<&EventId>,
        limit: usize,
    ) -> impl Future<Output = Vec<InboundMessage>> + Send;

    /// What a vote for `answers` on `poll` means, if `poll` is one of the bot's polls.
    fn poll_vote(
        &self,
        poll: &EventId,
        answers: &[String],
    ) -> impl Future<Output = Result<Option<PollVote>, MatrixFailure>> + Send;

    /// Shows or stops the bot's typing notice.
    fn typing(&self, typing: bool) -> impl Future<Output = Result<(), MatrixFailure>> + Send;

    /// Marks `event` as read by the bot.
    fn read_receipt(
        &self,
        event: &EventId,
    ) -> impl Future<Output = Result<(), MatrixFailure>> + Send;

    /// Fails unless the bot may send here: in an encrypted room only with keys of its own
    /// (`own_keys`), never in plaintext.
    fn ensure_can_send(
        &self,
        own_keys: bool,
        what: &str,
    ) -> impl Future<Output = Result<(), MatrixFailure>> + Send;

    /// Sends `content` with `txn` (a retry with the same `txn` lands once); returns its id.
    fn send(
        &self,
        content: AnyMessageLikeEventContent,
        txn: OwnedTransactionId,
        what: &str,
        attempts: Attempts,
    ) -> impl Future<Output = Result<OwnedEventId, MatrixFailure>> + Send;

    /// Redacts one of the bot's own events.
    fn redact(
        &self,
        event: &EventId,
        txn: OwnedTransactionId,
    ) -> impl Future<Output = Result<(), MatrixFailure>> + Send;

    /// The plain body `event` was sent with (edits not applied), if it has one.
    fn sent_body(
        &self,
        event: &EventId,
    ) -> impl Future<Output = Result<Option<String>, MatrixFailure>> + Send;
}

/// A joined Matrix room of the account.
#[derive(Clone)]
pub(crate) struct MatrixRoom {
    room: Room,
    rooms: Rooms,
}

impl MatrixRoom {
    /// `room`, seen through the account's `rooms`.
    pub(crate) fn new(room: Room, rooms: Rooms) -> Self {
        Self { room, rooms }
    }

    /// Up to `limit` messages of the thread of `root`: the root and its replies.
    async fn thread_messages(&self, root: &EventId, limit: usize) -> Vec<InboundMessage> {
        let mut events = Vec::new();
        match self.room.event(root, None).await {
            Ok(event) => events.push(event),
            Err(e) => debug!(error = %e, "thread root not fetched"),
        }
        let options = RelationsOptions {
            include_relations: IncludeRelations::RelationsOfType(RelationType::Thread),
            limit: Some(UInt::try_from(limit as u64).unwrap_or(UInt::MAX)),
            ..Default::default()
        };
        match self.room.relations(root.to_owned(), options).await {
            Ok(relations) => events.extend(relations.chunk),
            Err(e) => warn!(error = %e, "could not fetch the thread's history"),
        }
        self.messages_of(&events)
    }

    /// The messages among the main timeline's last `limit` events, read from the homeserver.
    async fn timeline_messages(
        &self,
        limit: usize,
    ) -> Result<Vec<InboundMessage>, mxfleet_matrix::matrix_sdk::Error> {
        let mut options = MessagesOptions::backward();
        options.limit = UInt::try_from(limit as u64).unwrap_or(UInt::MAX);
        let messages = self.room.messages(options).await?;
        Ok(self.messages_of(&messages.chunk))
    }

    /// Other people's messages among `events`.
    fn messages_of(&self, events: &[TimelineEvent]) -> Vec<InboundMessage> {
        let own = self.room.own_user_id();
        events
            .iter()
            .filter_map(|e| match normalise(self.room.room_id(), e, own) {
                Normalised::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

impl RoomPort for MatrixRoom {
    async fn facts(&self) -> RoomFacts {
        self.rooms.facts(&self.room).await
    }

    async fn member_name(&self, user: &UserId) -> Option<String> {
        self.rooms.member_name(&self.room, user).await
    }

    async fn recent_messages(&self, thread: Option<&EventId>, limit: usize) -> Vec<InboundMessage> {
        if let Some(root) = thread {
            return self.thread_messages(root, limit).await;
        }
        // The main timeline comes from what the sync recorded, once that log is complete;
        // otherwise one fetch completes it.
        let heard = self.rooms.heard();
        let epoch = match heard.recent(self.room.room_id()) {
            Ok(messages) => return messages,
            Err(epoch) => epoch,
        };
        match self.timeline_messages(limit).await {
            Ok(messages) => {
                heard.seed(self.room.room_id(), epoch, messages.clone());
                messages
            }
            Err(e) => {
                warn!(error = %e, "could not fetch the room's history");
                Vec::new()
            }
        }
    }

    async fn poll_vote(
        &self,
        poll: &EventId,
        answers: &[String],
    ) -> Result<Option<PollVote>, MatrixFailure> {
        read_vote(&self.room, self.room.own_user_id(), poll, answers).await
    }

    async fn typing(&self, typing: bool) -> Result<(), MatrixFailure> {
        self.room
            .typing_notice(typing)
            .await
            .map_err(|e| MatrixFailure::from_sdk("typing notice", &e))
    }

    async fn read_receipt(&self, event: &EventId) -> Result<(), MatrixFailure> {
        self.room
            .send_single_receipt(
                ReceiptType::Read,
                ReceiptThread::Unthreaded,
                event.to_owned(),
            )
            .await
            .map_err(|e| MatrixFailure::from_sdk("read receipt", &e))
    }

    async fn ensure_can_send(&self, own_keys: bool, what: &str) -> Result<(), MatrixFailure> {
        ensure_can_send(&self.room, own_keys, what).await
    }

    async fn send(
        &self,
        content: AnyMessageLikeEventContent,
        txn: OwnedTransactionId,
        what: &str,
        attempts: Attempts,
    ) -> Result<OwnedEventId, MatrixFailure> {
        match attempts {
            Attempts::Retried => send_content(&self.room, content, txn, what).await,
            Attempts::Once => send_content_once(&self.room, content, txn, what).await,
        }
    }

    async fn redact(&self, event: &EventId, txn: OwnedTransactionId) -> Result<(), MatrixFailure> {
        redact(&self.room, event, txn).await
    }

    async fn sent_body(&self, event: &EventId) -> Result<Option<String>, MatrixFailure> {
        event_body(&self.room, event).await
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A room in memory that records what the pipeline does to it.

    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use mxfleet_matrix::{
        FailureClass,
        matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, events::MessageLikeEventContent, serde::Raw},
    };

    use super::*;

    /// One thing the pipeline did to the room.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Did {
        /// A send: its transaction id and its content as JSON.
        Sent(String, serde_json::Value),
        /// A redaction of this event.
        Redacted(String),
        /// A typing notice on or off.
        Typing(bool),
        /// A read receipt for this event.
        Read(String),
    }

    #[derive(Default)]
    struct Inner {
        did: Vec<Did>,
        names: HashMap<OwnedUserId, String>,
        history: Vec<InboundMessage>,
        votes: HashMap<OwnedEventId, PollVote>,
        refuse_sends: bool,
        lose_answers: bool,
        sent: u64,
        /// The event each transaction id made: a send with a known one makes no new event.
        txns: HashMap<String, OwnedEventId>,
        /// The body each event was sent with.
        bodies: HashMap<OwnedEventId, String>,
    }

    /// A room in memory.
    #[derive(Clone)]
    pub(crate) struct FakeRoom {
        facts: RoomFacts,
        inner: Arc<Mutex<Inner>>,
    }

    impl FakeRoom {
        /// A room `id`; `dm` says whether it is a DM.
        pub(crate) fn new(id: &OwnedRoomId, dm: bool) -> Self {
            Self {
                facts: RoomFacts {
                    room_id: id.clone(),
                    is_dm: dm,
                    predecessors: Vec::new(),
                },
                inner: Arc::default(),
            }
        }

        fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
            self.inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Gives `user` a display name.
        pub(crate) fn name(self, user: &UserId, name: &str) -> Self {
            self.inner().names.insert(user.to_owned(), name.to_owned());
            self
        }

        /// Puts `message` in the room's (or its thread's) history.
        pub(crate) fn said(self, message: InboundMessage) -> Self {
            self.inner().history.push(message);
            self
        }

        /// Makes `poll` one of the bot's polls, voted on with `vote`.
        pub(crate) fn poll(self, poll: &EventId, vote: PollVote) -> Self {
            self.inner().votes.insert(poll.to_owned(), vote);
            self
        }

        /// Makes every send fail (a homeserver that is down).
        pub(crate) fn refusing_sends(self) -> Self {
            self.inner().refuse_sends = true;
            self
        }

        /// Makes every send land while its answer is lost (the caller sees a failure).
        pub(crate) fn losing_answers(self) -> Self {
            self.inner().lose_answers = true;
            self
        }

        /// Lets sends through again, and their answers back.
        pub(crate) fn accepting_sends(&self) {
            let mut inner = self.inner();
            (inner.refuse_sends, inner.lose_answers) = (false, false);
        }

        /// What the pipeline did, in order.
        pub(crate) fn did(&self) -> Vec<Did> {
            self.inner().did.clone()
        }

        /// The contents sent, in order.
        pub(crate) fn sent(&self) -> Vec<serde_json::Value> {
            self.did()
                .into_iter()
                .filter_map(|d| match d {
                    Did::Sent(_, content) => Some(content),
                    _ => None,
                })
                .collect()
        }
    }

    impl RoomPort for FakeRoom {
        async fn facts(&self) -> RoomFacts {
            self.facts.clone()
        }

        async fn member_name(&self, user: &UserId) -> Option<String> {
            self.inner().names.get(user).cloned()
        }

        async fn recent_messages(
            &self,
            thread: Option<&EventId>,
            limit: usize,
        ) -> Vec<InboundMessage> {
            let history = self.inner().history.clone();
            let in_scope: Vec<InboundMessage> = history
                .into_iter()
                .filter(|m| match thread {
                    Some(root) => m.thread_root.as_deref() == Some(root) || m.event_id == root,
                    None => true,
                })
                .collect();
            let skip = in_scope.len().saturating_sub(limit);
            in_scope.into_iter().skip(skip).collect()
        }

        async fn poll_vote(
            &self,
            poll: &EventId,
            _answers: &[String],
        ) -> Result<Option<PollVote>, MatrixFailure> {
            Ok(self.inner().votes.get(poll).cloned())
        }

        async fn typing(&self, typing: bool) -> Result<(), MatrixFailure> {
            self.inner().did.push(Did::Typing(typing));
            Ok(())
        }

        async fn read_receipt(&self, event: &EventId) -> Result<(), MatrixFailure> {
            self.inner().did.push(Did::Read(event.to_string()));
            Ok(())
        }

        async fn ensure_can_send(&self, _own_keys: bool, _what: &str) -> Result<(), MatrixFailure> {
            Ok(())
        }

        async fn send(
            &self,
            content: AnyMessageLikeEventContent,
            txn: OwnedTransactionId,
            what: &str,
            _attempts: Attempts,
        ) -> Result<OwnedEventId, MatrixFailure> {
            let mut inner = self.inner();
            if inner.refuse_sends {
                return Err(MatrixFailure::new(FailureClass::Transient, what));
            }
            let json = Raw::new(&content)
                .ok()
                .and_then(|raw| raw.deserialize_as::<serde_json::Value>().ok())
                .unwrap_or_default();
            let json =
                serde_json::json!({"type": content.event_type().to_string(), "content": json});
            let body = json["content"]["body"].as_str().map(str::to_owned);
            inner.did.push(Did::Sent(txn.to_string(), json));
            // As a homeserver does: a transaction id it has seen returns that event again.
            let event = match inner.txns.get(txn.as_str()) {
                Some(event) => event.clone(),
                None => {
                    inner.sent += 1;
                    let event = EventId::parse(format!("$sent{}", inner.sent))
                        .map_err(|e| MatrixFailure::new(FailureClass::Fatal, e.to_string()))?;
                    inner.txns.insert(txn.to_string(), event.clone());
                    if let Some(body) = body {
                        inner.bodies.insert(event.clone(), body);
                    }
                    event
                }
            };
            match inner.lose_answers {
                true => Err(MatrixFailure::new(FailureClass::Transient, what)),
                false => Ok(event),
            }
        }

        async fn redact(
            &self,
            event: &EventId,
            _txn: OwnedTransactionId,
        ) -> Result<(), MatrixFailure> {
            self.inner().did.push(Did::Redacted(event.to_string()));
            Ok(())
        }

        async fn sent_body(&self, event: &EventId) -> Result<Option<String>, MatrixFailure> {
            Ok(self.inner().bodies.get(event).cloned())
        }
    }
}
