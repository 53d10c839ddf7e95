//! The typed configuration, as it is read from defaults, files, environment and flags.
//!
//! Every struct rejects unknown keys, every duration and size carries its unit in its name, and
//! every secret is a [`Secret`] with a `*_file` twin. These types are what the layers deserialize
//! into; [`crate::ValidConfig`] is what the rest of mxfleet runs on after validation.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::Secret;

/// The whole mxfleet configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where mxfleet keeps its state: `mxfleet.redb`, `status.json`, `accounts/<id>/`.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// How long a clean shutdown may take before the stragglers are killed.
    #[serde(default = "defaults::shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// How failed accounts and children are restarted.
    #[serde(default)]
    pub restart: RestartConfig,
    /// Named AI backends; accounts refer to them by name. `echo` is built in.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// One table per bot account, keyed by a lower-case account id.
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountConfig>,
}

/// Logging options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (coloured lines on a terminal) or `json` (one object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `info,mxfleet_core=debug`. `RUST_LOG` wins.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The restart schedule shared by accounts and their children.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Delay before the first restart.
    #[serde(default = "defaults::initial_delay_ms")]
    pub initial_delay_ms: u64,
    /// The cap on any restart delay.
    #[serde(default = "defaults::max_delay_ms")]
    pub max_delay_ms: u64,
    /// Each consecutive failure multiplies the delay by this.
    #[serde(default = "defaults::multiplier")]
    pub multiplier: f64,
    /// Random spread applied to each delay, as a fraction of it (0.0 to 1.0).
    #[serde(default = "defaults::jitter_ratio")]
    pub jitter_ratio: f64,
    /// After running this long without failing, the schedule starts over.
    #[serde(default = "defaults::healthy_after_secs")]
    pub healthy_after_secs: u64,
    /// More than this many restarts within `restart_window_secs` parks the account at the cap.
    #[serde(default = "defaults::max_restarts")]
    pub max_restarts: u32,
    /// The window for `max_restarts`.
    #[serde(default = "defaults::restart_window_secs")]
    pub restart_window_secs: u64,
}

/// An AI backend definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// Answers with the user's own text; for demos and tests.
    Echo {
        /// Text put before the echoed message.
        #[serde(default = "defaults::echo_prefix")]
        prefix: String,
    },
    /// An OpenAI-compatible chat-completions endpoint with SSE streaming (OpenAI, OpenRouter,
    /// Ollama, vLLM, llama.cpp server, …).
    Openai {
        /// Base URL up to and including `/v1`, e.g. `http://127.0.0.1:11434/v1`.
        base_url: Url,
        /// The model name sent with each request.
        model: String,
        /// Bearer token for the endpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key: Option<Secret>,
        /// A file holding the bearer token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_key_file: Option<PathBuf>,
        /// System prompt sent before the conversation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system_prompt: Option<String>,
        /// Give up on a request after this long.
        #[serde(default = "defaults::request_timeout_secs")]
        request_timeout_secs: u64,
    },
}

/// One bot account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The homeserver's client-server API base URL.
    pub homeserver: Url,
    /// The bot's Matrix user id; found with whoami for access-token accounts when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Password login: the bot owns its device (needed for encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Access-token login: plain (unencrypted) traffic only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<Secret>,
    /// A file holding the access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_file: Option<PathBuf>,
    /// The device id for password login; defaults to `MXFLEET_<ACCOUNT ID>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The device's display name; defaults to `mxfleet <account id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_display_name: Option<String>,
    /// Passphrase for the matrix-sdk store; generated once and kept in mxfleet's database if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_passphrase: Option<Secret>,
    /// A file holding the store passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_passphrase_file: Option<PathBuf>,
    /// The name of the backend in `[backends]` (or the built-in `echo`).
    pub backend: String,
    /// Overrides the backend's model for this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Overrides the backend's system prompt for this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Whether the account runs at all.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// After downtime, messages younger than this are answered; older ones are skipped.
    #[serde(default = "defaults::catch_up_max_age_secs")]
    pub catch_up_max_age_secs: u64,
    /// The long-poll timeout of each sync request.
    #[serde(default = "defaults::sync_timeout_secs")]
    pub sync_timeout_secs: u64,
    /// Restart the sync if no sync succeeded for this long (beyond the long-poll timeout).
    #[serde(default = "defaults::sync_stall_secs")]
    pub sync_stall_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: defaults::data_dir(),
            log: LogConfig::default(),
            shutdown_timeout_secs: defaults::shutdown_timeout_secs(),
            restart: RestartConfig::default(),
            backends: BTreeMap::new(),
            accounts: BTreeMap::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: defaults::log_level(),
        }
    }
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            initial_delay_ms: defaults::initial_delay_ms(),
            max_delay_ms: defaults::max_delay_ms(),
            multiplier: defaults::multiplier(),
            jitter_ratio: defaults::jitter_ratio(),
            healthy_after_secs: defaults::healthy_after_secs(),
            max_restarts: defaults::max_restarts(),
            restart_window_secs: defaults::restart_window_secs(),
        }
    }
}

/// Default values, one function per key so serde and the docs agree.
pub(crate) mod defaults {
    use std::path::PathBuf;

    pub(crate) fn data_dir() -> PathBuf {
        PathBuf::from("data")
    }
    pub(crate) fn log_level() -> String {
        "info".into()
    }
    pub(crate) fn shutdown_timeout_secs() -> u64 {
        10
    }
    pub(crate) fn initial_delay_ms() -> u64 {
        500
    }
    pub(crate) fn max_delay_ms() -> u64 {
        60_000
    }
    pub(crate) fn multiplier() -> f64 {
        2.0
    }
    pub(crate) fn jitter_ratio() -> f64 {
        0.2
    }
    pub(crate) fn healthy_after_secs() -> u64 {
        60
    }
    pub(crate) fn max_restarts() -> u32 {
        5
    }
    pub(crate) fn restart_window_secs() -> u64 {
        60
    }
    pub(crate) fn echo_prefix() -> String {
        String::new()
    }
    pub(crate) fn request_timeout_secs() -> u64 {
        120
    }
    pub(crate) fn enabled() -> bool {
        true
    }
    pub(crate) fn catch_up_max_age_secs() -> u64 {
        600
    }
    pub(crate) fn sync_timeout_secs() -> u64 {
        30
    }
    pub(crate) fn sync_stall_secs() -> u64 {
        30
    }
}
