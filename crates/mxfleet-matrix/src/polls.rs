//! Native polls (MSC3381, the `org.matrix.msc3381.poll.*` events clients such as Element send
//! and show): sending a single-choice poll, and reading a vote on one back.

use matrix_sdk::{
    Room,
    ruma::{
        EventId, UserId,
        events::{
            AnyMessageLikeEventContent, AnySyncMessageLikeEvent, AnySyncTimelineEvent,
            SyncMessageLikeEvent,
            poll::{
                start::PollKind,
                unstable_start::{
                    NewUnstablePollStartEventContent, UnstablePollAnswer, UnstablePollAnswers,
                    UnstablePollStartContentBlock, UnstablePollStartEventContent,
                },
            },
            relation::Thread,
            room::message::RelationWithoutReplacement,
        },
    },
};

use crate::{FailureClass, MatrixFailure, Placement};

/// A vote on one of the bot's polls, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollVote {
    /// The poll's question.
    pub question: String,
    /// The chosen answers' texts.
    pub chosen: Vec<String>,
}

/// A single-choice poll with visible results, placed like an answer (in the thread, if the
/// answer is); its text fallback lists the answers for clients without polls.
pub fn poll_content(
    question: &str,
    answers: &[String],
    placement: &Placement,
) -> Result<AnyMessageLikeEventContent, MatrixFailure> {
    let options: Vec<UnstablePollAnswer> = answers
        .iter()
        .enumerate()
        .map(|(i, text)| UnstablePollAnswer::new(format!("answer-{}", i + 1), text.clone()))
        .collect();
    let options = UnstablePollAnswers::try_from(options)
        .map_err(|e| MatrixFailure::new(FailureClass::Fatal, format!("not a valid poll: {e}")))?;
    let mut block = UnstablePollStartContentBlock::new(question, options);
    block.kind = PollKind::Disclosed;
    let mut fallback = format!("{question}\n");
    for (i, answer) in answers.iter().enumerate() {
        fallback.push_str(&format!("{}. {answer}\n", i + 1));
    }
    let mut content = NewUnstablePollStartEventContent::plain_text(fallback.trim_end(), block);
    if let Placement::Thread { root, latest, .. } = placement {
        content.relates_to = Some(RelationWithoutReplacement::Thread(Thread::plain(
            root.clone(),
            latest.clone(),
        )));
    }
    Ok(UnstablePollStartEventContent::New(content).into())
}

/// What a vote for `answer_ids` on `poll_id` means, if `poll_id` is a poll `own_user` sent.
pub async fn read_vote(
    room: &Room,
    own_user: &UserId,
    poll_id: &EventId,
    answer_ids: &[String],
) -> Result<Option<PollVote>, MatrixFailure> {
    let event = room
        .load_or_fetch_event(poll_id, None)
        .await
        .map_err(|e| MatrixFailure::from_sdk("reading the poll", &e))?;
    let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::UnstablePollStart(
        SyncMessageLikeEvent::Original(poll),
    ))) = event.raw().deserialize()
    else {
        return Ok(None);
    };
    if poll.sender != own_user {
        return Ok(None);
    }
    let start = poll.content.poll_start();
    let chosen = answer_ids
        .iter()
        .filter_map(|id| start.answers.iter().find(|a| &a.id == id))
        .map(|a| a.text.clone())
        .collect();
    Ok(Some(PollVote {
        question: start.question.text.clone(),
        chosen,
    }))
}
