//! Room upgrades: the bot follows a room it talks in to the room that replaces it.
//!
//! An upgrade leaves an `m.room.tombstone` in the old room naming the new one, whose
//! `m.room.create` names the old one as its predecessor. The new room counts as its
//! predecessor for the access lists (a `room_allowlist` of room ids keeps working), the bot
//! joins it (or, if it is invite-only, accepts the invite that follows), and the conversation
//! memory of the old room carries over. A predecessor claimed by a room's creator alone proves
//! nothing: only the old room's tombstone, read from the bot's own view of that room, confirms it.

use mxfleet_config::AccountSpec;
use mxfleet_matrix::{
    MatrixFailure,
    matrix_sdk::{
        Client, Room, RoomState,
        deserialized_responses::SyncOrStrippedState,
        ruma::{
            OwnedRoomId, OwnedServerName, OwnedUserId, RoomOrAliasId,
            events::room::tombstone::RoomTombstoneEventContent,
        },
    },
};
use mxfleet_store::Store;
use tracing::{info, warn};

use crate::{
    gate::{self, InviteVerdict},
    rooms::Rooms,
};

/// A room the bot is in that was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upgrade {
    /// The old (tombstoned) room.
    pub(crate) old: OwnedRoomId,
    /// The room replacing it.
    pub(crate) new: OwnedRoomId,
}

/// Upgrades among `rooms` whose replacement the bot has not joined yet.
pub(crate) fn pending_upgrades<'a>(
    client: &Client,
    rooms: impl IntoIterator<Item = &'a OwnedRoomId>,
) -> Vec<Upgrade> {
    rooms
        .into_iter()
        .filter_map(|old| {
            let new = client.get_room(old)?.successor_room()?.room_id;
            let joined = client
                .get_room(&new)
                .is_some_and(|r| r.state() == RoomState::Joined);
            (!joined).then(|| Upgrade {
                old: old.clone(),
                new,
            })
        })
        .collect()
}

/// Joins the room replacing `upgrade.old` if the gate would take an invite to it from the
/// upgrade's author, and carries the conversation memory (and DM-ness) over.
pub(crate) async fn follow(
    rooms: &Rooms,
    store: &Store,
    spec: &AccountSpec,
    access: &gate::Access,
    upgrade: Upgrade,
) {
    let Some(old) = rooms.get(&upgrade.old) else {
        return;
    };
    let facts = rooms.successor_facts(&old, &upgrade.new).await;
    // The upgrade's author stands where an inviter would.
    let author = tombstone_author(&old).await;
    let refusal = match gate::decide_invite(&spec.conversation, access, &facts, author.as_deref()) {
        InviteVerdict::Join => None,
        InviteVerdict::Reject(reason) => Some(reason),
        InviteVerdict::Leave => Some("auto_join = off"),
    };
    if let Some(reason) = refusal {
        info!(old = %upgrade.old, new = %upgrade.new, reason, "room upgrade not followed");
        return;
    }
    // Servers that are in the new room: its creator's (the tombstone's author), and the one in
    // the room id (room versions before 12).
    let mut via: Vec<OwnedServerName> = author.iter().map(|a| a.server_name().to_owned()).collect();
    if let Some(server) = upgrade.new.server_name().map(ToOwned::to_owned)
        && !via.contains(&server)
    {
        via.push(server);
    }
    match rooms
        .client()
        .join_room_by_id_or_alias(<&RoomOrAliasId>::from(&*upgrade.new), &via)
        .await
    {
        Ok(_) => {
            if facts.is_dm {
                rooms.joined_as_dm(&upgrade.new);
            }
            if let Err(e) = store
                .inherit_memory(&spec.id, upgrade.old.as_str(), upgrade.new.as_str())
                .await
            {
                warn!(error = %e, "could not carry the conversation memory over");
            }
            info!(old = %upgrade.old, new = %upgrade.new, "followed the room upgrade");
        }
        Err(e) => {
            info!(old = %upgrade.old, new = %upgrade.new, error = %MatrixFailure::from_sdk("joining", &e),
                "could not join the upgraded room (invite-only?): an invite to it will be accepted");
        }
    }
}

/// Who sent the tombstone of `room`.
async fn tombstone_author(room: &Room) -> Option<OwnedUserId> {
    let raw = room
        .get_state_event_static::<RoomTombstoneEventContent>()
        .await
        .ok()??;
    match raw.deserialize().ok()? {
        SyncOrStrippedState::Sync(event) => Some(event.sender().to_owned()),
        SyncOrStrippedState::Stripped(event) => Some(event.sender),
    }
}
