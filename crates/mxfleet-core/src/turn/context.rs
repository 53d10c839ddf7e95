//! What every step of a turn may use: the account's settings, client, rooms, store, status
//! board, access lists, backends and children. One per connection, shared by the room workers.

use std::{collections::HashMap, sync::Arc};

use mxfleet_backend::Backend;
use mxfleet_config::{AccountAuth, AccountSpec};
use mxfleet_matrix::matrix_sdk::{Client, ruma::OwnedUserId};
use mxfleet_store::Store;

use super::routing::Routing;
use crate::{
    children::Children, gate::Access, rooms::Rooms, status::StatusBoard, stream_editor::WrapUp,
};

/// What the turns of one account need from it.
pub(crate) struct TurnArgs {
    /// The account's settings.
    pub(crate) spec: Arc<AccountSpec>,
    /// The connected client.
    pub(crate) client: Client,
    /// The account's rooms.
    pub(crate) rooms: Rooms,
    /// The bot's user id.
    pub(crate) user_id: OwnedUserId,
    /// The account's backend.
    pub(crate) backend: Arc<dyn Backend>,
    /// mxfleet's database.
    pub(crate) store: Store,
    /// The fleet's status.
    pub(crate) board: StatusBoard,
    /// The access lists, aliases resolved.
    pub(crate) access: Access,
    /// The room ids of the aliases in the access lists and the room overrides, by alias (as the
    /// homeserver's directory resolved them at connect).
    pub(crate) aliases: HashMap<String, String>,
    /// The account's children.
    pub(crate) children: Children,
}

/// The shared context of an account's turns.
pub(crate) struct TurnContext {
    /// The account id.
    pub(crate) account: String,
    /// The account's settings.
    pub(crate) spec: Arc<AccountSpec>,
    /// The connected client (media downloads).
    pub(crate) client: Client,
    /// The account's rooms.
    pub(crate) rooms: Rooms,
    /// The bot's user id.
    pub(crate) user_id: OwnedUserId,
    /// The backends.
    pub(crate) routing: Routing,
    /// The access lists.
    pub(crate) access: Access,
    /// mxfleet's database.
    pub(crate) store: Store,
    /// The fleet's status.
    pub(crate) board: StatusBoard,
    /// The account's children.
    pub(crate) children: Children,
    /// Set when the account stops: answers still streaming end with their final edit.
    pub(crate) wrap_up: WrapUp,
}

impl TurnContext {
    /// The context of `args`; answers wrap up when `wrap_up` says so.
    pub(crate) fn new(args: TurnArgs, wrap_up: WrapUp) -> Self {
        Self {
            account: args.spec.id.clone(),
            routing: Routing::new(&args.spec, args.backend, &args.aliases),
            spec: args.spec,
            client: args.client,
            rooms: args.rooms,
            user_id: args.user_id,
            access: args.access,
            store: args.store,
            board: args.board,
            children: args.children,
            wrap_up,
        }
    }

    /// Whether the account's device keys are its own (an access-token account's are not: it
    /// neither reads nor sends in encrypted rooms).
    pub(crate) fn owns_keys(&self) -> bool {
        !matches!(self.spec.auth, AccountAuth::AccessToken(_))
    }

    /// How long after it was sent a message is still answered after downtime.
    pub(crate) fn catch_up_max_age_ms(&self) -> u64 {
        self.spec.sync.catch_up_max_age_secs.saturating_mul(1000)
    }
}
