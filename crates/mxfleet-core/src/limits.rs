//! Rate limits on what reaches a backend: per sender and per room, over a sliding minute.
//!
//! The screen ([`crate::screen`]) asks them about each message the gate let through (a busy
//! room's chatter that does not address the bot costs its members nothing), before anything is
//! stored: a limited message is dropped without a write and never reaches a backend. The room
//! hears about it at most once per window.
//!
//! A message counts at the time it was *sent* (its `origin_server_ts`, taken as no older than
//! [`HORIZON`] and no later than now), not when it is handled: a backlog that piled up while
//! the account was down is judged by how fast its senders wrote, not by how fast it is caught up.

use std::collections::{HashMap, VecDeque};

use mxfleet_config::MessageLimits;

/// The window the limits count over (ms).
const WINDOW: u64 = 60_000;
/// Sending times older than this before now count as this old (ms), which bounds what is kept.
const HORIZON: u64 = 600_000;
/// Past this many tracked senders or rooms, the idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

/// Whether a message may go on to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Within the limits (and now counted).
    Admit,
    /// Over a limit; `notify` when the room has not been told within the window.
    Limited {
        /// Which limit: `per_sender` or `per_room`.
        which: &'static str,
        /// Tell the room (once per window).
        notify: bool,
    },
}

/// The sliding-window counters of one account: per key, the sending times (ms) admitted,
/// sorted.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: MessageLimits,
    senders: HashMap<String, VecDeque<u64>>,
    rooms: HashMap<String, VecDeque<u64>>,
    /// When each room was last told (ms, real time).
    told: HashMap<String, u64>,
}

impl RateLimiter {
    /// Counters for `limits`, empty.
    pub(crate) fn new(limits: MessageLimits) -> Self {
        Self {
            limits,
            senders: HashMap::new(),
            rooms: HashMap::new(),
            told: HashMap::new(),
        }
    }

    /// Decides a message of `sender` in `room` sent at `sent_ms`, handled at `now_ms`,
    /// counting it if admitted.
    pub(crate) fn admit(
        &mut self,
        sender: &str,
        room: &str,
        sent_ms: u64,
        now_ms: u64,
    ) -> Admission {
        let at = sent_ms.clamp(now_ms.saturating_sub(HORIZON), now_ms);
        let floor = now_ms.saturating_sub(HORIZON + WINDOW);
        let sender_count = in_window(&mut self.senders, sender, at, floor);
        let room_count = in_window(&mut self.rooms, room, at, floor);
        let which = if sender_count >= self.limits.per_sender_per_minute as usize {
            "per_sender"
        } else if room_count >= self.limits.per_room_per_minute as usize {
            "per_room"
        } else {
            insert(&mut self.senders, sender, at, floor);
            insert(&mut self.rooms, room, at, floor);
            return Admission::Admit;
        };
        let notify = self
            .told
            .get(room)
            .is_none_or(|told| now_ms.saturating_sub(*told) >= WINDOW);
        if notify {
            self.told.insert(room.to_owned(), now_ms);
        }
        if self.told.len() > MAX_TRACKED {
            self.told
                .retain(|_, told| now_ms.saturating_sub(*told) < WINDOW);
        }
        Admission::Limited { which, notify }
    }
}

/// How many of `key`'s admissions were sent within the window ending at `at`; times before
/// `floor` are dropped first.
fn in_window(map: &mut HashMap<String, VecDeque<u64>>, key: &str, at: u64, floor: u64) -> usize {
    let Some(times) = map.get_mut(key) else {
        return 0;
    };
    while times.front().is_some_and(|t| *t < floor) {
        times.pop_front();
    }
    let start = at.saturating_sub(WINDOW);
    times.iter().filter(|t| **t > start && **t <= at).count()
}

/// Counts an admission of `key` sent at `at` (kept sorted); forgets idle keys when too many
/// are tracked.
fn insert(map: &mut HashMap<String, VecDeque<u64>>, key: &str, at: u64, floor: u64) {
    if map.len() >= MAX_TRACKED && !map.contains_key(key) {
        map.retain(|_, times| times.back().is_some_and(|t| *t >= floor));
    }
    let times = map.entry(key.to_owned()).or_default();
    let position = times.partition_point(|t| *t <= at);
    times.insert(position, at);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_and_rooms_get_their_minute_and_the_room_is_told_once() {
        let limits = MessageLimits {
            per_sender_per_minute: 3,
            per_room_per_minute: 5,
        };
        let mut limiter = RateLimiter::new(limits);
        let t0 = 1_000_000_000;
        let at = |secs: u64| t0 + secs * 1000;
        let limited = |which, notify| Admission::Limited { which, notify };
        // (sender, room, second, expected)
        let table = [
            ("@a", "!r", 0, Admission::Admit),
            ("@a", "!r", 1, Admission::Admit),
            ("@a", "!r", 2, Admission::Admit),
            ("@a", "!r", 3, limited("per_sender", true)),
            ("@a", "!r", 4, limited("per_sender", false)),
            ("@a", "!other", 5, limited("per_sender", true)),
            ("@b", "!r", 6, Admission::Admit),
            ("@b", "!r", 7, Admission::Admit),
            ("@c", "!r", 8, limited("per_room", false)),
            // A minute after @a's first messages, @a has room again; the room too.
            ("@a", "!r", 61, Admission::Admit),
            ("@c", "!r", 64, Admission::Admit),
            ("@c", "!r", 65, Admission::Admit),
            ("@d", "!r", 65, limited("per_room", true)),
        ];
        for (sender, room, second, expected) in table {
            assert_eq!(
                limiter.admit(sender, room, at(second), at(second)),
                expected,
                "{sender} in {room} at {second} s"
            );
        }
    }

    #[test]
    fn a_backlog_counts_when_it_was_sent_not_when_it_is_caught_up() {
        let limits = MessageLimits {
            per_sender_per_minute: 3,
            per_room_per_minute: 100,
        };
        let now = 10_000_000_000;
        // Sent one every 30 s over the last 9 minutes while the account was down, all handled
        // now: within 3 a minute, so every one is admitted.
        let mut limiter = RateLimiter::new(limits);
        for i in (0..18u64).rev() {
            let sent = now - i * 30_000;
            assert_eq!(
                limiter.admit("@a", "!r", sent, now),
                Admission::Admit,
                "{i}"
            );
        }
        // The same 18 sent within a few seconds: a burst, limited after 3.
        let mut limiter = RateLimiter::new(limits);
        let admitted = (0..18u64)
            .filter(|i| limiter.admit("@a", "!r", now - 5_000 + i * 200, now) == Admission::Admit)
            .count();
        assert_eq!(admitted, 3);
        // A sending time from long ago or the future counts as the horizon or now.
        let mut limiter = RateLimiter::new(limits);
        for _ in 0..3 {
            assert_eq!(limiter.admit("@b", "!r", 0, now), Admission::Admit);
        }
        assert_ne!(limiter.admit("@b", "!r", 1, now), Admission::Admit);
        assert_eq!(limiter.admit("@c", "!r", u64::MAX, now), Admission::Admit);
    }

    #[test]
    fn a_flood_of_senders_keeps_the_tracking_bounded() {
        let mut limiter = RateLimiter::new(MessageLimits::default());
        let t0 = 1_000_000_000u64;
        for i in 0..(MAX_TRACKED * 2) {
            let later = u64::try_from(i / MAX_TRACKED).unwrap_or(0) * (HORIZON + WINDOW + 1);
            limiter.admit(&format!("@s{i}"), "!r", t0 + later, t0 + later);
        }
        assert!(
            limiter.senders.len() <= MAX_TRACKED + 1,
            "{}",
            limiter.senders.len()
        );
    }
}
