//! The [`Backend`] trait and mxfleet's built-in backends.
//!
//! A backend turns a conversation into a stream of text deltas. The account actor concatenates
//! them (or, with streaming edits, shows them as they come). Backends know nothing of Matrix.
//!
//! - [`EchoBackend`] answers with the user's own words, for demos and tests.
//! - [`OpenAiBackend`] calls an OpenAI-compatible `/chat/completions` endpoint with SSE streaming.

mod echo;
mod openai;
mod sse;

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use mxfleet_config::BackendSpec;
use serde::Serialize;

pub use echo::EchoBackend;
pub use openai::OpenAiBackend;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The human side.
    User,
    /// The bot.
    Assistant,
}

/// One message of the conversation sent to a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

/// A request to a backend.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation, oldest first; the last message is the one to answer.
    pub messages: Vec<ChatMessage>,
}

/// A conversational AI backend.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and status (`echo`, `openai`).
    fn kind(&self) -> &'static str;

    /// Starts answering `request`; the stream yields text deltas.
    fn stream(&self, request: ChatRequest) -> TextStream;
}

/// Builds the backend described by `spec`.
pub fn build(spec: &BackendSpec) -> Result<Arc<dyn Backend>, BackendError> {
    Ok(match spec {
        BackendSpec::Echo { prefix } => Arc::new(EchoBackend::new(prefix.clone())),
        BackendSpec::Openai { .. } => Arc::new(OpenAiBackend::new(spec)?),
    })
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
