//! Which backend answers: the account's (with its model and system prompt), a room's or a
//! user's override, and the backend that transcribes voice messages.

use std::collections::BTreeMap;

use super::{Checker, is_room_ref, is_user_id};
use crate::{
    AnsweringConfig, BUILTIN_ECHO, BackendConfig, BackendSpec, MediaConfig, Route, RouteOverride,
    Transcription,
};

/// The backends a route may name: the valid ones, and every declared name (a name that is
/// declared but invalid is reported where it is declared, not again where it is used).
pub(super) struct Backends<'a> {
    /// The valid backends.
    pub(super) valid: &'a BTreeMap<String, BackendSpec>,
    /// Every declared backend.
    pub(super) declared: &'a BTreeMap<String, BackendConfig>,
}

/// The routes of one account.
pub(super) struct Routes {
    /// The account's backend, overrides applied.
    pub(super) backend: Option<BackendSpec>,
    /// Overrides by room id or alias.
    pub(super) rooms: BTreeMap<String, Route>,
    /// Overrides by user id.
    pub(super) users: BTreeMap<String, Route>,
    /// Speech-to-text, if configured.
    pub(super) transcription: Option<Transcription>,
}

/// Resolves the routes of the account table `key`.
pub(super) fn resolve(
    check: &mut Checker<'_>,
    key: &str,
    answering: &AnsweringConfig,
    media: &MediaConfig,
    backends: &Backends<'_>,
) -> Routes {
    let name = &answering.backend;
    let backend = match backends.lookup(name) {
        Some(spec) => Some(with_overrides(
            spec,
            answering.model.as_ref(),
            answering.system_prompt.as_ref(),
        )),
        None => {
            if !backends.declared.contains_key(name) {
                let message =
                    format!("no backend named {name:?}; define [backends.{name}] or use \"echo\"");
                check.fail(&format!("{key}.backend"), &message);
            }
            None
        }
    };
    let mut overrides = |kind: &str, table: &BTreeMap<String, RouteOverride>| {
        table
            .iter()
            .filter_map(|(target, o)| {
                let route = route(
                    check,
                    &format!("{key}.{kind}.{target}"),
                    answering,
                    o,
                    backends,
                );
                Some((target.clone(), route?))
            })
            .collect::<BTreeMap<_, _>>()
    };
    let (rooms, users) = match backend {
        Some(_) => (
            overrides("room_overrides", &answering.room_overrides),
            overrides("user_overrides", &answering.user_overrides),
        ),
        None => Default::default(),
    };
    for room in answering.room_overrides.keys() {
        check.require(
            is_room_ref(room),
            &format!("{key}.room_overrides.{room}"),
            "must be a room id (!id:server) or alias (#name:server)",
        );
    }
    for user in answering.user_overrides.keys() {
        check.require(
            is_user_id(user),
            &format!("{key}.user_overrides.{user}"),
            "must be a user id (@name:server)",
        );
    }
    let transcription = transcription(check, key, media, backends);
    Routes {
        backend,
        rooms,
        users,
        transcription,
    }
}

impl Backends<'_> {
    /// The backend `name`: a valid declared one, or the built-in echo.
    fn lookup(&self, name: &str) -> Option<BackendSpec> {
        match self.valid.get(name) {
            Some(spec) => Some(spec.clone()),
            None if name == BUILTIN_ECHO && !self.declared.contains_key(name) => {
                Some(BackendSpec::Echo {
                    prefix: String::new(),
                })
            }
            None => None,
        }
    }
}

/// One override at `key`: its backend (the account's, or the one it names, with the account's
/// model and prompt) with its own model and prompt applied.
fn route(
    check: &mut Checker<'_>,
    key: &str,
    answering: &AnsweringConfig,
    o: &RouteOverride,
    backends: &Backends<'_>,
) -> Option<Route> {
    let name = o
        .backend
        .clone()
        .unwrap_or_else(|| answering.backend.clone());
    let Some(spec) = backends.lookup(&name) else {
        check.fail(
            &format!("{key}.backend"),
            &format!("no backend named {name:?}"),
        );
        return None;
    };
    let spec = with_overrides(
        spec,
        answering.model.as_ref(),
        answering.system_prompt.as_ref(),
    );
    Some(Route {
        backend_name: name,
        backend: with_overrides(spec, o.model.as_ref(), o.system_prompt.as_ref()),
    })
}

/// The transcription backend of the account table `key`: an `openai` backend's endpoint.
fn transcription(
    check: &mut Checker<'_>,
    key: &str,
    media: &MediaConfig,
    backends: &Backends<'_>,
) -> Option<Transcription> {
    let name = media.transcription.as_ref()?;
    match backends.valid.get(name) {
        Some(BackendSpec::Openai {
            base_url,
            model,
            api_key,
            request_timeout_secs,
            ..
        }) => Some(Transcription {
            backend_name: name.clone(),
            base_url: base_url.clone(),
            model: model.clone(),
            api_key: api_key.clone(),
            request_timeout_secs: *request_timeout_secs,
        }),
        Some(other) => {
            let message = format!(
                "backend {name:?} is of kind {:?}; transcription needs an \"openai\" backend \
                 (its /audio/transcriptions endpoint)",
                other.kind()
            );
            check.fail(&format!("{key}.transcription"), &message);
            None
        }
        None => {
            if !backends.declared.contains_key(name) {
                let message = format!("no backend named {name:?}; define [backends.{name}]");
                check.fail(&format!("{key}.transcription"), &message);
            }
            None
        }
    }
}

/// Applies a model and system prompt override (account or route) to a backend.
fn with_overrides(
    mut spec: BackendSpec,
    new_model: Option<&String>,
    new_prompt: Option<&String>,
) -> BackendSpec {
    match &mut spec {
        BackendSpec::Openai {
            model,
            system_prompt,
            ..
        } => {
            if let Some(m) = new_model {
                *model = m.clone();
            }
            if let Some(p) = new_prompt {
                *system_prompt = Some(p.clone());
            }
        }
        BackendSpec::Webhook {
            model,
            system_prompt,
            ..
        }
        | BackendSpec::Command {
            model,
            system_prompt,
            ..
        } => {
            if let Some(m) = new_model {
                *model = Some(m.clone());
            }
            if let Some(p) = new_prompt {
                *system_prompt = Some(p.clone());
            }
        }
        BackendSpec::Echo { .. } => {}
    }
    spec
}
