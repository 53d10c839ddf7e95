//! Downloading the media that came with a message (voice messages, images), plain or encrypted.
//!
//! The download is mxfleet's own request, not matrix-sdk's (which reads any body whole, with no
//! timeout): the body is read chunk by chunk and dropped as soon as it passes `max_media_bytes`
//! — whatever size the sender announced — and the whole download has a deadline. Encrypted
//! media is decrypted (and its hash checked) in memory afterwards; nothing is written to disk.

use std::{io::Read, sync::OnceLock, time::Duration};

use matrix_sdk::{
    Client,
    ruma::{
        api::{Metadata, SupportedVersions, client::authenticated_media},
        events::room::{EncryptedFile, MediaSource},
    },
};
use matrix_sdk_base::crypto::AttachmentDecryptor;
use mxfleet_message::Media;
use url::Url;

/// Why media could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The account takes no media at all (`max_media_bytes = 0`).
    #[error("this bot takes no media (max_media_bytes = 0)")]
    Blocked,
    /// Larger than the account's `max_media_bytes`.
    #[error("it is {size} bytes, more than max_media_bytes ({max})")]
    TooLarge {
        /// Its size (announced, or what had arrived when the download was stopped).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The event's media reference does not parse.
    #[error("its media reference is malformed: {0}")]
    Malformed(String),
    /// The download did not finish within the account's `media_timeout_secs`.
    #[error("the download took longer than {0:?}")]
    TimedOut(Duration),
    /// The download (or its decryption) failed.
    #[error("downloading it failed: {0}")]
    Download(String),
}

/// Downloads `media`, decrypting it if it is encrypted, within `timeout`; refuses more than
/// `max_bytes` (by the size the sender announced, then by what arrives, stopping there).
pub async fn download(
    client: &Client,
    media: &Media,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Vec<u8>, MediaError> {
    if max_bytes == 0 {
        return Err(MediaError::Blocked);
    }
    if let Some(size) = media.size.filter(|s| *s > max_bytes) {
        return Err(MediaError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let source: MediaSource = serde_json::from_value(media.source.clone())
        .map_err(|e| MediaError::Malformed(e.to_string()))?;
    let (uri, encryption) = match source {
        MediaSource::Plain(uri) => (uri, None),
        MediaSource::Encrypted(file) => (file.url.clone(), Some(*file)),
    };
    let (server, media_id) = uri
        .parts()
        .map_err(|e| MediaError::Malformed(e.to_string()))?;
    let authenticated = match client.supported_versions().await {
        Ok(versions) => authenticated_media_supported(&versions),
        Err(_) => true,
    };
    let url = download_url(
        &client.homeserver(),
        server.as_str(),
        media_id,
        authenticated,
    )?;
    let token = client.access_token();
    let fetched = fetch_within(timeout, url, token.as_deref(), max_bytes).await?;
    match encryption {
        None => Ok(fetched),
        Some(file) => decrypt(fetched, file),
    }
}

/// [`fetch_capped`] that gives up after `timeout`, however the server dawdles.
pub async fn fetch_within(
    timeout: Duration,
    url: Url,
    token: Option<&str>,
    max_bytes: u64,
) -> Result<Vec<u8>, MediaError> {
    tokio::time::timeout(timeout, fetch_capped(http(), url, token, max_bytes))
        .await
        .map_err(|_| MediaError::TimedOut(timeout))?
}

/// GETs `url` (with `token` as bearer) and reads its body chunk by chunk, giving up as soon as
/// more than `max_bytes` arrived (or the `Content-Length` says it will).
pub async fn fetch_capped(
    http: &reqwest::Client,
    url: Url,
    token: Option<&str>,
    max_bytes: u64,
) -> Result<Vec<u8>, MediaError> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    // The error's URL holds no secret (the token is a header), but is left out all the same.
    let mut response = request
        .send()
        .await
        .map_err(|e| MediaError::Download(e.without_url().to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(MediaError::Download(format!(
            "the homeserver answered {status}"
        )));
    }
    if let Some(size) = response.content_length().filter(|s| *s > max_bytes) {
        return Err(MediaError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| MediaError::Download(e.without_url().to_string()))?
    {
        let size = u64::try_from(body.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
        if size > max_bytes {
            return Err(MediaError::TooLarge {
                size,
                max: max_bytes,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether the homeserver serves the authenticated media endpoints (Matrix 1.11).
fn authenticated_media_supported(versions: &SupportedVersions) -> bool {
    authenticated_media::get_content::v1::Request::PATH_BUILDER.is_supported(versions)
}

/// The download URL of `server`/`media_id` on `homeserver`, each part percent-encoded.
fn download_url(
    homeserver: &Url,
    server: &str,
    media_id: &str,
    authenticated: bool,
) -> Result<Url, MediaError> {
    let prefix: &[&str] = match authenticated {
        true => &["_matrix", "client", "v1", "media", "download"],
        false => &["_matrix", "media", "v3", "download"],
    };
    let mut url = homeserver.clone();
    url.path_segments_mut()
        .map_err(|()| MediaError::Malformed("the homeserver URL cannot have a path".into()))?
        .pop_if_empty()
        .extend(prefix)
        .push(server)
        .push(media_id);
    Ok(url)
}

/// Decrypts `ciphertext` with `file`'s key, checking its hash.
fn decrypt(ciphertext: Vec<u8>, file: EncryptedFile) -> Result<Vec<u8>, MediaError> {
    let mut cursor = std::io::Cursor::new(ciphertext);
    let mut reader = AttachmentDecryptor::new(&mut cursor, file.into())
        .map_err(|e| MediaError::Download(format!("cannot decrypt it: {e}")))?;
    let mut plain = Vec::new();
    reader
        .read_to_end(&mut plain)
        .map_err(|e| MediaError::Download(format!("cannot decrypt it: {e}")))?;
    Ok(plain)
}

/// The HTTP client for downloads (one for the process: connections are pooled).
fn http() -> &'static reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(reqwest::Client::new)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A server that answers every request with `head` and then `body_chunk` forever (and
    /// then nothing, when either is empty); returns its URL.
    async fn server(head: &'static str, body_chunk: &'static [u8]) -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.ok();
        let addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = listener {
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut request = [0u8; 4096];
                        let _ = socket.read(&mut request).await;
                        let _ = socket.write_all(head.as_bytes()).await;
                        if head.is_empty() || body_chunk.is_empty() {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        while socket.write_all(body_chunk).await.is_ok() {}
                    });
                }
            });
        }
        let addr = addr.map(|a| a.to_string()).unwrap_or_default();
        Url::parse(&format!("http://{addr}/media")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn an_endless_body_is_dropped_at_the_limit() {
        // No Content-Length: only reading tells how big it is, and it never ends.
        let url = server(
            "HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\n\r\n",
            &[b'a'; 8192],
        )
        .await;
        let fetched = tokio::time::timeout(
            Duration::from_secs(20),
            fetch_capped(http(), url, None, 100_000),
        )
        .await;
        match fetched {
            Ok(Err(MediaError::TooLarge { size, max })) => {
                assert_eq!(max, 100_000);
                assert!(size > max && size < max + 100_000, "read {size} bytes");
            }
            other => panic!("expected TooLarge at the limit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_announced_length_over_the_limit_is_refused_before_reading() {
        let url = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n",
            &[b'a'; 8192],
        )
        .await;
        let fetched = fetch_capped(http(), url, None, 1024).await;
        assert!(
            matches!(
                fetched,
                Err(MediaError::TooLarge {
                    size: 999_999_999,
                    max: 1024
                })
            ),
            "{fetched:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_or_never_ends_is_given_up_on() {
        for url in [
            server("", b"").await,
            server("HTTP/1.1 200 OK\r\n\r\n", b"").await,
        ] {
            let started = std::time::Instant::now();
            let fetched = tokio::time::timeout(
                Duration::from_secs(20),
                fetch_within(Duration::from_secs(1), url, None, 1024),
            )
            .await;
            assert!(
                matches!(fetched, Ok(Err(MediaError::TimedOut(_)))),
                "{fetched:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn download_urls_are_encoded_under_the_homeserver_path() {
        let hs = Url::parse("https://hs.example/base/").unwrap_or_else(|e| panic!("{e}"));
        let url = download_url(&hs, "hs.example:8448", "abc/../x", true).map(String::from);
        assert_eq!(
            url.ok().as_deref(),
            Some(
                "https://hs.example/base/_matrix/client/v1/media/download/hs.example:8448/abc%2F..%2Fx"
            )
        );
        let legacy = download_url(&hs, "hs.example", "abc", false).map(String::from);
        assert_eq!(
            legacy.ok().as_deref(),
            Some("https://hs.example/base/_matrix/media/v3/download/hs.example/abc")
        );
    }
}
