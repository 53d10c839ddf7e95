//! Speech-to-text through an OpenAI-compatible `/audio/transcriptions` endpoint (OpenAI,
//! whisper.cpp server, faster-whisper servers, LocalAI), for voice messages.

use mxfleet_config::Transcription;
use serde::Deserialize;

use crate::{BackendError, http_client, status_error};

/// The transcription's answer (`response_format = json`).
#[derive(Deserialize)]
struct Transcript {
    text: String,
}

/// Transcribes `audio` (a file called `file_name` of type `mimetype`) with `spec`'s model.
pub async fn transcribe(
    spec: &Transcription,
    audio: Vec<u8>,
    file_name: &str,
    mimetype: &str,
) -> Result<String, BackendError> {
    let client = http_client(spec.request_timeout_secs)?;
    let url = format!(
        "{}/audio/transcriptions",
        spec.base_url.as_str().trim_end_matches('/')
    );
    let boundary = format!("mxfleet-{:016x}", rand::random::<u64>());
    let body = multipart(
        &boundary,
        &[("model", &spec.model), ("response_format", "json")],
        ("file", file_name, mimetype, &audio),
    );
    let mut request = client
        .post(url)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body);
    if let Some(key) = &spec.api_key {
        request = request.bearer_auth(key.expose());
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            BackendError::Timeout
        } else {
            BackendError::Network(e.to_string())
        }
    })?;
    if !response.status().is_success() {
        return Err(status_error(response).await);
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| BackendError::Network(e.to_string()))?;
    let transcript: Transcript = serde_json::from_slice(&bytes)
        .map_err(|e| BackendError::Protocol(format!("transcription answer: {e}")))?;
    Ok(transcript.text.trim().to_owned())
}

/// A `multipart/form-data` body: text `fields`, then one file part.
fn multipart(
    boundary: &str,
    fields: &[(&str, &str)],
    (name, file_name, mimetype, bytes): (&str, &str, &str, &[u8]),
) -> Vec<u8> {
    let mut body = Vec::with_capacity(bytes.len() + 512);
    for (field, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    // Quotes and line breaks cannot be part of a quoted header value.
    let file_name: String = file_name
        .chars()
        .map(|c| {
            if matches!(c, '"' | '\r' | '\n' | '\\') {
                '_'
            } else {
                c
            }
        })
        .collect();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
             filename=\"{file_name}\"\r\nContent-Type: {mimetype}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multipart_body_has_the_fields_then_the_file() {
        let body = multipart(
            "B",
            &[("model", "whisper-1")],
            ("file", "vo\"ice.ogg", "audio/ogg", b"\x00\x01bytes"),
        );
        let expected = b"--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n\
--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"vo_ice.ogg\"\r\nContent-Type: audio/ogg\r\n\r\n\
\x00\x01bytes\r\n--B--\r\n";
        assert_eq!(body, expected.to_vec());
    }
}
