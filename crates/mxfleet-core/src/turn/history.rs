//! The conversation a backend sees: the remembered turns of the room or thread, merged with
//! its recent history on the homeserver (messages the bot was not asked about, other people's
//! words), after the last `!new`, oldest first, ending with the message being answered.

use std::collections::HashMap;

use mxfleet_backend::{ChatMessage, Role};
use mxfleet_matrix::matrix_sdk::ruma::OwnedUserId;
use mxfleet_message::InboundMessage;
use mxfleet_store::{Memory, Turn};
use tracing::warn;

use super::{context::TurnContext, room::RoomPort};
use crate::gate;

/// The conversation for the backend about `message`, in memory under `key`.
pub(crate) async fn conversation<R: RoomPort>(
    ctx: &TurnContext,
    room: &R,
    message: &InboundMessage,
    key: &str,
    is_dm: bool,
) -> Vec<ChatMessage> {
    let limit = ctx.spec.conversation.history_max_messages;
    let memory = ctx
        .store
        .memory(&ctx.account, key)
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "could not read the conversation memory");
            Memory::default()
        });
    let mut heard = Vec::new();
    // One member lookup (a state store read) per sender, not per message.
    let mut names: HashMap<OwnedUserId, String> = HashMap::new();
    if limit > 0 {
        let recent = room
            .recent_messages(message.thread_root.as_deref(), limit)
            .await;
        for m in recent
            .into_iter()
            .filter(|m| in_scope(m, message) && !ctx.board.is_fleet_user(m.sender.as_str()))
        {
            let name = speaker_of(room, &m, &mut names).await;
            heard.push(turn_of(&m, name));
        }
    }
    let current = turn_of(message, speaker_of(room, message, &mut names).await);
    merge(memory, heard, current, limit)
        .into_iter()
        .map(|t| chat_message(t, is_dm))
        .collect()
}

/// The turn `message` is, said by `name`.
pub(crate) fn turn_of(message: &InboundMessage, name: String) -> Turn {
    Turn {
        role: "user".into(),
        name: Some(name),
        text: message.body.clone(),
        event_id: message.event_id.to_string(),
        ts_ms: message.origin_server_ts_ms,
    }
}

/// `message`'s sender's name, safe for a prompt, looked up once per sender in `names`.
async fn speaker_of<R: RoomPort>(
    room: &R,
    message: &InboundMessage,
    names: &mut HashMap<OwnedUserId, String>,
) -> String {
    if let Some(name) = names.get(&message.sender) {
        return name.clone();
    }
    let name = speaker(room, message).await;
    names.insert(message.sender.clone(), name.clone());
    name
}

/// `message`'s sender's name, safe for a prompt.
pub(crate) async fn speaker<R: RoomPort>(room: &R, message: &InboundMessage) -> String {
    let name = room.member_name(&message.sender).await;
    gate::sanitize_display_name(name.as_deref(), &message.sender)
}

/// The remembered turns plus the `heard` ones not remembered, after the last reset and before
/// `current`, oldest first, at most `limit` of them, then `current`.
fn merge(memory: Memory, heard: Vec<Turn>, current: Turn, limit: usize) -> Vec<Turn> {
    let mut turns = memory.turns;
    for turn in heard {
        if !turns.iter().any(|t| t.event_id == turn.event_id) {
            turns.push(turn);
        }
    }
    turns.retain(|t| {
        t.ts_ms > memory.reset_at_ms && t.ts_ms <= current.ts_ms && t.event_id != current.event_id
    });
    turns.sort_by_key(|t| t.ts_ms);
    let excess = turns.len().saturating_sub(limit);
    turns.drain(..excess);
    turns.push(current);
    turns
}

/// Whether `other` belongs to the conversation of `message`: in a thread, the thread's
/// messages; in the main timeline, no thread's.
fn in_scope(other: &InboundMessage, message: &InboundMessage) -> bool {
    message.thread_root.is_some() || other.thread_root.is_none()
}

/// A turn as the backend gets it. In a DM there is one speaker; in a group room the backend
/// needs to know who said what.
fn chat_message(turn: Turn, is_dm: bool) -> ChatMessage {
    let role = if turn.role == "assistant" {
        Role::Assistant
    } else {
        Role::User
    };
    let name = turn.name.filter(|_| role == Role::User && !is_dm);
    ChatMessage {
        role,
        content: turn.text,
        name,
        images: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: &str, text: &str, id: &str, ts_ms: u64) -> Turn {
        Turn {
            role: role.into(),
            name: (role == "user").then(|| "Ann".to_owned()),
            text: text.into(),
            event_id: id.into(),
            ts_ms,
        }
    }

    #[test]
    fn memory_and_history_merge_in_time_order_without_doubles() {
        let memory = Memory {
            turns: vec![
                turn("user", "q1", "$q1", 10),
                turn("assistant", "a1", "$a1", 11),
            ],
            reset_at_ms: 0,
        };
        let heard = vec![
            turn("user", "q1", "$q1", 10),
            turn("user", "aside", "$x", 12),
            turn("user", "later", "$late", 99),
        ];
        let merged = merge(memory, heard, turn("user", "now", "$now", 20), 10);
        let texts: Vec<&str> = merged.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            texts,
            ["q1", "a1", "aside", "now"],
            "the later one is not seen"
        );
    }

    #[test]
    fn a_reset_and_the_limit_cut_the_oldest_turns() {
        let memory = Memory {
            turns: (1..=6)
                .map(|i| turn("user", &format!("m{i}"), &format!("$m{i}"), i))
                .collect(),
            reset_at_ms: 2,
        };
        let merged = merge(memory, Vec::new(), turn("user", "now", "$now", 20), 3);
        let texts: Vec<&str> = merged.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["m4", "m5", "m6", "now"]);
        let none = merge(
            Memory::default(),
            Vec::new(),
            turn("user", "hi", "$h", 1),
            0,
        );
        assert_eq!(none.len(), 1, "the message itself is always there");
    }

    #[test]
    fn names_go_to_the_backend_in_group_rooms_only() {
        let user = turn("user", "hi", "$h", 1);
        let bot = turn("assistant", "hello", "$b", 2);
        assert_eq!(
            chat_message(user.clone(), false).name.as_deref(),
            Some("Ann")
        );
        assert_eq!(chat_message(user, true).name, None);
        let answer = chat_message(bot, false);
        assert_eq!((answer.role, answer.name), (Role::Assistant, None));
    }
}
