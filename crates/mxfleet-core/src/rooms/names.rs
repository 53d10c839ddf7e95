//! Members' display names, kept per room between the sync's member events.
//!
//! Reading a name from matrix-sdk's state store costs a few SQLite queries on the blocking pool
//! (about a millisecond here, more when a thousand accounts sync beside it), and a message
//! needs two or three of them: the bot's own name for the screen and the plan, the speaker's for
//! the conversation. Names change only by a member event, which only the sync brings; the sync
//! calls [`MemberNames::changed`] for each room whose batch has one (or a gap), after matrix-sdk
//! stored it. A name read from the store while such a batch arrives is not kept: every change
//! starts a new epoch of the room, and a name is kept only in the epoch its read began in.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use mxfleet_matrix::matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

/// Names kept per room at most; past it the room's names are read afresh (a large public room's
/// speakers cannot grow the process).
const MAX_NAMES_PER_ROOM: usize = 256;

/// The display names read so far, per room (`None`: the member has none).
#[derive(Clone, Default)]
pub(crate) struct MemberNames {
    rooms: Arc<Mutex<HashMap<OwnedRoomId, RoomNames>>>,
}

/// One room's kept names and its epoch.
#[derive(Default)]
struct RoomNames {
    /// Bumped by every member change the sync sees.
    epoch: u64,
    names: HashMap<OwnedUserId, Option<String>>,
}

/// What the cache knows of one member's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Kept: the name (or that there is none).
    Known(Option<String>),
    /// Not kept: read it, then [`MemberNames::keep`] it with this epoch.
    Unknown(u64),
}

impl MemberNames {
    /// `user`'s kept name in `room`, or the epoch to read it in.
    pub(crate) fn lookup(&self, room: &RoomId, user: &UserId) -> Lookup {
        let rooms = self.lock();
        match rooms.get(room) {
            Some(kept) => match kept.names.get(user) {
                Some(name) => Lookup::Known(name.clone()),
                None => Lookup::Unknown(kept.epoch),
            },
            None => Lookup::Unknown(0),
        }
    }

    /// Keeps `name`, read for `user` in `room` since [`lookup`](Self::lookup) gave `epoch`;
    /// dropped if a member change arrived in between.
    pub(crate) fn keep(&self, room: &RoomId, user: &UserId, epoch: u64, name: Option<String>) {
        let mut rooms = self.lock();
        let kept = rooms.entry(room.to_owned()).or_default();
        if kept.epoch != epoch {
            return;
        }
        if kept.names.len() >= MAX_NAMES_PER_ROOM {
            kept.names.clear();
        }
        kept.names.insert(user.to_owned(), name);
    }

    /// Forgets `room`'s names: the sync brought one of its member events, or a gap.
    pub(crate) fn changed(&self, room: &RoomId) {
        let mut rooms = self.lock();
        let kept = rooms.entry(room.to_owned()).or_default();
        kept.epoch = kept.epoch.wrapping_add(1);
        kept.names.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, RoomNames>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use mxfleet_matrix::matrix_sdk::ruma::{room_id, user_id};

    use super::*;

    #[test]
    fn a_name_is_kept_until_its_room_changes() {
        let (room, other) = (room_id!("!r:hs"), room_id!("!o:hs"));
        let ann = user_id!("@ann:hs");
        let names = MemberNames::default();
        // Unknown at first; kept once read.
        assert_eq!(names.lookup(room, ann), Lookup::Unknown(0));
        names.keep(room, ann, 0, Some("Ann".into()));
        assert_eq!(names.lookup(room, ann), Lookup::Known(Some("Ann".into())));
        // No name is a name too.
        names.keep(other, ann, 0, None);
        assert_eq!(names.lookup(other, ann), Lookup::Known(None));
        // A member change forgets the room's names, not another room's.
        names.changed(room);
        assert_eq!(names.lookup(room, ann), Lookup::Unknown(1));
        assert_eq!(names.lookup(other, ann), Lookup::Known(None));
    }

    #[test]
    fn a_name_read_while_its_room_changed_is_not_kept() {
        let room = room_id!("!r:hs");
        let ann = user_id!("@ann:hs");
        let names = MemberNames::default();
        let Lookup::Unknown(epoch) = names.lookup(room, ann) else {
            panic!("nothing kept yet");
        };
        // The read began before the change arrived: what it read may be the old name.
        names.changed(room);
        names.keep(room, ann, epoch, Some("Ann (old)".into()));
        assert_eq!(names.lookup(room, ann), Lookup::Unknown(1));
        names.keep(room, ann, 1, Some("Anna".into()));
        assert_eq!(names.lookup(room, ann), Lookup::Known(Some("Anna".into())));
    }

    #[test]
    fn a_crowded_room_starts_its_names_afresh() {
        let room = room_id!("!r:hs");
        let names = MemberNames::default();
        for i in 0..=MAX_NAMES_PER_ROOM {
            let user = OwnedUserId::try_from(format!("@u{i}:hs")).expect("a user id");
            names.keep(room, &user, 0, None);
        }
        let kept = names.lock().get(room).map(|r| r.names.len());
        assert_eq!(kept, Some(1));
    }
}
