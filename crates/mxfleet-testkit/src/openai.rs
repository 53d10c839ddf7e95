//! A small OpenAI-compatible chat-completions server that streams its answers over SSE.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::post,
};
use futures_util::stream;
use serde_json::{Value, json};

/// A request the server received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The JSON body.
    pub body: Value,
}

/// The requests a fake server received, shared with its handlers.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestLog(Arc<Mutex<Vec<SeenRequest>>>);

impl RequestLog {
    /// Records a request.
    pub(crate) fn record(&self, headers: &HeaderMap, body: Value) {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(SeenRequest {
                authorization,
                body,
            });
    }

    /// Everything recorded so far.
    pub(crate) fn all(&self) -> Vec<SeenRequest> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The fake server; stops when dropped.
#[derive(Debug)]
pub struct FakeOpenAi {
    /// Base URL including `/v1`.
    pub base_url: String,
    requests: RequestLog,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct AppState {
    requests: RequestLog,
    chunk_chars: usize,
    delay: Duration,
    text: Option<String>,
}

impl FakeOpenAi {
    /// Starts a server that answers `openai says: <last user message>` in chunks of
    /// `chunk_chars` characters, a few milliseconds apart.
    pub async fn start(chunk_chars: usize) -> anyhow::Result<FakeOpenAi> {
        Self::start_with(chunk_chars, Duration::from_millis(3), None).await
    }

    /// Starts a server that answers `text` (or the default answer) in chunks of `chunk_chars`
    /// characters, `delay` apart.
    pub async fn start_with(
        chunk_chars: usize,
        delay: Duration,
        text: Option<String>,
    ) -> anyhow::Result<FakeOpenAi> {
        let requests = RequestLog::default();
        let state = AppState {
            requests: requests.clone(),
            chunk_chars: chunk_chars.max(1),
            delay,
            text,
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(state);
        let (addr, task) = crate::serve_on_loopback(app).await?;
        Ok(FakeOpenAi {
            base_url: format!("http://{addr}/v1"),
            requests,
            task,
        })
    }

    /// The answer the server gives to `user_message`.
    pub fn answer_for(user_message: &str) -> String {
        format!("openai says: {user_message} — streamed with ünïcödé ✓")
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.requests.all()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Body::from("bad json"))
            .unwrap_or_default();
    };
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    state.requests.record(&headers, body.clone());
    let answer: Vec<char> = state
        .text
        .clone()
        .unwrap_or_else(|| FakeOpenAi::answer_for(&last_user))
        .chars()
        .collect();
    let delay = state.delay;
    let mut events: Vec<String> = vec![chunk(json!({"role": "assistant"}))];
    events.extend(
        answer
            .chunks(state.chunk_chars)
            .map(|c| chunk(json!({"content": c.iter().collect::<String>()}))),
    );
    events.push("data: [DONE]\n\n".to_owned());
    let stream = stream::unfold(events.into_iter(), move |mut events| async move {
        let event = events.next()?;
        tokio::time::sleep(delay).await;

        Some((Ok::<_, Infallible>(Bytes::from(event)), events))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

fn chunk(delta: Value) -> String {
    let value = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": "test",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
    format!("data: {value}\n\n")
}
