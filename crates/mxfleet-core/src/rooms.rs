//! What the bot knows about a room: whether it is a DM, the ids it answers to (its own and the
//! rooms it upgraded), and its members' names. One builder of [`RoomFacts`] serves
//! messages, invites and room upgrades alike, so the gate sees every room by the same rules:
//!
//! - **DM**: matrix-sdk's `is_direct` (the account data, or an invite's flag), or a room this
//!   process joined from a DM invite (the account data may lag behind the first message) —
//!   and, once joined, no more than two members (joined or invited): the inviter sets the flag,
//!   so a "direct" room with a third person in it is a group room to the gate;
//! - **no aliases**: the room's creator writes its alias state, so a configured alias (in the
//!   allowlist or the overrides) counts through the homeserver's directory only;
//! - **predecessors**: the rooms it replaces, each confirmed by the old room's tombstone naming
//!   it, read from the bot's own view of the old room (a creator's claim alone proves nothing);
//! - **names**: members' display names, read from the state store once per room and kept until
//!   the sync brings a member event of the room ([`names`]).

mod names;

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use mxfleet_matrix::matrix_sdk::{
    Client, Room, RoomState,
    ruma::{OwnedRoomId, RoomId, UserId},
};
use tracing::warn;

use crate::{
    gate::{self, RoomFacts},
    heard::Heard,
};

use names::Lookup;
pub(crate) use names::MemberNames;

/// Upgrade chains longer than this are not followed further back.
const MAX_CHAIN: usize = 16;

/// Rooms this account joined from a DM invite, kept for the account's lifetime (across
/// reconnects): matrix-sdk marks them direct in the account data, but that round trip can
/// finish after the first message arrives.
pub(crate) type JoinedDms = Arc<RwLock<HashSet<OwnedRoomId>>>;

/// The account's rooms, as the gate and the answer pipeline see them.
#[derive(Clone)]
pub(crate) struct Rooms {
    client: Client,
    joined_dms: JoinedDms,
    heard: Heard,
    names: MemberNames,
}

impl Rooms {
    /// The rooms of `client`, with the account's DM bookkeeping; the sync records into `heard`.
    pub(crate) fn new(client: Client, joined_dms: JoinedDms, heard: Heard) -> Self {
        Self {
            client,
            joined_dms,
            heard,
            names: MemberNames::default(),
        }
    }

    /// The members' names kept for the rooms; the sync tells it of member changes.
    pub(crate) fn names(&self) -> &MemberNames {
        &self.names
    }

    /// The rooms' recent messages as the sync saw them.
    pub(crate) fn heard(&self) -> &Heard {
        &self.heard
    }

    /// The client the rooms belong to.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The room `id`, if the client knows it.
    pub(crate) fn get(&self, id: &RoomId) -> Option<Room> {
        self.client.get_room(id)
    }

    /// What the gate needs to know about `room`.
    pub(crate) async fn facts(&self, room: &Room) -> RoomFacts {
        RoomFacts {
            room_id: room.room_id().to_owned(),
            is_dm: self.is_dm(room).await,
            predecessors: self.confirmed_predecessors(room),
        }
    }

    /// The facts of the room that replaces `old`: it is what `old` was (a DM or not), and it
    /// answers to `old`'s id and `old`'s predecessors.
    pub(crate) async fn successor_facts(&self, old: &Room, new: &RoomId) -> RoomFacts {
        let before = self.facts(old).await;
        RoomFacts {
            room_id: new.to_owned(),
            predecessors: std::iter::once(before.room_id.to_string())
                .chain(before.predecessors)
                .collect(),
            ..before
        }
    }

    /// Whether `room` is a DM: flagged direct (or joined as one), and, once joined, with at
    /// most two members, the bot and the other person.
    pub(crate) async fn is_dm(&self, room: &Room) -> bool {
        let direct = room.is_direct().await.unwrap_or_else(|e| {
            warn!(error = %e, "could not tell whether the room is a DM; treating it as a group room");
            false
        });
        let flagged = direct
            || self
                .joined_dms
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(room.room_id());
        let members = match room.state() {
            RoomState::Joined => room.active_members_count(),
            // An invite's view of the room holds no member counts.
            _ => 0,
        };
        dm_by_members(flagged, members)
    }

    /// Notes that this process joined `room` as a DM.
    pub(crate) fn joined_as_dm(&self, room: &RoomId) {
        self.joined_dms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(room.to_owned());
    }

    /// The rooms `room` replaces, newest first, each confirmed by its tombstone naming the room
    /// after it.
    fn confirmed_predecessors(&self, room: &Room) -> Vec<String> {
        let mut chain: Vec<String> = Vec::new();
        let mut current = room.clone();
        while chain.len() < MAX_CHAIN {
            let Some(claimed) = current.predecessor_room() else {
                break;
            };
            let Some(old) = self.client.get_room(&claimed.room_id) else {
                break;
            };
            let confirmed = old
                .successor_room()
                .is_some_and(|s| s.room_id == current.room_id());
            if !confirmed || chain.iter().any(|id| id == old.room_id().as_str()) {
                break;
            }
            chain.push(old.room_id().to_string());
            current = old;
        }
        chain
    }

    /// The display name of `user` in `room`: kept, or read from the local state (and kept if
    /// the member is known there).
    pub(crate) async fn member_name(&self, room: &Room, user: &UserId) -> Option<String> {
        let epoch = match self.names.lookup(room.room_id(), user) {
            Lookup::Known(name) => return name,
            Lookup::Unknown(epoch) => epoch,
        };
        let member = room.get_member_no_sync(user).await.ok().flatten()?;
        let name = member.display_name().map(str::to_owned);
        self.names.keep(room.room_id(), user, epoch, name.clone());
        name
    }

    /// `user`'s name in `room`, safe to put in a prompt (see [`gate::sanitize_display_name`]).
    pub(crate) async fn speaker_name(&self, room: &Room, user: &UserId) -> String {
        let name = self.member_name(room, user).await;
        gate::sanitize_display_name(name.as_deref(), user)
    }
}

/// A room flagged direct is a DM while it has at most two members (joined or invited; 0 when
/// unknown, as in an invite).
fn dm_by_members(flagged: bool, members: u64) -> bool {
    flagged && members <= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_flag_makes_a_dm_of_two_members_at_most() {
        for (flagged, members, dm) in [
            (true, 0, true),
            (true, 2, true),
            (true, 3, false),
            (true, 40, false),
            (false, 2, false),
        ] {
            assert_eq!(dm_by_members(flagged, members), dm, "{flagged} {members}");
        }
    }
}
