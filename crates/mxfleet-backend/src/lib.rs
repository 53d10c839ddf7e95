//! The [`Backend`] trait and mxfleet's built-in backends.
//!
//! A backend turns a conversation into a stream of text deltas. The account actor concatenates
//! them (or, with streaming edits, shows them as they come). Backends know nothing of Matrix.
//!
//! - [`EchoBackend`] answers with the user's own words, for demos and tests.
//! - [`OpenAiBackend`] calls an OpenAI-compatible `/chat/completions` endpoint with SSE streaming.
//! - [`WebhookBackend`] POSTs the conversation to an external agent and reads its streamed answer.
//! - [`CommandBackend`] runs a CLI agent per answer and streams its stdout.

mod command;
mod concurrency;
mod echo;
mod openai;
mod sse;
mod transcribe;
mod webhook;

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use mxfleet_config::BackendSpec;
use serde::Serialize;

pub use command::CommandBackend;
pub use concurrency::ConcurrencyGate;
pub use echo::EchoBackend;
pub use openai::OpenAiBackend;
pub use webhook::WebhookBackend;

/// A stream of text deltas; an `Err` item ends it.
pub type TextStream = Pin<Box<dyn Stream<Item = Result<String, BackendError>> + Send>>;

/// Errors of a backend call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The endpoint answered with an HTTP error status.
    #[error("backend answered HTTP {status}: {detail}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// A short excerpt of the error body.
        detail: String,
    },
    /// The endpoint could not be reached or the connection broke.
    #[error("backend unreachable: {0}")]
    Network(String),
    /// The request took longer than the configured timeout.
    #[error("backend timed out")]
    Timeout,
    /// The endpoint sent something that is not the protocol.
    #[error("backend protocol error: {0}")]
    Protocol(String),
    /// The backend could not be built from its configuration.
    #[error("backend configuration: {0}")]
    Config(String),
}

impl BackendError {
    /// Whether trying the same request again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Network(_) | Self::Timeout => true,
            Self::Protocol(_) | Self::Config(_) => false,
        }
    }
}

/// Who said a message in the conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The human side.
    #[default]
    User,
    /// The bot.
    Assistant,
}

/// One message of the conversation sent to a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
    /// The speaker's (sanitised) display name, for user messages in group rooms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Images that came with the message (only for backends that take them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
}

/// An image a user sent, for backends that see images.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Image {
    /// Its MIME type, e.g. `image/png`.
    pub mimetype: String,
    /// Its file name.
    pub name: String,
    /// Its bytes, base64-encoded (standard alphabet, padded).
    pub data_base64: String,
}

impl Image {
    /// An image of `bytes`.
    pub fn new(mimetype: &str, name: &str, bytes: &[u8]) -> Self {
        use base64::Engine;
        Self {
            mimetype: mimetype.to_owned(),
            name: name.to_owned(),
            data_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// The image as a `data:` URL.
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mimetype, self.data_base64)
    }
}

impl ChatMessage {
    /// The content with the speaker named in front (`Name: text`), for backends that have no
    /// field for the speaker.
    pub fn attributed_content(&self) -> String {
        match &self.name {
            Some(name) => format!("{name}: {}", self.content),
            None => self.content.clone(),
        }
    }
}

/// A request to a backend.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatRequest {
    /// The conversation, oldest first; the last message is the one to answer.
    pub messages: Vec<ChatMessage>,
    /// The mxfleet account answering.
    pub account: String,
    /// The Matrix room.
    pub room_id: String,
    /// The thread root, when the conversation is a thread.
    pub thread_root: Option<String>,
    /// Who sent the message being answered.
    pub sender: String,
    /// The W3C trace context of the message's span (`00-<trace>-<span>-<flags>`) when traces
    /// are exported: sent as the `traceparent` header (webhook, openai) and the `TRACEPARENT`
    /// environment variable (command agents), so the backend's spans join the message's trace.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl ChatRequest {
    /// The text of the last user message, the one being answered.
    pub fn last_user_message(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
            .unwrap_or_default()
    }
}

/// A conversational AI backend.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and status (`echo`, `openai`).
    fn kind(&self) -> &'static str;

    /// Starts answering `request`; the stream yields text deltas.
    fn stream(&self, request: ChatRequest) -> TextStream;

    /// Whether images users send should be passed on ([`ChatMessage::images`]).
    fn accepts_images(&self) -> bool {
        false
    }
}

/// A request as sent to agents that take the whole conversation as JSON (webhook, command):
/// the request's fields plus the route's `model` and `system_prompt`, when set.
#[derive(Serialize)]
pub(crate) struct RoutedRequest<'a> {
    #[serde(flatten)]
    pub(crate) request: &'a ChatRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) system_prompt: Option<&'a str>,
}

/// An HTTP client with the whole-request `timeout` and a 10 s connect timeout.
pub(crate) fn http_client(timeout_secs: u64) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout_secs))
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| BackendError::Config(e.to_string()))
}

/// How much of an error body is kept in [`BackendError::Status`].
const ERROR_EXCERPT_CHARS: usize = 300;

/// A `POST` of `body` as JSON accepting `accept`, with `bearer` as its token if set.
pub(crate) fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &impl Serialize,
    accept: &str,
    bearer: Option<&mxfleet_config::Secret>,
) -> Result<reqwest::RequestBuilder, BackendError> {
    let body = serde_json::to_vec(body).map_err(|e| BackendError::Protocol(e.to_string()))?;
    let builder = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", accept)
        .body(body);
    Ok(match bearer {
        Some(token) => builder.bearer_auth(token.expose()),
        None => builder,
    })
}

/// `builder` with the request's `traceparent` header, if it has a trace context.
pub(crate) fn with_traceparent(
    builder: reqwest::RequestBuilder,
    request: &ChatRequest,
) -> reqwest::RequestBuilder {
    match &request.traceparent {
        Some(traceparent) => builder.header("traceparent", traceparent),
        None => builder,
    }
}

/// The error of a non-2xx response: its status and the start of its body.
pub(crate) async fn status_error(response: reqwest::Response) -> BackendError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let detail = text.chars().take(ERROR_EXCERPT_CHARS).collect();
    BackendError::Status { status, detail }
}

/// A stream that only yields `error`.
pub(crate) fn failed(error: BackendError) -> TextStream {
    Box::pin(futures_util::stream::once(async move { Err(error) }))
}

pub use transcribe::transcribe;

/// Builds the backend described by `spec`.
pub fn build(spec: &BackendSpec) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match spec {
        BackendSpec::Echo { prefix } => Arc::new(EchoBackend::new(prefix.clone())),
        BackendSpec::Openai { .. } => Arc::new(OpenAiBackend::new(spec)?),
        BackendSpec::Webhook { .. } => Arc::new(WebhookBackend::new(spec)?),
        BackendSpec::Command { .. } => Arc::new(CommandBackend::new(spec)?),
    })
}

/// Starts `request` on `backend`. A stream that fails before its first text with an error that
/// may pass ([`BackendError::is_transient`]: the endpoint unreachable, 429, 5xx, a timeout) is
/// asked once more, and the retry is logged; a second failure ends the stream with its error.
pub fn stream_retrying_once(backend: Arc<dyn Backend>, request: ChatRequest) -> TextStream {
    let mut first = backend.stream(request.clone());
    let chosen = async move {
        match first.next().await {
            Some(Err(e)) if e.is_transient() => {
                tracing::warn!(backend = backend.kind(), error = %e, "the backend failed before answering; asking it once more");
                backend.stream(request)
            }
            Some(item) => Box::pin(futures_util::stream::once(async move { item }).chain(first)),
            None => Box::pin(futures_util::stream::empty()) as TextStream,
        }
    };
    Box::pin(futures_util::stream::once(chosen).flatten())
}

/// Runs `request` to the end and returns the whole answer.
pub async fn collect(backend: &dyn Backend, request: ChatRequest) -> Result<String, BackendError> {
    let mut stream = backend.stream(request);
    let mut answer = String::new();
    while let Some(delta) = stream.next().await {
        answer.push_str(&delta?);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// Answers with the next of its scripted streams; counts the requests.
    struct Scripted {
        answers: Mutex<Vec<Vec<Result<String, BackendError>>>>,
        asked: AtomicUsize,
    }

    impl Backend for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }

        fn stream(&self, _request: ChatRequest) -> TextStream {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let mut answers = self
                .answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let next = if answers.is_empty() {
                Vec::new()
            } else {
                answers.remove(0)
            };
            Box::pin(futures_util::stream::iter(next))
        }
    }

    async fn run(answers: Vec<Vec<Result<String, BackendError>>>) -> (Vec<String>, usize) {
        let backend = Arc::new(Scripted {
            answers: Mutex::new(answers),
            asked: AtomicUsize::new(0),
        });
        let items: Vec<String> = stream_retrying_once(backend.clone(), ChatRequest::default())
            .map(|item| item.unwrap_or_else(|e| format!("error: {e}")))
            .collect()
            .await;
        (items, backend.asked.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_transient_failure_before_the_first_text_is_retried_once() {
        let down = || Err(BackendError::Network("refused".into()));
        let overloaded = || {
            Err(BackendError::Status {
                status: 503,
                detail: String::new(),
            })
        };
        let ok = |t: &str| Ok(t.to_owned());
        let cases = [
            (
                "answers at once",
                vec![vec![ok("a"), ok("b")]],
                vec!["a", "b"],
                1,
            ),
            (
                "down, then answers",
                vec![vec![down()], vec![ok("a")]],
                vec!["a"],
                2,
            ),
            (
                "down twice: the second error ends it",
                vec![vec![down()], vec![overloaded()]],
                vec!["error: backend answered HTTP 503: "],
                2,
            ),
            (
                "a permanent error is not retried",
                vec![
                    vec![Err(BackendError::Protocol("bad".into()))],
                    vec![ok("a")],
                ],
                vec!["error: backend protocol error: bad"],
                1,
            ),
            (
                "a failure after some text is not retried",
                vec![vec![ok("a"), down()], vec![ok("b")]],
                vec!["a", "error: backend unreachable: refused"],
                1,
            ),
            ("an empty answer", vec![vec![]], vec![], 1),
        ];
        for (name, answers, expected, asked) in cases {
            let (items, times) = run(answers).await;
            assert_eq!(items, expected, "{name}");
            assert_eq!(times, asked, "{name}");
        }
    }
}
