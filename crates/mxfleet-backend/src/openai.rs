//! The OpenAI-compatible chat-completions backend, streaming over SSE.
//!
//! Works with anything that speaks `POST {base_url}/chat/completions` with `"stream": true`:
//! OpenAI, OpenRouter, Ollama, vLLM, llama.cpp server. Each SSE event carries a
//! `chat.completion.chunk` whose `choices[0].delta.content` is the next piece of text; `[DONE]`
//! ends the stream. An `{"error": …}` event or a non-2xx status ends it with an error.

use std::{collections::VecDeque, pin::Pin};

use futures_util::{Stream, StreamExt, stream};
use mxfleet_config::{BackendSpec, Secret};
use serde::Serialize;
use serde_json::Value;

use crate::{
    Backend, BackendError, ChatMessage, ChatRequest, Role, TextStream, failed, post_json,
    sse::SseDecoder, status_error,
};

/// An OpenAI-compatible streaming chat backend.
#[derive(Debug, Clone)]
pub struct OpenAiBackend {
    client: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<Secret>,
    system_prompt: Option<String>,
    images: bool,
}

#[derive(Serialize)]
struct CompletionRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage>,
    stream: bool,
    /// Asks for the token usage in a last chunk (recorded on the backend call's span).
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A message as the API takes it: OpenAI's own `name` field only allows `[A-Za-z0-9_-]`, so
/// the speaker goes into the content instead.
#[derive(Serialize)]
struct WireMessage {
    role: Role,
    content: WireContent,
}

/// Plain text, or text and images as content parts (vision models).
#[derive(Serialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Parts(Vec<serde_json::Value>),
}

impl WireContent {
    fn of(message: &ChatMessage) -> Self {
        let text = message.attributed_content();
        if message.images.is_empty() {
            return Self::Text(text);
        }
        let mut parts = vec![serde_json::json!({ "type": "text", "text": text })];
        parts.extend(message.images.iter().map(|image| {
            serde_json::json!({ "type": "image_url", "image_url": { "url": image.data_url() } })
        }));
        Self::Parts(parts)
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

enum Stage {
    Connect(reqwest::RequestBuilder),
    Read {
        body: Body,
        decoder: SseDecoder,
        queue: VecDeque<String>,
        done: bool,
    },
    Finished,
}

impl OpenAiBackend {
    /// Builds the backend from an `openai` spec.
    pub fn new(spec: &BackendSpec) -> Result<Self, BackendError> {
        let BackendSpec::Openai {
            base_url,
            model,
            api_key,
            system_prompt,
            request_timeout_secs,
            images,
            ..
        } = spec
        else {
            return Err(BackendError::Config("not an openai backend".into()));
        };
        let client = crate::http_client(*request_timeout_secs)?;
        let endpoint = format!(
            "{}/chat/completions",
            base_url.as_str().trim_end_matches('/')
        );
        Ok(Self {
            client,
            endpoint,
            model: model.clone(),
            api_key: api_key.clone(),
            system_prompt: system_prompt.clone(),
            images: *images,
        })
    }
}

impl Backend for OpenAiBackend {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn accepts_images(&self) -> bool {
        self.images
    }

    fn stream(&self, request: ChatRequest) -> TextStream {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(prompt) = &self.system_prompt {
            messages.push(WireMessage {
                role: Role::System,
                content: WireContent::Text(prompt.clone()),
            });
        }
        messages.extend(request.messages.iter().map(|m| WireMessage {
            role: m.role,
            content: WireContent::of(m),
        }));
        let body = CompletionRequest {
            model: &self.model,
            messages,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        let accept = "text/event-stream";
        let builder = match post_json(
            &self.client,
            &self.endpoint,
            &body,
            accept,
            self.api_key.as_ref(),
        ) {
            Ok(builder) => crate::with_traceparent(builder, &request),
            Err(e) => return failed(e),
        };
        Box::pin(stream::unfold(Stage::Connect(builder), advance))
    }
}

/// Moves the stream one delta forward.
async fn advance(mut stage: Stage) -> Option<(Result<String, BackendError>, Stage)> {
    loop {
        stage = match stage {
            Stage::Finished => return None,
            Stage::Connect(builder) => match builder.send().await {
                Err(e) => return Some((Err(transport_error(&e)), Stage::Finished)),
                Ok(response) if !response.status().is_success() => {
                    return Some((Err(status_error(response).await), Stage::Finished));
                }
                Ok(response) => Stage::Read {
                    body: Box::pin(response.bytes_stream()),
                    decoder: SseDecoder::default(),
                    queue: VecDeque::new(),
                    done: false,
                },
            },
            Stage::Read {
                mut body,
                mut decoder,
                mut queue,
                mut done,
            } => {
                if let Some(delta) = queue.pop_front() {
                    return Some((
                        Ok(delta),
                        Stage::Read {
                            body,
                            decoder,
                            queue,
                            done,
                        },
                    ));
                }
                if done {
                    return None;
                }
                let events = match body.next().await {
                    Some(Ok(chunk)) => decoder.push(&chunk),
                    Some(Err(e)) => return Some((Err(transport_error(&e)), Stage::Finished)),
                    None => {
                        done = true;
                        decoder.finish().into_iter().collect()
                    }
                };
                for event in events {
                    match parse_event(&event) {
                        Ok(Event::Delta(text)) => queue.push_back(text),
                        Ok(Event::Done) => done = true,
                        Ok(Event::Nothing) => {}
                        Err(e) => return Some((Err(e), Stage::Finished)),
                    }
                }
                Stage::Read {
                    body,
                    decoder,
                    queue,
                    done,
                }
            }
        }
    }
}

enum Event {
    Delta(String),
    Done,
    Nothing,
}

fn parse_event(data: &str) -> Result<Event, BackendError> {
    if data.trim() == "[DONE]" {
        return Ok(Event::Done);
    }
    let value: Value = serde_json::from_str(data)
        .map_err(|e| BackendError::Protocol(format!("chunk is not JSON: {e}")))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(BackendError::Protocol(format!("stream error: {message}")));
    }
    if let Some(usage) = value.get("usage") {
        record_usage(usage);
    }
    let content = value
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    Ok(content.map_or(Event::Nothing, |text| Event::Delta(text.to_owned())))
}

/// Records the token counts of a `usage` object on the current span (the backend call's) by
/// the GenAI conventions; anything missing or malformed is left out.
fn record_usage(usage: &Value) {
    let span = tracing::Span::current();
    for (field, key) in [
        ("gen_ai.usage.input_tokens", "prompt_tokens"),
        ("gen_ai.usage.output_tokens", "completion_tokens"),
    ] {
        if let Some(tokens) = usage.get(key).and_then(Value::as_u64) {
            span.record(field, tokens);
        }
    }
}

pub(crate) fn transport_error(e: &reqwest::Error) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout
    } else {
        // Without the URL: it may carry credentials in its userinfo.
        BackendError::Network(e.without_url_string())
    }
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(self);
        let mut text = if self.is_connect() {
            "connection failed".to_owned()
        } else {
            "request failed".to_owned()
        };
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_become_content_parts_after_the_text() {
        let message = ChatMessage {
            content: "look".into(),
            images: vec![crate::Image::new("image/png", "a.png", b"\x89PNG")],
            ..ChatMessage::default()
        };
        let wire = serde_json::to_value(WireContent::of(&message)).unwrap_or_default();
        assert_eq!(
            wire,
            serde_json::json!([
                { "type": "text", "text": "look" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw==" } },
            ])
        );
        let plain = ChatMessage {
            content: "hi".into(),
            ..ChatMessage::default()
        };
        assert_eq!(
            serde_json::to_value(WireContent::of(&plain)).unwrap_or_default(),
            serde_json::json!("hi")
        );
    }

    #[test]
    fn parses_chunks_done_and_errors() {
        let chunk = r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#;
        assert!(matches!(parse_event(chunk), Ok(Event::Delta(t)) if t == "Hel"));
        let role_only = r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#;
        assert!(matches!(parse_event(role_only), Ok(Event::Nothing)));
        assert!(matches!(parse_event("[DONE]"), Ok(Event::Done)));
        assert!(
            matches!(parse_event(r#"{"error":{"message":"overloaded"}}"#), Err(BackendError::Protocol(m)) if m.contains("overloaded"))
        );
        assert!(matches!(
            parse_event("not json"),
            Err(BackendError::Protocol(_))
        ));
    }
}
