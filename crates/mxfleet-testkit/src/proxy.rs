//! An HTTP proxy in front of Synapse that records every request (method, path and query), so
//! tests can count `/login` calls, see a `/sync`'s timeout, or requests made after a failure;
//! and that injects faults: an error answer instead of forwarding, a network cut (every
//! connection dropped without an answer), or a lost response (the request reaches Synapse, the
//! answer never comes back).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

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
    cut: Arc<AtomicBool>,
    lost: Arc<Mutex<Vec<Loss>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A failure the proxy injects instead of forwarding.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Requests whose path ends with this, or contains it, fail.
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
    cut: Arc<AtomicBool>,
    /// Responses to lose.
    lost: Arc<Mutex<Vec<Loss>>>,
}

/// A response to lose: the one of the request after `skip` more matching `path_part`.
#[derive(Debug)]
struct Loss {
    path_part: String,
    skip: usize,
    done: bool,
    /// The fault every request after the lost one meets, until the test heals the proxy.
    then: Option<Fault>,
}

impl CountingProxy {
    /// Proxies to `upstream`.
    pub async fn start(upstream: &str) -> anyhow::Result<CountingProxy> {
        let state = AppState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            paths: Arc::default(),
            fault: Arc::default(),
            cut: Arc::default(),
            lost: Arc::default(),
        };
        let app = Router::new().fallback(forward).with_state(state.clone());
        let (addr, task) = crate::serve_on_loopback(app).await?;
        Ok(CountingProxy {
            url: format!("http://{addr}"),
            paths: state.paths,
            fault: state.fault,
            cut: state.cut,
            lost: state.lost,
            task,
        })
    }

    /// Makes matching requests fail (or, with `None`, heals the proxy).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.fault) = fault;
    }

    /// Cuts the network (`true`): every request, and every answer still on its way, has its
    /// connection dropped; `false` heals it.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// Loses the response of the `nth` (1-based, counted from now) request whose path contains
    /// `path_part`: it reaches Synapse, its answer never comes back (the connection is dropped).
    pub fn lose_response(&self, path_part: &str, nth: usize) {
        self.lose(path_part, nth, None);
    }

    /// Loses the response of the `nth` request whose path contains `path_part`, as
    /// [`lose_response`](Self::lose_response) does, and from that moment answers with `fault`
    /// (until [`set_fault`](Self::set_fault) heals it): the request landed, and neither it
    /// nor any retry gets an answer that says so.
    pub fn lose_response_then_fail(&self, path_part: &str, nth: usize, fault: Fault) {
        self.lose(path_part, nth, Some(fault));
    }

    fn lose(&self, path_part: &str, nth: usize, then: Option<Fault>) {
        lock(&self.lost).push(Loss {
            path_part: path_part.to_owned(),
            skip: nth.saturating_sub(1),
            done: false,
            then,
        });
    }

    /// Every request seen so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.paths).clone()
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
    lock(&state.paths).push(format!(
        "{method} {}",
        uri.path_and_query().map_or("/", |p| p.as_str())
    ));
    if state.cut.load(Ordering::SeqCst) {
        return dropped();
    }
    let fault = lock(&state.fault).clone();
    if let Some(fault) = fault.filter(|f| uri.path().contains(&f.path_suffix)) {
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
    let lose = match take_loss(&state.lost, uri.path()) {
        Some(then) => {
            if then.is_some() {
                *lock(&state.fault) = then;
            }
            true
        }
        None => false,
    };
    match request.send().await {
        Ok(_) if lose || state.cut.load(Ordering::SeqCst) => dropped(),
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

/// A response whose body fails at once: the connection is dropped without an answer.
fn dropped() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("dropped by the test proxy"))
    });
    Response::builder()
        .status(200)
        .body(Body::from_stream(failing))
        .unwrap_or_default()
}

/// Whether the response to a request for `path` is to be lost (and counts it): if so, with
/// the fault to answer with from then on.
fn take_loss(lost: &Mutex<Vec<Loss>>, path: &str) -> Option<Option<Fault>> {
    let mut lost = lock(lost);
    for loss in lost
        .iter_mut()
        .filter(|l| !l.done && path.contains(&l.path_part))
    {
        if loss.skip == 0 {
            loss.done = true;
            return Some(loss.then.take());
        }
        loss.skip -= 1;
    }
    None
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
