//! Sending answers: message contents with their relations, edits, reactions and redactions,
//! each sent with a stable transaction id.
//!
//! Synapse deduplicates sends by (device, transaction id), so anything re-sent after a crash
//! with the same transaction id lands once. Transaction ids are derived from the event being
//! answered (`mxfleet.<event>.<part>`, `…e<n>` for edits, `…ack` for the reaction).

use std::time::Duration;

use matrix_sdk::{
    Room,
    config::RequestConfig,
    ruma::{
        EventId, OwnedEventId, OwnedTransactionId,
        events::{
            AnyMessageLikeEventContent,
            reaction::ReactionEventContent,
            relation::{Annotation, InReplyTo, Thread},
            room::message::{
                Relation, ReplacementMetadata, RoomMessageEventContent,
                RoomMessageEventContentWithoutRelation,
            },
        },
    },
};

use crate::{MatrixFailure, format::Formatted};

/// Where an answer hangs: nowhere, as a rich reply, or in a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A plain message in the room.
    Plain,
    /// A rich reply to this event.
    ReplyTo(OwnedEventId),
    /// In the thread of `root`, after `latest`; `rich` makes it a visible reply to `latest`.
    Thread {
        /// The thread root.
        root: OwnedEventId,
        /// The message being answered.
        latest: OwnedEventId,
        /// Whether to show it as a reply to `latest`.
        rich: bool,
    },
}

/// The transaction id `mxfleet.<event_id>.<suffix>` (path-safe).
pub fn transaction_id(event_id: &str, suffix: &str) -> OwnedTransactionId {
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
    format!("mxfleet.{safe}.{suffix}").into()
}

/// A new message showing `text`, placed as `placement`.
pub fn message_content(text: &Formatted, placement: &Placement) -> RoomMessageEventContent {
    placed(plain_or_html(text), placement)
}

/// A location message (`m.location`) at `geo_uri`, placed as `placement`.
pub fn location_content(
    description: &str,
    geo_uri: &str,
    placement: &Placement,
) -> RoomMessageEventContent {
    let location = matrix_sdk::ruma::events::room::message::LocationMessageEventContent::new(
        description.to_owned(),
        geo_uri.to_owned(),
    );
    placed(
        RoomMessageEventContent::new(
            matrix_sdk::ruma::events::room::message::MessageType::Location(location),
        ),
        placement,
    )
}

/// `content` with the relation `placement` asks for.
fn placed(mut content: RoomMessageEventContent, placement: &Placement) -> RoomMessageEventContent {
    content.relates_to = match placement {
        Placement::Plain => None,
        Placement::ReplyTo(id) => Some(Relation::Reply(
            matrix_sdk::ruma::events::relation::Reply::new(InReplyTo::new(id.clone())),
        )),
        Placement::Thread { root, latest, rich } => Some(Relation::Thread(if *rich {
            Thread::reply(root.clone(), latest.clone())
        } else {
            Thread::plain(root.clone(), latest.clone())
        })),
    };
    content
}

/// An edit (`m.replace`) of `original` to show `text`.
pub fn edit_content(original: &EventId, text: &Formatted) -> RoomMessageEventContent {
    let new = match &text.html {
        Some(html) => RoomMessageEventContentWithoutRelation::text_html(&text.body, html),
        None => RoomMessageEventContentWithoutRelation::text_plain(&text.body),
    };
    new.make_replacement(ReplacementMetadata::new(original.to_owned(), None))
}

/// Sends `content` with `txn_id`; returns the event id. matrix-sdk retries 429s and server
/// errors itself (see `SDK_RETRY_LIMIT`).
pub async fn send_content(
    room: &Room,
    content: impl Into<AnyMessageLikeEventContent>,
    txn_id: OwnedTransactionId,
    what: &str,
) -> Result<OwnedEventId, MatrixFailure> {
    send(room, content.into(), txn_id, what, None).await
}

/// Sends `content` once, without matrix-sdk's retries: a 429 comes back as
/// [`crate::FailureClass::RateLimited`] at once, so a streaming caller can keep collecting text
/// and decide when to try again.
pub async fn send_content_once(
    room: &Room,
    content: impl Into<AnyMessageLikeEventContent>,
    txn_id: OwnedTransactionId,
    what: &str,
) -> Result<OwnedEventId, MatrixFailure> {
    let config = RequestConfig::new()
        .timeout(Duration::from_secs(30))
        .disable_retry();
    send(room, content.into(), txn_id, what, Some(config)).await
}

async fn send(
    room: &Room,
    content: AnyMessageLikeEventContent,
    txn_id: OwnedTransactionId,
    what: &str,
    config: Option<RequestConfig>,
) -> Result<OwnedEventId, MatrixFailure> {
    ensure_can_send(room, true, what).await?;
    let mut request = room.send(content).with_transaction_id(txn_id);
    if let Some(config) = config {
        request = request.with_request_config(config);
    }
    request
        .await
        .map(|r| r.response.event_id)
        .map_err(|e| MatrixFailure::from_sdk(what, &e))
}

/// The plain `body` of `event_id` in `room` as it was sent (decrypted if need be, edits not
/// applied), if it has one: what a send that returned an earlier event with the same
/// transaction id shows.
pub async fn event_body(room: &Room, event_id: &EventId) -> Result<Option<String>, MatrixFailure> {
    /// The one field of a message's content read here.
    #[derive(serde::Deserialize)]
    struct Body {
        body: Option<String>,
    }
    let event = room
        .event(event_id, None)
        .await
        .map_err(|e| MatrixFailure::from_sdk("reading a sent message", &e))?;
    let content = event.raw().get_field::<Body>("content").ok().flatten();
    Ok(content.and_then(|c| c.body))
}

/// A reaction to `event_id` with `key`.
pub fn reaction_content(event_id: &EventId, key: &str) -> ReactionEventContent {
    ReactionEventContent::new(Annotation::new(event_id.to_owned(), key.to_owned()))
}

/// Redacts one of the bot's own events (e.g. the ack reaction).
pub async fn redact(
    room: &Room,
    event_id: &EventId,
    txn_id: OwnedTransactionId,
) -> Result<(), MatrixFailure> {
    room.redact(event_id, None, Some(txn_id))
        .await
        .map(|_| ())
        .map_err(|e| MatrixFailure::from_http("redacting", &e))
}

/// Fails unless this client can encrypt for `room` when it is encrypted. matrix-sdk encrypts on
/// its own; this check (the room's current encryption state, fetched if unknown, and an Olm
/// machine on our side) makes sure no answer, error or notice goes out in plaintext if either
/// is missing. `own_keys = false` (an access-token account, whose device keys are not ours)
/// refuses every encrypted room: what it would send could not be trusted or decrypted.
pub async fn ensure_can_send(room: &Room, own_keys: bool, what: &str) -> Result<(), MatrixFailure> {
    let state = room.latest_encryption_state().await.map_err(|e| {
        MatrixFailure::from_sdk(&format!("{what}: reading the room's encryption"), &e)
    })?;
    if !state.is_encrypted() {
        return Ok(());
    }
    if !own_keys || room.client().encryption().ed25519_key().await.is_none() {
        return Err(MatrixFailure::new(
            crate::FailureClass::Fatal,
            format!("{what}: refused, the room is encrypted and this account cannot encrypt"),
        ));
    }
    Ok(())
}

fn plain_or_html(text: &Formatted) -> RoomMessageEventContent {
    match &text.html {
        Some(html) => RoomMessageEventContent::text_html(&text.body, html),
        None => RoomMessageEventContent::text_plain(&text.body),
    }
}

#[cfg(test)]
mod tests {
    use matrix_sdk::ruma::{event_id, serde::Raw};

    use super::*;
    use crate::format::render_markdown;

    #[test]
    fn transaction_ids_are_stable_and_path_safe() {
        let a = transaction_id("$abc/def+g:h", "0");
        assert_eq!(a.as_str(), "mxfleet._abc_def_g_h.0");
        assert_eq!(transaction_id("$abc/def+g:h", "0"), a);
        assert_ne!(transaction_id("$abc/def+g:h", "0.e1"), a);
    }

    #[test]
    fn edits_carry_the_new_content_and_threads_their_relation() -> Result<(), serde_json::Error> {
        let edit = edit_content(event_id!("$orig"), &render_markdown("**done**"));
        let json = Raw::new(&edit)?.deserialize_as::<serde_json::Value>()?;
        assert_eq!(json["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(json["m.relates_to"]["event_id"], "$orig");
        assert_eq!(json["m.new_content"]["body"], "**done**");
        assert_eq!(
            json["m.new_content"]["formatted_body"],
            "<p><strong>done</strong></p>"
        );

        let placement = Placement::Thread {
            root: event_id!("$root").to_owned(),
            latest: event_id!("$q").to_owned(),
            rich: false,
        };
        let msg = message_content(&render_markdown("hi"), &placement);
        let json = Raw::new(&msg)?.deserialize_as::<serde_json::Value>()?;
        assert_eq!(json["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(json["m.relates_to"]["event_id"], "$root");
        assert_eq!(json["m.relates_to"]["m.in_reply_to"]["event_id"], "$q");
        assert_eq!(json["m.relates_to"]["is_falling_back"], true);
        Ok(())
    }
}
