//! Which backend answers: the account's, or a room's or user's override.

use std::{collections::HashMap, sync::Arc, time::Duration};

use mxfleet_backend::{Backend, ConcurrencyGate};
use mxfleet_config::{AccountSpec, BackendSpec, Route};
use mxfleet_matrix::matrix_sdk::ruma::UserId;
use tracing::error;

use crate::gate::RoomFacts;

/// A backend chosen for a message.
pub(crate) struct RouteBackend {
    /// Its name in `[backends]`.
    pub(crate) name: String,
    /// The model it asks for, if it names one.
    pub(crate) model: Option<String>,
    /// The backend.
    pub(crate) backend: Arc<dyn Backend>,
    /// How long an answer from it may take to be delivered: its request timeout plus time for
    /// the sends (each retried on 429s and transient errors).
    pub(crate) deadline: Duration,
    /// Its `max_concurrent` turns, shared by every account that uses it.
    pub(crate) gate: Option<ConcurrencyGate>,
}

/// Time given to an answer's sends beyond the backend's own request timeout.
const SENDING_ALLOWANCE: Duration = Duration::from_secs(300);

impl RouteBackend {
    fn new(name: &str, spec: &BackendSpec, backend: Arc<dyn Backend>) -> Self {
        let request = Duration::from_secs(spec.request_timeout_secs().unwrap_or(0));
        Self {
            name: name.to_owned(),
            model: spec.model().map(str::to_owned),
            backend,
            deadline: request.saturating_add(SENDING_ALLOWANCE),
            gate: spec
                .max_concurrent()
                .map(|max| ConcurrencyGate::of(name, max)),
        }
    }
}

/// The account's backends: its own, and the room and user overrides.
pub(crate) struct Routing {
    default: RouteBackend,
    rooms: HashMap<String, RouteBackend>,
    users: HashMap<String, RouteBackend>,
}

impl Routing {
    /// The account's backend plus one per override (an override whose backend cannot be built
    /// falls back to the account's, with an error logged).
    pub(crate) fn new(spec: &AccountSpec, backend: Arc<dyn Backend>) -> Self {
        let default = RouteBackend::new(&spec.backend_name, &spec.backend, backend);
        let build = |(key, route): (&String, &Route)| match mxfleet_backend::build(&route.backend) {
            Ok(backend) => Some((
                key.clone(),
                RouteBackend::new(&route.backend_name, &route.backend, backend),
            )),
            Err(e) => {
                error!(account = %spec.id, %key, error = %e, "override backend unusable; the account's backend answers instead");
                None
            }
        };
        Self {
            rooms: spec.room_routes.iter().filter_map(build).collect(),
            users: spec.user_routes.iter().filter_map(build).collect(),
            default,
        }
    }

    /// The user's override, else the room's (by id, alias, or the id of a room it upgraded),
    /// else the account's backend.
    pub(crate) fn pick(&self, sender: &UserId, room: &RoomFacts) -> &RouteBackend {
        self.users
            .get(sender.as_str())
            .or_else(|| room.names().find_map(|r| self.rooms.get(r)))
            .unwrap_or(&self.default)
    }
}
