//! Downloading the media that came with a message (voice messages), plain or encrypted.

use matrix_sdk::{
    Client,
    media::{MediaFormat, MediaRequestParameters},
    ruma::events::room::MediaSource,
};

use mxfleet_message::Media;

/// Why media could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Larger than the account's `max_media_bytes`.
    #[error("it is {size} bytes, more than max_media_bytes ({max})")]
    TooLarge {
        /// Its size (announced, or downloaded).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The event's media reference does not parse.
    #[error("its media reference is malformed: {0}")]
    Malformed(String),
    /// The download (or its decryption) failed.
    #[error("downloading it failed: {0}")]
    Download(String),
}

/// Downloads `media`, decrypting it if it is encrypted; refuses more than `max_bytes` (by the
/// size the sender announced before downloading, and by what arrived after).
pub async fn download(
    client: &Client,
    media: &Media,
    max_bytes: u64,
) -> Result<Vec<u8>, MediaError> {
    if let Some(size) = media.size.filter(|s| *s > max_bytes) {
        return Err(MediaError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let source: MediaSource = serde_json::from_value(media.source.clone())
        .map_err(|e| MediaError::Malformed(e.to_string()))?;
    let request = MediaRequestParameters {
        source,
        format: MediaFormat::File,
    };
    let bytes = client
        .media()
        .get_media_content(&request, false)
        .await
        .map_err(|e| MediaError::Download(e.to_string()))?;
    let size = bytes.len() as u64;
    if size > max_bytes {
        return Err(MediaError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    Ok(bytes)
}
