//! The admin HTTP API: every route but the status page's static shell needs the bearer token.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness and how many accounts are syncing |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /accounts`, `GET /accounts/{id}` | state, children, last error, backoff, counters |
//! | `POST /accounts/{id}/start|stop|restart` | operator control of one account |
//! | `GET /otp` | pending one-time-code challenges, codes included |
//! | `POST /reload` | re-read the configuration and apply it |
//! | `GET /` | the status page (static; it asks for the token and calls the API) |

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use mxfleet_config::{ConfigError, Secret, ValidConfig, constant_time_eq};
use mxfleet_core::{AccountStatus, Control, ControlError, FleetMsg, StatusBoard};
use mxfleet_store::{Store, now_ms};
use ractor::ActorRef;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::exposition;

/// Re-reads the layered configuration (file, environment, flags) for a reload.
pub type ConfigLoader = Arc<dyn Fn() -> Result<ValidConfig, ConfigError> + Send + Sync>;

/// What the API serves from.
#[derive(Clone)]
pub struct AdminState {
    /// The fleet's status.
    pub board: StatusBoard,
    /// The database (OTP challenges).
    pub store: Store,
    /// The fleet supervisor.
    pub fleet: ActorRef<FleetMsg>,
    /// The bearer token.
    pub token: Secret,
    /// Loads the configuration anew for `POST /reload` and SIGHUP.
    pub loader: ConfigLoader,
}

/// One account as the API shows it.
#[derive(Debug, Serialize)]
pub struct AccountView {
    /// The account id.
    pub id: String,
    /// Seconds since the last successful sync.
    pub sync_lag_secs: Option<f64>,
    /// The supervision tree below the account.
    pub children: Value,
    /// The account's status.
    #[serde(flatten)]
    pub status: AccountStatus,
}

/// Serves the API on `bind` until the task is aborted.
pub async fn serve(
    bind: SocketAddr,
    state: AdminState,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    listen(bind, router(state), "admin API").await
}

/// Serves `app` on `bind` on a task of its own (until it is aborted); `what` names it in the
/// log. The admin API and the open listeners start this way.
pub(crate) async fn listen(
    bind: SocketAddr,
    app: Router,
    what: &'static str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    info!(%addr, "{what} listening");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "{what} stopped");
        }
    });
    Ok((addr, task))
}

/// The API's routes.
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/accounts", get(accounts))
        .route("/accounts/{id}", get(account))
        .route("/accounts/{id}/{action}", post(control))
        .route("/otp", get(otp))
        .route("/approvals", get(approvals))
        .route("/approvals/{account}/{sender}/revoke", post(revoke))
        .route("/reload", post(reload))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(page))
        .merge(protected)
        .with_state(state)
}

/// Loads the configuration anew and applies it to `fleet` (reload and SIGHUP share this). An
/// invalid configuration is rejected whole, with every problem, and nothing changes.
pub async fn reload_config(
    fleet: &ActorRef<FleetMsg>,
    loader: &ConfigLoader,
) -> Result<mxfleet_core::ReloadReport, Vec<String>> {
    let config =
        loader().map_err(|e| e.issues.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let (reply, report) = oneshot::channel();
    let message = FleetMsg::Reload {
        config: Box::new(config),
        reply,
    };
    fleet
        .cast(message)
        .map_err(|_| vec!["the fleet is shutting down".to_owned()])?;
    report
        .await
        .map_err(|_| vec!["the fleet stopped during the reload".to_owned()])
}

async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.expose().as_bytes()));
    if ok {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "missing or wrong bearer token"})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn health(State(state): State<AdminState>) -> Response {
    let snapshot = state.board.snapshot();
    let count = |wanted: mxfleet_core::AccountState| {
        snapshot
            .accounts
            .values()
            .filter(|a| a.state == wanted)
            .count()
    };
    let syncing = count(mxfleet_core::AccountState::Syncing);
    // A storage fault is the fleet's, not one account's: the process is unhealthy until it
    // passes (it resumes by itself).
    let degraded: Vec<&String> = snapshot
        .accounts
        .iter()
        .filter(|(_, a)| a.state == mxfleet_core::AccountState::Degraded)
        .map(|(id, _)| id)
        .collect();
    let (code, status) = match degraded.is_empty() {
        true => (StatusCode::OK, "ok"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "degraded"),
    };
    let body = json!({
        "status": status,
        "pid": snapshot.pid,
        "accounts": snapshot.accounts.len(),
        "syncing": syncing,
        "degraded": degraded,
    });
    (code, Json(body)).into_response()
}

async fn accounts(State(state): State<AdminState>) -> Json<Vec<AccountView>> {
    let snapshot = state.board.snapshot();
    Json(
        snapshot
            .accounts
            .into_iter()
            .map(|(id, status)| view(id, status))
            .collect(),
    )
}

async fn account(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.board.account(&id) {
        Some(status) => Json(view(id, status)).into_response(),
        None => not_found(&id),
    }
}

async fn control(
    State(state): State<AdminState>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let action = match action.as_str() {
        "start" => Control::Start,
        "stop" => Control::Stop,
        "restart" => Control::Restart,
        "relogin" => Control::Relogin,
        other => {
            let error = format!("unknown action {other:?}: start, stop, restart or relogin");
            return (StatusCode::NOT_FOUND, Json(json!({"error": error}))).into_response();
        }
    };
    let (reply, outcome) = oneshot::channel();
    let message = FleetMsg::Control {
        account: id.clone(),
        action,
        reply,
    };
    if state.fleet.cast(message).is_err() {
        return unavailable();
    }
    match outcome.await {
        Ok(Ok(())) => Json(json!({"ok": true, "account": id, "action": action})).into_response(),
        Ok(Err(ControlError::Unknown(_))) => not_found(&id),
        Ok(Err(e @ (ControlError::Disabled(_) | ControlError::NotPassword(_)))) => {
            (StatusCode::CONFLICT, Json(json!({"error": e.to_string()}))).into_response()
        }
        Ok(Err(e @ ControlError::Relogin { .. })) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
        Err(_) => unavailable(),
    }
}

/// Senders approved by a one-time code.
async fn approvals(State(state): State<AdminState>) -> Response {
    match state.store.approved_senders(None).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .into_iter()
                .map(|(account, sender, at)| {
                    json!({"account": account, "sender": sender, "approved_ms": at})
                })
                .collect();
            Json(list).into_response()
        }
        Err(e) => internal(&e),
    }
}

/// Withdraws an approval: the sender's next DM is challenged again.
async fn revoke(
    State(state): State<AdminState>,
    Path((account, sender)): Path<(String, String)>,
) -> Response {
    match state.store.revoke_sender(&account, &sender).await {
        Ok(true) => Json(json!({"ok": true, "account": account, "sender": sender})).into_response(),
        Ok(false) => {
            let error = format!("{sender} is not approved on {account}");
            (StatusCode::NOT_FOUND, Json(json!({"error": error}))).into_response()
        }
        Err(e) => internal(&e),
    }
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

async fn otp(State(state): State<AdminState>) -> Response {
    match state.store.otp_challenges(None).await {
        Ok(challenges) => {
            let now = now_ms();
            let list: Vec<Value> = challenges
                .into_iter()
                .filter(|(_, _, c)| {
                    c.expires_ms > now || c.locked_until_ms.is_some_and(|l| l > now)
                })
                .map(|(account, sender, c)| {
                    json!({
                        "account": account,
                        "sender": sender,
                        "code": c.code,
                        "room_id": c.room_id,
                        "issued_ms": c.issued_ms,
                        "expires_ms": c.expires_ms,
                        "attempts": c.attempts,
                        "locked_until_ms": c.locked_until_ms,
                    })
                })
                .collect();
            Json(list).into_response()
        }
        Err(e) => internal(&e),
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    match reload_config(&state.fleet, &state.loader).await {
        Ok(report) => Json(report).into_response(),
        Err(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "the new configuration was rejected; nothing changed", "problems": errors})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    exposition::exposition(&state.board, &state.store)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

fn view(id: String, status: AccountStatus) -> AccountView {
    let lag = status
        .last_sync_ms
        .map(|last| now_ms().saturating_sub(last) as f64 / 1000.0);
    let children = json!({
        "sync": status.sync,
        "stream_editor": status.stream_editor,
        "otp_gate": status.otp_gate,
        "crypto": status.crypto,
    });
    AccountView {
        id,
        sync_lag_secs: lag,
        children,
        status,
    }
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no account {id:?}")})),
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "the fleet is shutting down"})),
    )
        .into_response()
}
