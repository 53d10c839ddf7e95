//! A small agent behind a webhook: answers `agent heard: <last user message>` as NDJSON deltas.

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::HeaderMap,
    response::Response,
    routing::post,
};
use serde_json::{Value, json};

use crate::{SeenRequest, openai::RequestLog};

/// The fake agent; stops when dropped.
#[derive(Debug)]
pub struct FakeWebhook {
    /// The URL to POST to.
    pub url: String,
    requests: RequestLog,
    task: tokio::task::JoinHandle<()>,
}

impl FakeWebhook {
    /// Starts the agent on a loopback port.
    pub async fn start() -> anyhow::Result<FakeWebhook> {
        let requests = RequestLog::default();
        let app = Router::new()
            .route("/hook", post(answer))
            .with_state(requests.clone());
        let (addr, task) = crate::serve_on_loopback(app).await?;
        Ok(FakeWebhook {
            url: format!("http://{addr}/hook"),
            requests,
            task,
        })
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.requests.all()
    }
}

impl Drop for FakeWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(requests): State<RequestLog>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    requests.record(&headers, body);
    let lines = format!(
        "{}\n{}\n",
        json!({"delta": "agent heard: "}),
        json!({"delta": last})
    );
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from(lines))
        .unwrap_or_default()
}
