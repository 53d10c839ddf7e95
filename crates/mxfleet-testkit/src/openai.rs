//! A small OpenAI-compatible server: chat completions streamed over SSE, and speech-to-text
//! (`/audio/transcriptions`) whose "transcript" is the uploaded file's bytes read as text — a
//! test uploads a voice message whose content is the words it stands for.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
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
    /// The W3C `traceparent` header, if one was sent.
    pub traceparent: Option<String>,
}

/// The requests a fake server received, shared with its handlers.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestLog(Arc<Mutex<Vec<SeenRequest>>>);

impl RequestLog {
    /// Records a request.
    pub(crate) fn record(&self, headers: &HeaderMap, body: Value) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (authorization, traceparent) = (header("authorization"), header("traceparent"));
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(SeenRequest {
                authorization,
                body,
                traceparent,
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
    streams: Streams,
    task: tokio::task::JoinHandle<()>,
}

/// Answers streaming now, and the most there ever were at once.
#[derive(Debug, Clone, Default)]
struct Streams {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// One answer streaming; counted out when dropped.
struct Streaming(Streams);

impl Streaming {
    fn start(streams: &Streams) -> Self {
        let now = streams.now.fetch_add(1, Ordering::SeqCst) + 1;
        streams.peak.fetch_max(now, Ordering::SeqCst);
        Self(streams.clone())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct AppState {
    streams: Streams,
    requests: RequestLog,
    chunk_chars: usize,
    delay: Duration,
    text: Option<String>,
    /// Answers given in turn (the last one from then on), ahead of `text`.
    answers: Arc<Vec<String>>,
    answered: Arc<AtomicUsize>,
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
        Self::serve(chunk_chars, delay, text, Vec::new()).await
    }

    /// Starts a server that gives `answers` in turn, one per chat request (the last one to
    /// every request after), in chunks of `chunk_chars` characters, `delay` apart: a retried
    /// answer can differ from the first.
    pub async fn start_answering(
        chunk_chars: usize,
        delay: Duration,
        answers: Vec<String>,
    ) -> anyhow::Result<FakeOpenAi> {
        Self::serve(chunk_chars, delay, None, answers).await
    }

    async fn serve(
        chunk_chars: usize,
        delay: Duration,
        text: Option<String>,
        answers: Vec<String>,
    ) -> anyhow::Result<FakeOpenAi> {
        let requests = RequestLog::default();
        let streams = Streams::default();
        let state = AppState {
            streams: streams.clone(),
            requests: requests.clone(),
            chunk_chars: chunk_chars.max(1),
            delay,
            text,
            answers: Arc::new(answers),
            answered: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/audio/transcriptions", post(transcriptions))
            .with_state(state);
        let (addr, task) = crate::serve_on_loopback(app).await?;
        Ok(FakeOpenAi {
            base_url: format!("http://{addr}/v1"),
            requests,
            streams,
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

    /// The most chat answers that were streaming at the same time.
    pub fn peak_streams(&self) -> usize {
        self.streams.peak.load(Ordering::SeqCst)
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers `{"text": <the file part read as UTF-8>}`; records the request as
/// `{"transcription": {"model", "file_name", "content_type", "bytes"}}`.
async fn transcriptions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let boundary = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("boundary=").nth(1))
        .map(|b| format!("--{}", b.trim_matches('"')));
    let Some(boundary) = boundary else {
        return bad_request("not multipart");
    };
    let (mut model, mut file) = (None, None);
    for part in split(&body, boundary.as_bytes()) {
        let Some(split_at) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..split_at]).into_owned();
        let content = part[split_at + 4..]
            .strip_suffix(b"\r\n")
            .unwrap_or(&part[split_at + 4..]);
        let field = |name: &str| {
            head.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .map(str::to_owned)
        };
        match field("name").as_deref() {
            Some("model") => model = Some(String::from_utf8_lossy(content).into_owned()),
            Some("file") => {
                let content_type = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Type: "))
                    .map(str::to_owned);
                file = Some((field("filename"), content_type, content.to_vec()));
            }
            _ => {}
        }
    }
    let (Some(model), Some((file_name, content_type, bytes))) = (model, file) else {
        return bad_request("model and file are required");
    };
    state.requests.record(
        &headers,
        json!({ "transcription": {
            "model": model, "file_name": file_name, "content_type": content_type, "bytes": bytes.len(),
        }}),
    );
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(json!({ "text": text }).to_string()))
        .unwrap_or_default()
}

fn bad_request(why: &str) -> Response {
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .body(Body::from(why.to_owned()))
        .unwrap_or_default()
}

/// The parts of `body` between occurrences of `boundary`.
fn split<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, boundary) {
        parts.push(&rest[..at]);
        rest = &rest[at + boundary.len()..];
    }
    parts
        .into_iter()
        .skip(1)
        .map(|p| p.strip_prefix(b"\r\n").unwrap_or(p))
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
    let nth = state.answered.fetch_add(1, Ordering::SeqCst);
    let in_turn = state
        .answers
        .get(nth)
        .or_else(|| state.answers.last())
        .cloned();
    let answer: Vec<char> = in_turn
        .or_else(|| state.text.clone())
        .unwrap_or_else(|| FakeOpenAi::answer_for(&last_user))
        .chars()
        .collect();
    let delay = state.delay;
    let streaming = Streaming::start(&state.streams);
    let mut events: Vec<String> = vec![chunk(json!({"role": "assistant"}))];
    events.extend(
        answer
            .chunks(state.chunk_chars)
            .map(|c| chunk(json!({"content": c.iter().collect::<String>()}))),
    );
    let mut done = "data: [DONE]\n\n".to_owned();
    if body["stream_options"]["include_usage"] == true {
        // As OpenAI does: a last chunk with no choices and the usage (words as "tokens"), in
        // the same write as the end (the stream takes no longer for it).
        let prompt_tokens = last_user.split_whitespace().count();
        let completion_tokens = answer.iter().filter(|c| c.is_whitespace()).count() + 1;
        let usage = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
            "model": "test", "choices": [], "usage": {"prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}});
        done = format!("data: {usage}\n\n{done}");
    }
    events.push(done);
    // The count goes down when the stream ends or the client hangs up.
    let stream = stream::unfold(
        (events.into_iter(), streaming),
        move |(mut events, streaming)| async move {
            let event = events.next()?;
            tokio::time::sleep(delay).await;
            Some((Ok::<_, Infallible>(Bytes::from(event)), (events, streaming)))
        },
    );
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
