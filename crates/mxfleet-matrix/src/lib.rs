//! matrix-sdk glue for mxfleet.
//!
//! - [`connect`]: builds an account's client on its own encrypted sqlite store and restores or
//!   creates its session;
//! - [`inbound`]: turns sync timeline events into `mxfleet_message::InboundMessage`s;
//! - [`outbound`]: sends replies with stable transaction ids;
//! - [`failure`]: classifies errors into retry / wait / re-login / give up.
//!
//! Always import matrix-sdk's ruma through `matrix_sdk::ruma`, never a separate `ruma`.

pub mod connect;
pub mod crypto;
pub mod failure;
pub mod format;
pub mod inbound;
pub mod login_pace;
pub mod media;
pub mod opening;
pub mod outbound;
pub mod polls;
pub mod probe;
mod sqlite_tuning;

pub use connect::{Connection, account_dir, connect, prepare_relogin};
pub use failure::{FailureClass, MatrixFailure};
pub use inbound::{Normalised, normalise};
pub use matrix_sdk;
pub use outbound::{
    Placement, edit_content, ensure_can_send, event_body, location_content, message_content,
    reaction_content, redact, send_content, send_content_once, transaction_id,
};
pub use sqlite_tuning::set_page_cache_kib;
