//! The human side of a conversation: a real matrix-sdk client that records what it sees.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use matrix_sdk::{
    Client, Room,
    config::SyncSettings,
    deserialized_responses::EncryptionInfo,
    ruma::{
        OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{
            InitialStateEvent, Mentions,
            poll::unstable_start::OriginalSyncUnstablePollStartEvent,
            reaction::OriginalSyncReactionEvent,
            relation::Thread,
            room::{
                encryption::RoomEncryptionEventContent,
                member::MembershipState,
                message::{
                    MessageType, OriginalSyncRoomMessageEvent, Relation, RoomMessageEventContent,
                },
                redaction::OriginalSyncRoomRedactionEvent,
            },
        },
    },
};
use tokio::{sync::Notify, task::JoinHandle};

/// A message the human's client saw (an edit shows its new content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The room.
    pub room_id: String,
    /// The sender.
    pub sender: String,
    /// The body (for an edit: the new body).
    pub body: String,
    /// The HTML body, if any (for an edit: the new one).
    pub formatted: Option<String>,
    /// The event id.
    pub event_id: String,
    /// For an edit (`m.replace`): the event it edits.
    pub replaces: Option<String>,
    /// The thread root, for a message in a thread.
    pub thread_root: Option<String>,
    /// The event it replies to, if any.
    pub in_reply_to: Option<String>,
    /// Whether it arrived encrypted (and was decrypted by the human's client).
    pub encrypted: bool,
    /// For a location message (`m.location`): its `geo:` URI.
    pub geo_uri: Option<String>,
}

/// A reaction the human's client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The reaction's event id.
    pub event_id: String,
    /// Who reacted.
    pub sender: String,
    /// The event reacted to.
    pub target: String,
    /// The reaction key (emoji).
    pub key: String,
}

/// A poll the human saw.
#[derive(Debug, Clone)]
pub struct SeenPoll {
    /// Its event id.
    pub event_id: String,
    /// The room.
    pub room_id: String,
    /// Who started it.
    pub sender: String,
    /// The question.
    pub question: String,
    /// The answers: (id, text).
    pub answers: Vec<(String, String)>,
    /// Whether it arrived encrypted.
    pub encrypted: bool,
}

#[derive(Debug, Default)]
struct Record {
    polls: Vec<SeenPoll>,
    messages: Vec<Seen>,
    reactions: Vec<Reaction>,
    redacted: Vec<String>,
}

/// A logged-in, syncing test user.
#[derive(Debug)]
pub struct Human {
    /// The client.
    pub client: Client,
    /// The user id.
    pub user_id: OwnedUserId,
    record: Arc<Mutex<Record>>,
    arrived: Arc<Notify>,
    sync: JoinHandle<()>,
}

impl Human {
    /// Logs `user_id` in and starts syncing in the background.
    pub async fn login(homeserver: &str, user_id: &str, password: &str) -> Result<Human> {
        Self::login_with(homeserver, user_id, password, false).await
    }

    /// Like [`Human::login`]; with `only_trusted_devices`, the client shares its room keys only
    /// with devices it verified, so an unverified bot cannot decrypt what it sends.
    pub async fn login_with(
        homeserver: &str,
        user_id: &str,
        password: &str,
        only_trusted_devices: bool,
    ) -> Result<Human> {
        // Refresh tokens, so a human outlives a homeserver's short access-token lifetimes.
        let mut builder = Client::builder()
            .homeserver_url(homeserver)
            .handle_refresh_tokens();
        if only_trusted_devices {
            builder = builder.with_room_key_recipient_strategy(
                matrix_sdk_base::crypto::CollectStrategy::OnlyTrustedDevices,
            );
        }
        let client = builder.build().await?;
        client
            .matrix_auth()
            .login_username(user_id, password)
            .request_refresh_token()
            .send()
            .await?;
        let record = Arc::new(Mutex::new(Record::default()));
        let arrived = Arc::new(Notify::new());
        let (sink, bell) = (record.clone(), arrived.clone());
        client.add_event_handler(
            move |ev: OriginalSyncRoomMessageEvent,
                  room: Room,
                  encryption: Option<EncryptionInfo>| {
                let (sink, bell) = (sink.clone(), bell.clone());
                async move {
                    let (replaces, thread_root, in_reply_to, content) = match &ev.content.relates_to
                    {
                        Some(Relation::Replacement(r)) => (
                            Some(r.event_id.to_string()),
                            None,
                            None,
                            (
                                r.new_content.msgtype.body().to_owned(),
                                html_of(&r.new_content.msgtype),
                            ),
                        ),
                        Some(Relation::Thread(t)) => (
                            None,
                            Some(t.event_id.to_string()),
                            t.in_reply_to.as_ref().map(|r| r.event_id.to_string()),
                            (ev.content.body().to_owned(), html_of(&ev.content.msgtype)),
                        ),
                        Some(Relation::Reply(r)) => (
                            None,
                            None,
                            Some(r.in_reply_to.event_id.to_string()),
                            (ev.content.body().to_owned(), html_of(&ev.content.msgtype)),
                        ),
                        _ => (
                            None,
                            None,
                            None,
                            (ev.content.body().to_owned(), html_of(&ev.content.msgtype)),
                        ),
                    };
                    let geo_uri = match &ev.content.msgtype {
                        MessageType::Location(location) => Some(location.geo_uri.clone()),
                        _ => None,
                    };
                    let seen = Seen {
                        geo_uri,
                        room_id: room.room_id().to_string(),
                        sender: ev.sender.to_string(),
                        body: content.0,
                        formatted: content.1,
                        event_id: ev.event_id.to_string(),
                        replaces,
                        thread_root,
                        in_reply_to,
                        encrypted: encryption.is_some(),
                    };
                    lock(&sink).messages.push(seen);
                    bell.notify_waiters();
                }
            },
        );
        let (sink, bell) = (record.clone(), arrived.clone());
        client.add_event_handler(
            move |ev: OriginalSyncUnstablePollStartEvent,
                  room: Room,
                  encryption: Option<EncryptionInfo>| {
                let (sink, bell) = (sink.clone(), bell.clone());
                async move {
                    let start = ev.content.poll_start();
                    lock(&sink).polls.push(SeenPoll {
                        event_id: ev.event_id.to_string(),
                        room_id: room.room_id().to_string(),
                        sender: ev.sender.to_string(),
                        question: start.question.text.clone(),
                        answers: start
                            .answers
                            .iter()
                            .map(|a| (a.id.clone(), a.text.clone()))
                            .collect(),
                        encrypted: encryption.is_some(),
                    });
                    bell.notify_waiters();
                }
            },
        );
        let (sink, bell) = (record.clone(), arrived.clone());
        client.add_event_handler(move |ev: OriginalSyncReactionEvent| {
            let (sink, bell) = (sink.clone(), bell.clone());
            async move {
                lock(&sink).reactions.push(Reaction {
                    event_id: ev.event_id.to_string(),
                    sender: ev.sender.to_string(),
                    target: ev.content.relates_to.event_id.to_string(),
                    key: ev.content.relates_to.key.clone(),
                });
                bell.notify_waiters();
            }
        });
        let (sink, bell) = (record.clone(), arrived.clone());
        client.add_event_handler(move |ev: OriginalSyncRoomRedactionEvent| {
            let (sink, bell) = (sink.clone(), bell.clone());
            async move {
                if let Some(id) = ev.content.redacts.clone().or(ev.redacts.clone()) {
                    lock(&sink).redacted.push(id.to_string());
                }
                bell.notify_waiters();
            }
        });
        // One sync so that later rooms start from "now".
        client.sync_once(SyncSettings::default()).await?;
        let syncing = client.clone();
        // sync_once in a loop, not sync(): sync() sleeps up to a second between quick syncs,
        // which would show up as reply latency.
        let sync = tokio::spawn(async move {
            let settings = SyncSettings::default().timeout(Duration::from_secs(5));
            loop {
                if syncing.sync_once(settings.clone()).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        let user_id = client
            .user_id()
            .context("logged in without a user id")?
            .to_owned();
        Ok(Human {
            client,
            user_id,
            record,
            arrived,
            sync,
        })
    }

    /// Stops syncing for good: the human still sends (a spammer need not read), but sees
    /// nothing new and costs the homeserver no syncs.
    pub fn stop_syncing(&self) {
        self.sync.abort();
    }

    /// Creates a DM with `bot` and waits until the bot has joined.
    pub async fn dm(&self, bot: &str) -> Result<OwnedRoomId> {
        self.room_with(&[bot], true).await
    }

    /// Creates a room with `bots` invited and waits until all have joined.
    pub async fn room_with(&self, bots: &[&str], direct: bool) -> Result<OwnedRoomId> {
        let room_id = self.create_room(bots, direct).await?;
        for bot in bots {
            self.wait_joined(&room_id, bot, Duration::from_secs(30))
                .await?;
        }
        Ok(room_id)
    }

    /// Creates an end-to-end encrypted DM with `bot` and waits until the bot has joined.
    pub async fn encrypted_dm(&self, bot: &str) -> Result<OwnedRoomId> {
        let room_id = self.create_room_with(&[bot], true, true).await?;
        self.wait_joined(&room_id, bot, Duration::from_secs(30))
            .await?;
        Ok(room_id)
    }

    /// Creates a room (a DM if `direct`) inviting `invitees`, without waiting for them.
    pub async fn create_room(&self, invitees: &[&str], direct: bool) -> Result<OwnedRoomId> {
        self.create_room_with(invitees, direct, false).await
    }

    /// Creates a room, encrypted from the start if `encrypted`.
    pub async fn create_room_with(
        &self,
        invitees: &[&str],
        direct: bool,
        encrypted: bool,
    ) -> Result<OwnedRoomId> {
        let mut request = CreateRoomRequest::new();
        if encrypted {
            let event = InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            );
            request.initial_state = vec![event.to_raw_any()];
        }
        request.invite = invitees
            .iter()
            .map(|b| OwnedUserId::try_from(*b))
            .collect::<Result<_, _>>()?;
        request.is_direct = direct;
        request.preset = Some(RoomPreset::TrustedPrivateChat);
        let room = self.client.create_room(request).await?;
        Ok(room.room_id().to_owned())
    }

    /// Waits until `user`'s membership in `room_id` is `state` (e.g. `Leave` after a rejected
    /// invite).
    pub async fn wait_membership(
        &self,
        room_id: &RoomId,
        user: &str,
        state: MembershipState,
        timeout: Duration,
    ) -> Result<()> {
        let user_id = OwnedUserId::try_from(user)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(room) = self.client.get_room(room_id) {
                let member = room.get_member_no_sync(&user_id).await?;
                if member.is_some_and(|m| *m.membership() == state) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{user} did not reach {state:?} in {room_id} within {timeout:?}")
    }

    /// Waits until `user` is a joined member of `room_id`.
    pub async fn wait_joined(&self, room_id: &RoomId, user: &str, timeout: Duration) -> Result<()> {
        let user_id = OwnedUserId::try_from(user)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            // From the local store only (kept current by the sync loop): `members()` may go
            // through matrix-sdk's member-sync deduplication, and with a hundred fresh rooms a
            // benchmark run once waited there forever.
            if let Some(room) = self.client.get_room(room_id) {
                let member = room.get_member_no_sync(&user_id).await?;
                if member.is_some_and(|m| *m.membership() == MembershipState::Join) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{user} did not join {room_id} within {timeout:?}")
    }

    /// Sends a text message; returns its event id.
    pub async fn send(&self, room_id: &RoomId, body: &str) -> Result<String> {
        self.send_content(room_id, RoomMessageEventContent::text_plain(body))
            .await
    }

    /// Sends a text message with intentional mentions (`m.mentions`) of `users` (and `@room`).
    pub async fn send_mentioning(
        &self,
        room_id: &RoomId,
        body: &str,
        users: &[&str],
        room_mention: bool,
    ) -> Result<String> {
        let mut mentions = Mentions::with_user_ids(
            users
                .iter()
                .map(|u| OwnedUserId::try_from(*u))
                .collect::<Result<Vec<_>, _>>()?,
        );
        mentions.room = room_mention;
        let content = RoomMessageEventContent::text_plain(body).add_mentions(mentions);
        self.send_content(room_id, content).await
    }

    /// Sends a message into the thread of `root`, mentioning `users`.
    pub async fn send_in_thread(
        &self,
        room_id: &RoomId,
        root: &str,
        body: &str,
        users: &[&str],
    ) -> Result<String> {
        let root = OwnedEventId::try_from(root)?;
        let mut content = RoomMessageEventContent::text_plain(body);
        content.relates_to = Some(Relation::Thread(Thread::without_fallback(root)));
        let ids = users
            .iter()
            .map(|u| OwnedUserId::try_from(*u))
            .collect::<Result<Vec<_>, _>>()?;
        let content = content.add_mentions(Mentions::with_user_ids(ids));
        self.send_content(room_id, content).await
    }

    /// Uploads `data` as a file named `file_name` of type `mimetype` and sends it (an audio
    /// type makes it a voice message; encrypted, as the media, in an encrypted room).
    pub async fn send_file(
        &self,
        room_id: &RoomId,
        file_name: &str,
        mimetype: &str,
        data: Vec<u8>,
    ) -> Result<String> {
        let room = self.client.get_room(room_id).context("unknown room")?;
        let mime: mime::Mime = mimetype.parse()?;
        let config = matrix_sdk::attachment::AttachmentConfig::new();
        let response = room.send_attachment(file_name, &mime, data, config).await?;
        Ok(response.event_id.to_string())
    }

    /// Polls seen in `room_id` from `sender`.
    pub fn polls_from(&self, room_id: &RoomId, sender: &str) -> Vec<SeenPoll> {
        lock(&self.record)
            .polls
            .iter()
            .filter(|p| p.room_id == room_id.as_str() && p.sender == sender)
            .cloned()
            .collect()
    }

    /// Votes for `answer_id` in the poll `poll_id`.
    pub async fn vote(&self, room_id: &RoomId, poll_id: &str, answer_id: &str) -> Result<String> {
        use matrix_sdk::ruma::events::poll::unstable_response::UnstablePollResponseEventContent;
        let room = self.client.get_room(room_id).context("unknown room")?;
        let content = UnstablePollResponseEventContent::new(
            vec![answer_id.to_owned()],
            OwnedEventId::try_from(poll_id)?,
        );
        let response = room.send(content).await?;
        Ok(response.response.event_id.to_string())
    }

    /// Shares a location (`geo:` URI) with a description.
    pub async fn send_location(
        &self,
        room_id: &RoomId,
        description: &str,
        geo_uri: &str,
    ) -> Result<String> {
        let content = RoomMessageEventContent::new(MessageType::Location(
            matrix_sdk::ruma::events::room::message::LocationMessageEventContent::new(
                description.to_owned(),
                geo_uri.to_owned(),
            ),
        ));
        self.send_content(room_id, content).await
    }

    async fn send_content(
        &self,
        room_id: &RoomId,
        content: RoomMessageEventContent,
    ) -> Result<String> {
        let room = self.client.get_room(room_id).context("unknown room")?;
        let response = room.send(content).await?;
        Ok(response.response.event_id.to_string())
    }

    /// Redacts `event_id` in `room_id`.
    pub async fn redact(&self, room_id: &RoomId, event_id: &str) -> Result<()> {
        let room = self.client.get_room(room_id).context("unknown room")?;
        let event_id = matrix_sdk::ruma::OwnedEventId::try_from(event_id)?;
        room.redact(&event_id, None, None).await?;
        Ok(())
    }

    /// Every message (originals and edits) seen in `room_id` from `sender`.
    pub fn all_from(&self, room_id: &RoomId, sender: &str) -> Vec<Seen> {
        lock(&self.record)
            .messages
            .iter()
            .filter(|s| s.room_id == room_id.as_str() && s.sender == sender)
            .cloned()
            .collect()
    }

    /// The edits of `event_id`, in arrival order.
    pub fn edits_of(&self, event_id: &str) -> Vec<Seen> {
        lock(&self.record)
            .messages
            .iter()
            .filter(|s| s.replaces.as_deref() == Some(event_id))
            .cloned()
            .collect()
    }

    /// What `original` shows now: its last edit's body, or its own.
    pub fn current_text(&self, original: &Seen) -> String {
        self.edits_of(&original.event_id)
            .last()
            .map_or_else(|| original.body.clone(), |e| e.body.clone())
    }

    /// Waits until `check` finds something in what the client saw.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Human) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrival = self.arrived.notified();
            if let Some(found) = check(self) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                bail!("{what}: not seen within {timeout:?}");
            }
        }
    }

    /// Waits until `sender` has an original message in `room_id` whose current text (after its
    /// edits) is `text`; returns the original.
    pub async fn expect_final_text(
        &self,
        room_id: &RoomId,
        sender: &str,
        text: &str,
        timeout: Duration,
    ) -> Result<Seen> {
        let found = self
            .wait_for("final text", timeout, |h| {
                h.seen_from(room_id, sender)
                    .into_iter()
                    .find(|s| h.current_text(s) == text)
            })
            .await;
        found.with_context(|| {
            let now: Vec<String> = self
                .seen_from(room_id, sender)
                .iter()
                .map(|s| self.current_text(s))
                .collect();
            format!("{sender} never showed {text:?} in {room_id}; shows {now:?}")
        })
    }

    /// Reactions seen on `target`.
    pub fn reactions_on(&self, target: &str) -> Vec<Reaction> {
        lock(&self.record)
            .reactions
            .iter()
            .filter(|r| r.target == target)
            .cloned()
            .collect()
    }

    /// Whether a redaction of `event_id` was seen.
    pub fn was_redacted(&self, event_id: &str) -> bool {
        lock(&self.record).redacted.iter().any(|r| r == event_id)
    }

    /// Original messages (not edits) seen in `room_id` from `sender`.
    pub fn seen_from(&self, room_id: &RoomId, sender: &str) -> Vec<Seen> {
        self.all_from(room_id, sender)
            .into_iter()
            .filter(|s| s.replaces.is_none())
            .collect()
    }

    /// Waits until `sender` has said something in `room_id` whose body is `body`; returns it.
    pub async fn expect_message(
        &self,
        room_id: &RoomId,
        sender: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<Seen> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so an arrival between the look and the wait is kept.
            let arrival = self.arrived.notified();
            if let Some(seen) = self
                .seen_from(room_id, sender)
                .into_iter()
                .find(|s| s.body == body)
            {
                return Ok(seen);
            }
            if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                let got: Vec<String> = self
                    .seen_from(room_id, sender)
                    .into_iter()
                    .map(|s| s.body)
                    .collect();
                bail!("no {body:?} from {sender} in {room_id} within {timeout:?}; saw {got:?}");
            }
        }
    }

    /// How many messages with exactly `body` `sender` sent in `room_id`.
    pub fn count(&self, room_id: &RoomId, sender: &str, body: &str) -> usize {
        self.seen_from(room_id, sender)
            .iter()
            .filter(|s| s.body == body)
            .count()
    }
}

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn html_of(msgtype: &MessageType) -> Option<String> {
    match msgtype {
        MessageType::Text(t) => t.formatted.as_ref().map(|f| f.body.clone()),
        MessageType::Notice(n) => n.formatted.as_ref().map(|f| f.body.clone()),
        _ => None,
    }
}

impl Drop for Human {
    fn drop(&mut self) {
        self.sync.abort();
    }
}
