//! Helpers for the unit tests of this crate: accounts built from real configuration text.

use std::collections::BTreeMap;

use mxfleet_config::{AccountSpec, Flags, Sources};

/// The accounts of a configuration with `tables`, each `(id, extra keys)`: a password account
/// `@<id>:hs` on the echo backend, plus the extra keys.
pub(crate) fn accounts(tables: &[(&str, &str)]) -> BTreeMap<String, AccountSpec> {
    accounts_with("", tables)
}

/// Like [`accounts`], with `top` (backends, …) before the account tables.
pub(crate) fn accounts_with(top: &str, tables: &[(&str, &str)]) -> BTreeMap<String, AccountSpec> {
    let mut toml = format!("{top}\n");
    for (id, extra) in tables {
        toml.push_str(&format!(
            "[accounts.{id}]\nhomeserver = \"http://127.0.0.1:9\"\nuser_id = \"@{id}:hs\"\npassword = \"pw\"\nbackend = \"echo\"\n{extra}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, toml).expect("the config is written");
    let sources = Sources {
        config_file: Some(file),
        flags: Flags::default(),
    };
    match mxfleet_config::load(&sources) {
        Ok(loaded) => loaded.config.accounts,
        Err(e) => panic!("not a valid test config: {e}"),
    }
}

/// A backend that answers every request with `answer` (after `delay`) and keeps the requests.
pub(crate) struct Scripted {
    answer: String,
    delay: std::time::Duration,
    requests: std::sync::Mutex<Vec<mxfleet_backend::ChatRequest>>,
}

impl Scripted {
    /// Answers `answer` at once.
    pub(crate) fn new(answer: &str) -> std::sync::Arc<Self> {
        Self::slow(answer, std::time::Duration::ZERO)
    }

    /// Answers `answer` after `delay`.
    pub(crate) fn slow(answer: &str, delay: std::time::Duration) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            answer: answer.to_owned(),
            delay,
            requests: std::sync::Mutex::default(),
        })
    }

    /// The requests so far.
    pub(crate) fn requests(&self) -> Vec<mxfleet_backend::ChatRequest> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl mxfleet_backend::Backend for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn stream(&self, request: mxfleet_backend::ChatRequest) -> mxfleet_backend::TextStream {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(request);
        let (answer, delay) = (self.answer.clone(), self.delay);
        Box::pin(futures_util::stream::once(async move {
            tokio::time::sleep(delay).await;
            Ok(answer)
        }))
    }
}

/// The user id `id`.
pub(crate) fn user(id: &str) -> mxfleet_matrix::matrix_sdk::ruma::OwnedUserId {
    mxfleet_matrix::matrix_sdk::ruma::UserId::parse(id).expect("a user id")
}

/// The event id `id`.
pub(crate) fn event(id: &str) -> mxfleet_matrix::matrix_sdk::ruma::OwnedEventId {
    mxfleet_matrix::matrix_sdk::ruma::EventId::parse(id).expect("an event id")
}

/// The room id `id`.
pub(crate) fn room(id: &str) -> mxfleet_matrix::matrix_sdk::ruma::OwnedRoomId {
    mxfleet_matrix::matrix_sdk::ruma::RoomId::parse(id).expect("a room id")
}

/// A plain text message `event` of `sender` in `room`, sent at time 0.
pub(crate) fn said(
    room: &str,
    event: &str,
    sender: &str,
    body: &str,
) -> mxfleet_message::InboundMessage {
    mxfleet_message::InboundMessage {
        room_id: self::room(room),
        event_id: self::event(event),
        sender: user(sender),
        body: body.into(),
        origin_server_ts_ms: 0,
        thread_root: None,
        formatted_body: None,
        mentions: None,
        reply_to: None,
        attachment: None,
    }
}

/// What a turn context is made of, for the account `bot` with `extra` keys, its backend
/// `backend`, no children (answers are delivered inline), and a fresh store (kept while the
/// directory lives).
pub(crate) async fn turn_args(
    extra: &str,
    backend: std::sync::Arc<Scripted>,
) -> (crate::turn::context::TurnArgs, tempfile::TempDir) {
    use crate::turn::context::TurnArgs;
    let spec = accounts(&[("bot", extra)])
        .remove("bot")
        .expect("the account");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = mxfleet_store::Store::open(&dir.path().join("mxfleet.redb")).expect("a store");
    let client = mxfleet_matrix::matrix_sdk::Client::builder()
        .homeserver_url("http://127.0.0.1:9")
        .build()
        .await
        .expect("an offline client");
    let board = crate::status::StatusBoard::new();
    board.transition("bot", crate::status::AccountState::Syncing, None);
    let access = crate::gate::Access::new(&spec.conversation, []);
    let args = TurnArgs {
        spec: std::sync::Arc::new(spec),
        rooms: crate::rooms::Rooms::new(client.clone(), Default::default(), Default::default()),
        client,
        user_id: user("@bot:hs"),
        backend,
        store,
        board,
        access,
        aliases: Default::default(),
        children: crate::children::Children::default(),
    };
    (args, dir)
}

/// A turn context made of [`turn_args`].
pub(crate) async fn context(
    extra: &str,
    backend: std::sync::Arc<Scripted>,
) -> (crate::turn::context::TurnContext, tempfile::TempDir) {
    let (args, dir) = turn_args(extra, backend).await;
    let ctx = crate::turn::context::TurnContext::new(args, tokio::sync::watch::channel(false).1);
    (ctx, dir)
}

/// Claims `message` in `bot`'s inbox, as the sync does.
pub(crate) async fn claim(
    ctx: &crate::turn::context::TurnContext,
    message: &mxfleet_message::InboundMessage,
) {
    let entry = mxfleet_store::InboxEntry {
        event_id: message.event_id.to_string(),
        claimed_at_ms: mxfleet_store::now_ms(),
        seq: 0,
        attempts: 0,
        seen_at_ms: None,
        state: mxfleet_store::InboxState::Pending,
        message: message.clone(),
    };
    ctx.store
        .commit_sync("bot", "s1", vec![entry])
        .await
        .expect("claimed");
}

/// How many of `bot`'s messages are pending.
pub(crate) async fn pending(ctx: &crate::turn::context::TurnContext) -> usize {
    let (pending, _) = ctx
        .store
        .pending::<mxfleet_message::InboundMessage>("bot")
        .await
        .expect("the inbox");
    pending.len()
}
