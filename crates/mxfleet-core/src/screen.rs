//! The screen: which messages of a sync batch are claimed for an answer at all.
//!
//! It runs in the sync loop before the batch commits, so a message the gate turns away (a
//! group room's chatter that does not address the bot, a room or sender outside the access
//! lists, another bot of this fleet, a message too old to answer after downtime) is neither
//! stored in the inbox nor queued: a busy room costs one pure check per message. What passes
//! counts against the account's rate limits ([`crate::limits`]); a message over them is dropped
//! the same way, except the first of each window in a room, which is claimed so the room is
//! told.
//!
//! The screen is the cheap half of the gate. The room worker plans every claimed message again
//! with what only it reads (an interrupted answer's draft, the sender's one-time-code approval,
//! whether a vote is on the bot's poll), so the screen lets through anything the worker might
//! answer: a DM from a sender outside the allowlist goes on to the one-time-code gate, a vote
//! is judged as if addressed to the bot.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex, PoisonError},
};

use mxfleet_config::{AccountSpec, ConversationConfig};
use mxfleet_matrix::matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use mxfleet_message::{Attachment, InboundMessage};
use mxfleet_store::{InboxEntry, now_ms};
use tracing::{debug, info};

use crate::{
    gate::{self, Access, Me, RoomFacts, Verdict},
    limits::{Admission, RateLimiter},
    measure,
    rooms::Rooms,
    status::StatusBoard,
    turn::plan,
};

/// Why a message is skipped when it was sent by another account of this fleet.
pub(crate) const FROM_FLEET: &str = "sent by another account of this fleet";

/// What a claimed message may go on to, as the screen decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// Within the limits: the worker plans and answers it.
    Admitted,
    /// Over a rate limit (`per_sender` or `per_room`), the first such in its room this window:
    /// the worker tells the room instead of answering.
    TellLimited(&'static str),
}

/// The screen of one account's connection.
pub(crate) struct Screen {
    spec: Arc<AccountSpec>,
    access: Access,
    rooms: Rooms,
    user_id: OwnedUserId,
    board: StatusBoard,
    limiter: Mutex<RateLimiter>,
}

/// What the screen makes of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Screening {
    /// Claim it, with this ticket.
    Claim(Ticket),
    /// The gate turns it away, for this reason.
    Ignore(&'static str),
    /// Older than `catch_up_max_age_secs` (its age in seconds).
    TooOld(u64),
    /// Over a rate limit, the room already told.
    Limited(&'static str),
}

impl Screen {
    /// The screen of an account with `spec`, its resolved `access` lists and `rooms`.
    pub(crate) fn new(
        spec: Arc<AccountSpec>,
        access: Access,
        rooms: Rooms,
        user_id: OwnedUserId,
        board: StatusBoard,
    ) -> Self {
        let limiter = Mutex::new(RateLimiter::new(spec.conversation.limits));
        Self {
            spec,
            access,
            rooms,
            user_id,
            board,
            limiter,
        }
    }

    /// The entries of a batch worth claiming, each with its ticket; the rest are counted and
    /// dropped. A message of a room the client does not know is kept (the worker records it).
    pub(crate) async fn sift(
        &self,
        entries: Vec<InboxEntry<InboundMessage>>,
    ) -> Vec<(InboxEntry<InboundMessage>, Ticket)> {
        let mut rooms: HashMap<OwnedRoomId, Option<(RoomFacts, Me)>> = HashMap::new();
        let (mut kept, mut ignored, mut old, mut limited) = (Vec::new(), 0u64, 0u64, 0u64);
        for entry in entries {
            let message = &entry.message;
            let seen = match rooms.entry(message.room_id.clone()) {
                Entry::Occupied(seen) => seen.into_mut(),
                Entry::Vacant(slot) => slot.insert(self.room(&message.room_id).await),
            };
            let Some((facts, me)) = seen.as_ref() else {
                kept.push((entry, Ticket::Admitted));
                continue;
            };
            let judged = screen(
                &self.spec.conversation,
                &self.access,
                facts,
                me,
                message,
                self.board.is_fleet_user(message.sender.as_str()),
            )
            .and_then(|()| self.within_age(&entry));
            let screening = match judged {
                Err(screening) => screening,
                Ok(()) => self.admit(message),
            };
            let (room, event_id) = (&message.room_id, &message.event_id);
            match screening {
                Screening::Claim(ticket) => kept.push((entry, ticket)),
                Screening::Ignore(reason) => {
                    debug!(%room, %event_id, reason, "not for the bot: not stored");
                    ignored += 1;
                }
                Screening::TooOld(age_secs) => {
                    info!(%room, %event_id, age_secs, "message older than catch_up_max_age_secs: skipped");
                    old += 1;
                }
                Screening::Limited(which) => {
                    info!(%room, %event_id, limit = which, "over the rate limit: skipped");
                    limited += 1;
                }
            }
        }
        if ignored + old + limited > 0 {
            let account = self.spec.id.as_str();
            measure::count(measure::SKIPPED, account, "ignored", ignored);
            measure::count(measure::SKIPPED, account, "too_old", old);
            measure::count(measure::SKIPPED, account, "rate_limited", limited);
            self.board.update(&self.spec.id, |s| {
                s.messages_ignored = s.messages_ignored.saturating_add(ignored);
                s.skipped_old = s.skipped_old.saturating_add(old);
                s.rate_limited = s.rate_limited.saturating_add(limited);
            });
        }
        kept
    }

    /// The facts of room `id` and who the bot is there, if the client knows the room.
    async fn room(&self, id: &OwnedRoomId) -> Option<(RoomFacts, Me)> {
        let room = self.rooms.get(id)?;
        let me = Me {
            user_id: self.user_id.clone(),
            display_name: self.rooms.member_name(&room, &self.user_id).await,
        };
        Some((self.rooms.facts(&room).await, me))
    }

    /// Fails with [`Screening::TooOld`] past `catch_up_max_age_secs` (see [`too_old`]).
    fn within_age(&self, entry: &InboxEntry<InboundMessage>) -> Result<(), Screening> {
        let max_age_ms = self.spec.sync.catch_up_max_age_secs.saturating_mul(1000);
        match too_old(entry, max_age_ms, now_ms()) {
            Some(age_ms) => Err(Screening::TooOld(age_ms / 1000)),
            None => Ok(()),
        }
    }

    /// Counts `message` against the rate limits.
    fn admit(&self, message: &InboundMessage) -> Screening {
        let admission = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(
                message.sender.as_str(),
                message.room_id.as_str(),
                message.origin_server_ts_ms,
                now_ms(),
            );
        match admission {
            Admission::Admit => Screening::Claim(Ticket::Admitted),
            Admission::Limited { which, notify } if notify => {
                Screening::Claim(Ticket::TellLimited(which))
            }
            Admission::Limited { which, .. } => Screening::Limited(which),
        }
    }
}

/// The gate's verdict as far as it can be told without I/O: `Err` when the bot will not
/// answer `message` whatever the worker reads. A vote is judged as if addressed to the bot
/// (the worker skips votes on other polls); a DM from a sender outside the allowlist passes
/// when one-time-code self-approval may let them in.
fn screen(
    conv: &ConversationConfig,
    access: &Access,
    room: &RoomFacts,
    me: &Me,
    message: &InboundMessage,
    from_fleet: bool,
) -> Result<(), Screening> {
    if from_fleet {
        return Err(Screening::Ignore(FROM_FLEET));
    }
    let vote;
    let judged = match &message.attachment {
        Some(Attachment::PollResponse { .. }) => {
            vote = plan::addressed_to(message, &message.body, me);
            &vote
        }
        _ => message,
    };
    match gate::decide(conv, access, room, me, judged) {
        Verdict::Answer => Ok(()),
        Verdict::Ignore(gate::NOT_ALLOWLISTED) if conv.otp_self_approval => Ok(()),
        Verdict::Ignore(reason) => Err(Screening::Ignore(reason)),
    }
}

/// How old `entry` is past `max_age_ms`, if it is: its age now or, for a message decrypted
/// late, when the bot first saw it (how long its keys took does not count).
pub(crate) fn too_old(
    entry: &InboxEntry<InboundMessage>,
    max_age_ms: u64,
    now: u64,
) -> Option<u64> {
    let judged_at = entry.seen_at_ms.unwrap_or(now);
    let age_ms = judged_at.saturating_sub(entry.message.origin_server_ts_ms);
    (age_ms > max_age_ms).then_some(age_ms)
}

#[cfg(test)]
mod tests {
    use mxfleet_config::{AccessPolicy, MentionMode};
    use mxfleet_message::MentionList;

    use super::*;
    use crate::testing::{self, event, user};

    /// (config, is_dm, message, from the fleet, expected)
    type Row<'a> = (
        &'a ConversationConfig,
        bool,
        InboundMessage,
        bool,
        Result<(), Screening>,
    );

    fn room(is_dm: bool) -> RoomFacts {
        RoomFacts {
            room_id: testing::room("!r:hs"),
            is_dm,
            predecessors: Vec::new(),
        }
    }

    fn me() -> Me {
        Me {
            user_id: user("@bot:hs"),
            display_name: Some("Bot".into()),
        }
    }

    fn vote() -> InboundMessage {
        InboundMessage {
            attachment: Some(Attachment::PollResponse {
                poll_id: event("$poll"),
                answers: vec!["a".into()],
            }),
            ..testing::said("!r:hs", "$v", "@ann:hs", "Yes")
        }
    }

    #[test]
    fn the_screen_drops_what_the_gate_refuses_and_keeps_what_the_worker_may_answer() {
        let said = |body: &str| testing::said("!r:hs", "$m", "@ann:hs", body);
        let mentioned = InboundMessage {
            mentions: Some(MentionList {
                user_ids: vec![user("@bot:hs")],
                room: false,
            }),
            ..said("hello")
        };
        let conv = |room_policy, mention_mode, otp| ConversationConfig {
            room_policy,
            mention_mode,
            dm_policy: AccessPolicy::Allowlist,
            user_allowlist: vec!["@friend:hs".into()],
            otp_self_approval: otp,
            ..ConversationConfig::default()
        };
        let open_mention = conv(AccessPolicy::Open, MentionMode::Mention, false);
        let allowlisted_rooms = conv(AccessPolicy::Allowlist, MentionMode::Always, false);
        let with_otp = conv(AccessPolicy::Open, MentionMode::Mention, true);
        let ignore = |reason| Err(Screening::Ignore(reason));
        // (config, is_dm, message, from the fleet, expected)
        let table: [Row; 10] = [
            (
                &open_mention,
                false,
                said("chatter"),
                false,
                ignore("bot not mentioned"),
            ),
            (&open_mention, false, mentioned.clone(), false, Ok(())),
            (&open_mention, false, said("Bot: hi"), false, Ok(())),
            (
                &open_mention,
                false,
                mentioned.clone(),
                true,
                ignore(FROM_FLEET),
            ),
            // A vote needs no mention (the worker tells whose poll it is).
            (&open_mention, false, vote(), false, Ok(())),
            // A room not listed by id (or by an alias resolving to it).
            (
                &allowlisted_rooms,
                false,
                mentioned.clone(),
                false,
                ignore("room not in room_allowlist"),
            ),
            (
                &allowlisted_rooms,
                false,
                vote(),
                false,
                ignore("room not in room_allowlist"),
            ),
            // A stranger's DM: refused, or on to the one-time-code gate.
            (
                &open_mention,
                true,
                said("hi"),
                false,
                ignore(gate::NOT_ALLOWLISTED),
            ),
            (&with_otp, true, said("hi"), false, Ok(())),
            (&with_otp, true, said("hi"), true, ignore(FROM_FLEET)),
        ];
        let access = |conv: &ConversationConfig| Access::new(conv, []);
        for (i, (conv, is_dm, message, fleet, expected)) in table.into_iter().enumerate() {
            let got = screen(conv, &access(conv), &room(is_dm), &me(), &message, fleet);
            assert_eq!(got, expected, "row {i}: {:?}", message.body);
        }
        // Listed by id, the room's messages pass.
        let listed = ConversationConfig {
            room_allowlist: vec!["!r:hs".into()],
            ..allowlisted_rooms.clone()
        };
        let got = screen(
            &listed,
            &access(&listed),
            &room(false),
            &me(),
            &mentioned,
            false,
        );
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn age_counts_from_when_the_bot_first_saw_a_message() {
        let entry = |sent: u64, seen: Option<u64>| InboxEntry {
            event_id: "$m".into(),
            claimed_at_ms: 0,
            seq: 0,
            attempts: 0,
            seen_at_ms: seen,
            state: mxfleet_store::InboxState::Pending,
            message: InboundMessage {
                origin_server_ts_ms: sent,
                ..testing::said("!r:hs", "$m", "@ann:hs", "hi")
            },
        };
        let now = 10_000_000;
        for (sent, seen, expected) in [
            (now - 1_000, None, None),
            (now - 60_001, None, Some(60_001)),
            // Decrypted late, but young when first seen.
            (now - 500_000, Some(now - 499_000), None),
            // From the future: age 0.
            (now + 5_000, None, None),
        ] {
            assert_eq!(
                too_old(&entry(sent, seen), 60_000, now),
                expected,
                "{sent} {seen:?}"
            );
        }
    }
}
