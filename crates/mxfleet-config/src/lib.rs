//! Layered, validated configuration for mxfleet.
//!
//! Layers, later ones winning: built-in defaults, the TOML file (`--config`, `MXFLEET_CONFIG`,
//! default `config/mxfleet.toml`), `MXFLEET_…` environment variables nested with `__`, then
//! command-line flags. [`load`] merges them, validates the result and reports every problem at
//! once, each with its key and the file, variable or flag it came from. Secrets are [`Secret`]s
//! and never print.
//!
//! - [`model`](crate::Config): the raw configuration as the layers give it;
//! - `load`: layering, extraction, and collecting every parse error;
//! - `validate`: the semantic checks, in named passes, building the [`ValidConfig`];
//! - `resolved`: the configuration mxfleet runs on.

mod defaults;
mod issue;
mod load;
mod model;
mod origin;
mod resolved;
mod secret;
mod validate;

pub use issue::{ConfigError, ConfigIssue};
pub use load::{
    BUILTIN_ECHO, CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE, ENV_PREFIX, Flags, Loaded, Sources, load,
};
pub use model::{
    AccessPolicy, AccountConfig, AdminConfig, AnsweringConfig, AutoJoin, BackendConfig,
    CommandInput, Config, ConversationConfig, CredentialsConfig, EncryptionConfig, ListenerConfig,
    LogConfig, LogFormat, LoginConfig, MediaConfig, MentionMode, MessageLimits, OwnershipMode,
    ReloginMode, RestartConfig, RouteOverride, Sandbox, ShardConfig, StreamFormat, StreamMode,
    SyncConfig,
};
pub use resolved::{
    AccountAuth, AccountSpec, AdminSpec, AgentIsolation, BackendSpec, Route, Transcription,
    ValidConfig,
};
pub use secret::{REDACTED, Secret, constant_time_eq};
pub use validate::{default_device_id, is_valid_account_id, shard_of};

#[cfg(test)]
mod tests;
