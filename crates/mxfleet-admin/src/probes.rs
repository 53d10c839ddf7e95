//! The unauthenticated listeners, each off unless given an address: health probes for an
//! orchestrator (`[probes] bind`) and Prometheus metrics for a scraper (`[metrics] bind`). They
//! show no account data beyond states and counters; the admin API keeps its token.
//!
//! | route | what |
//! |---|---|
//! | `GET /livez` | 200 while the fleet supervisor answers within [`LIVENESS_DEADLINE`], else 503 |
//! | `GET /readyz` | 200 when every account is syncing or deliberately parked, else 503 naming the others |
//! | `GET /metrics` | the Prometheus text exposition |

use std::{net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use mxfleet_core::{FleetMsg, StatusBoard};
use mxfleet_store::Store;
use ractor::ActorRef;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::warn;

use crate::{exposition, server};

/// How long the supervisor may take to answer a liveness probe.
pub const LIVENESS_DEADLINE: Duration = Duration::from_secs(2);

/// What the open listeners serve from.
#[derive(Clone)]
pub struct OpenState {
    /// The fleet's status.
    pub board: StatusBoard,
    /// The database (its size is a metric).
    pub store: Store,
    /// The fleet supervisor, asked by `/livez`.
    pub fleet: ActorRef<FleetMsg>,
}

/// Which routes one open listener serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenRoutes {
    /// `/livez` and `/readyz`.
    pub probes: bool,
    /// `/metrics`.
    pub metrics: bool,
}

/// Serves `routes` on `bind` without authentication until the task is aborted.
pub async fn serve_open(
    bind: SocketAddr,
    state: OpenState,
    routes: OpenRoutes,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let mut app = Router::new();
    if routes.probes {
        app = app
            .route("/livez", get(livez))
            .route("/readyz", get(readyz));
    }
    if routes.metrics {
        app = app.route("/metrics", get(open_metrics));
    }
    let what = match (routes.probes, routes.metrics) {
        (true, true) => "probes and metrics",
        (true, false) => "probes",
        _ => "metrics",
    };
    server::listen(bind, app.with_state(state), what).await
}

/// Whether the fleet supervisor answers within `deadline`.
pub async fn supervisor_answers(fleet: &ActorRef<FleetMsg>, deadline: Duration) -> bool {
    let (reply, answered) = oneshot::channel();
    if fleet.cast(FleetMsg::Ping(reply)).is_err() {
        return false;
    }
    matches!(tokio::time::timeout(deadline, answered).await, Ok(Ok(())))
}

async fn livez(State(state): State<OpenState>) -> Response {
    match supervisor_answers(&state.fleet, LIVENESS_DEADLINE).await {
        true => (StatusCode::OK, Json(json!({"status": "alive"}))).into_response(),
        false => {
            let reason = format!(
                "the fleet supervisor did not answer within {} s",
                LIVENESS_DEADLINE.as_secs()
            );
            warn!(%reason, "liveness probe failed");
            let body = json!({"status": "stuck", "reason": reason});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn readyz(State(state): State<OpenState>) -> Response {
    let readiness = state.board.snapshot().readiness();
    let code = match readiness.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(readiness)).into_response()
}

async fn open_metrics(State(state): State<OpenState>) -> Response {
    exposition::exposition(&state.board, &state.store)
}
