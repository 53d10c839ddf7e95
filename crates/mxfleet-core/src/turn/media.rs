//! What is not text in a message: voice messages become their transcript, images reach
//! backends that see them, votes on the bot's polls become words. Failures are logged here in
//! full; the sender gets a sentence from [`texts`], never an error body.

use mxfleet_backend::{ChatMessage, Image};
use mxfleet_matrix::media::{MediaError, download};
use mxfleet_message::{Attachment, InboundMessage, Media, UNSEEN};
use tracing::{info, warn};

use super::{context::TurnContext, room::RoomPort};
use crate::texts;

/// The words of a voice message, or the reply saying why there are none.
pub(crate) async fn transcribe_voice(ctx: &TurnContext, media: &Media) -> Result<String, String> {
    let Some(stt) = &ctx.spec.transcription else {
        info!("voice message, but no transcription backend is configured");
        return Err(texts::VOICE_NOT_SET_UP.into());
    };
    let audio = download(
        &ctx.client,
        media,
        ctx.spec.max_media_bytes,
        media_timeout(ctx),
    )
    .await
    .map_err(|e| {
        warn!(error = %e, "voice message not downloaded");
        match e {
            MediaError::TooLarge { .. } => texts::voice_too_long(&e.to_string()),
            MediaError::Blocked => texts::MEDIA_OFF.to_owned(),
            _ => texts::VOICE_NOT_DOWNLOADED.to_owned(),
        }
    })?;
    let mimetype = media
        .mimetype
        .as_deref()
        .unwrap_or("application/octet-stream");
    let text = mxfleet_backend::transcribe(stt, audio, &media.name, mimetype)
        .await
        .map_err(|e| {
            warn!(backend = %stt.backend_name, error = %e, "transcription failed");
            texts::VOICE_NOT_TRANSCRIBED.to_owned()
        })?;
    if text.is_empty() {
        return Err(texts::VOICE_SILENT.into());
    }
    info!(chars = text.len(), "voice message transcribed");
    Ok(text)
}

/// Downloads the image `media` (if it is one) and attaches it to `current`, whose text then no
/// longer says the backend cannot see it. On failure the text stays as it is.
pub(crate) async fn attach_image(ctx: &TurnContext, media: &Media, current: &mut ChatMessage) {
    let Some(mimetype) = media
        .mimetype
        .as_deref()
        .filter(|m| m.starts_with("image/"))
    else {
        return;
    };
    match download(
        &ctx.client,
        media,
        ctx.spec.max_media_bytes,
        media_timeout(ctx),
    )
    .await
    {
        Ok(bytes) => {
            info!(bytes = bytes.len(), "image passed to the backend");
            current
                .images
                .push(Image::new(mimetype, &media.name, &bytes));
            current.content = current.content.replace(UNSEEN, "; attached]");
        }
        Err(e) => warn!(error = %e, "image not passed to the backend"),
    }
}

/// How long one media download may take on this account.
fn media_timeout(ctx: &TurnContext) -> std::time::Duration {
    std::time::Duration::from_secs(ctx.spec.media_timeout_secs)
}

/// For a vote on a poll: the vote in words if the poll is the bot's (`None` otherwise, or if
/// the poll cannot be read). `None` for anything else.
pub(crate) async fn vote_words<R: RoomPort>(room: &R, message: &InboundMessage) -> Option<String> {
    let Some(Attachment::PollResponse { poll_id, answers }) = &message.attachment else {
        return None;
    };
    match room.poll_vote(poll_id, answers).await {
        Ok(Some(vote)) => Some(texts::vote(&vote.question, &vote.chosen)),
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "could not read the poll voted on");
            None
        }
    }
}
