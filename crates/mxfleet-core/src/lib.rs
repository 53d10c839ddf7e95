//! mxfleet's supervision tree.
//!
//! ```text
//! FleetSupervisor                      one per process
//! └── AccountActor  (one per account)  starting | connecting | syncing | backoff | auth_failed | failed | stopped
//!     └── SyncActor                    sync_once loop → inbox (redb) → per-room reply workers
//! ```
//!
//! The restart schedule ([`restart`]) is pure and unit-tested; the actors are thin around it and
//! around the matrix glue. Status is shared through a [`StatusBoard`] and written to
//! `data_dir/status.json`.

mod account;
mod children;
mod crypto;
mod error;
mod fleet;
mod gate;
mod heard;
mod homeservers;
mod limits;
pub mod measure;
mod otp;
#[cfg(test)]
mod properties;
pub mod restart;
mod rooms;
mod screen;
pub mod status;
mod stream_editor;
mod sync;
#[cfg(test)]
mod testing;
mod texts;
mod turn;
mod upgrades;

use ractor::{Actor, ActorRef};

pub use account::{REASON_AUTH_FAILED, REASON_FAILED, REASON_LOGGED_OUT, REASON_STOPPED};
pub use error::AccountError;
pub use fleet::{
    Control, ControlError, FleetArgs, FleetMsg, FleetState, FleetSupervisor, ReloadReport,
};
pub use status::{
    AccountState, AccountStatus, FleetStatus, LATENCY_BUCKETS_SECS, Readiness, StatusBoard,
    Timings, read_status_file,
};

/// Spawns the fleet supervisor under the name `fleet`.
pub async fn start_fleet(
    args: FleetArgs,
) -> Result<(ActorRef<FleetMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    Actor::spawn(Some("fleet".into()), FleetSupervisor, args).await
}
