//! The configuration mxfleet runs on, after validation: secrets read from their files,
//! backends and overrides resolved, defaults applied. The groups of account keys that need no
//! resolving are carried as they were read ([`EncryptionConfig`], [`SyncConfig`],
//! [`ConversationConfig`]).

use std::{collections::BTreeMap, path::PathBuf};

use url::Url;

use crate::{
    CommandInput, ConfigIssue, ConversationConfig, EncryptionConfig, LogConfig, RestartConfig,
    Sandbox, Secret, ShardConfig, StreamFormat, SyncConfig,
};

/// A validated configuration: secrets read, references resolved, ready to run.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// State directory.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Shutdown deadline.
    pub shutdown_timeout_secs: u64,
    /// How long answers in flight get at shutdown before they end as interrupted.
    pub shutdown_drain_secs: u64,
    /// Days answered inbox entries are kept.
    pub inbox_retention_days: u64,
    /// Threads for blocking work, shared by all accounts.
    pub blocking_threads: usize,
    /// The page cache of every SQLite connection of the accounts' stores, in KiB.
    pub store_page_cache_kib: u32,
    /// Restart schedule.
    pub restart: RestartConfig,
    /// The admin API, when a token is configured.
    pub admin: Option<AdminSpec>,
    /// Where the unauthenticated probes listen, if anywhere.
    pub probes: Option<std::net::SocketAddr>,
    /// Where the unauthenticated metrics listen, if anywhere (may be the probes' address).
    pub metrics: Option<std::net::SocketAddr>,
    /// The accounts this replica runs, by id, disabled ones included.
    pub accounts: BTreeMap<String, AccountSpec>,
    /// Which replica this is.
    pub shard: ShardConfig,
    /// The accounts other replicas run (account id → configured user id): their messages are
    /// the fleet's own, never answered.
    pub peers: BTreeMap<String, Option<String>>,
    /// The file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Settings that are valid but probably not what was meant (e.g. an empty allowlist).
    pub warnings: Vec<ConfigIssue>,
}

/// The admin API's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminSpec {
    /// Listen address.
    pub bind: std::net::SocketAddr,
    /// The bearer token.
    pub token: Secret,
}

/// How an account authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountAuth {
    /// `m.login.password`; the bot owns its device.
    Password(Secret),
    /// A ready access token (plain traffic only).
    AccessToken(Secret),
}

/// A resolved backend.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    /// The built-in echo backend.
    Echo {
        /// Text put before the echoed message.
        prefix: String,
    },
    /// An OpenAI-compatible endpoint.
    Openai {
        /// Base URL up to and including `/v1`.
        base_url: Url,
        /// Model name (account override applied).
        model: String,
        /// Bearer token.
        api_key: Option<Secret>,
        /// System prompt (account override applied).
        system_prompt: Option<String>,
        /// Per-request timeout.
        request_timeout_secs: u64,
        /// Most answers at once, across accounts.
        max_concurrent: Option<u32>,
        /// Whether the model takes images.
        images: bool,
    },
    /// An external agent over HTTP.
    Webhook {
        /// Where the conversation is POSTed.
        url: Url,
        /// Bearer token.
        token: Option<Secret>,
        /// How the answer is framed.
        format: StreamFormat,
        /// Model name passed along (route override), if any.
        model: Option<String>,
        /// System prompt passed along (route override), if any.
        system_prompt: Option<String>,
        /// Per-request timeout.
        request_timeout_secs: u64,
        /// Most answers at once, across accounts.
        max_concurrent: Option<u32>,
        /// Whether the agent takes images.
        images: bool,
    },
    /// A CLI agent spawned per answer.
    Command {
        /// Program and arguments.
        command: Vec<String>,
        /// What goes to stdin.
        input: CommandInput,
        /// Working directory.
        working_dir: Option<PathBuf>,
        /// Model name passed along (route override), if any.
        model: Option<String>,
        /// System prompt passed along (route override), if any.
        system_prompt: Option<String>,
        /// Kill the process after this long.
        request_timeout_secs: u64,
        /// Most answers at once, across accounts.
        max_concurrent: Option<u32>,
        /// What the agent may see of the fleet's environment and files.
        isolation: AgentIsolation,
    },
}

/// What a command backend's agent may see: its environment is built from nothing, and under a
/// sandbox the fleet's secret-bearing paths are hidden.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentIsolation {
    /// Variables set for the agent.
    pub env: BTreeMap<String, String>,
    /// Variables passed on from mxfleet's environment.
    pub pass_env: Vec<String>,
    /// Whether the agent runs under bubblewrap.
    pub sandbox: Sandbox,
    /// Absolute paths hidden inside the sandbox: the data directory, the configuration file,
    /// every secret file.
    pub hidden: Vec<PathBuf>,
}

impl BackendSpec {
    /// A short name of the backend's kind: `echo`, `openai`, `webhook`, `command`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Echo { .. } => "echo",
            Self::Openai { .. } => "openai",
            Self::Webhook { .. } => "webhook",
            Self::Command { .. } => "command",
        }
    }

    /// How long one request may take, for backends that make requests.
    pub fn request_timeout_secs(&self) -> Option<u64> {
        match self {
            Self::Echo { .. } => None,
            Self::Openai {
                request_timeout_secs,
                ..
            }
            | Self::Webhook {
                request_timeout_secs,
                ..
            }
            | Self::Command {
                request_timeout_secs,
                ..
            } => Some(*request_timeout_secs),
        }
    }

    /// How many answers this backend may give at once, if limited.
    pub fn max_concurrent(&self) -> Option<u32> {
        match self {
            Self::Echo { .. } => None,
            Self::Openai { max_concurrent, .. }
            | Self::Webhook { max_concurrent, .. }
            | Self::Command { max_concurrent, .. } => *max_concurrent,
        }
    }

    /// The model this backend asks for, if it names one.
    pub fn model(&self) -> Option<&str> {
        match self {
            Self::Echo { .. } => None,
            Self::Openai { model, .. } => Some(model),
            Self::Webhook { model, .. } | Self::Command { model, .. } => model.as_deref(),
        }
    }
}

/// A backend chosen for a room, a user or an account.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The backend's name in `[backends]`.
    pub backend_name: String,
    /// The backend with the route's model and system prompt applied.
    pub backend: BackendSpec,
}

/// A validated account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSpec {
    /// The account id (the key of its `[accounts.<id>]` table).
    pub id: String,
    /// Homeserver base URL.
    pub homeserver: Url,
    /// Configured user id, if any.
    pub user_id: Option<String>,
    /// Credentials.
    pub auth: AccountAuth,
    /// Device id used for password login.
    pub device_id: String,
    /// Device display name.
    pub device_display_name: String,
    /// Device ownership and verification.
    pub encryption: EncryptionConfig,
    /// The secret-storage recovery key, if configured.
    pub recovery_key: Option<Secret>,
    /// Configured store passphrase, if any.
    pub store_passphrase: Option<Secret>,
    /// Name of the backend.
    pub backend_name: String,
    /// The resolved backend.
    pub backend: BackendSpec,
    /// Whether the account runs.
    pub enabled: bool,
    /// The sync loop.
    pub sync: SyncConfig,
    /// Conversation behaviour.
    pub conversation: ConversationConfig,
    /// Backend overrides by room id or alias.
    pub room_routes: BTreeMap<String, Route>,
    /// Backend overrides by user id (they win over room overrides).
    pub user_routes: BTreeMap<String, Route>,
    /// Speech-to-text for voice messages, if configured.
    pub transcription: Option<Transcription>,
    /// Media larger than this are not downloaded.
    pub max_media_bytes: u64,
    /// How long a media download may take.
    pub media_timeout_secs: u64,
}

impl AccountSpec {
    /// Every backend this account may ask: its own and its room and user routes'.
    pub fn backends_mut(&mut self) -> impl Iterator<Item = &mut BackendSpec> {
        let routes = self
            .room_routes
            .values_mut()
            .chain(self.user_routes.values_mut())
            .map(|route| &mut route.backend);
        std::iter::once(&mut self.backend).chain(routes)
    }
}

/// A speech-to-text endpoint (an `openai` backend's `/audio/transcriptions`).
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    /// The backend's name in `[backends]`.
    pub backend_name: String,
    /// Base URL up to and including `/v1`.
    pub base_url: Url,
    /// The transcription model (the backend's `model`).
    pub model: String,
    /// Bearer token.
    pub api_key: Option<Secret>,
    /// Per-request timeout.
    pub request_timeout_secs: u64,
}
