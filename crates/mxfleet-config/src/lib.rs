//! Layered, validated configuration for mxfleet.
//!
//! Layers, later ones winning: built-in defaults, the TOML file (`--config`, `MXFLEET_CONFIG`,
//! default `config/mxfleet.toml`), `MXFLEET_…` environment variables nested with `__`, then
//! command-line flags. [`load`] merges them, validates the result and reports every problem at
//! once, each with its key and the file, variable or flag it came from. Secrets are [`Secret`]s
//! and never print.

mod load;
mod model;
mod secret;

pub use load::{
    AccountAuth, AccountSpec, AdminSpec, BUILTIN_ECHO, BackendSpec, CONFIG_FILE_ENV, ConfigError,
    ConfigIssue, ConversationSpec, DEFAULT_CONFIG_FILE, ENV_PREFIX, Flags, Loaded, Route, Sources,
    Transcription, ValidConfig, default_device_id, is_valid_account_id, load, shard_of,
};
pub use model::{
    AccessPolicy, AccountConfig, AdminConfig, AutoJoin, BackendConfig, CommandInput, Config,
    LogConfig, LogFormat, MentionMode, OwnershipMode, RestartConfig, RouteOverride, ShardConfig,
    StreamFormat, StreamMode,
};

pub use secret::{REDACTED, Secret, constant_time_eq};

#[cfg(test)]
mod tests;
