//! mxfleet's message model: what one inbound message is, in mxfleet's own terms.
//!
//! The Matrix glue (`mxfleet-matrix`) normalises sync events into these types once; the gate,
//! the answer pipeline and the inbox (`mxfleet-store`) see nothing else. Ids are ruma's typed
//! ids (the ones matrix-sdk uses, through `ruma-common` pinned to matrix-sdk's version), so a
//! message that made it this far has a well-formed room, event and sender.

use ruma_common::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};

pub use ruma_common::{EventId, RoomId, UserId};

/// Bodies longer than this are cut (at a character boundary) before they reach a backend.
pub const MAX_INBOUND_BODY_BYTES: usize = 32 * 1024;

/// How a file's description ends when its content is not passed to the backend.
pub const UNSEEN: &str = "; you cannot see its content]";

/// A message for the bot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// The room it was sent in.
    pub room_id: OwnedRoomId,
    /// Its event id.
    pub event_id: OwnedEventId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// Its text.
    pub body: String,
    /// When the sender's server received it (ms since the Unix epoch).
    pub origin_server_ts_ms: u64,
    /// The thread it belongs to, if any.
    pub thread_root: Option<OwnedEventId>,
    /// The HTML version of the text, if the sender sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formatted_body: Option<String>,
    /// Intentional mentions (`m.mentions`), if the sender's client set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<MentionList>,
    /// The event this message is a rich reply to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<OwnedEventId>,
    /// What came with the message besides text, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
}

/// Something other than text that came with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attachment {
    /// A voice message or audio file: transcribed, its text becomes the message's.
    Audio(Media),
    /// An image, video or file: the backend is told what it is (it cannot see it).
    File(Media),
    /// A shared location (`geo:` URI); the body already says where.
    Location {
        /// The `geo:` URI.
        geo_uri: String,
    },
    /// A vote on a poll: the body is empty until the poll's answers are looked up.
    PollResponse {
        /// The poll's start event.
        poll_id: OwnedEventId,
        /// The chosen answers' ids.
        answers: Vec<String>,
    },
}

/// Media on the homeserver, plain or encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// Where to download it: the event's `url` or `file` (encrypted), as JSON.
    pub source: serde_json::Value,
    /// Its MIME type, if the sender said.
    pub mimetype: Option<String>,
    /// Its size in bytes, if the sender said.
    pub size: Option<u64>,
    /// Its file name (or the body, if there is no separate file name).
    pub name: String,
}

/// The intentional mentions of a message (`m.mentions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MentionList {
    /// Users mentioned.
    pub user_ids: Vec<OwnedUserId>,
    /// Whether the whole room (`@room`) is mentioned.
    pub room: bool,
}

/// An encrypted event the account could not decrypt (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecryptable {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event id.
    pub event_id: OwnedEventId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// The Megolm session it was encrypted with, if known.
    pub session_id: Option<String>,
    /// Why it failed (matrix-sdk's reason).
    pub reason: String,
}

impl InboundMessage {
    /// The memory key of the conversation this message belongs to: the room, or the room's
    /// thread.
    pub fn conversation_key(&self) -> String {
        match &self.thread_root {
            Some(root) => format!("{}|{root}", self.room_id),
            None => self.room_id.to_string(),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use ruma_common::{owned_event_id, owned_room_id, owned_user_id};

    use super::*;

    #[test]
    fn messages_round_trip_through_json_with_typed_ids() -> Result<(), serde_json::Error> {
        let message = InboundMessage {
            room_id: owned_room_id!("!r:hs"),
            event_id: owned_event_id!("$e"),
            sender: owned_user_id!("@u:hs"),
            body: "hi".into(),
            origin_server_ts_ms: 1,
            thread_root: Some(owned_event_id!("$root")),
            formatted_body: None,
            mentions: Some(MentionList {
                user_ids: vec![owned_user_id!("@bot:hs")],
                room: false,
            }),
            reply_to: None,
            attachment: Some(Attachment::PollResponse {
                poll_id: owned_event_id!("$poll"),
                answers: vec!["a1".into()],
            }),
        };
        let json = serde_json::to_value(&message)?;
        // Stored inbox entries written before the ids were typed are plain strings too.
        assert_eq!(json["room_id"], "!r:hs");
        assert_eq!(json["mentions"]["user_ids"][0], "@bot:hs");
        assert_eq!(serde_json::from_value::<InboundMessage>(json)?, message);
        assert_eq!(message.conversation_key(), "!r:hs|$root");
        let bad = serde_json::json!({"room_id": "no-sigil", "event_id": "$e", "sender": "@u:hs",
            "body": "", "origin_server_ts_ms": 0, "thread_root": null});
        assert!(serde_json::from_value::<InboundMessage>(bad).is_err());
        Ok(())
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_at_char_boundary("héllo", 2), "h");
        assert_eq!(truncate_at_char_boundary("héllo", 3), "hé");
        assert_eq!(truncate_at_char_boundary("hi", 10), "hi");
        assert_eq!(truncate_at_char_boundary("é", 0), "");
    }
}
