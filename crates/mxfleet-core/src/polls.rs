//! Polls: a backend asks the user to choose by ending its answer with a fenced `poll` block,
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
//! The block never shows in the streamed text: it is held back as it arrives and, once the
//! answer is complete, sent as a native poll (2 to 20 answers, single choice) or, outside those
//! bounds, appended to the text as a numbered list. A user's vote on the bot's poll comes back
//! as a message naming the chosen answer.

use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, stream};
use mxfleet_backend::TextStream;

/// The fence that opens a poll block.
const MARK: &str = "```poll";

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

/// Where [`split_polls`] leaves the poll it found.
pub(crate) type FoundPoll = Arc<Mutex<Option<PollSpec>>>;

/// Passes `answer` through without its poll block; at its end, leaves the poll in `found` (or
/// appends it to the text as a numbered list).
pub(crate) fn split_polls(answer: TextStream, found: FoundPoll) -> TextStream {
    let state = Some((answer, PollSplitter::default(), found));
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
                    let (tail, poll) = splitter.finish();
                    *found
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = poll;
                    return (!tail.is_empty()).then_some((Ok(tail), None));
                }
            }
        }
    }))
}

/// The text state of [`split_polls`].
#[derive(Debug, Default)]
struct PollSplitter {
    /// Everything received.
    text: String,
    /// How much of `text` was passed on.
    emitted: usize,
    /// Where the poll block starts, once seen.
    block_at: Option<usize>,
}

impl PollSplitter {
    /// Takes `chunk`; returns the text that can be shown now.
    fn push(&mut self, chunk: &str) -> String {
        self.text.push_str(chunk);
        if self.block_at.is_some() {
            return String::new();
        }
        let safe = match find_block(&self.text, self.emitted) {
            Some(at) => {
                self.block_at = Some(at);
                at
            }
            // Hold back what may be the start of the fence.
            None => self.text.len() - partial_mark(&self.text),
        };
        let visible = self.text[self.emitted..safe].to_owned();
        self.emitted = safe;
        visible
    }

    /// The rest of the text, and the poll if the block made a valid one.
    fn finish(self) -> (String, Option<PollSpec>) {
        let Some(at) = self.block_at else {
            return (self.text[self.emitted..].to_owned(), None);
        };
        let block = &self.text[at + MARK.len()..];
        let (body, after) = match block.find("\n```") {
            Some(end) => (&block[..end], block[end + 4..].trim_start_matches('\n')),
            None => (block, ""),
        };
        match parse_poll(body) {
            Some(poll) => {
                // A poll with nothing before it still needs a message: its question.
                let shown_before = !self.text[..at].trim().is_empty();
                let tail = if shown_before || !after.trim().is_empty() {
                    after.to_owned()
                } else {
                    poll.question.clone()
                };
                (tail, Some(poll))
            }
            None => (format!("{}{after}", numbered_list(body)), None),
        }
    }
}

/// Where a poll fence opening a line starts, searching from `from`.
fn find_block(text: &str, from: usize) -> Option<usize> {
    let mut start = from;
    while let Some(found) = text[start..].find(MARK) {
        let at = start + found;
        let line_start = at == 0 || text[..at].ends_with('\n');
        let rest = &text[at + MARK.len()..];
        let fence_ends = rest.is_empty() || rest.starts_with('\n') || rest.starts_with("\r\n");
        if line_start && fence_ends {
            return Some(at);
        }
        start = at + MARK.len();
    }
    None
}

/// How many bytes at the end of `text` could be the beginning of the fence.
fn partial_mark(text: &str) -> usize {
    (1..MARK.len())
        .rev()
        .find(|k| text.ends_with(&MARK[..*k]))
        .unwrap_or(0)
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
        let mut splitter = PollSplitter::default();
        let mut visible: String = chunks.iter().map(|c| splitter.push(c)).collect();
        let (tail, poll) = splitter.finish();
        visible.push_str(&tail);
        (visible, poll)
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
        let mut splitter = PollSplitter::default();
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
