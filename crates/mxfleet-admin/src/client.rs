//! A small client for the admin API, used by `mxfleet status|start|stop|restart|otp|reload`.

use std::time::Duration;

use mxfleet_config::AdminSpec;
use serde_json::Value;

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The fleet is not reachable (not running, or another address).
    #[error(
        "cannot reach the admin API at {url}: {detail} (is `mxfleet run` running with this config?)"
    )]
    Unreachable {
        /// The URL tried.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The API answered with an error.
    #[error("the admin API answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error message (and problems, for a rejected reload).
        message: String,
    },
}

/// A client bound to one fleet's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    spec: AdminSpec,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for the API described by `spec`.
    pub fn new(spec: &AdminSpec) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self {
            base: format!("http://{}", spec.bind),
            spec: spec.clone(),
            http,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    /// `POST path`.
    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.post(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request
            .bearer_auth(self.spec.token.expose())
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                detail: if e.is_connect() {
                    "connection refused".into()
                } else {
                    e.to_string()
                },
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let mut message = body["error"].as_str().unwrap_or("no details").to_owned();
        if let Some(problems) = body["problems"].as_array() {
            for p in problems.iter().filter_map(Value::as_str) {
                message.push_str("\n  - ");
                message.push_str(p);
            }
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }
}
