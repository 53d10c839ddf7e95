//! The webhook backend: an external agent behind an HTTP endpoint.
//!
//! Each answer is one `POST` of the whole [`ChatRequest`] as JSON (plus `model` and
//! `system_prompt` when the route sets them). The agent answers with one of:
//! - `text/event-stream`: each event's data is `{"delta": "…"}` (or plain text); `[DONE]` ends it;
//! - `application/x-ndjson` (or `application/jsonl`): one `{"delta": "…"}` object per line;
//! - `application/json`: `{"text": "…"}` with the whole answer;
//! - anything else: the body is the answer as plain text.
//!
//! An object with an `error` field ends the answer with that error.

use std::{collections::VecDeque, pin::Pin};

use futures_util::{Stream, StreamExt, stream};
use mxfleet_config::{BackendSpec, Secret, StreamFormat};
use serde_json::Value;

use crate::{
    Backend, BackendError, ChatRequest, RoutedRequest, TextStream, failed, openai::transport_error,
    post_json, sse::SseDecoder, status_error, with_traceparent,
};

/// A backend that POSTs conversations to an external agent.
#[derive(Debug, Clone)]
pub struct WebhookBackend {
    client: reqwest::Client,
    url: String,
    token: Option<Secret>,
    format: StreamFormat,
    model: Option<String>,
    system_prompt: Option<String>,
    images: bool,
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// How the body being read is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Sse,
    Ndjson,
    Whole,
}

struct Reader {
    body: Body,
    framing: Framing,
    sse: SseDecoder,
    pending: Vec<u8>,
    queue: VecDeque<Result<String, BackendError>>,
    done: bool,
}

impl WebhookBackend {
    /// Builds the backend from a `webhook` spec.
    pub fn new(spec: &BackendSpec) -> Result<Self, BackendError> {
        let BackendSpec::Webhook {
            url,
            token,
            format,
            model,
            system_prompt,
            request_timeout_secs,
            images,
            ..
        } = spec
        else {
            return Err(BackendError::Config("not a webhook backend".into()));
        };
        let client = crate::http_client(*request_timeout_secs)?;
        Ok(Self {
            client,
            url: url.to_string(),
            token: token.clone(),
            format: *format,
            model: model.clone(),
            system_prompt: system_prompt.clone(),
            images: *images,
        })
    }
}

impl Backend for WebhookBackend {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn accepts_images(&self) -> bool {
        self.images
    }

    fn stream(&self, request: ChatRequest) -> TextStream {
        let body = RoutedRequest {
            request: &request,
            model: self.model.as_deref(),
            system_prompt: self.system_prompt.as_deref(),
        };
        let accept = "text/event-stream, application/x-ndjson, application/json, text/plain";
        let builder = match post_json(&self.client, &self.url, &body, accept, self.token.as_ref()) {
            Ok(builder) => with_traceparent(builder, &request),
            Err(e) => return failed(e),
        };
        let format = self.format;
        let start = async move {
            let response = builder.send().await.map_err(|e| transport_error(&e))?;
            if !response.status().is_success() {
                return Err(status_error(response).await);
            }
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_ascii_lowercase();
            Ok(Reader {
                body: Box::pin(response.bytes_stream()),
                framing: framing(format, &content_type),
                sse: SseDecoder::default(),
                pending: Vec::new(),
                queue: VecDeque::new(),
                done: false,
            })
        };
        Box::pin(
            stream::once(start)
                .map(|started| match started {
                    Ok(reader) => stream::unfold(reader, next_delta).left_stream(),
                    Err(e) => stream::once(async move { Err(e) }).right_stream(),
                })
                .flatten(),
        )
    }
}

fn framing(format: StreamFormat, content_type: &str) -> Framing {
    match format {
        StreamFormat::Sse => Framing::Sse,
        StreamFormat::Ndjson => Framing::Ndjson,
        StreamFormat::Text => Framing::Whole,
        StreamFormat::Auto if content_type.starts_with("text/event-stream") => Framing::Sse,
        StreamFormat::Auto
            if content_type.starts_with("application/x-ndjson")
                || content_type.starts_with("application/jsonl") =>
        {
            Framing::Ndjson
        }
        StreamFormat::Auto => Framing::Whole,
    }
}

async fn next_delta(mut r: Reader) -> Option<(Result<String, BackendError>, Reader)> {
    loop {
        if let Some(item) = r.queue.pop_front() {
            if item.is_err() {
                r.done = true;
                r.queue.clear();
            }
            return Some((item, r));
        }
        if r.done {
            return None;
        }
        match r.body.next().await {
            Some(Ok(chunk)) => r.feed(&chunk),
            Some(Err(e)) => {
                r.done = true;
                return Some((Err(transport_error(&e)), r));
            }
            None => {
                r.finish();
                r.done = true;
            }
        }
    }
}

impl Reader {
    fn feed(&mut self, chunk: &[u8]) {
        match self.framing {
            Framing::Sse => {
                for data in self.sse.push(chunk) {
                    self.take_frame(&data, true);
                }
            }
            Framing::Ndjson => {
                self.pending.extend_from_slice(chunk);
                while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line).trim().to_owned();
                    if !line.is_empty() {
                        self.take_frame(&line, false);
                    }
                }
            }
            Framing::Whole => self.pending.extend_from_slice(chunk),
        }
    }

    fn finish(&mut self) {
        match self.framing {
            Framing::Sse => {
                if let Some(data) = self.sse.finish() {
                    self.take_frame(&data, true);
                }
            }
            Framing::Ndjson => {
                let line = String::from_utf8_lossy(&self.pending).trim().to_owned();
                if !line.is_empty() {
                    self.take_frame(&line, false);
                }
            }
            Framing::Whole => {
                let text = String::from_utf8_lossy(&self.pending).into_owned();
                let item = match serde_json::from_str::<Value>(&text) {
                    Ok(value) if value.is_object() => frame_text(&value),
                    _ => Ok(Some(text)),
                };
                self.queue.extend(item.transpose());
            }
        }
    }

    /// Queues the text of one frame. SSE frames may be plain text; NDJSON lines must be JSON.
    fn take_frame(&mut self, data: &str, plain_allowed: bool) {
        if plain_allowed && data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        let item = match serde_json::from_str::<Value>(data) {
            Ok(value) if value.is_object() => frame_text(&value),
            _ if plain_allowed => Ok(Some(data.to_owned())),
            Ok(_) | Err(_) => Err(BackendError::Protocol(format!(
                "NDJSON line is not a JSON object: {}",
                data.chars().take(80).collect::<String>()
            ))),
        };
        self.queue.extend(item.transpose());
    }
}

/// The text an answer object carries: `delta`, `text` or `content`; `error` is an error.
fn frame_text(value: &Value) -> Result<Option<String>, BackendError> {
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| error.as_str())
            .unwrap_or("unknown error");
        return Err(BackendError::Protocol(format!("agent error: {message}")));
    }
    let text = ["delta", "text", "content"]
        .iter()
        .find_map(|k| value.get(*k).and_then(Value::as_str));
    Ok(text.filter(|t| !t.is_empty()).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(framing: Framing) -> Reader {
        Reader {
            body: Box::pin(stream::empty()),
            framing,
            sse: SseDecoder::default(),
            pending: Vec::new(),
            queue: VecDeque::new(),
            done: false,
        }
    }

    fn texts(r: &mut Reader) -> Vec<String> {
        r.queue.drain(..).filter_map(Result::ok).collect()
    }

    #[test]
    fn ndjson_lines_split_anywhere_are_reassembled() {
        let mut r = reader(Framing::Ndjson);
        let input = "{\"delta\":\"Hel\"}\n{\"delta\":\"lo é\"}\n{\"text\":\"!\"}";
        for byte in input.as_bytes().chunks(3) {
            r.feed(byte);
        }
        r.finish();
        assert_eq!(texts(&mut r).concat(), "Hello é!");
    }

    #[test]
    fn sse_frames_may_be_json_or_plain_and_done_ends() {
        let mut r = reader(Framing::Sse);
        r.feed(b"data: {\"delta\":\"a\"}\n\ndata: b\n\ndata: [DONE]\n\n");
        assert_eq!(texts(&mut r), ["a", "b"]);
        assert!(r.done);
    }

    #[test]
    fn whole_bodies_are_json_or_text_and_errors_surface() {
        let mut r = reader(Framing::Whole);
        r.feed(b"{\"text\":\"all at once\"}");
        r.finish();
        assert_eq!(texts(&mut r), ["all at once"]);
        let mut r = reader(Framing::Whole);
        r.feed(b"just text");
        r.finish();
        assert_eq!(texts(&mut r), ["just text"]);
        let mut r = reader(Framing::Ndjson);
        r.feed(b"{\"error\":\"boom\"}\n");
        assert!(
            matches!(r.queue.pop_front(), Some(Err(BackendError::Protocol(m))) if m.contains("boom"))
        );
    }

    #[test]
    fn framing_follows_the_content_type_unless_forced() {
        assert_eq!(
            framing(StreamFormat::Auto, "text/event-stream; charset=utf-8"),
            Framing::Sse
        );
        assert_eq!(
            framing(StreamFormat::Auto, "application/x-ndjson"),
            Framing::Ndjson
        );
        assert_eq!(
            framing(StreamFormat::Auto, "application/json"),
            Framing::Whole
        );
        assert_eq!(framing(StreamFormat::Ndjson, "text/plain"), Framing::Ndjson);
    }
}
