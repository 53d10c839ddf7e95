//! Sending replies: split to a safe event size, each part with a stable transaction id.
//!
//! Synapse deduplicates sends by (device, transaction id), so a reply re-sent after a crash with
//! the same transaction id lands once. The transaction id is derived from the event being
//! answered, so there is nothing to persist before sending.

use matrix_sdk::{
    Room,
    ruma::{OwnedEventId, OwnedTransactionId, events::room::message::RoomMessageEventContent},
};

use crate::{MatrixFailure, inbound::truncate_at_char_boundary};

/// A reply longer than this is split; Matrix events are capped at 64 KiB including envelope.
pub const MAX_REPLY_PART_BYTES: usize = 30 * 1024;

/// The transaction id of part `part` of the reply to `event_id`.
pub fn reply_transaction_id(event_id: &str, part: usize) -> OwnedTransactionId {
    let safe: String = event_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("mxfleet.{safe}.{part}").into()
}

/// Sends `text` to `room` as the reply to `event_id`; returns the id of the last part.
pub async fn send_reply(
    room: &Room,
    event_id: &str,
    text: &str,
) -> Result<OwnedEventId, MatrixFailure> {
    let mut last = None;
    for (part, chunk) in split_reply(text, MAX_REPLY_PART_BYTES)
        .into_iter()
        .enumerate()
    {
        let content = RoomMessageEventContent::text_plain(chunk);
        let response = room
            .send(content)
            .with_transaction_id(reply_transaction_id(event_id, part))
            .await
            .map_err(|e| MatrixFailure::from_sdk("sending the reply", &e))?;
        last = Some(response.response.event_id);
    }
    last.ok_or_else(|| MatrixFailure::new(crate::FailureClass::Fatal, "empty reply"))
}

/// Splits `text` into parts of at most `max` bytes, preferring line breaks, then spaces.
pub fn split_reply(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let window = truncate_at_char_boundary(rest, max);
        let cut = window
            .rfind('\n')
            .or_else(|| window.rfind(' '))
            .filter(|&i| i > max / 2)
            .map_or(window.len(), |i| i + 1);
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_keep_every_byte_and_respect_the_limit() {
        let text = format!("{}\n{}", "word ".repeat(50), "é".repeat(100));
        for max in [7, 16, 64, 1000] {
            let parts = split_reply(&text, max);
            assert_eq!(parts.concat(), text);
            assert!(parts.iter().all(|p| p.len() <= max && !p.is_empty()));
        }
        assert_eq!(split_reply("short", 100), ["short"]);
    }

    #[test]
    fn transaction_ids_are_stable_and_path_safe() {
        let a = reply_transaction_id("$abc/def+g:h", 0);
        assert_eq!(a.as_str(), "mxfleet._abc_def_g_h.0");
        assert_eq!(reply_transaction_id("$abc/def+g:h", 0), a);
        assert_ne!(reply_transaction_id("$abc/def+g:h", 1), a);
    }
}
