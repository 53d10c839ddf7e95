//! The records kept in the database.

use super::*;

/// A persisted Matrix session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The bot's user id.
    pub user_id: String,
    /// The bot's device id.
    pub device_id: String,
    /// The access token (a secret).
    pub access_token: String,
    /// The refresh token, if the server issued one (a secret).
    pub refresh_token: Option<String>,
    /// Set after a soft logout: the next start logs in again with the password, same device.
    #[serde(default)]
    pub needs_relogin: bool,
}

impl fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSession")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("needs_relogin", &self.needs_relogin)
            .finish()
    }
}

/// Where an inbox entry stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InboxState {
    /// Claimed, not yet answered.
    Pending,
    /// Answered with this event.
    Answered {
        /// The reply's event id.
        reply_event_id: String,
    },
    /// Deliberately not answered.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Given up on: every attempt failed (the last one's reason).
    Failed {
        /// Why the last attempt failed.
        reason: String,
    },
}

/// An encrypted event that could not be decrypted yet, kept so it is tried again after a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUndecryptable {
    /// Its room.
    pub room_id: String,
    /// The event as the homeserver sent it (JSON).
    pub event: String,
    /// When the bot first saw it (ms since the epoch).
    pub first_seen_ms: u64,
}

/// One inbound event claimed for handling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry<T> {
    /// The Matrix event id.
    pub event_id: String,
    /// When the entry was claimed (ms since the Unix epoch).
    pub claimed_at_ms: u64,
    /// The account's claim counter when it was claimed: pending entries are handled again in
    /// this order (arrival), not in the order of their keys. Set by the store.
    #[serde(default)]
    pub seq: u64,
    /// How many times handling it began (counted before each attempt, so a message that
    /// crashes the process is counted too).
    #[serde(default)]
    pub attempts: u32,
    /// When the bot first saw the event, if that differs from when it was claimed (a message
    /// that could only be decrypted later): its catch-up age counts from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at_ms: Option<u64>,
    /// Where it stands.
    pub state: InboxState,
    /// The normalised message.
    pub message: T,
}

/// The outbox record of an answer being sent: kept beside each first send attempt (with the
/// transaction id; not synced to disk), saved before each edit attempt and after each send or
/// edit, removed when the answer is finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// The room the answer goes to.
    pub room_id: String,
    /// The answer's messages, in order (long answers have several).
    pub parts: Vec<DraftPart>,
}

/// One message of an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftPart {
    /// The transaction id of the original send.
    pub txn_id: String,
    /// The event id, once the homeserver accepted the send.
    pub event_id: Option<String>,
    /// The text the message shows now.
    pub shown: String,
    /// Edits sent so far.
    pub edits: u32,
    /// The number of the last edit attempt's transaction id (`…e<n>`): an attempt with other
    /// text takes the next number, so a lost answer to an earlier attempt never swallows it.
    #[serde(default)]
    pub edit_seq: u32,
    /// A fingerprint of the text of that attempt (a retry of the same text reuses its id).
    #[serde(default)]
    pub edit_text: u64,
    /// The text of the latest send or edit attempt, saved before it: it may have landed even
    /// if its answer never came back, so an interrupted answer is finished with it.
    #[serde(default)]
    pub attempted: String,
    /// An earlier try of the first send had other text (or an earlier attempt at the answer
    /// left no draft to say what it sent) and may be what landed: once the send is confirmed,
    /// the message is read back and edited to the text it should show if it shows other text.
    #[serde(default)]
    pub may_show_older: bool,
}

/// One remembered turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    /// Who said it (sanitised display name), for user turns.
    pub name: Option<String>,
    /// What was said.
    pub text: String,
    /// The event id of the message (the first part, for answers).
    pub event_id: String,
    /// When (ms since the Unix epoch).
    pub ts_ms: u64,
}

/// The memory of one conversation (a room's main timeline or a thread).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// `!new` was said at this time: nothing older belongs to the conversation.
    pub reset_at_ms: u64,
    /// The most recent turns, oldest first.
    pub turns: Vec<Turn>,
}

/// A one-time-code challenge of an unknown DM sender. The code is a secret: it is shown to the
/// operator only (CLI, admin API), never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpChallenge {
    /// The six digits.
    pub code: String,
    /// The DM the challenge was issued in.
    pub room_id: String,
    /// When it was issued (ms since the Unix epoch).
    pub issued_ms: u64,
    /// When it stops being valid.
    pub expires_ms: u64,
    /// Wrong codes since the challenge was issued or the last lockout ended.
    pub attempts: u32,
    /// Locked out until then after too many wrong codes.
    pub locked_until_ms: Option<u64>,
}

impl fmt::Debug for OtpChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtpChallenge")
            .field("code", &"[redacted]")
            .field("room_id", &self.room_id)
            .field("issued_ms", &self.issued_ms)
            .field("expires_ms", &self.expires_ms)
            .field("attempts", &self.attempts)
            .field("locked_until_ms", &self.locked_until_ms)
            .finish()
    }
}
