//! [`Heard`]: each room's recent messages as the account's sync saw them, so an answer reads
//! the room's history from memory instead of a `/messages` request per answer (20–25 ms on a
//! local Synapse, the largest part of a fast answer; docs/benchmarks.md, run 6).
//!
//! A room's log is only trusted while it is **complete**: every message since its oldest entry
//! was seen, and nothing before that entry is missing from the last `capacity` messages. It
//! becomes complete when the room's creation is in the log (a room the account saw being made,
//! or joined with its whole history in one timeline) or when it is seeded by one `/messages`
//! request, merged with what the sync recorded meanwhile. A limited timeline (a gap) or a new
//! connection (a fresh `Heard`) makes it incomplete again, and the next answer fetches once.
//! What the log holds matches what `/messages` gives: other people's messages as
//! [`normalise`](mxfleet_matrix::normalise) reads them (no edits, no notices, not the bot's own),
//! redacted ones removed.
//!
//! Memory is bounded per account: at most `capacity` messages per room, and the least recently
//! updated rooms are forgotten (fetched again when needed) once the logs hold more than
//! [`BYTE_BUDGET`] bytes of text.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use mxfleet_matrix::matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use mxfleet_message::InboundMessage;

/// The text the logs of one account may hold before rooms are forgotten.
pub(crate) const BYTE_BUDGET: usize = 256 * 1024;
/// Counted per message on top of its text: ids, timestamps, the deque slot.
const MESSAGE_OVERHEAD: usize = 256;

/// The recent messages of an account's rooms; cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct Heard {
    inner: Arc<Mutex<Logs>>,
    /// Messages kept per room: the account's `history_max_messages` (0: nothing is kept).
    capacity: usize,
}

/// What one sync batch showed of one room.
#[derive(Debug, Default)]
pub(crate) struct RoomBatch {
    /// The timeline was limited: events between the previous batch and this one are missing.
    pub(crate) limited: bool,
    /// The timeline holds the room's `m.room.create` event.
    pub(crate) creation: bool,
    /// The messages, in timeline order.
    pub(crate) messages: Vec<InboundMessage>,
    /// Events redacted by this batch.
    pub(crate) redacted: Vec<OwnedEventId>,
}

/// A point in a room's log a `/messages` fetch is started from; a seed taken from that fetch
/// is only merged if the log did not lose its continuity meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch(u64);

#[derive(Default)]
struct Logs {
    rooms: HashMap<OwnedRoomId, RoomLog>,
    /// Bumped on every update: a room's `touched` orders the rooms for forgetting.
    clock: u64,
    bytes: usize,
}

#[derive(Default)]
struct RoomLog {
    messages: VecDeque<InboundMessage>,
    complete: bool,
    /// Bumped whenever continuity is lost.
    epoch: u64,
    touched: u64,
    bytes: usize,
}

impl Heard {
    /// Logs of up to `capacity` messages per room.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity,
        }
    }

    /// Records what a sync batch showed of `room`.
    pub(crate) fn record(&self, room: &RoomId, batch: RoomBatch) {
        if self.capacity == 0 {
            return;
        }
        let mut logs = self.lock();
        // A room seen only through receipts or typing, or a gap in a room never logged, leaves
        // nothing to keep.
        let nothing = batch.messages.is_empty() && !batch.creation;
        if nothing && !logs.rooms.contains_key(room) {
            return;
        }
        logs.update(room, |log| {
            if batch.limited {
                log.reset();
            }
            log.forget(&batch.redacted);
            for message in batch.messages {
                log.insert(message);
            }
            log.trim(self.capacity);
            if batch.creation {
                log.complete = true;
            }
        });
        logs.settle();
    }

    /// Adds messages that became readable late (decrypted after their keys arrived).
    pub(crate) fn record_late(&self, messages: impl IntoIterator<Item = InboundMessage>) {
        if self.capacity == 0 {
            return;
        }
        let mut logs = self.lock();
        for message in messages {
            let room = message.room_id.clone();
            logs.update(&room, |log| {
                log.insert(message);
                log.trim(self.capacity);
            });
        }
        logs.settle();
    }

    /// The last messages of `room`, oldest first, if its log is complete; else the epoch to
    /// [`seed`](Self::seed) it from.
    pub(crate) fn recent(&self, room: &RoomId) -> Result<Vec<InboundMessage>, Epoch> {
        let logs = self.lock();
        match logs.rooms.get(room) {
            Some(log) if log.complete => Ok(log.messages.iter().cloned().collect()),
            Some(log) => Err(Epoch(log.epoch)),
            None => Err(Epoch(0)),
        }
    }

    /// Merges `fetched` (the room's last messages from the homeserver, read since `epoch`) into
    /// `room`'s log and marks it complete, unless its continuity was lost meanwhile.
    pub(crate) fn seed(&self, room: &RoomId, epoch: Epoch, fetched: Vec<InboundMessage>) {
        if self.capacity == 0 {
            return;
        }
        let mut logs = self.lock();
        logs.update(room, |log| {
            if log.epoch != epoch.0 {
                return;
            }
            for message in fetched {
                log.insert(message);
            }
            log.trim(self.capacity);
            log.complete = true;
        });
        logs.settle();
    }

    fn lock(&self) -> MutexGuard<'_, Logs> {
        // A panic elsewhere cannot leave a log half-updated in a way that matters: at worst a
        // room is fetched again.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Logs {
    /// Applies `change` to `room`'s log (made if new), marking it the most recently updated and
    /// keeping the byte count.
    fn update(&mut self, room: &RoomId, change: impl FnOnce(&mut RoomLog)) {
        self.clock = self.clock.saturating_add(1);
        let log = self.rooms.entry(room.to_owned()).or_default();
        log.touched = self.clock;
        let before = log.bytes;
        change(log);
        self.bytes = self.bytes.saturating_sub(before).saturating_add(log.bytes);
    }

    /// Forgets the least recently updated rooms while over budget (never the last one).
    fn settle(&mut self) {
        while self.bytes > BYTE_BUDGET && self.rooms.len() > 1 {
            let oldest = self
                .rooms
                .iter()
                .min_by_key(|(_, log)| log.touched)
                .map(|(id, _)| id.clone());
            let Some(oldest) = oldest else { break };
            if let Some(log) = self.rooms.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(log.bytes);
            }
        }
    }
}

impl RoomLog {
    /// Continuity is lost: the next reader fetches.
    fn reset(&mut self) {
        self.messages.clear();
        self.bytes = 0;
        self.complete = false;
        self.epoch = self.epoch.saturating_add(1);
    }

    /// Inserts `message` in timestamp order, unless it is already there.
    fn insert(&mut self, message: InboundMessage) {
        if self.messages.iter().any(|m| m.event_id == message.event_id) {
            return;
        }
        let at = self
            .messages
            .iter()
            .rposition(|m| m.origin_server_ts_ms <= message.origin_server_ts_ms)
            .map_or(0, |i| i.saturating_add(1));
        self.bytes = self.bytes.saturating_add(size_of(&message));
        self.messages.insert(at, message);
    }

    fn forget(&mut self, redacted: &[OwnedEventId]) {
        if redacted.is_empty() {
            return;
        }
        self.messages.retain(|m| !redacted.contains(&m.event_id));
        self.bytes = self.messages.iter().map(size_of).sum();
    }

    /// Keeps the newest `capacity` messages.
    fn trim(&mut self, capacity: usize) {
        while self.messages.len() > capacity {
            if let Some(old) = self.messages.pop_front() {
                self.bytes = self.bytes.saturating_sub(size_of(&old));
            }
        }
    }
}

/// What `message` counts against the budget.
fn size_of(message: &InboundMessage) -> usize {
    let formatted = message.formatted_body.as_ref().map_or(0, String::len);
    message
        .body
        .len()
        .saturating_add(formatted)
        .saturating_add(MESSAGE_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use mxfleet_matrix::matrix_sdk::ruma::{owned_event_id, owned_room_id, owned_user_id};

    use super::*;

    fn message(id: &str, ts: u64, body: &str) -> InboundMessage {
        InboundMessage {
            room_id: owned_room_id!("!r:hs"),
            event_id: OwnedEventId::try_from(format!("${id}")).expect("a valid event id"),
            sender: owned_user_id!("@ann:hs"),
            body: body.into(),
            origin_server_ts_ms: ts,
            thread_root: None,
            formatted_body: None,
            mentions: None,
            reply_to: None,
            attachment: None,
        }
    }

    fn batch(messages: Vec<InboundMessage>) -> RoomBatch {
        RoomBatch {
            messages,
            ..RoomBatch::default()
        }
    }

    fn ids(messages: &[InboundMessage]) -> Vec<String> {
        messages.iter().map(|m| m.event_id.to_string()).collect()
    }

    fn room() -> OwnedRoomId {
        owned_room_id!("!r:hs")
    }

    #[test]
    fn a_log_is_not_trusted_until_seeded_or_seen_from_the_start() {
        let heard = Heard::new(5);
        heard.record(&room(), batch(vec![message("b", 2, "hi")]));
        let epoch = heard.recent(&room()).expect_err("not complete yet");
        heard.record(&room(), batch(vec![message("c", 3, "hm")]));
        heard.seed(
            &room(),
            epoch,
            vec![message("a", 1, "x"), message("b", 2, "hi")],
        );
        let recent = heard.recent(&room()).expect("seeded");
        assert_eq!(ids(&recent), ["$a", "$b", "$c"]);

        let fresh = Heard::new(5);
        let made = RoomBatch {
            creation: true,
            ..batch(vec![message("a", 1, "x")])
        };
        fresh.record(&room(), made);
        assert_eq!(ids(&fresh.recent(&room()).expect("complete")), ["$a"]);
    }

    #[test]
    fn a_gap_or_a_stale_seed_leaves_the_log_to_be_fetched() {
        let heard = Heard::new(5);
        let epoch = heard.recent(&room()).expect_err("unknown room");
        heard.record(
            &room(),
            RoomBatch {
                limited: true,
                ..batch(vec![message("c", 3, "x")])
            },
        );
        heard.seed(&room(), epoch, vec![message("a", 1, "x")]);
        let epoch = heard
            .recent(&room())
            .expect_err("the seed predates the gap");
        heard.seed(&room(), epoch, vec![message("b", 2, "y")]);
        assert_eq!(ids(&heard.recent(&room()).expect("seeded")), ["$b", "$c"]);

        heard.record(
            &room(),
            RoomBatch {
                limited: true,
                ..RoomBatch::default()
            },
        );
        assert!(heard.recent(&room()).is_err());
    }

    #[test]
    fn logs_keep_the_newest_in_order_without_duplicates_or_redactions() {
        let heard = Heard::new(3);
        let made = RoomBatch {
            creation: true,
            ..batch(vec![message("a", 1, "1"), message("c", 3, "3")])
        };
        heard.record(&room(), made);
        heard.record_late([message("b", 2, "late")]);
        heard.record(
            &room(),
            batch(vec![message("c", 3, "3"), message("d", 4, "4")]),
        );
        assert_eq!(
            ids(&heard.recent(&room()).expect("complete")),
            ["$b", "$c", "$d"]
        );
        heard.record(
            &room(),
            RoomBatch {
                redacted: vec![owned_event_id!("$c")],
                ..RoomBatch::default()
            },
        );
        assert_eq!(ids(&heard.recent(&room()).expect("complete")), ["$b", "$d"]);
    }

    #[test]
    fn nothing_is_kept_without_history_and_old_rooms_are_forgotten_over_budget() {
        let quiet = Heard::new(5);
        quiet.record(
            &room(),
            RoomBatch {
                limited: true,
                ..RoomBatch::default()
            },
        );
        assert!(
            quiet.lock().rooms.is_empty(),
            "a room with nothing to keep is not logged"
        );

        let none = Heard::new(0);
        none.record(
            &room(),
            RoomBatch {
                creation: true,
                ..batch(vec![message("a", 1, "x")])
            },
        );
        assert!(none.recent(&room()).is_err());

        let heard = Heard::new(2);
        let big = "x".repeat(BYTE_BUDGET / 3);
        let rooms: Vec<OwnedRoomId> = (0..4)
            .map(|i| OwnedRoomId::try_from(format!("!r{i}:hs")).expect("a valid room id"))
            .collect();
        for (i, id) in rooms.iter().enumerate() {
            let mut m = message(&format!("m{i}"), 1, &big);
            m.room_id = id.clone();
            heard.record(
                id,
                RoomBatch {
                    creation: true,
                    ..batch(vec![m])
                },
            );
        }
        assert!(
            heard.recent(&rooms[0]).is_err(),
            "the oldest room is forgotten"
        );
        assert!(heard.recent(&rooms[3]).is_ok());
    }
}
