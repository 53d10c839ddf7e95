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
    /// falls back to the account's, with an error logged). A room override named by alias
    /// applies to the room the alias resolves to in `aliases` (the homeserver's directory), never
    /// to a room that merely claims the alias in its own state; one that did not resolve
    /// applies to no room.
    pub(crate) fn new(
        spec: &AccountSpec,
        backend: Arc<dyn Backend>,
        aliases: &HashMap<String, String>,
    ) -> Self {
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
        let by_id = |(key, route): (String, RouteBackend)| match key.starts_with('#') {
            true => aliases.get(&key).map(|id| (id.clone(), route)),
            false => Some((key, route)),
        };
        Self {
            rooms: (spec.room_routes.iter().filter_map(build))
                .filter_map(by_id)
                .collect(),
            users: spec.user_routes.iter().filter_map(build).collect(),
            default,
        }
    }

    /// The user's override, else the room's (by its id or the id of a room it upgraded), else
    /// the account's backend.
    pub(crate) fn pick(&self, sender: &UserId, room: &RoomFacts) -> &RouteBackend {
        self.users
            .get(sender.as_str())
            .or_else(|| room.ids().find_map(|r| self.rooms.get(r)))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accounts, room, user};

    #[test]
    fn a_room_override_by_alias_follows_the_directory_not_the_rooms_own_claim() {
        let overrides = "[accounts.bot.room_overrides.\"#ops:hs\"]\nsystem_prompt = \"ops\"\n\
                         [accounts.bot.room_overrides.\"#gone:hs\"]\nsystem_prompt = \"gone\"\n\
                         [accounts.bot.room_overrides.\"!plain:hs\"]\nsystem_prompt = \"plain\"";
        let spec = accounts(&[("bot", overrides)])
            .remove("bot")
            .expect("the account");
        let backend = mxfleet_backend::build(&spec.backend).expect("the echo backend");
        // The directory resolves #ops:hs to !ops:hs; #gone:hs resolves to nothing.
        let aliases = HashMap::from([("#ops:hs".to_owned(), "!ops:hs".to_owned())]);
        let routing = Routing::new(&spec, backend, &aliases);
        let facts = |id: &str, predecessors: &[&str]| RoomFacts {
            room_id: room(id),
            is_dm: false,
            predecessors: predecessors.iter().map(|p| (*p).to_owned()).collect(),
        };
        let sender = user("@ann:hs");
        let overridden =
            |facts: &RoomFacts| !std::ptr::eq(routing.pick(&sender, facts), &routing.default);
        for (room, predecessors, expected) in [
            ("!ops:hs", &[][..], true),
            ("!plain:hs", &[], true),
            // The upgrade of an overridden room.
            ("!ops2:hs", &["!ops:hs"], true),
            // Any other room, whatever aliases it claims in its state.
            ("!spoof:hs", &[], false),
            ("!gone:hs", &[], false),
        ] {
            assert_eq!(overridden(&facts(room, predecessors)), expected, "{room}");
        }
        assert_eq!(routing.rooms.len(), 2, "the unresolved alias is dropped");
    }
}
