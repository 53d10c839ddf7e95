//! The human side of a conversation: a real matrix-sdk client that records what it sees.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use matrix_sdk::{
    Client, Room,
    config::SyncSettings,
    ruma::{
        OwnedRoomId, OwnedUserId, RoomId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::room::{
            member::MembershipState,
            message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
        },
    },
};
use tokio::{sync::Notify, task::JoinHandle};

/// A message the human's client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The room.
    pub room_id: String,
    /// The sender.
    pub sender: String,
    /// The body.
    pub body: String,
    /// The event id.
    pub event_id: String,
}

/// A logged-in, syncing test user.
#[derive(Debug)]
pub struct Human {
    /// The client.
    pub client: Client,
    /// The user id.
    pub user_id: OwnedUserId,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
    sync: JoinHandle<()>,
}

impl Human {
    /// Logs `user_id` in and starts syncing in the background.
    pub async fn login(homeserver: &str, user_id: &str, password: &str) -> Result<Human> {
        let client = Client::builder().homeserver_url(homeserver).build().await?;
        client
            .matrix_auth()
            .login_username(user_id, password)
            .send()
            .await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (sink, bell) = (seen.clone(), arrived.clone());
        client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
            let (sink, bell) = (sink.clone(), bell.clone());
            async move {
                let seen = Seen {
                    room_id: room.room_id().to_string(),
                    sender: ev.sender.to_string(),
                    body: ev.content.body().to_owned(),
                    event_id: ev.event_id.to_string(),
                };
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(seen);
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
            seen,
            arrived,
            sync,
        })
    }

    /// Creates a DM with `bot` and waits until the bot has joined.
    pub async fn dm(&self, bot: &str) -> Result<OwnedRoomId> {
        self.room_with(&[bot], true).await
    }

    /// Creates a room with `bots` invited and waits until all have joined.
    pub async fn room_with(&self, bots: &[&str], direct: bool) -> Result<OwnedRoomId> {
        let mut request = CreateRoomRequest::new();
        request.invite = bots
            .iter()
            .map(|b| OwnedUserId::try_from(*b))
            .collect::<Result<_, _>>()?;
        request.is_direct = direct;
        request.preset = Some(RoomPreset::TrustedPrivateChat);
        let room = self.client.create_room(request).await?;
        let room_id = room.room_id().to_owned();
        for bot in bots {
            self.wait_joined(&room_id, bot, Duration::from_secs(30))
                .await?;
        }
        Ok(room_id)
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
        let room = self.client.get_room(room_id).context("unknown room")?;
        let response = room.send(RoomMessageEventContent::text_plain(body)).await?;
        Ok(response.response.event_id.to_string())
    }

    /// Everything seen in `room_id` from `sender`.
    pub fn seen_from(&self, room_id: &RoomId, sender: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|s| s.room_id == room_id.as_str() && s.sender == sender)
            .cloned()
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

impl Drop for Human {
    fn drop(&mut self) {
        self.sync.abort();
    }
}
