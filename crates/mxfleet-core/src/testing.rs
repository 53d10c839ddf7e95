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
