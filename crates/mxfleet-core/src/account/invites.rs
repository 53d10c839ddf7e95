//! Invites and room upgrades: the gate decides before the bot ever joins, by the same room facts
//! it uses for messages; each join runs on its own task, so a slow homeserver never holds up the
//! account's mailbox.

use std::{collections::HashMap, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use mxfleet_config::AccountSpec;
use mxfleet_matrix::{
    MatrixFailure,
    matrix_sdk::{
        Client,
        ruma::{OwnedRoomAliasId, OwnedRoomId},
    },
};
use mxfleet_store::Store;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    gate::{self, Access, InviteVerdict},
    rooms::Rooms,
    upgrades::{self, Upgrade},
};

/// Invite joins are retried this many times (Synapse may not have the room ready yet).
const JOIN_ATTEMPTS: usize = 3;

/// Joins or rejects each invite as `auto_join` and the access policies say.
pub(crate) fn answer_invites(
    rooms: &Rooms,
    spec: &Arc<AccountSpec>,
    access: &Access,
    invites: Vec<OwnedRoomId>,
) {
    for room_id in invites {
        let (rooms, spec, access) = (rooms.clone(), spec.clone(), access.clone());
        let span = info_span!(parent: None, "invite", account = %spec.id, room = %room_id);
        tokio::spawn(
            async move { answer_invite(&rooms, &spec, &access, room_id).await }.instrument(span),
        );
    }
}

/// Follows each room upgrade the gate would follow (see `upgrades`).
pub(crate) fn follow_upgrades(
    rooms: &Rooms,
    store: &Store,
    spec: &Arc<AccountSpec>,
    access: &Access,
    upgrades: Vec<Upgrade>,
) {
    for upgrade in upgrades {
        let (rooms, store) = (rooms.clone(), store.clone());
        let (spec, access) = (spec.clone(), access.clone());
        let span = info_span!(parent: None, "upgrade", account = %spec.id, room = %upgrade.old);
        tokio::spawn(
            async move { upgrades::follow(&rooms, &store, &spec, &access, upgrade).await }
                .instrument(span),
        );
    }
}

/// The room ids the aliases among `entries` resolve to in the homeserver's directory, by alias
/// (other entries are passed over); aliases that do not resolve are logged and left out.
pub(crate) async fn resolve_aliases(
    client: &Client,
    entries: Vec<String>,
) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for entry in entries.iter().filter(|e| e.starts_with('#')) {
        let Ok(alias) = OwnedRoomAliasId::try_from(entry.as_str()) else {
            warn!(alias = %entry, "not a valid room alias");
            continue;
        };
        match client.resolve_room_alias(&alias).await {
            Ok(response) => {
                ids.insert(entry.clone(), response.room_id.to_string());
            }
            Err(e) => {
                warn!(alias = %entry, error = %e, "room alias not resolved; it matches no room until the next connect")
            }
        }
    }
    ids
}

async fn answer_invite(rooms: &Rooms, spec: &AccountSpec, access: &Access, room_id: OwnedRoomId) {
    let Some(room) = rooms.get(&room_id) else {
        return;
    };
    let inviter = match room.invite_details().await {
        Ok(invite) => invite.inviter_id,
        Err(e) => return warn!(error = %e, "invite without details; left alone"),
    };
    let facts = rooms.facts(&room).await;
    match gate::decide_invite(&spec.conversation, access, &facts, Some(&inviter)) {
        InviteVerdict::Join => {
            let join = || rooms.client().join_room_by_id(&room_id);
            let patience = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_times(JOIN_ATTEMPTS);
            match join.retry(patience).await {
                Ok(_) => {
                    if facts.is_dm {
                        rooms.joined_as_dm(&room_id);
                    }
                    info!(%inviter, dm = facts.is_dm, "joined room on invite");
                }
                Err(e) => {
                    let failure = MatrixFailure::from_sdk("joining", &e);
                    warn!(error = %failure, "could not join invited room");
                }
            }
        }
        InviteVerdict::Reject(reason) => match room.leave().await {
            Ok(()) => info!(%inviter, reason, "invite rejected"),
            Err(e) => warn!(error = %e, "could not reject the invite"),
        },
        InviteVerdict::Leave => info!(%inviter, "invite left alone (auto_join = off)"),
    }
}
