//! An HTTP proxy in front of Synapse that records every request (method, path and query), so
//! tests can count `/login` calls, see a `/sync`'s timeout, or requests made after a failure.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, Uri},
    response::Response,
};

/// The proxy; stops when dropped.
#[derive(Debug)]
pub struct CountingProxy {
    /// The proxy's base URL (give it to the account as its homeserver).
    pub url: String,
    paths: Arc<Mutex<Vec<String>>>,
    fault: Arc<Mutex<Option<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A failure the proxy injects instead of forwarding.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Requests whose path ends with this fail.
    pub path_suffix: String,
    /// The status to answer with.
    pub status: u16,
    /// The JSON body to answer with.
    pub body: String,
}

#[derive(Clone)]
struct AppState {
    upstream: String,
    client: reqwest::Client,
    paths: Arc<Mutex<Vec<String>>>,
    fault: Arc<Mutex<Option<Fault>>>,
}

impl CountingProxy {
    /// Proxies to `upstream`.
    pub async fn start(upstream: &str) -> anyhow::Result<CountingProxy> {
        let paths = Arc::new(Mutex::new(Vec::new()));
        let fault = Arc::new(Mutex::new(None));
        let state = AppState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            paths: paths.clone(),
            fault: fault.clone(),
        };
        let app = Router::new().fallback(forward).with_state(state);
        let (addr, task) = crate::serve_on_loopback(app).await?;
        Ok(CountingProxy {
            url: format!("http://{addr}"),
            paths,
            fault,
            task,
        })
    }

    /// Makes matching requests fail (or, with `None`, heals the proxy).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    /// Every request seen so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many requests had a path (query left out) ending in `suffix`.
    pub fn count_ending(&self, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|p| {
                p.split('?')
                    .next()
                    .is_some_and(|path| path.ends_with(suffix))
            })
            .count()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .paths
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(format!(
            "{method} {}",
            uri.path_and_query().map_or("/", |p| p.as_str())
        ));
    let fault = state
        .fault
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(fault) = fault.filter(|f| uri.path().ends_with(&f.path_suffix)) {
        return Response::builder()
            .status(fault.status)
            .header("content-type", "application/json")
            .body(Body::from(fault.body))
            .unwrap_or_default();
    }
    let url = format!(
        "{}{}",
        state.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = state.client.request(method, url).body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(upstream) => {
            let mut response = Response::builder().status(upstream.status());
            for (name, value) in upstream.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            let bytes = upstream.bytes().await.unwrap_or_default();
            response.body(Body::from(bytes)).unwrap_or_default()
        }
        Err(_) => Response::builder()
            .status(502)
            .body(Body::from("upstream unreachable"))
            .unwrap_or_default(),
    }
}
