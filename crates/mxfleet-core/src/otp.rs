//! `OtpGate`: self-approval of unknown DM senders with a one-time code only the operator sees.
//!
//! With `dm_policy = "allowlist"` and `otp_self_approval = true`, a DM from a sender who is
//! neither allowlisted nor approved gets a challenge: a random six-digit code is stored for the
//! sender, and the sender is told to ask the operator for it (`mxfleet otp list`, `GET /otp`).
//! The code itself is never sent to the sender, logged or traced. Sending the right code approves
//! the sender for good; three wrong codes lock the sender out for `otp_cooldown_secs`; codes
//! expire after `otp_ttl_secs`; a new challenge is issued at most once a minute per sender, and
//! account-wide at most `otp_challenges_per_hour` challenges and three times as many wrong codes
//! are taken per hour, whoever sends them ([`Budget`]).
//! Everything lives in redb, so challenges, attempts, lockouts and approvals survive restarts.
//! One actor per account handles a sender's messages one at a time, so attempts cannot race.

use std::{collections::VecDeque, time::Duration};

use mxfleet_config::constant_time_eq;
use mxfleet_matrix::matrix_sdk::ruma::{OwnedRoomId, OwnedUserId};
use mxfleet_store::{OtpChallenge, Store, StoreError, now_ms};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::Rng;
use tracing::{info, warn};

use crate::texts;

/// Wrong codes before a lockout.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// The least time between two challenges for one sender.
pub(crate) const MIN_REISSUE: Duration = Duration::from_secs(60);

/// The window of the account-wide budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(3600);

/// The timing rules of the gate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OtpPolicy {
    pub(crate) ttl: Duration,
    pub(crate) cooldown: Duration,
    /// New challenges per hour for the whole account, whoever asks; wrong codes get three
    /// times as many.
    pub(crate) challenges_per_hour: u32,
}

/// The account-wide budget of the gate over the last hour: the per-sender limits stop one
/// identity; this stops many identities (each with its own code and three guesses) from
/// flooding the operator with challenges or searching the code space together.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    /// When each challenge in the window was issued (ms).
    challenges: VecDeque<u64>,
    /// When each wrong code in the window was tried (ms).
    wrong: VecDeque<u64>,
}

/// What the gate decided about a message from an unknown sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OtpOutcome {
    /// The right code: the sender is approved from now on.
    Approved,
    /// A new challenge was issued; the sender is told to ask the operator.
    Challenged { expires_in: Duration },
    /// A wrong code.
    Wrong { attempts_left: u32 },
    /// Locked out; `just_now` when this message caused it (told once, then silence).
    LockedOut { for_: Duration, just_now: bool },
    /// A challenge is pending and the message is not a code.
    Pending,
    /// No challenge may be issued yet (rate limit); stay silent.
    Throttled,
}

impl Budget {
    /// [`step`] within the budget: a code is not even compared once the hour's wrong codes are
    /// spent, and no challenge is issued once the hour's challenges are; both are silent
    /// ([`OtpOutcome::Throttled`]) and leave the sender's record as it was.
    pub(crate) fn step(
        &mut self,
        policy: OtpPolicy,
        record: Option<OtpChallenge>,
        body: &str,
        room_id: &str,
        now: u64,
        fresh_code: impl FnOnce() -> String,
    ) -> (Option<OtpChallenge>, OtpOutcome) {
        let window = u64::try_from(BUDGET_WINDOW.as_millis()).unwrap_or(u64::MAX);
        for times in [&mut self.challenges, &mut self.wrong] {
            while times
                .front()
                .is_some_and(|&t| t.saturating_add(window) <= now)
            {
                times.pop_front();
            }
        }
        let challenges = usize::try_from(policy.challenges_per_hour).unwrap_or(usize::MAX);
        let guesses = challenges.saturating_mul(MAX_ATTEMPTS as usize);
        let code_attempt =
            as_code(body).is_some() && record.as_ref().is_some_and(|r| now < r.expires_ms);
        if code_attempt && self.wrong.len() >= guesses {
            return (record, OtpOutcome::Throttled);
        }
        let kept = record.clone();
        let (next, outcome) = step(policy, record, body, room_id, now, fresh_code);
        match outcome {
            OtpOutcome::Challenged { .. } if self.challenges.len() >= challenges => {
                return (kept, OtpOutcome::Throttled);
            }
            OtpOutcome::Challenged { .. } => self.challenges.push_back(now),
            OtpOutcome::Wrong { .. } | OtpOutcome::LockedOut { just_now: true, .. } => {
                self.wrong.push_back(now);
            }
            _ => {}
        }
        (next, outcome)
    }
}

/// Decides one message of an unknown sender against its stored challenge. Returns the record to
/// store (`None` removes it) and the outcome; `fresh_code` makes a new code when one is needed.
pub(crate) fn step(
    policy: OtpPolicy,
    record: Option<OtpChallenge>,
    body: &str,
    room_id: &str,
    now: u64,
    fresh_code: impl FnOnce() -> String,
) -> (Option<OtpChallenge>, OtpOutcome) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if let Some(mut r) = record {
        if let Some(until) = r.locked_until_ms {
            if now < until {
                let for_ = Duration::from_millis(until - now);
                return (
                    Some(r),
                    OtpOutcome::LockedOut {
                        for_,
                        just_now: false,
                    },
                );
            }
            r.locked_until_ms = None;
            r.attempts = 0;
        }
        if now < r.expires_ms {
            let Some(code) = as_code(body) else {
                return (Some(r), OtpOutcome::Pending);
            };
            if constant_time_eq(code.as_bytes(), r.code.as_bytes()) {
                return (None, OtpOutcome::Approved);
            }
            r.attempts += 1;
            if r.attempts >= MAX_ATTEMPTS {
                r.locked_until_ms = Some(now.saturating_add(ms(policy.cooldown)));
                let outcome = OtpOutcome::LockedOut {
                    for_: policy.cooldown,
                    just_now: true,
                };
                return (Some(r), outcome);
            }
            let attempts_left = MAX_ATTEMPTS - r.attempts;
            return (Some(r), OtpOutcome::Wrong { attempts_left });
        }
        if now < r.issued_ms.saturating_add(ms(MIN_REISSUE)) {
            return (Some(r), OtpOutcome::Throttled);
        }
    }
    let challenge = OtpChallenge {
        code: fresh_code(),
        room_id: room_id.to_owned(),
        issued_ms: now,
        expires_ms: now.saturating_add(ms(policy.ttl)),
        attempts: 0,
        locked_until_ms: None,
    };
    let outcome = OtpOutcome::Challenged {
        expires_in: policy.ttl,
    };
    (Some(challenge), outcome)
}

/// A random six-digit code.
pub(crate) fn random_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// The six digits in `body`, if that is all it holds (spaces allowed around and between).
fn as_code(body: &str) -> Option<String> {
    let digits: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// What the sender is told, if anything. The code itself never appears.
pub(crate) fn reply_text(outcome: &OtpOutcome) -> Option<String> {
    match outcome {
        OtpOutcome::Approved => Some(texts::OTP_APPROVED.into()),
        OtpOutcome::Challenged { expires_in } => Some(texts::otp_challenged(*expires_in)),
        OtpOutcome::Wrong { attempts_left } => Some(texts::otp_wrong(*attempts_left)),
        OtpOutcome::LockedOut {
            for_,
            just_now: true,
        } => Some(texts::otp_locked_out(*for_)),
        OtpOutcome::Pending => Some(texts::OTP_PENDING.into()),
        OtpOutcome::LockedOut {
            just_now: false, ..
        }
        | OtpOutcome::Throttled => None,
    }
}

/// The gate actor of one account.
pub(crate) struct OtpGate;

/// What the gate needs.
pub(crate) struct OtpArgs {
    pub(crate) account: String,
    pub(crate) store: Store,
    pub(crate) policy: OtpPolicy,
}

/// The gate's state: what it was given, and the account-wide budget.
pub(crate) struct OtpState {
    args: OtpArgs,
    budget: Budget,
}

/// Messages of the gate.
pub(crate) enum OtpMsg {
    /// A DM from a sender who is neither allowlisted nor approved.
    Check {
        /// The sender.
        sender: OwnedUserId,
        /// The DM.
        room_id: OwnedRoomId,
        /// What they wrote.
        body: String,
        /// The outcome.
        reply: RpcReplyPort<Result<OtpOutcome, StoreError>>,
    },
}

impl Actor for OtpGate {
    type Msg = OtpMsg;
    type State = OtpState;
    type Arguments = OtpArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<OtpMsg>,
        args: OtpArgs,
    ) -> Result<OtpState, ActorProcessingErr> {
        Ok(OtpState {
            args,
            budget: Budget::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<OtpMsg>,
        message: OtpMsg,
        state: &mut OtpState,
    ) -> Result<(), ActorProcessingErr> {
        let OtpMsg::Check {
            sender,
            room_id,
            body,
            reply,
        } = message;
        let outcome = check(state, sender.as_str(), room_id.as_str(), &body).await;
        let account = &state.args.account;
        match &outcome {
            Ok(OtpOutcome::Throttled) => {
                info!(%account, %sender, "OTP gate: throttled (per sender or account-wide budget)")
            }
            Ok(o) => info!(%account, %sender, outcome = ?o, "OTP gate"),
            Err(e) => warn!(%account, %sender, error = %e, "OTP gate storage failed"),
        }
        let _ = reply.send(outcome);
        Ok(())
    }
}

async fn check(
    state: &mut OtpState,
    sender: &str,
    room_id: &str,
    body: &str,
) -> Result<OtpOutcome, StoreError> {
    let OtpState {
        args: state,
        budget,
    } = state;
    let record = state.store.otp_challenge(&state.account, sender).await?;
    let now = now_ms();
    let (record, outcome) = budget.step(state.policy, record, body, room_id, now, random_code);
    if outcome == OtpOutcome::Approved {
        state
            .store
            .approve_sender(&state.account, sender, now)
            .await?;
    } else {
        state
            .store
            .set_otp_challenge(&state.account, sender, record.as_ref())
            .await?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: OtpPolicy = OtpPolicy {
        ttl: Duration::from_secs(600),
        cooldown: Duration::from_secs(300),
        challenges_per_hour: 1000,
    };
    const S: u64 = 1000;

    fn run(
        record: Option<OtpChallenge>,
        body: &str,
        now: u64,
    ) -> (Option<OtpChallenge>, OtpOutcome) {
        step(POLICY, record, body, "!dm:hs", now, || "123456".into())
    }

    #[test]
    fn a_stranger_is_challenged_and_the_right_code_approves() {
        let (record, outcome) = run(None, "hi there", 0);
        assert_eq!(
            outcome,
            OtpOutcome::Challenged {
                expires_in: POLICY.ttl
            }
        );
        let record = record.expect("a challenge");
        assert_eq!(
            (record.code.as_str(), record.expires_ms),
            ("123456", 600 * S)
        );
        let (record, outcome) = run(Some(record), "hello?", 10 * S);
        assert_eq!(outcome, OtpOutcome::Pending);
        let (record, outcome) = run(record, " 123 456 ", 20 * S);
        assert_eq!((record, outcome), (None, OtpOutcome::Approved));
    }

    #[test]
    fn three_wrong_codes_lock_out_until_the_cooldown_ends() {
        let (r, _) = run(None, "hi", 0);
        let (r, o) = run(r, "000000", S);
        assert_eq!(o, OtpOutcome::Wrong { attempts_left: 2 });
        let (r, o) = run(r, "000001", 2 * S);
        assert_eq!(o, OtpOutcome::Wrong { attempts_left: 1 });
        let (r, o) = run(r, "000002", 3 * S);
        assert_eq!(
            o,
            OtpOutcome::LockedOut {
                for_: POLICY.cooldown,
                just_now: true
            }
        );
        // Even the right code is refused during the lockout, silently.
        let (r, o) = run(r, "123456", 100 * S);
        assert!(matches!(
            o,
            OtpOutcome::LockedOut {
                just_now: false,
                ..
            }
        ));
        // After it, the (still valid) code works.
        let (r, o) = run(r, "123456", 304 * S);
        assert_eq!((r, o), (None, OtpOutcome::Approved));
    }

    #[test]
    fn codes_expire_and_reissues_are_rate_limited() {
        let short = OtpPolicy {
            ttl: Duration::from_secs(30),
            ..POLICY
        };
        let (r, _) = step(short, None, "hi", "!dm:hs", 0, || "111111".into());
        // Expired, but within a minute of the last challenge: silence.
        let (r, o) = step(short, r, "111111", "!dm:hs", 40 * S, || "222222".into());
        assert_eq!(o, OtpOutcome::Throttled);
        // After a minute: a new code; the old one is gone.
        let (r, o) = step(short, r, "111111", "!dm:hs", 61 * S, || "222222".into());
        assert!(matches!(o, OtpOutcome::Challenged { .. }));
        assert_eq!(r.map(|r| r.code).as_deref(), Some("222222"));
    }

    #[test]
    fn many_identities_share_one_budget_of_challenges_and_guesses() {
        // A short lockout, so one identity could guess again and again.
        let policy = OtpPolicy {
            challenges_per_hour: 4,
            cooldown: Duration::from_secs(1),
            ..POLICY
        };
        let mut budget = Budget::default();
        // Strangers 0..4 get challenges; the fifth within the hour does not.
        let mut records = Vec::new();
        for i in 0..5u64 {
            let (r, o) = budget.step(policy, None, "hi", "!dm:hs", i * S, || "123456".into());
            let expected = match i {
                0..4 => matches!(o, OtpOutcome::Challenged { .. }),
                _ => o == OtpOutcome::Throttled && r.is_none(),
            };
            assert!(expected, "stranger {i}: {o:?}");
            records.push(r);
        }
        // 4 challenges allow 12 wrong codes in the hour, spread over identities; the 13th code
        // is not even compared (the right one included), so guessing cannot go on silently.
        let mut outcomes = Vec::new();
        for n in 0..13u64 {
            let slot = usize::try_from(n % 4).unwrap_or_default();
            let record = records[slot].take();
            let guess = if n == 12 { "123456" } else { "000000" };
            let (r, o) = budget.step(policy, record, guess, "!dm:hs", (10 + n) * S, || "1".into());
            records[slot] = r;
            outcomes.push(o);
        }
        assert!(
            outcomes[..12].iter().all(|o| o != &OtpOutcome::Throttled),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[12], OtpOutcome::Throttled);
        // An hour later the budget is back.
        let (_, o) = budget.step(policy, None, "hi", "!dm:hs", 3700 * S, || "123456".into());
        assert!(matches!(o, OtpOutcome::Challenged { .. }), "{o:?}");
    }

    #[test]
    fn replies_never_contain_the_code_and_codes_are_six_digits() {
        for _ in 0..50 {
            let code = random_code();
            assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
        }
        let (r, o) = run(None, "hi", 0);
        let code = r.map(|r| r.code).unwrap_or_default();
        assert!(!reply_text(&o).unwrap_or_default().contains(&code));
        assert!(constant_time_eq(b"123456", b"123456") && !constant_time_eq(b"123456", b"123457"));
        assert!(!constant_time_eq(b"12345", b"123456"));
        assert_eq!(as_code("12345"), None);
        assert_eq!(as_code("12345a"), None);
    }
}
