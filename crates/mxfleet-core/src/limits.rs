//! Rate limits on what reaches a backend: per sender and per room, over a sliding minute.
//!
//! They count only messages the gate let through (a busy room's chatter that does not address
//! the bot costs its members nothing), and a limited message is recorded as skipped without
//! touching the backend. The room hears about it at most once per window.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use mxfleet_config::MessageLimits;

/// The window the limits count over.
const WINDOW: Duration = Duration::from_secs(60);
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

/// The sliding-window counters of one account.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: MessageLimits,
    senders: HashMap<String, VecDeque<Instant>>,
    rooms: HashMap<String, VecDeque<Instant>>,
    told: HashMap<String, Instant>,
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

    /// Decides a message of `sender` in `room` at `now`, counting it if admitted.
    pub(crate) fn admit(&mut self, sender: &str, room: &str, now: Instant) -> Admission {
        let sender_count = recent(&mut self.senders, sender, now);
        let room_count = recent(&mut self.rooms, room, now);
        let which = if sender_count >= self.limits.per_sender_per_minute as usize {
            "per_sender"
        } else if room_count >= self.limits.per_room_per_minute as usize {
            "per_room"
        } else {
            push(&mut self.senders, sender, now);
            push(&mut self.rooms, room, now);
            return Admission::Admit;
        };
        let notify = self
            .told
            .get(room)
            .is_none_or(|at| now.saturating_duration_since(*at) >= WINDOW);
        if notify {
            self.told.insert(room.to_owned(), now);
        }
        if self.told.len() > MAX_TRACKED {
            self.told
                .retain(|_, at| now.saturating_duration_since(*at) < WINDOW);
        }
        Admission::Limited { which, notify }
    }
}

/// How many of `key`'s admissions fall within the window before `now` (older ones dropped).
fn recent(map: &mut HashMap<String, VecDeque<Instant>>, key: &str, now: Instant) -> usize {
    let Some(times) = map.get_mut(key) else {
        return 0;
    };
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
    {
        times.pop_front();
    }
    times.len()
}

/// Counts an admission of `key` at `now`; forgets idle keys when too many are tracked.
fn push(map: &mut HashMap<String, VecDeque<Instant>>, key: &str, now: Instant) {
    if map.len() >= MAX_TRACKED && !map.contains_key(key) {
        map.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < WINDOW)
        });
    }
    map.entry(key.to_owned()).or_default().push_back(now);
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
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
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
                limiter.admit(sender, room, at(second)),
                expected,
                "{sender} in {room} at {second} s"
            );
        }
    }

    #[test]
    fn a_flood_of_senders_keeps_the_tracking_bounded() {
        let mut limiter = RateLimiter::new(MessageLimits::default());
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED * 2) {
            let now = t0 + Duration::from_secs(61 * u64::try_from(i / MAX_TRACKED).unwrap_or(0));
            limiter.admit(&format!("@s{i}"), "!r", now);
        }
        assert!(
            limiter.senders.len() <= MAX_TRACKED + 1,
            "{}",
            limiter.senders.len()
        );
    }
}
