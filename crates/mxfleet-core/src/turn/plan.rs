//! What to do with one claimed message: a pure decision over what is known about it.
//!
//! [`plan`] sees the message, the room's facts, who the bot is, the account's conversation
//! settings and access lists, whether the sender approved themselves, and the outbox draft a
//! previous process may have left; it returns one [`Step`]. No I/O happens here: `answer.rs`
//! gathers the inputs and carries the step out. The order of the checks is the pipeline's
//! contract: an interrupted answer is finished before anything else; a vote on someone else's
//! poll is nobody's business; then the gate (with the OTP gate behind an allowlist refusal);
//! then voice, commands, and finally the backend.

use mxfleet_config::ConversationConfig;
use mxfleet_matrix::Placement;
use mxfleet_message::{Attachment, InboundMessage, Media, MentionList};
use mxfleet_store::Draft;

use crate::{
    gate::{self, Access, Me, RoomFacts, Verdict},
    turn::commands::{self, Command},
};

/// Why a vote is skipped.
pub(crate) const FOREIGN_POLL: &str = "a vote on a poll that is not the bot's";

/// Whether the sender of a DM approved themselves with a one-time code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Approval {
    /// Not looked up: OTP self-approval is off.
    NotAsked,
    /// Approved.
    Approved,
    /// Not approved (yet).
    NotApproved,
    /// The approvals could not be read.
    Unknown,
}

/// Everything [`plan`] decides on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known<'a> {
    /// The message.
    pub(crate) message: &'a InboundMessage,
    /// The room it was sent in.
    pub(crate) room: &'a RoomFacts,
    /// Who the bot is there.
    pub(crate) me: &'a Me,
    /// The account's conversation settings.
    pub(crate) conversation: &'a ConversationConfig,
    /// The account's access lists.
    pub(crate) access: &'a Access,
    /// The sender's self-approval.
    pub(crate) approval: Approval,
    /// The outbox draft of an answer to this message, if one was saved.
    pub(crate) draft: Option<&'a Draft>,
    /// For a vote on a poll: the vote in words if the poll is the bot's, else `None`.
    pub(crate) vote: Option<&'a str>,
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Finish the answer a previous process left mid-stream (never start a second one).
    Resume,
    /// Do not answer; the reason is recorded in the inbox.
    Skip(&'static str),
    /// Leave the message pending: it is handled again at the next start.
    Hold(&'static str),
    /// A DM from an unknown sender under OTP self-approval: the `OtpGate` answers.
    Challenge,
    /// A voice message: transcribe it, then plan again with its words.
    Transcribe(Media),
    /// A command: answered directly, without the backend.
    Command(Command),
    /// Ask the backend; `words` replace the message's body (a vote on the bot's poll).
    Answer {
        /// What the sender said, when it is not the body.
        words: Option<String>,
    },
}

impl Step {
    /// Whether the message passed the gate (the bot will answer it).
    pub(crate) fn passed_gate(&self) -> bool {
        matches!(
            self,
            Self::Transcribe(_) | Self::Command(_) | Self::Answer { .. }
        )
    }
}

/// Decides what to do with `known.message`.
pub(crate) fn plan(known: &Known<'_>) -> Step {
    if known
        .draft
        .is_some_and(|d| d.parts.iter().any(|p| p.event_id.is_some()))
    {
        return Step::Resume;
    }
    let addressed;
    let (message, words) = match (&known.message.attachment, known.vote) {
        (Some(Attachment::PollResponse { .. }), None) => return Step::Skip(FOREIGN_POLL),
        (Some(Attachment::PollResponse { .. }), Some(words)) => {
            addressed = addressed_to(known.message, words, known.me);
            (&addressed, Some(words.to_owned()))
        }
        _ => (known.message, None),
    };
    let conv = known.conversation;
    match gate::decide(conv, known.access, known.room, known.me, message) {
        Verdict::Answer => {}
        Verdict::Ignore(gate::NOT_ALLOWLISTED) if conv.otp_self_approval => match known.approval {
            Approval::Approved => {}
            Approval::NotApproved => return Step::Challenge,
            Approval::Unknown | Approval::NotAsked => {
                return Step::Hold("the sender's approval could not be read");
            }
        },
        Verdict::Ignore(reason) => return Step::Skip(reason),
    }
    if let Some(Attachment::Audio(media)) = &message.attachment {
        return Step::Transcribe(media.clone());
    }
    let display_name = known.me.display_name.as_deref();
    match commands::parse(&message.body, known.me.user_id.as_str(), display_name) {
        Some(command) => Step::Command(command),
        None => Step::Answer { words },
    }
}

/// Where the answer to `message` goes: its thread, a rich reply, or plainly into the room.
pub(crate) fn placement(message: &InboundMessage, rich_replies: bool, is_dm: bool) -> Placement {
    match &message.thread_root {
        Some(root) => Placement::Thread {
            root: root.clone(),
            latest: message.event_id.clone(),
            rich: rich_replies,
        },
        // In a DM a rich reply to every message is noise; it helps in busy rooms.
        None if rich_replies && !is_dm => Placement::ReplyTo(message.event_id.clone()),
        None => Placement::Plain,
    }
}

/// A vote on the bot's poll, as a message in the vote's words addressed to the bot.
pub(crate) fn addressed_to(message: &InboundMessage, words: &str, me: &Me) -> InboundMessage {
    InboundMessage {
        body: words.to_owned(),
        mentions: Some(MentionList {
            user_ids: vec![me.user_id.clone()],
            room: false,
        }),
        ..message.clone()
    }
}

#[cfg(test)]
mod tests {
    use mxfleet_config::AccessPolicy;
    use mxfleet_store::DraftPart;

    use super::*;
    use crate::{
        crypto::VerifyWord,
        testing::{self, event, user},
        turn::commands::Command,
    };

    fn conversation() -> ConversationConfig {
        ConversationConfig {
            room_policy: AccessPolicy::Open,
            user_allowlist: vec!["@friend:hs".into()],
            ..ConversationConfig::default()
        }
    }

    /// A message from `sender` saying `body`.
    fn said(sender: &str, body: &str) -> InboundMessage {
        testing::said("!r:hs", "$m", sender, body)
    }

    fn room(is_dm: bool) -> RoomFacts {
        RoomFacts {
            room_id: testing::room("!r:hs"),
            is_dm,
            predecessors: Vec::new(),
        }
    }

    fn voice() -> Media {
        Media {
            source: serde_json::json!({"url": "mxc://hs/v"}),
            mimetype: Some("audio/ogg".into()),
            size: Some(10),
            name: "v.ogg".into(),
        }
    }

    fn vote_on_a_poll() -> Option<Attachment> {
        Some(Attachment::PollResponse {
            poll_id: event("$poll"),
            answers: vec!["answer-1".into()],
        })
    }

    /// One row of the table: what is known, and the step expected.
    struct Case {
        name: &'static str,
        message: InboundMessage,
        dm: bool,
        otp: bool,
        approval: Approval,
        draft: Option<Draft>,
        vote: Option<&'static str>,
        step: Step,
    }

    impl Case {
        fn new(name: &'static str, message: InboundMessage, step: Step) -> Self {
            Self {
                name,
                message,
                dm: true,
                otp: false,
                approval: Approval::NotAsked,
                draft: None,
                vote: None,
                step,
            }
        }
    }

    fn answer() -> Step {
        Step::Answer { words: None }
    }

    #[test]
    fn each_message_gets_the_step_its_facts_call_for() {
        let mid_stream = Draft {
            room_id: "!r:hs".into(),
            parts: vec![DraftPart {
                event_id: Some("$sent".into()),
                ..DraftPart::default()
            }],
        };
        let never_sent = Draft {
            room_id: "!r:hs".into(),
            parts: vec![DraftPart::default()],
        };
        let with = |message: InboundMessage, f: &dyn Fn(&mut InboundMessage)| {
            let mut message = message;
            f(&mut message);
            message
        };
        let cases = vec![
            // The gate.
            Case::new("a friend's DM", said("@friend:hs", "hi"), answer()),
            Case::new(
                "a stranger's DM",
                said("@stranger:hs", "hi"),
                Step::Skip(gate::NOT_ALLOWLISTED),
            ),
            Case::new(
                "the bot's own message",
                said("@bot:hs", "hi"),
                Step::Skip("own message"),
            ),
            Case {
                dm: false,
                ..Case::new(
                    "a room message without a mention",
                    said("@stranger:hs", "hi all"),
                    Step::Skip("bot not mentioned"),
                )
            },
            Case {
                dm: false,
                ..Case::new(
                    "a room message naming the bot",
                    said("@stranger:hs", "Helper, hi"),
                    answer(),
                )
            },
            // OTP self-approval behind an allowlist refusal.
            Case {
                otp: true,
                approval: Approval::NotApproved,
                ..Case::new(
                    "a stranger under OTP",
                    said("@stranger:hs", "hi"),
                    Step::Challenge,
                )
            },
            Case {
                otp: true,
                approval: Approval::Approved,
                ..Case::new("an approved stranger", said("@stranger:hs", "hi"), answer())
            },
            Case {
                otp: true,
                approval: Approval::Unknown,
                ..Case::new(
                    "approvals unreadable",
                    said("@stranger:hs", "hi"),
                    Step::Hold("the sender's approval could not be read"),
                )
            },
            Case {
                otp: true,
                approval: Approval::NotApproved,
                ..Case::new("a friend under OTP", said("@friend:hs", "hi"), answer())
            },
            // Commands pass the gate first.
            Case::new(
                "!help",
                said("@friend:hs", "!help"),
                Step::Command(Command::Help),
            ),
            Case::new(
                "verify yes",
                said("@friend:hs", "verify yes"),
                Step::Command(Command::Verify(VerifyWord::Yes)),
            ),
            Case::new(
                "a stranger's !help",
                said("@stranger:hs", "!help"),
                Step::Skip(gate::NOT_ALLOWLISTED),
            ),
            Case {
                dm: false,
                ..Case::new(
                    "a command after the bot's name in a room",
                    said("@stranger:hs", "Helper: !new"),
                    Step::Command(Command::New),
                )
            },
            // Voice.
            Case::new(
                "a friend's voice message",
                with(said("@friend:hs", "Voice message"), &|m| {
                    m.attachment = Some(Attachment::Audio(voice()))
                }),
                Step::Transcribe(voice()),
            ),
            Case::new(
                "a stranger's voice message is never transcribed",
                with(said("@stranger:hs", "Voice message"), &|m| {
                    m.attachment = Some(Attachment::Audio(voice()))
                }),
                Step::Skip(gate::NOT_ALLOWLISTED),
            ),
            // Drafts.
            Case {
                draft: Some(mid_stream.clone()),
                ..Case::new(
                    "an answer cut short",
                    said("@friend:hs", "hi"),
                    Step::Resume,
                )
            },
            Case {
                draft: Some(mid_stream),
                ..Case::new(
                    "an answer cut short, whatever the gate says now",
                    said("@stranger:hs", "hi"),
                    Step::Resume,
                )
            },
            Case {
                draft: Some(never_sent),
                ..Case::new("a draft never sent", said("@friend:hs", "hi"), answer())
            },
            // Poll votes.
            Case {
                dm: false,
                vote: Some("[my vote] Monday"),
                ..Case::new(
                    "a vote on the bot's poll, in a room, without a mention",
                    with(said("@stranger:hs", ""), &|m| {
                        m.attachment = vote_on_a_poll()
                    }),
                    Step::Answer {
                        words: Some("[my vote] Monday".into()),
                    },
                )
            },
            Case {
                dm: false,
                ..Case::new(
                    "a vote on someone else's poll",
                    with(said("@stranger:hs", ""), &|m| {
                        m.attachment = vote_on_a_poll()
                    }),
                    Step::Skip(FOREIGN_POLL),
                )
            },
            Case {
                vote: Some("[my vote] Monday"),
                ..Case::new(
                    "a stranger's vote in a DM is still gated",
                    with(said("@stranger:hs", ""), &|m| {
                        m.attachment = vote_on_a_poll()
                    }),
                    Step::Skip(gate::NOT_ALLOWLISTED),
                )
            },
            // Threads are answered like any message.
            Case {
                dm: false,
                ..Case::new(
                    "a question in a thread naming the bot",
                    with(said("@stranger:hs", "@bot:hs what now?"), &|m| {
                        m.thread_root = Some(event("$root"))
                    }),
                    answer(),
                )
            },
        ];
        let me = Me {
            user_id: user("@bot:hs"),
            display_name: Some("Helper".into()),
        };
        for case in cases {
            let conversation = ConversationConfig {
                otp_self_approval: case.otp,
                ..conversation()
            };
            let access = Access::new(&conversation, []);
            let facts = room(case.dm);
            let known = Known {
                message: &case.message,
                room: &facts,
                me: &me,
                conversation: &conversation,
                access: &access,
                approval: case.approval,
                draft: case.draft.as_ref(),
                vote: case.vote,
            };
            assert_eq!(plan(&known), case.step, "{}", case.name);
        }
    }

    #[test]
    fn answers_stay_in_their_thread_and_reply_richly_only_in_rooms() {
        let question = said("@u:hs", "q");
        let threaded = InboundMessage {
            thread_root: Some(event("$root")),
            ..said("@u:hs", "q")
        };
        let cases = [
            (&question, true, false, Placement::ReplyTo(event("$m"))),
            (&question, true, true, Placement::Plain),
            (&question, false, false, Placement::Plain),
            (
                &threaded,
                true,
                true,
                Placement::Thread {
                    root: event("$root"),
                    latest: event("$m"),
                    rich: true,
                },
            ),
            (
                &threaded,
                false,
                false,
                Placement::Thread {
                    root: event("$root"),
                    latest: event("$m"),
                    rich: false,
                },
            ),
        ];
        for (message, rich, dm, expected) in cases {
            assert_eq!(
                placement(message, rich, dm),
                expected,
                "rich {rich}, dm {dm}"
            );
        }
    }
}
