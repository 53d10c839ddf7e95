//! mxfleet's admin HTTP API and the client the CLI uses to talk to it.
//!
//! The API runs inside `mxfleet run` when `admin.token` is configured, on `admin.bind`
//! (loopback by default). Every route needs `Authorization: Bearer <token>`, except the status
//! page's static shell, which holds no data and asks for the token itself.

//!
//! Beside it, optional unauthenticated listeners serve health probes and metrics ([`probes`]).

mod client;
mod exposition;
pub mod probes;
mod server;

pub use client::{AdminClient, ClientError};
pub use exposition::set_build_info;
pub use server::{AccountView, AdminState, ConfigLoader, reload_config, router, serve};
