//! Normalising sync timeline events into [`InboundMessage`]s.
//!
//! Everything past this module sees only `InboundMessage`, never a raw matrix-sdk type. Events
//! that are not for the bot (its own, notices, edits, state) are `Ignored`; events that do not
//! parse are `Malformed` and get logged and skipped by the caller.

use matrix_sdk::{
    deserialized_responses::{TimelineEvent, TimelineEventKind},
    ruma::{
        EventId, OwnedEventId, OwnedUserId, RoomId, UserId,
        events::{
            AnySyncMessageLikeEvent, AnySyncTimelineEvent, MessageLikeEventContent,
            OriginalSyncMessageLikeEvent, SyncMessageLikeEvent,
            room::{
                MediaSource,
                message::{MessageFormat, MessageType, Relation},
            },
        },
    },
};
use mxfleet_message::{
    Attachment, InboundMessage, MAX_INBOUND_BODY_BYTES, Media, MentionList, UNSEEN, Undecryptable,
    truncate_at_char_boundary,
};

/// What a timeline event turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalised {
    /// A message to handle.
    Message(InboundMessage),
    /// An encrypted event that could not be decrypted.
    Undecryptable(Undecryptable),
    /// Not for the bot; the reason is for debug logs.
    Ignored(&'static str),
    /// The event could not be read.
    Malformed {
        /// The event id, if even that could be read.
        event_id: Option<String>,
        /// What was wrong.
        reason: String,
    },
}

/// Normalises one timeline event of `room_id` as seen by `own_user`.
pub fn normalise(room_id: &RoomId, event: &TimelineEvent, own_user: &UserId) -> Normalised {
    if let TimelineEventKind::UnableToDecrypt {
        event: raw,
        utd_info,
    } = &event.kind
    {
        let field = |name: &str| raw.get_field::<String>(name).ok().flatten();
        let event_id = raw.get_field::<OwnedEventId>("event_id").ok().flatten();
        let sender = raw.get_field::<OwnedUserId>("sender").ok().flatten();
        let (Some(event_id), Some(sender)) = (event_id, sender) else {
            return Normalised::Malformed {
                event_id: field("event_id"),
                reason: "undecryptable event without a valid event id or sender".into(),
            };
        };
        if sender == own_user {
            return Normalised::Ignored("own undecryptable message");
        }
        return Normalised::Undecryptable(Undecryptable {
            room_id: room_id.to_owned(),
            event_id,
            sender,
            session_id: utd_info.session_id.clone(),
            reason: format!("{:?}", utd_info.reason),
        });
    }
    let raw = event.raw();
    let parsed = match raw.deserialize() {
        Ok(parsed) => parsed,
        Err(e) => {
            let event_id = raw.get_field::<String>("event_id").ok().flatten();
            return Normalised::Malformed {
                event_id,
                reason: e.to_string(),
            };
        }
    };
    let message = match parsed {
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(message)) => message,
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::UnstablePollResponse(
            SyncMessageLikeEvent::Original(vote),
        )) => {
            let (poll, answers) = (
                &vote.content.relates_to.event_id,
                &vote.content.poll_response.answers,
            );
            return poll_vote(room_id, own_user, &vote, poll, answers.clone());
        }
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::PollResponse(
            SyncMessageLikeEvent::Original(vote),
        )) => {
            let answers = vote.content.selections.iter().cloned().collect();
            return poll_vote(
                room_id,
                own_user,
                &vote,
                &vote.content.relates_to.event_id,
                answers,
            );
        }
        _ => return Normalised::Ignored("not a room message"),
    };
    let SyncMessageLikeEvent::Original(message) = message else {
        return Normalised::Ignored("redacted");
    };
    if message.sender == own_user {
        return Normalised::Ignored("own message");
    }
    let (thread_root, reply_to) = match &message.content.relates_to {
        Some(Relation::Replacement(_)) => return Normalised::Ignored("edit"),
        Some(Relation::Thread(thread)) => (
            Some(thread.event_id.clone()),
            thread
                .in_reply_to
                .as_ref()
                .filter(|_| !thread.is_falling_back)
                .map(|r| r.event_id.clone()),
        ),
        Some(Relation::Reply(reply)) => (None, Some(reply.in_reply_to.event_id.clone())),
        _ => (None, None),
    };
    let media =
        |source: &MediaSource, name: &str, mimetype: Option<&String>, size: Option<u64>| Media {
            source: serde_json::to_value(source).unwrap_or_default(),
            mimetype: mimetype.cloned(),
            size,
            name: name.to_owned(),
        };
    // The fields every media message type has, each under its own info type.
    macro_rules! media_of {
        ($m:expr) => {{
            let info = $m.info.as_deref();
            media(
                &$m.source,
                $m.filename.as_deref().unwrap_or(&$m.body),
                info.and_then(|i| i.mimetype.as_ref()),
                info.and_then(|i| i.size).map(u64::from),
            )
        }};
    }
    let (body, formatted_body, attachment) = match &message.content.msgtype {
        MessageType::Text(text) => (
            text.body.clone(),
            text.formatted
                .as_ref()
                .filter(|f| f.format == MessageFormat::Html)
                .map(|f| f.body.clone()),
            None,
        ),
        MessageType::Emote(emote) => (format!("/me {}", emote.body), None, None),
        MessageType::Notice(_) => return Normalised::Ignored("notice"),
        MessageType::Audio(audio) => {
            let media = media_of!(audio);
            (audio.body.clone(), None, Some(Attachment::Audio(media)))
        }
        MessageType::Location(location) => (
            format!(
                "📍 shared a location: {} ({})",
                location.body, location.geo_uri
            ),
            None,
            Some(Attachment::Location {
                geo_uri: location.geo_uri.clone(),
            }),
        ),
        MessageType::Image(image) => {
            let media = media_of!(image);
            let text = describe_file("an image", &media, image.caption());
            (text, None, Some(Attachment::File(media)))
        }
        MessageType::Video(video) => {
            let media = media_of!(video);
            let text = describe_file("a video", &media, video.caption());
            (text, None, Some(Attachment::File(media)))
        }
        MessageType::File(file) => {
            let media = media_of!(file);
            let text = describe_file("a file", &media, file.caption());
            (text, None, Some(Attachment::File(media)))
        }
        _ => return Normalised::Ignored("unsupported message type"),
    };
    let mentions = message.content.mentions.as_ref().map(|m| MentionList {
        user_ids: m.user_ids.iter().cloned().collect(),
        room: m.room,
    });
    Normalised::Message(InboundMessage {
        room_id: room_id.to_owned(),
        event_id: message.event_id.clone(),
        sender: message.sender.clone(),
        body: truncate_at_char_boundary(&body, MAX_INBOUND_BODY_BYTES).to_owned(),
        origin_server_ts_ms: message.origin_server_ts.get().into(),
        thread_root,
        formatted_body: formatted_body
            .map(|html| truncate_at_char_boundary(&html, MAX_INBOUND_BODY_BYTES).to_owned()),
        mentions,
        reply_to,
        attachment,
    })
}

/// A vote on a poll, as a message to resolve against the poll's answers.
fn poll_vote<C: MessageLikeEventContent>(
    room_id: &RoomId,
    own_user: &UserId,
    vote: &OriginalSyncMessageLikeEvent<C>,
    poll_id: &EventId,
    answers: Vec<String>,
) -> Normalised {
    if vote.sender == own_user {
        return Normalised::Ignored("own vote");
    }
    Normalised::Message(InboundMessage {
        room_id: room_id.to_owned(),
        event_id: vote.event_id.clone(),
        sender: vote.sender.clone(),
        body: String::new(),
        origin_server_ts_ms: vote.origin_server_ts.get().into(),
        thread_root: None,
        formatted_body: None,
        mentions: None,
        reply_to: Some(poll_id.to_owned()),
        attachment: Some(Attachment::PollResponse {
            poll_id: poll_id.to_owned(),
            answers,
        }),
    })
}

/// The text a backend gets for an image, video or file it cannot see: what it is, and the
/// caption the sender wrote, if any.
fn describe_file(what: &str, media: &Media, caption: Option<&str>) -> String {
    let mut text = format!("[sent {what}: {}", media.name);
    if let Some(mimetype) = &media.mimetype {
        text.push_str(&format!(", {mimetype}"));
    }
    if let Some(size) = media.size {
        text.push_str(&format!(", {size} bytes"));
    }
    text.push_str(UNSEEN);
    if let Some(caption) = caption {
        text.push('\n');
        text.push_str(caption);
    }
    text
}

#[cfg(test)]
mod tests {
    use matrix_sdk::ruma::{owned_room_id, owned_user_id, serde::Raw};
    use serde_json::json;

    use super::*;

    fn event(value: serde_json::Value) -> TimelineEvent {
        let raw: Raw<AnySyncTimelineEvent> = Raw::from_json(
            serde_json::value::to_raw_value(&value).unwrap_or_else(|_| unreachable_raw()),
        );
        TimelineEvent::from_plaintext(raw)
    }

    fn unreachable_raw() -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string("{}".into()).unwrap_or_default()
    }

    fn message(sender: &str, content: serde_json::Value) -> TimelineEvent {
        event(json!({
            "type": "m.room.message", "event_id": "$e1", "sender": sender,
            "origin_server_ts": 1_700_000_000_000u64, "content": content,
        }))
    }

    #[test]
    fn text_messages_become_inbound_messages() {
        let room = owned_room_id!("!r:localhost");
        let me = owned_user_id!("@bot:localhost");
        let got = normalise(
            &room,
            &message("@u:localhost", json!({"msgtype": "m.text", "body": "hi"})),
            &me,
        );
        let Normalised::Message(m) = got else {
            panic!("expected a message, got {got:?}")
        };
        assert_eq!(
            (m.body.as_str(), m.sender.as_str(), m.event_id.as_str()),
            ("hi", "@u:localhost", "$e1")
        );
        assert_eq!(m.origin_server_ts_ms, 1_700_000_000_000);
        assert_eq!(m.thread_root, None);
    }

    #[test]
    fn voice_locations_files_and_emotes_become_messages_with_their_attachment() {
        let room = owned_room_id!("!r:localhost");
        let me = owned_user_id!("@bot:localhost");
        let got = |content: serde_json::Value| match normalise(
            &room,
            &message("@u:localhost", content),
            &me,
        ) {
            Normalised::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        };
        let voice = got(
            json!({"msgtype": "m.audio", "body": "Voice message", "filename": "v.ogg",
            "url": "mxc://hs/abc", "info": {"mimetype": "audio/ogg", "size": 1234}}),
        );
        let Some(Attachment::Audio(media)) = &voice.attachment else {
            panic!("no audio: {voice:?}")
        };
        assert_eq!(
            (media.name.as_str(), media.mimetype.as_deref(), media.size),
            ("v.ogg", Some("audio/ogg"), Some(1234))
        );
        assert_eq!(media.source, json!({"url": "mxc://hs/abc"}));
        let place =
            got(json!({"msgtype": "m.location", "body": "Big Ben", "geo_uri": "geo:51.5,-0.12"}));
        assert_eq!(place.body, "📍 shared a location: Big Ben (geo:51.5,-0.12)");
        assert_eq!(
            place.attachment,
            Some(Attachment::Location {
                geo_uri: "geo:51.5,-0.12".into()
            })
        );
        let image = got(
            json!({"msgtype": "m.image", "body": "a cat", "filename": "cat.png",
            "url": "mxc://hs/cat", "info": {"mimetype": "image/png", "size": 99}}),
        );
        assert_eq!(
            image.body,
            "[sent an image: cat.png, image/png, 99 bytes; you cannot see its content]\na cat"
        );
        let emote = got(json!({"msgtype": "m.emote", "body": "waves"}));
        assert_eq!((emote.body.as_str(), emote.attachment), ("/me waves", None));
        // Inbox entries round-trip through JSON with their attachment.
        let json = serde_json::to_string(&voice).unwrap_or_default();
        assert_eq!(
            serde_json::from_str::<InboundMessage>(&json).ok(),
            Some(voice)
        );
    }

    #[test]
    fn own_notices_edits_and_state_are_ignored() {
        let room = owned_room_id!("!r:localhost");
        let me = owned_user_id!("@bot:localhost");
        let text = json!({"msgtype": "m.text", "body": "hi"});
        assert_eq!(
            normalise(&room, &message("@bot:localhost", text.clone()), &me),
            Normalised::Ignored("own message")
        );
        let notice = json!({"msgtype": "m.notice", "body": "hi"});
        assert_eq!(
            normalise(&room, &message("@u:localhost", notice), &me),
            Normalised::Ignored("notice")
        );
        let edit = json!({"msgtype": "m.text", "body": "* hi", "m.new_content": {"msgtype": "m.text", "body": "hi"},
                          "m.relates_to": {"rel_type": "m.replace", "event_id": "$e0"}});
        assert_eq!(
            normalise(&room, &message("@u:localhost", edit), &me),
            Normalised::Ignored("edit")
        );
        let state = event(
            json!({"type": "m.room.name", "event_id": "$s", "sender": "@u:localhost",
                                 "origin_server_ts": 1, "state_key": "", "content": {"name": "x"}}),
        );
        assert_eq!(
            normalise(&room, &state, &me),
            Normalised::Ignored("not a room message")
        );
    }

    #[test]
    fn malformed_events_are_reported_not_panicked_on() {
        let room = owned_room_id!("!r:localhost");
        let me = owned_user_id!("@bot:localhost");
        let broken = event(
            json!({"type": "m.room.message", "event_id": "$bad", "sender": 42, "content": {}}),
        );
        assert!(
            matches!(normalise(&room, &broken, &me), Normalised::Malformed { event_id: Some(id), .. } if id == "$bad")
        );
    }

    #[test]
    fn threads_are_kept_and_huge_bodies_cut_on_a_char_boundary() {
        let room = owned_room_id!("!r:localhost");
        let me = owned_user_id!("@bot:localhost");
        let body = "é".repeat(MAX_INBOUND_BODY_BYTES);
        let threaded = json!({"msgtype": "m.text", "body": body,
                              "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}});
        let Normalised::Message(m) = normalise(&room, &message("@u:localhost", threaded), &me)
        else {
            panic!("expected a message")
        };
        assert_eq!(m.thread_root.as_ref().map(|r| r.as_str()), Some("$root"));
        assert!(m.body.len() <= MAX_INBOUND_BODY_BYTES && m.body.chars().all(|c| c == 'é'));
    }
}
