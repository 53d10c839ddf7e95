//! Actions a backend asks for by ending its answer with a fenced block: a `poll` (the user
//! chooses) or a `location` (the bot shares one).
//!
//! ````text
//! Shall I book it?
//!
//! ```poll
//! Which day?
//! - Monday
//! - Tuesday
//! ```
//! ````
//!
//! ````text
//! ```location
//! geo:51.5007,-0.1246
//! Big Ben
//! ```
//! ````
//!
//! The block never shows in the streamed text: it is held back as it arrives and, once the
//! answer is complete, sent as a native poll (2 to 20 answers, single choice) or a location
//! message; a poll outside those bounds is appended to the text as a numbered list, a location
//! without a `geo:` URI as its text. A user's vote on the bot's poll comes back as a message
//! naming the chosen answer.

use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, stream};
use mxfleet_backend::TextStream;
use mxfleet_matrix::{Placement, location_content, polls::poll_content, transaction_id};
use mxfleet_message::InboundMessage;
use tracing::{info, warn};

use super::room::{Attempts, RoomPort};

/// The fences that open an action block.
const MARKS: [&str; 2] = ["```poll", "```location"];

/// The most answers a Matrix poll may have.
pub(crate) const MAX_ANSWERS: usize = 20;

/// A poll a backend asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PollSpec {
    /// The question.
    pub(crate) question: String,
    /// The answers, in order.
    pub(crate) answers: Vec<String>,
}

/// An action a backend asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Ask the user to choose.
    Poll(PollSpec),
    /// Share a location.
    Location {
        /// The `geo:` URI.
        geo_uri: String,
        /// What is there.
        description: String,
    },
}

/// Where [`split_actions`] leaves the action it found.
pub(crate) type FoundAction = Arc<Mutex<Option<Action>>>;

/// The action [`split_actions`] found, once the answer is complete.
pub(crate) fn take(found: &FoundAction) -> Option<Action> {
    found
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// Passes `answer` through without its action block; at its end, leaves the action in `found`
/// (or, if the block is not a valid one, appends it to the text).
pub(crate) fn split_actions(answer: TextStream, found: FoundAction) -> TextStream {
    let state = Some((answer, ActionSplitter::default(), found));
    Box::pin(stream::unfold(state, |state| async move {
        let (mut answer, mut splitter, found) = state?;
        loop {
            match answer.next().await {
                Some(Ok(chunk)) => {
                    let visible = splitter.push(&chunk);
                    if !visible.is_empty() {
                        return Some((Ok(visible), Some((answer, splitter, found))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), Some((answer, splitter, found)))),
                None => {
                    let (tail, action) = splitter.finish();
                    *found
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = action;
                    return (!tail.is_empty()).then_some((Ok(tail), None));
                }
            }
        }
    }))
}

/// Sends the poll or location the backend asked for after its answer, and notes it in the
/// answer's text (for the conversation memory).
pub(crate) async fn send_asked<R: RoomPort>(
    room: &R,
    message: &InboundMessage,
    placement: &Placement,
    action: &Action,
    text: &mut String,
) {
    let event = message.event_id.as_str();
    let (content, txn, note) = match action {
        Action::Poll(poll) => (
            poll_content(&poll.question, &poll.answers, placement),
            transaction_id(event, "poll"),
            format!("[poll] {}: {}", poll.question, poll.answers.join(" / ")),
        ),
        Action::Location {
            geo_uri,
            description,
        } => (
            Ok(location_content(description, geo_uri, placement).into()),
            transaction_id(event, "location"),
            format!("[location] {description} ({geo_uri})"),
        ),
    };
    let sent = match content {
        Ok(content) => {
            room.send(
                content,
                txn,
                "sending what the backend asked for",
                Attempts::Retried,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match sent {
        Ok(id) => {
            info!(event_id = %id, "{note}");
            text.push_str(&format!("\n\n{note}"));
        }
        Err(e) => warn!(error = %e, "could not send what the backend asked for: {note}"),
    }
}

/// The text state of [`split_actions`].
#[derive(Debug, Default)]
pub(crate) struct ActionSplitter {
    /// Everything received.
    text: String,
    /// How much of `text` was passed on.
    emitted: usize,
    /// Where the action block starts and its fence, once seen.
    block_at: Option<(usize, &'static str)>,
}

impl ActionSplitter {
    /// Takes `chunk`; returns the text that can be shown now.
    pub(crate) fn push(&mut self, chunk: &str) -> String {
        self.text.push_str(chunk);
        if self.block_at.is_some() {
            return String::new();
        }
        let safe = match find_block(&self.text, self.emitted) {
            Some((at, mark)) => {
                self.block_at = Some((at, mark));
                at
            }
            // Hold back what may be the start of the fence.
            None => self.text.len() - partial_mark(&self.text),
        };
        let visible = self.text[self.emitted..safe].to_owned();
        self.emitted = safe;
        visible
    }

    /// The rest of the text, and the action if the block made a valid one.
    pub(crate) fn finish(self) -> (String, Option<Action>) {
        let Some((at, mark)) = self.block_at else {
            return (self.text[self.emitted..].to_owned(), None);
        };
        let block = &self.text[at + mark.len()..];
        let (body, after) = match block.find("\n```") {
            Some(end) => (&block[..end], block[end + 4..].trim_start_matches('\n')),
            None => (block, ""),
        };
        let action = if mark == MARKS[0] {
            parse_poll(body).map(Action::Poll)
        } else {
            parse_location(body)
        };
        let Some(action) = action else {
            let fallback = if mark == MARKS[0] {
                numbered_list(body)
            } else {
                body.trim().to_owned()
            };
            return (format!("{fallback}{after}"), None);
        };
        // An action with nothing before it still needs a message: its question or place.
        let shown_before = !self.text[..at].trim().is_empty();
        let tail = if shown_before || !after.trim().is_empty() {
            after.to_owned()
        } else {
            match &action {
                Action::Poll(poll) => poll.question.clone(),
                Action::Location { description, .. } => description.clone(),
            }
        };
        (tail, Some(action))
    }
}

/// Where the first action fence opening a line starts (searching from `from`), and which.
fn find_block(text: &str, from: usize) -> Option<(usize, &'static str)> {
    MARKS
        .iter()
        .filter_map(|mark| find_fence(text, from, mark).map(|at| (at, *mark)))
        .min_by_key(|(at, _)| *at)
}

fn find_fence(text: &str, from: usize, mark: &str) -> Option<usize> {
    let mut start = from;
    while let Some(found) = text[start..].find(mark) {
        let at = start + found;
        let line_start = at == 0 || text[..at].ends_with('\n');
        let rest = &text[at + mark.len()..];
        let fence_ends = rest.is_empty() || rest.starts_with('\n') || rest.starts_with("\r\n");
        if line_start && fence_ends {
            return Some(at);
        }
        start = at + mark.len();
    }
    None
}

/// How many bytes at the end of `text` could be the beginning of a fence.
fn partial_mark(text: &str) -> usize {
    MARKS
        .iter()
        .filter_map(|mark| (1..mark.len()).rev().find(|k| text.ends_with(&mark[..*k])))
        .max()
        .unwrap_or(0)
}

/// The location in a block's body: a `geo:` URI line, the other lines describing it.
fn parse_location(body: &str) -> Option<Action> {
    let lines: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let geo_uri = lines.iter().find(|l| l.starts_with("geo:"))?.to_string();
    let description: Vec<&str> = lines
        .into_iter()
        .filter(|l| !l.starts_with("geo:"))
        .collect();
    let description = match description.is_empty() {
        true => "Location".to_owned(),
        false => description.join(" "),
    };
    Some(Action::Location {
        geo_uri,
        description,
    })
}

/// The poll in a block's body: a question line, then 2 to 20 answer lines (`- `, `* `, `1. `).
fn parse_poll(body: &str) -> Option<PollSpec> {
    let (question, answers) = question_and_answers(body);
    let question = question?;
    (2..=MAX_ANSWERS)
        .contains(&answers.len())
        .then_some(PollSpec { question, answers })
}

/// A block that is no valid poll, as text: the question and the answers numbered.
fn numbered_list(body: &str) -> String {
    let (question, answers) = question_and_answers(body);
    if answers.is_empty() {
        return body.trim().to_owned();
    }
    let mut text = question.map(|q| format!("{q}\n")).unwrap_or_default();
    for (i, answer) in answers.iter().enumerate() {
        text.push_str(&format!("{}. {answer}\n", i + 1));
    }
    text
}

fn question_and_answers(body: &str) -> (Option<String>, Vec<String>) {
    let mut question = None;
    let mut answers = Vec::new();
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match list_item(line) {
            Some(answer) => answers.push(answer.to_owned()),
            None if question.is_none() && answers.is_empty() => question = Some(line.to_owned()),
            None => {}
        }
    }
    (question, answers)
}

/// The text of a list item line (`- a`, `* a`, `1. a`, `1) a`), if it is one.
fn list_item(line: &str) -> Option<&str> {
    if let Some(rest) = line.strip_prefix("- ").or_else(|| line.strip_prefix("* ")) {
        return Some(rest.trim()).filter(|r| !r.is_empty());
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    let rest = line[digits..]
        .strip_prefix(". ")
        .or_else(|| line[digits..].strip_prefix(") "))?;
    (digits > 0).then(|| rest.trim()).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through a splitter; returns the visible text and the poll.
    fn split(chunks: &[&str]) -> (String, Option<PollSpec>) {
        let (visible, action) = split_any(chunks);
        let poll = action.and_then(|a| match a {
            Action::Poll(poll) => Some(poll),
            Action::Location { .. } => None,
        });
        (visible, poll)
    }

    fn split_any(chunks: &[&str]) -> (String, Option<Action>) {
        let mut splitter = ActionSplitter::default();
        let mut visible: String = chunks.iter().map(|c| splitter.push(c)).collect();
        let (tail, action) = splitter.finish();
        visible.push_str(&tail);
        (visible, action)
    }

    #[test]
    fn a_location_block_becomes_a_location() {
        let (visible, action) = split_any(&[
            "Here:\n```loc",
            "ation\ngeo:51.5,-0.12;u=10\nBig ",
            "Ben\n```",
        ]);
        assert_eq!(visible, "Here:\n");
        assert_eq!(
            action,
            Some(Action::Location {
                geo_uri: "geo:51.5,-0.12;u=10".into(),
                description: "Big Ben".into()
            })
        );
        let (visible, action) = split_any(&["```location\nsomewhere nice\n```"]);
        assert_eq!((visible.as_str(), action), ("somewhere nice", None));
    }

    #[test]
    fn a_poll_block_is_held_back_however_it_is_chunked() {
        let answer = "Let me know.\n\n```poll\nWhat shall we eat?\n- Pizza\n- Sushi\n```\n";
        let expected = PollSpec {
            question: "What shall we eat?".into(),
            answers: vec!["Pizza".into(), "Sushi".into()],
        };
        for size in [1, 2, 3, 7, 100] {
            let chars: Vec<char> = answer.chars().collect();
            let chunks: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
            let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (visible, poll) = split(&chunks);
            assert_eq!(visible, "Let me know.\n\n", "chunks of {size}");
            assert_eq!(poll.as_ref(), Some(&expected), "chunks of {size}");
        }
        // Nothing is held back longer than it could be the fence.
        let mut splitter = ActionSplitter::default();
        assert_eq!(splitter.push("code: ``"), "code: ");
        assert_eq!(splitter.push("`rust\n"), "```rust\n");
    }

    #[test]
    fn only_a_fence_opening_a_line_counts_and_text_around_survives() {
        let (visible, poll) = split(&["say ```poll inline\n- a\n- b"]);
        assert_eq!(
            (visible.as_str(), poll),
            ("say ```poll inline\n- a\n- b", None)
        );
        let (visible, poll) = split(&["```poll\nPick one\n1. x\n2) y\n```\nThanks!"]);
        assert_eq!(visible, "Thanks!");
        assert_eq!(
            poll.map(|p| p.answers),
            Some(vec!["x".to_owned(), "y".to_owned()])
        );
        // A poll alone still leaves a message: its question.
        let (visible, poll) = split(&["```poll\nPick one\n- x\n- y\n```"]);
        assert_eq!((visible.as_str(), poll.is_some()), ("Pick one", true));
    }

    #[test]
    fn out_of_bounds_polls_become_numbered_lists() {
        let many: String = (1..=21).map(|i| format!("- option {i}\n")).collect();
        let (visible, poll) = split(&["Choose:\n```poll\nWhich?\n", &many, "```\n"]);
        assert_eq!(poll, None);
        assert!(visible.starts_with("Choose:\nWhich?\n1. option 1\n2. option 2\n"));
        assert!(visible.ends_with("21. option 21\n"));
        let (visible, poll) = split(&["```poll\nOnly one?\n- yes\n```"]);
        assert_eq!((visible.as_str(), poll), ("Only one?\n1. yes\n", None));
    }
}
