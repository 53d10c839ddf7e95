//! A small agent behind a webhook: answers `agent heard: <last user message>` as NDJSON deltas.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::HeaderMap,
    response::Response,
    routing::post,
};
use serde_json::{Value, json};

use crate::SeenRequest;

/// The fake agent; stops when dropped.
#[derive(Debug)]
pub struct FakeWebhook {
    /// The URL to POST to.
    pub url: String,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeWebhook {
    /// Starts the agent on a loopback port.
    pub async fn start() -> anyhow::Result<FakeWebhook> {
        let requests = Arc::new(Mutex::new(Vec::new()));
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
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(requests): State<Arc<Mutex<Vec<SeenRequest>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(SeenRequest {
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        });
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
