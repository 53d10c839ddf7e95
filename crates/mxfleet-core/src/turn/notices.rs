//! Notices about messages the bot could not decrypt: counted, and said in the room at most once
//! per room and Megolm session within `utd_notice_cooldown_secs` (once per room for an
//! access-token account, which can never decrypt). The room is never left over it; the sync
//! retries decryption when keys arrive.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use mxfleet_matrix::{
    matrix_sdk::ruma::{OwnedRoomId, events::room::message::RoomMessageEventContent},
    transaction_id,
};
use mxfleet_message::Undecryptable;
use tracing::{Instrument, debug, info_span, warn};

use super::{
    context::TurnContext,
    room::{Attempts, MatrixRoom, RoomPort},
};
use crate::{
    gate::{self, Me},
    texts,
};

/// When the last notice went out, per (room, Megolm session).
#[derive(Default)]
pub(crate) struct UtdNotices {
    sent: HashMap<(OwnedRoomId, String), Instant>,
}

impl UtdNotices {
    /// Counts `utd` and, unless a notice for its room and session is recent, posts one.
    pub(crate) fn report(&mut self, ctx: &Arc<TurnContext>, utd: Undecryptable) {
        ctx.board.update(&ctx.account, |s| s.undecryptable += 1);
        if ctx.board.is_fleet_user(utd.sender.as_str()) {
            return;
        }
        let session = match (ctx.owns_keys(), &utd.session_id) {
            (false, _) => String::new(),
            (true, Some(session)) => session.clone(),
            (true, None) => utd.sender.to_string(),
        };
        let key = (utd.room_id.clone(), session);
        let cooldown = Duration::from_secs(ctx.spec.conversation.utd_notice_cooldown_secs);
        let now = Instant::now();
        if self
            .sent
            .get(&key)
            .is_some_and(|last| now.duration_since(*last) < cooldown)
        {
            return;
        }
        self.sent.insert(key, now);
        let span = info_span!(parent: None, "undecryptable", account = %ctx.account, room = %utd.room_id, event_id = %utd.event_id);
        let ctx = ctx.clone();
        tokio::spawn(async move { post(&ctx, utd).await }.instrument(span));
    }
}

/// Posts the notice about `utd`, where the bot talks with its sender.
async fn post(ctx: &TurnContext, utd: Undecryptable) {
    let Some(room) = ctx.rooms.get(&utd.room_id) else {
        return;
    };
    let facts = ctx.rooms.facts(&room).await;
    let me = Me {
        user_id: ctx.user_id.clone(),
        display_name: None,
    };
    let conv = &ctx.spec.conversation;
    if !gate::may_talk(conv, &ctx.access, &facts, &me, &utd.sender) {
        return debug!("no notice: the bot does not talk with this sender here");
    }
    let who = ctx.rooms.speaker_name(&room, &utd.sender).await;
    let room = MatrixRoom::new(room, ctx.rooms.clone());
    let text = if ctx.owns_keys() {
        let device = ctx
            .client
            .device_id()
            .map_or_else(|| "?".to_owned(), ToString::to_string);
        texts::keys_missing(&who, &device)
    } else {
        warn!(
            "an encrypted message arrived, but access-token accounts cannot decrypt: \
             switch this account to password login to read encrypted rooms"
        );
        // An access-token account cannot speak in an encrypted room either; the status and
        // the log are where it says so.
        if let Err(e) = room
            .ensure_can_send(false, "the undecryptable-message notice")
            .await
        {
            return warn!(error = %e, "not sent");
        }
        texts::cannot_decrypt_without_keys(&who)
    };
    let content = RoomMessageEventContent::notice_plain(text).into();
    let txn = transaction_id(utd.event_id.as_str(), "utd");
    let what = "posting an undecryptable-message notice";
    match room.send(content, txn, what, Attempts::Retried).await {
        Ok(_) => ctx
            .board
            .update(&ctx.account, |s| s.undecryptable_notices += 1),
        Err(e) => warn!(error = %e, "could not post the undecryptable-message notice"),
    }
}
