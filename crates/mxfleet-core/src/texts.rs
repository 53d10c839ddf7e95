//! Every sentence the bot says in a room, in one place: answers to commands, the OTP gate's
//! replies, verification steps, notices about unreadable messages, and the endings of answers
//! that went wrong. Keeping them together keeps the voice consistent and makes a wording change
//! (or a translation) one edit. Details of failures go to the log, not here.

use std::time::Duration;

use mxfleet_config::ConversationConfig;

/// The help text (`!help`, and after an unknown command).
pub(crate) const HELP: &str = "Commands:\n\
- `!help` shows this help\n\
- `!new` starts a new conversation (forgets the earlier messages of this room or thread)\n\
- `!status` shows this bot's state, backend and model\n\
- `verify yes`, `verify no`, `verify show`, `verify cancel` drive a device verification you started\n\
\n\
Anything else is answered by the AI backend.";

// ---- commands ------------------------------------------------------------------------------

/// The answer to a command the bot does not know.
pub(crate) fn unknown_command(word: &str) -> String {
    format!("Unknown command `!{word}`.\n\n{HELP}")
}

/// `!new` worked.
pub(crate) const MEMORY_RESET: &str =
    "Started a new conversation: earlier messages here are forgotten.";

/// `!new` failed.
pub(crate) const MEMORY_RESET_FAILED: &str =
    "Sorry, I could not reset the conversation (storage error).";

/// What `!status` shows.
pub(crate) struct StatusFacts<'a> {
    /// The account id.
    pub(crate) account: &'a str,
    /// Its state.
    pub(crate) state: String,
    /// The backend's name and kind.
    pub(crate) backend: (&'a str, &'a str),
    /// The model, if the backend names one.
    pub(crate) model: Option<&'a str>,
    /// Turns remembered in this conversation.
    pub(crate) remembered: usize,
    /// The account's conversation settings.
    pub(crate) conversation: &'a ConversationConfig,
}

/// The answer to `!status`.
pub(crate) fn status(facts: &StatusFacts<'_>) -> String {
    let conv = facts.conversation;
    format!(
        "**{}** is `{}`\n\n- backend: `{}` ({})\n- model: `{}`\n- streaming: `{:?}`\n- remembered turns here: {}\n- DMs: `{:?}`, rooms: `{:?}`, mentions: `{:?}`",
        facts.account,
        facts.state,
        facts.backend.0,
        facts.backend.1,
        facts.model.unwrap_or("-"),
        conv.stream_mode,
        facts.remembered,
        conv.dm_policy,
        conv.room_policy,
        conv.mention_mode,
    )
}

// ---- verification ---------------------------------------------------------------------------

/// A `verify …` word to an account without an encryption device.
pub(crate) const NO_DEVICE_TO_VERIFY: &str =
    "This bot account cannot verify devices (it does not own an encryption device).";

/// A `verify …` word while the crypto actor is restarting.
pub(crate) const VERIFICATION_UNAVAILABLE: &str =
    "Verification is not available right now; try again in a moment.";

/// A request was accepted.
pub(crate) const VERIFICATION_ACCEPTED: &str =
    "🔐 Verification request accepted. Start the emoji comparison; I will show the emoji here.";

/// The emoji to compare, and what to answer.
pub(crate) fn verification_emoji(emoji: &str) -> String {
    format!(
        "🔐 Compare these emoji with the ones on your screen:\n\n{emoji}\n\n\
         Send `verify yes` if they match, `verify no` if they do not, `verify cancel` to stop."
    )
}

/// `verify show`.
pub(crate) fn verification_emoji_again(emoji: &str) -> String {
    format!("The emoji to compare:\n\n{emoji}")
}

/// `verify show` before the keys are exchanged.
pub(crate) const VERIFICATION_WAITING_FOR_EMOJI: &str =
    "Waiting for your client to start the emoji comparison.";

/// `verify yes` was sent on.
pub(crate) const VERIFICATION_CONFIRMED: &str =
    "Confirmed on my side; waiting for your client to finish.";

/// `verify yes` could not be sent on.
pub(crate) fn verification_confirm_failed(reason: &str) -> String {
    format!("Could not confirm: {reason}")
}

/// `verify no`.
pub(crate) const VERIFICATION_MISMATCH: &str = "Cancelled: the emoji did not match. Do not trust this device; start again if it was a mistake.";

/// `verify yes|no` before the emoji are there.
pub(crate) const VERIFICATION_NO_EMOJI_YET: &str =
    "There are no emoji to compare yet: start the emoji comparison in your client.";

/// `verify cancel`.
pub(crate) const VERIFICATION_CANCELLED_BY_WORD: &str = "Verification cancelled.";

/// A `verify …` word without a verification.
pub(crate) const NO_VERIFICATION: &str = "There is no verification in progress with you. Start one from your client (verify this bot's device, or the bot's user).";

/// The verification finished.
pub(crate) const VERIFICATION_DONE: &str =
    "✅ Verified: your device and mine now trust each other.";

/// The other side (or the protocol) cancelled.
pub(crate) fn verification_cancelled(reason: &str) -> String {
    format!("Verification cancelled: {reason}")
}

/// The verification took too long.
pub(crate) const VERIFICATION_TIMED_OUT: &str = "⌛ The verification timed out and was cancelled.";

// ---- the OTP gate ---------------------------------------------------------------------------

/// The sender typed the right code.
pub(crate) const OTP_APPROVED: &str = "Thanks, you are approved: you can talk to me now.";

/// A new challenge; the code itself is never in it.
pub(crate) fn otp_challenged(valid_for: Duration) -> String {
    format!(
        "Hello! I only talk to people my operator approved. A one-time code was just created \
         for you: ask the operator of this bot for it and send the 6 digits here. It is valid \
         for {} minutes.",
        minutes(valid_for)
    )
}

/// A wrong code.
pub(crate) fn otp_wrong(attempts_left: u32) -> String {
    format!(
        "That code is not right. {attempts_left} attempt{} left.",
        if attempts_left == 1 { "" } else { "s" }
    )
}

/// Locked out by this message.
pub(crate) fn otp_locked_out(for_: Duration) -> String {
    format!(
        "Too many wrong codes. Try again in {} minutes.",
        minutes(for_)
    )
}

/// A message that is not a code while a challenge is pending.
pub(crate) const OTP_PENDING: &str =
    "Please send the 6-digit code the operator of this bot gives you.";

// ---- media ----------------------------------------------------------------------------------

/// A voice message without a transcription backend.
pub(crate) const VOICE_NOT_SET_UP: &str = "🎤 I got a voice message, but I cannot listen to it: speech-to-text is not set up for me. Please type your message, or ask my operator to set `transcription` (see docs/conversations.md, \"Voice messages\").";

/// A voice message over `max_media_bytes`.
pub(crate) fn voice_too_long(detail: &str) -> String {
    format!("🎤 That voice message is too long for me to listen to ({detail}).")
}

/// The room's notice (once a minute) that messages are being skipped.
pub(crate) fn rate_limited(limits: &mxfleet_config::MessageLimits) -> String {
    format!(
        "⏳ Too many messages at once: I answer at most {} a minute from one person and {} a \
         minute in one room, and I am skipping the rest. Please wait a moment.",
        limits.per_sender_per_minute, limits.per_room_per_minute
    )
}

/// A voice message to an account that takes no media (`max_media_bytes = 0`).
pub(crate) const MEDIA_OFF: &str =
    "🎤 I do not take voice messages or files here; please write instead.";

/// A voice message that could not be downloaded.
pub(crate) const VOICE_NOT_DOWNLOADED: &str =
    "🎤 I could not download that voice message; please try again.";

/// A voice message the transcription backend failed on.
pub(crate) const VOICE_NOT_TRANSCRIBED: &str =
    "🎤 I could not transcribe that voice message; please try again or type it.";

/// A voice message without words.
pub(crate) const VOICE_SILENT: &str = "🎤 I could not make out any words in that voice message.";

/// A vote on one of the bot's polls, in the words the backend gets.
pub(crate) fn vote(question: &str, chosen: &[String]) -> String {
    format!(
        "[my vote in your poll \"{question}\"] {}",
        chosen.join(", ")
    )
}

// ---- undecryptable messages -----------------------------------------------------------------

/// An access-token account met an encrypted message.
pub(crate) fn cannot_decrypt_without_keys(who: &str) -> String {
    format!(
        "🔒 I cannot read encrypted messages here (this bot account logs in with an access \
         token, which has no encryption keys), so I have not read {who}'s message. Ask the \
         operator to switch it to password login."
    )
}

/// A message whose keys have not arrived.
pub(crate) fn keys_missing(who: &str, device: &str) -> String {
    format!(
        "🔒 I could not decrypt a message from {who}: its keys have not reached my device \
         ({device}) yet. I will answer it as soon as they arrive. If this keeps happening, \
         verify this bot's device or send the message again."
    )
}

// ---- answers --------------------------------------------------------------------------------

/// How an answer's text ends after its stream did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Added after the text.
    Append(String),
    /// Shown instead of the (empty) text.
    Replace(String),
}

/// The ending of an answer whose stream stopped with a backend failure (`error_id` names it in
/// the log; its details never reach the room) after `empty` or some text, or was `interrupted`
/// because mxfleet is stopping.
pub(crate) fn answer_ending(
    error_id: Option<&str>,
    empty: bool,
    interrupted: bool,
    cut: bool,
) -> Option<Ending> {
    const STOPPED: &str = "*(interrupted: mxfleet stopped before this answer was complete)*";
    if interrupted {
        return Some(match empty {
            true => Ending::Replace(STOPPED.to_owned()),
            false => Ending::Append(format!("\n\n{STOPPED}")),
        });
    }
    match (error_id, empty) {
        (Some(id), true) => Some(Ending::Replace(format!(
            "Sorry, I could not get an answer from the backend (error {id}; the operator finds \
             the details in mxfleet's log)."
        ))),
        (Some(id), false) => Some(Ending::Append(format!(
            "\n\n⚠️ The answer is incomplete: the backend failed (error {id})."
        ))),
        (None, true) => Some(Ending::Replace(
            "(the backend returned an empty answer)".into(),
        )),
        (None, false) => cut.then(|| Ending::Append(format!("\n\n{ANSWER_CUT}"))),
    }
}

/// The end of an answer that reached the account's `max_answer_chars` or `max_answer_parts`.
pub(crate) const ANSWER_CUT: &str = "*(answer cut: it reached this bot's length limit)*";

/// The last text of an answer a restart cut short.
pub(crate) fn interrupted(shown: &str) -> String {
    format!(
        "{}\n\n*(interrupted: mxfleet restarted before this answer was complete)*",
        shown.trim_end()
    )
}

/// Whole minutes, rounded up, at least one.
fn minutes(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}
