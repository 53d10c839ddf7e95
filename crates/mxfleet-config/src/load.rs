//! Layering, extraction and validation.
//!
//! The layers, later ones winning: built-in defaults, the TOML file, `MXFLEET_…` environment
//! variables (nested with `__`), command-line flags. Extraction runs per section (the top level,
//! each backend, each account) so that one bad account does not hide the errors of the next; the
//! semantic checks then run on whatever parsed. Every error names its key and where the value
//! came from, and all of them are reported together.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Map, Value},
};
use serde::Deserialize;
use url::Url;

use crate::{
    AccessPolicy, AccountConfig, AdminConfig, AutoJoin, BackendConfig, CommandInput, Config,
    LogConfig, LogFormat, MentionMode, OwnershipMode, RestartConfig, RouteOverride, Secret,
    ShardConfig, StreamFormat, StreamMode,
};

/// The environment variable prefix.
pub const ENV_PREFIX: &str = "MXFLEET_";
/// The environment variable naming the config file.
pub const CONFIG_FILE_ENV: &str = "MXFLEET_CONFIG";
/// `MXFLEET_…` variables that belong to mxfleet's tools, not to the configuration: the config
/// file's name, the test harness's binary, the scripts' Synapse venv and dev port.
const TOOL_VARIABLES: &[&str] = &["config", "bin", "synapse_venv", "dev_port"];
/// The config file read when neither `--config` nor `MXFLEET_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "config/mxfleet.toml";
/// The backend every config has without declaring it.
pub const BUILTIN_ECHO: &str = "echo";

/// Where the configuration comes from, besides the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config PATH`; otherwise `MXFLEET_CONFIG`, otherwise [`DEFAULT_CONFIG_FILE`] if present.
    pub config_file: Option<PathBuf>,
    /// Values given as command-line flags, highest precedence.
    pub flags: Flags,
}

/// Command-line flags that override configuration keys.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--log-level`
    pub log_level: Option<String>,
}

/// One configuration problem: the key, what is wrong, and where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `accounts.alice.homeserver`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// Where the value came from: a file path, an environment variable, a flag or a default.
    pub origin: String,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in key order.
    pub issues: Vec<ConfigIssue>,
}

/// A validated configuration: secrets read, references resolved, ready to run.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// State directory.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Shutdown deadline.
    pub shutdown_timeout_secs: u64,
    /// Restart schedule.
    pub restart: RestartConfig,
    /// The admin API, when a token is configured.
    pub admin: Option<AdminSpec>,
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
    },
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

/// How an account converses: who it talks to, how answers are shown, which cues it gives.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSpec {
    /// DM access.
    pub dm_policy: AccessPolicy,
    /// Group room access.
    pub room_policy: AccessPolicy,
    /// When to answer in group rooms.
    pub mention_mode: MentionMode,
    /// Whether `@room` counts as a mention.
    pub allow_room_mentions: bool,
    /// One-time-code self-approval of unknown DM senders.
    pub otp_self_approval: bool,
    /// Validity of a one-time code.
    pub otp_ttl_secs: u64,
    /// Lockout after 3 wrong codes.
    pub otp_cooldown_secs: u64,
    /// Users allowed to DM the bot.
    pub user_allowlist: Vec<String>,
    /// Rooms (ids or aliases) the bot talks in.
    pub room_allowlist: Vec<String>,
    /// Invite handling.
    pub auto_join: AutoJoin,
    /// How answers stream.
    pub stream_mode: StreamMode,
    /// Characters before the first send of a streamed answer.
    pub stream_min_initial_chars: usize,
    /// Minimum time between edits.
    pub edit_throttle_ms: u64,
    /// Edit cap per message.
    pub max_edits_per_message: u32,
    /// Rich replies outside threads.
    pub reply_to_message: bool,
    /// The acknowledgement reaction, if enabled.
    pub ack_reaction: Option<String>,
    /// Typing notices while working.
    pub typing_notices: bool,
    /// Cues wait this long and are skipped if the answer is visible by then.
    pub cue_delay_ms: u64,
    /// Read receipts for handled messages.
    pub read_receipts: bool,
    /// Earlier messages the backend sees.
    pub history_max_messages: usize,
    /// Cooldown of undecryptable-message notices per room and session.
    pub utd_notice_cooldown_secs: u64,
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
    /// Whether a lost crypto store may be replaced by a new device.
    pub allow_new_device: bool,
    /// Who manages the cross-signing identity.
    pub ownership_mode: OwnershipMode,
    /// Cancel unfinished verifications after this long.
    pub verification_timeout_secs: u64,
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
    /// Catch-up horizon after downtime.
    pub catch_up_max_age_secs: u64,
    /// Long-poll timeout.
    pub sync_timeout_secs: u64,
    /// Stall margin for the sync watchdog.
    pub sync_stall_secs: u64,
    /// Conversation behaviour.
    pub conversation: ConversationSpec,
    /// Backend overrides by room id or alias.
    pub room_routes: BTreeMap<String, Route>,
    /// Backend overrides by user id (they win over room overrides).
    pub user_routes: BTreeMap<String, Route>,
    /// Speech-to-text for voice messages, if configured.
    pub transcription: Option<Transcription>,
    /// Media larger than this are not downloaded.
    pub max_media_bytes: u64,
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

/// A loaded configuration together with the layers it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: ValidConfig,
    figment: Figment,
    raw: Config,
}

/// Loads, merges and validates the configuration from `sources` and the process environment.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let mut issues = Vec::new();
    let (figment, config_file) = layered(sources, &mut issues);
    let raw = extract(&figment, &mut issues);
    let config = raw
        .as_ref()
        .map(|raw| validate(raw, &figment, &config_file, &mut issues));
    issues.sort_by(|a, b| a.key.cmp(&b.key));
    issues.dedup();
    match (raw, config) {
        (Some(raw), Some(config)) if issues.is_empty() => Ok(Loaded {
            config,
            figment,
            raw,
        }),
        _ => Err(ConfigError { issues }),
    }
}

impl Loaded {
    /// The merged configuration as `key = value  # origin` lines, secrets redacted.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        let value = Value::serialize(&self.raw).unwrap_or(Value::from(Dict::new()));
        walk(&value, &mut Vec::new(), &mut |path, leaf| {
            let key = path.join(".");
            let origin = self.figment.find_metadata(&key).map_or_else(
                || "built-in default".to_owned(),
                |md| describe_origin(md, path),
            );
            lines.push(format!("{key} = {}  # {origin}", render(leaf)));
        });
        lines.join("\n")
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (from {})", self.key, self.message, self.origin)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

/// The top level without the per-entry tables (they are extracted one by one).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
#[allow(dead_code)] // fields exist so that unknown keys and bad types are reported
struct TopLevel {
    data_dir: PathBuf,
    log: LogConfig,
    shutdown_timeout_secs: u64,
    restart: RestartConfig,
    admin: AdminConfig,
    shard: ShardConfig,
}

fn layered(sources: &Sources, issues: &mut Vec<ConfigIssue>) -> (Figment, Option<PathBuf>) {
    let defaults = Config::default();
    let mut figment = Figment::new().merge(Named::new(
        "built-in default",
        Serialized::defaults(defaults),
    ));

    let (file, explicit) = match (&sources.config_file, std::env::var_os(CONFIG_FILE_ENV)) {
        (Some(path), _) => (path.clone(), Some("--config")),
        (None, Some(path)) => (PathBuf::from(path), Some(CONFIG_FILE_ENV)),
        (None, None) => (PathBuf::from(DEFAULT_CONFIG_FILE), None),
    };
    let config_file = if file.is_file() {
        figment = figment.merge(Toml::file_exact(&file));
        Some(file)
    } else {
        if let Some(origin) = explicit {
            issues.push(ConfigIssue {
                key: "config file".into(),
                message: format!("{} does not exist or is not a file", file.display()),
                origin: origin.into(),
            });
        }
        None
    };

    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(TOOL_VARIABLES));

    let mut flags = Dict::new();
    let flag = &sources.flags;
    if let Some(dir) = &flag.data_dir {
        flags.insert("data_dir".into(), Value::from(dir.display().to_string()));
    }
    let mut log = Dict::new();
    if let Some(format) = flag.log_format {
        let name = if format == LogFormat::Json {
            "json"
        } else {
            "human"
        };
        log.insert("format".into(), Value::from(name));
    }
    if let Some(level) = &flag.log_level {
        log.insert("level".into(), Value::from(level.clone()));
    }
    if !log.is_empty() {
        flags.insert("log".into(), Value::from(log));
    }
    figment = figment.merge(Named::new("command-line flag", Serialized::defaults(flags)));
    (figment, config_file)
}

fn extract(figment: &Figment, issues: &mut Vec<ConfigIssue>) -> Option<Config> {
    let error = match figment.extract::<Config>() {
        Ok(config) => return Some(config),
        Err(error) => error,
    };
    // serde stops at the first error of a struct. To report them all, each section is
    // extracted from its own copy of the merged values, dropping each offending key and trying
    // again; origins are still looked up in the real figment.
    let root = match figment.extract::<Dict>() {
        Ok(root) => root,
        Err(_) => {
            push_figment_errors(figment, &[], error, issues);
            return None;
        }
    };
    let mut top = root.clone();
    let sections: Vec<(&str, Option<Value>)> = ["backends", "accounts"]
        .into_iter()
        .map(|name| (name, top.remove(name)))
        .collect();
    collect_errors::<TopLevel>(figment, &[], top, issues);
    for (section, value) in sections {
        match value {
            Some(Value::Dict(_, entries)) => {
                for (id, entry) in entries {
                    let Value::Dict(_, dict) = entry else {
                        push_issue(figment, issues, &[section, &id], "must be a table".into());
                        continue;
                    };
                    if section == "backends" {
                        collect_errors::<BackendConfig>(figment, &[section, &id], dict, issues);
                    } else {
                        collect_errors::<AccountConfig>(figment, &[section, &id], dict, issues);
                    }
                }
            }
            Some(_) => push_issue(figment, issues, &[section], "must be a table".into()),
            None => {}
        }
    }
    if issues.is_empty() {
        push_figment_errors(figment, &[], error, issues);
    }
    None
}

/// Extracts `T` from `dict` repeatedly, recording and removing each offending key, until it
/// parses or an error cannot be removed (a missing key).
fn collect_errors<T: serde::de::DeserializeOwned>(
    figment: &Figment,
    prefix: &[&str],
    mut dict: Dict,
    issues: &mut Vec<ConfigIssue>,
) {
    for _ in 0..64 {
        let attempt = Figment::from(Serialized::defaults(&dict)).extract::<T>();
        let Err(errors) = attempt else { return };
        let mut removed_any = false;
        for e in errors {
            let path = push_error(figment, prefix, &e, issues);
            let removable = !matches!(e.kind, figment::error::Kind::MissingField(_));
            removed_any |= removable && remove_path(&mut dict, &path);
        }
        if !removed_any {
            return;
        }
    }
}

/// The key path of an error relative to what was extracted, in document order.
fn error_path(e: &figment::Error) -> Vec<String> {
    let mut path = e.path.clone();
    let field = match &e.kind {
        figment::error::Kind::UnknownField(field, _) => Some(field.clone()),
        figment::error::Kind::MissingField(field) => Some(field.to_string()),
        _ => None,
    };
    if let Some(field) = field {
        // figment may put the field first and its parents after it.
        if let Some(i) = path.iter().position(|p| *p == field) {
            path.remove(i);
        }
        path.push(field);
    }
    path
}

fn remove_path(dict: &mut Dict, path: &[String]) -> bool {
    match path {
        [] => false,
        [key] => dict.remove(key).is_some(),
        [key, rest @ ..] => match dict.get_mut(key) {
            Some(Value::Dict(_, inner)) => remove_path(inner, rest),
            Some(_) => dict.remove(key).is_some(),
            None => false,
        },
    }
}

fn describe_kind(kind: &figment::error::Kind) -> String {
    match kind {
        figment::error::Kind::UnknownField(_, expected) => {
            format!("unknown key (expected one of: {})", expected.join(", "))
        }
        figment::error::Kind::MissingField(_) => "is required but missing".to_owned(),
        kind => kind.to_string(),
    }
}

fn push_issue(figment: &Figment, issues: &mut Vec<ConfigIssue>, path: &[&str], message: String) {
    let key = path.join(".");
    let owned: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
    let origin = figment.find_metadata(&key).map_or_else(
        || {
            // A missing key has no origin of its own: name where its table came from.
            let parent = owned[..owned.len().saturating_sub(1)].join(".");
            figment.find_metadata(&parent).map_or_else(
                || "built-in default".to_owned(),
                |md| describe_origin(md, &owned),
            )
        },
        |md| describe_origin(md, &owned),
    );
    issues.push(ConfigIssue {
        key,
        message,
        origin,
    });
}

fn push_figment_errors(
    figment: &Figment,
    prefix: &[&str],
    error: figment::Error,
    issues: &mut Vec<ConfigIssue>,
) {
    for e in error {
        push_error(figment, prefix, &e, issues);
    }
}

/// Records one figment error under `prefix`; returns its section-relative path.
fn push_error(
    figment: &Figment,
    prefix: &[&str],
    e: &figment::Error,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<String> {
    let path = error_path(e);
    let full: Vec<&str> = prefix
        .iter()
        .copied()
        .chain(path.iter().map(String::as_str))
        .collect();
    push_issue(figment, issues, &full, describe_kind(&e.kind));
    path
}

fn validate(
    raw: &Config,
    figment: &Figment,
    config_file: &Option<PathBuf>,
    issues: &mut Vec<ConfigIssue>,
) -> ValidConfig {
    let mut check = Checker {
        figment,
        issues,
        warnings: Vec::new(),
    };

    let r = &raw.restart;
    check.require(
        r.initial_delay_ms >= 1,
        "restart.initial_delay_ms",
        "must be at least 1",
    );
    check.require(
        r.max_delay_ms >= r.initial_delay_ms,
        "restart.max_delay_ms",
        "must be at least restart.initial_delay_ms",
    );
    check.require(
        r.multiplier >= 1.0,
        "restart.multiplier",
        "must be at least 1.0",
    );
    check.require(
        (0.0..=1.0).contains(&r.jitter_ratio),
        "restart.jitter_ratio",
        "must be between 0.0 and 1.0",
    );
    check.require(
        r.max_restarts >= 1,
        "restart.max_restarts",
        "must be at least 1",
    );
    check.require(
        r.restart_window_secs >= 1,
        "restart.restart_window_secs",
        "must be at least 1",
    );
    check.require(
        raw.shutdown_timeout_secs >= 1,
        "shutdown_timeout_secs",
        "must be at least 1",
    );

    if raw.accounts.is_empty() {
        check.fail(
            "accounts",
            "no accounts are configured; add an [accounts.<id>] table",
        );
    }

    let mut backends = BTreeMap::new();
    for (name, backend) in &raw.backends {
        if let Some(spec) = check.backend(name, backend) {
            backends.insert(name.clone(), spec);
        }
    }

    let mut accounts = BTreeMap::new();
    let mut user_ids: BTreeMap<String, String> = BTreeMap::new();
    for (id, account) in &raw.accounts {
        let key = format!("accounts.{id}");
        if !is_valid_account_id(id) {
            check.fail(
                &key,
                "account ids must be 1-64 characters of lower-case [a-z0-9_-] \
                 (environment variables can only address lower-case ids)",
            );
        }
        if let Some(user_id) = &account.user_id {
            let well_formed =
                user_id.starts_with('@') && user_id.contains(':') && user_id.len() > 3;
            check.require(
                well_formed,
                &format!("{key}.user_id"),
                "must look like @name:server",
            );
            if let Some(other) = user_ids.insert(user_id.clone(), id.clone()) {
                check.fail(
                    &format!("{key}.user_id"),
                    &format!("{user_id} is also used by account {other}; one account per user"),
                );
            }
        }
        let scheme_ok = matches!(account.homeserver.scheme(), "http" | "https");
        check.require(
            scheme_ok,
            &format!("{key}.homeserver"),
            "must be an http(s) URL",
        );
        check.require(
            (1..=300).contains(&account.sync_timeout_secs),
            &format!("{key}.sync_timeout_secs"),
            "must be between 1 and 300",
        );
        check.require(
            account.sync_stall_secs >= 1,
            &format!("{key}.sync_stall_secs"),
            "must be at least 1",
        );
        let device_id = account
            .device_id
            .clone()
            .unwrap_or_else(|| default_device_id(id));
        check.require(
            !device_id.is_empty() && !device_id.chars().any(char::is_whitespace),
            &format!("{key}.device_id"),
            "must be non-empty and contain no whitespace",
        );

        let password = check.secret(&key, "password", &account.password, &account.password_file);
        if account.ownership_mode == OwnershipMode::BotOwned
            && account.password.is_none()
            && account.password_file.is_none()
        {
            check.fail(
                &format!("{key}.ownership_mode"),
                "bot_owned needs password login (the password answers the cross-signing upload)",
            );
        }
        let token = check.secret(
            &key,
            "access_token",
            &account.access_token,
            &account.access_token_file,
        );
        let passphrase = check.secret(
            &key,
            "store_passphrase",
            &account.store_passphrase,
            &account.store_passphrase_file,
        );
        let recovery_key = check.secret(
            &key,
            "recovery_key",
            &account.recovery_key,
            &account.recovery_key_file,
        );
        if let (Some(recovery), Some(password)) = (&recovery_key, &password)
            && recovery.expose() == password.expose()
        {
            check.fail(
                &format!("{key}.recovery_key"),
                "must not be the account password (a recovery key is its own secret)",
            );
        }
        let auth = match (password, token) {
            (Some(p), None) => {
                if account.user_id.is_none() {
                    check.fail(&format!("{key}.user_id"), "is required for password login");
                }
                Some(AccountAuth::Password(p))
            }
            (None, Some(t)) => Some(AccountAuth::AccessToken(t)),
            (Some(_), Some(_)) => {
                check.fail(&key, "set either a password or an access token, not both");
                None
            }
            (None, None) => {
                let set = account.password_file.is_some() || account.access_token_file.is_some();
                if !set {
                    check.fail(
                        &key,
                        "needs credentials: password, password_file, access_token or access_token_file",
                    );
                }
                None
            }
        };

        let backend = if account.backend == BUILTIN_ECHO && !backends.contains_key(BUILTIN_ECHO) {
            Some(BackendSpec::Echo {
                prefix: String::new(),
            })
        } else if let Some(spec) = backends.get(&account.backend) {
            Some(spec.clone())
        } else {
            if !raw.backends.contains_key(&account.backend) {
                check.fail(
                    &format!("{key}.backend"),
                    &format!(
                        "no backend named {:?}; define [backends.{}] or use \"echo\"",
                        account.backend, account.backend
                    ),
                );
            }
            None
        };
        let backend = backend.map(|spec| {
            with_overrides(spec, account.model.as_ref(), account.system_prompt.as_ref())
        });
        let conversation = check.conversation(&key, account);
        let transcription =
            account
                .transcription
                .as_ref()
                .and_then(|name| match backends.get(name) {
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
                        check.fail(
                        &format!("{key}.transcription"),
                        &format!(
                            "backend {name:?} is of kind {:?}; transcription needs an \"openai\" \
                             backend (its /audio/transcriptions endpoint)",
                            other.kind()
                        ),
                    );
                        None
                    }
                    None => {
                        if !raw.backends.contains_key(name) {
                            check.fail(
                                &format!("{key}.transcription"),
                                &format!("no backend named {name:?}; define [backends.{name}]"),
                            );
                        }
                        None
                    }
                });
        check.require(
            account.max_media_bytes >= 1024,
            &format!("{key}.max_media_bytes"),
            "must be at least 1024",
        );
        let mut route = |kind: &str, target: &String, o: &RouteOverride| {
            let base = backend.clone()?;
            let name = o.backend.clone().unwrap_or_else(|| account.backend.clone());
            let spec = if o.backend.is_none() {
                base
            } else if name == BUILTIN_ECHO && !backends.contains_key(BUILTIN_ECHO) {
                BackendSpec::Echo {
                    prefix: String::new(),
                }
            } else if let Some(spec) = backends.get(&name) {
                with_overrides(
                    spec.clone(),
                    account.model.as_ref(),
                    account.system_prompt.as_ref(),
                )
            } else {
                check.fail(
                    &format!("{key}.{kind}.{target}.backend"),
                    &format!("no backend named {name:?}"),
                );
                return None;
            };
            Some(Route {
                backend_name: name,
                backend: with_overrides(spec, o.model.as_ref(), o.system_prompt.as_ref()),
            })
        };
        let mut room_routes = BTreeMap::new();
        for (room, o) in &account.room_overrides {
            if let Some(r) = route("room_overrides", room, o) {
                room_routes.insert(room.clone(), r);
            }
        }
        let mut user_routes = BTreeMap::new();
        for (user, o) in &account.user_overrides {
            if let Some(r) = route("user_overrides", user, o) {
                user_routes.insert(user.clone(), r);
            }
        }
        for room in account.room_overrides.keys() {
            check.require(
                is_room_ref(room),
                &format!("{key}.room_overrides.{room}"),
                "must be a room id (!id:server) or alias (#name:server)",
            );
        }
        for user in account.user_overrides.keys() {
            check.require(
                is_user_id(user),
                &format!("{key}.user_overrides.{user}"),
                "must be a user id (@name:server)",
            );
        }

        if let (Some(auth), Some(backend)) = (auth, backend) {
            accounts.insert(
                id.clone(),
                AccountSpec {
                    id: id.clone(),
                    homeserver: account.homeserver.clone(),
                    user_id: account.user_id.clone(),
                    auth,
                    device_id,
                    device_display_name: account
                        .device_display_name
                        .clone()
                        .unwrap_or_else(|| format!("mxfleet {id}")),
                    allow_new_device: account.allow_new_device,
                    ownership_mode: account.ownership_mode,
                    verification_timeout_secs: account.verification_timeout_secs,
                    recovery_key,
                    store_passphrase: passphrase,
                    backend_name: account.backend.clone(),
                    backend,
                    enabled: account.enabled,
                    catch_up_max_age_secs: account.catch_up_max_age_secs,
                    sync_timeout_secs: account.sync_timeout_secs,
                    sync_stall_secs: account.sync_stall_secs,
                    conversation,
                    room_routes,
                    user_routes,
                    transcription,
                    max_media_bytes: account.max_media_bytes,
                },
            );
        }
    }

    let admin_token = check.secret("admin", "token", &raw.admin.token, &raw.admin.token_file);
    let admin_bind = raw.admin.bind.parse::<std::net::SocketAddr>();
    if admin_bind.is_err() {
        check.fail(
            "admin.bind",
            "must be an address with a port, e.g. 127.0.0.1:8787",
        );
    }
    if let Ok(bind) = &admin_bind
        && !bind.ip().is_loopback()
        && admin_token.is_some()
    {
        check.warn(
            "admin.bind",
            "is not a loopback address: the admin API is plain HTTP; put it behind TLS",
        );
    }
    let admin = match (admin_bind, admin_token) {
        (Ok(bind), Some(token)) => Some(AdminSpec { bind, token }),
        _ => None,
    };
    let shard = raw.shard;
    check.require(shard.count >= 1, "shard.count", "must be at least 1");
    check.require(
        shard.index < shard.count.max(1),
        "shard.index",
        &format!("must be below shard.count ({})", shard.count),
    );
    let mut peers = BTreeMap::new();
    if shard.count > 1 {
        let (owned, others): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut accounts)
            .into_iter()
            .partition(|(id, _)| shard_of(id, shard.count) == shard.index);
        accounts = owned;
        for (id, spec) in others {
            if spec.user_id.is_none() {
                check.warn(
                    &format!("accounts.{id}.user_id"),
                    &format!(
                        "is not set and the account runs on replica {}: this replica cannot \
                         tell its messages from a human's (bots may answer each other); set it",
                        shard_of(&id, shard.count)
                    ),
                );
            }
            peers.insert(id, spec.user_id);
        }
    }
    ValidConfig {
        data_dir: raw.data_dir.clone(),
        log: raw.log.clone(),
        shutdown_timeout_secs: raw.shutdown_timeout_secs,
        restart: raw.restart.clone(),
        admin,
        accounts,
        shard,
        peers,
        config_file: config_file.clone(),
        warnings: std::mem::take(&mut check.warnings),
    }
}

/// Whether `s` looks like a Matrix user id.
fn is_user_id(s: &str) -> bool {
    s.len() > 3 && s.starts_with('@') && s[1..].contains(':')
}

/// A room alias (`#name:server`) or room id: `!opaque:server`, or `!` and the unpadded
/// URL-safe base64 hash that room version 12 ids are made of.
fn is_room_ref(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('!').or_else(|| s.strip_prefix('#')) else {
        return false;
    };
    let has_server = rest
        .split_once(':')
        .is_some_and(|(l, r)| !l.is_empty() && !r.is_empty());
    let v12_id = s.starts_with('!')
        && rest.len() >= 16
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    !s.contains(char::is_whitespace) && (has_server || v12_id)
}

/// The replica (of `count`) that runs `account_id`: FNV-1a (64 bit) of the id, modulo `count`.
/// Stable across versions and machines, so every replica agrees without talking to the others.
pub fn shard_of(account_id: &str, count: u32) -> u32 {
    let hash = account_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

/// The device id a password account uses unless `device_id` is set.
pub fn default_device_id(account_id: &str) -> String {
    format!(
        "MXFLEET_{}",
        account_id.to_ascii_uppercase().replace('-', "_")
    )
}

/// Whether `id` is a valid account id: 1–64 characters of `[a-z0-9_-]`.
pub fn is_valid_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

struct Checker<'a> {
    figment: &'a Figment,
    issues: &'a mut Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
}

impl Checker<'_> {
    /// Where `key`'s value came from; a list item (`….room_allowlist.0`) from where its list did.
    fn origin(&self, key: &str) -> String {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        let mut lookup = key;
        loop {
            if let Some(md) = self.figment.find_metadata(lookup) {
                return describe_origin(md, &path);
            }
            match lookup.rsplit_once('.') {
                Some((parent, last)) if last.chars().all(|c| c.is_ascii_digit()) => lookup = parent,
                _ => return "built-in default".to_owned(),
            }
        }
    }

    fn fail(&mut self, key: &str, message: &str) {
        let origin = self.origin(key);
        self.issues.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
            origin,
        });
    }

    fn require(&mut self, ok: bool, key: &str, message: &str) {
        if !ok {
            self.fail(key, message);
        }
    }

    fn warn(&mut self, key: &str, message: &str) {
        let origin = self.origin(key);
        self.warnings.push(ConfigIssue {
            key: key.into(),
            message: message.into(),
            origin,
        });
    }

    /// Checks the conversation keys of the account table `key`.
    fn conversation(&mut self, key: &str, a: &AccountConfig) -> ConversationSpec {
        for (i, user) in a.user_allowlist.iter().enumerate() {
            self.require(
                is_user_id(user),
                &format!("{key}.user_allowlist.{i}"),
                &format!("{user:?} is not a user id (@name:server)"),
            );
        }
        for (i, room) in a.room_allowlist.iter().enumerate() {
            self.require(
                is_room_ref(room),
                &format!("{key}.room_allowlist.{i}"),
                &format!(
                    "{room:?} is not a room id (!id:server, or !id in room version 12) or alias \
                     (#name:server)"
                ),
            );
        }
        self.require(
            (10..=86_400).contains(&a.otp_ttl_secs),
            &format!("{key}.otp_ttl_secs"),
            "must be between 10 and 86400",
        );
        self.require(
            a.otp_cooldown_secs <= 86_400,
            &format!("{key}.otp_cooldown_secs"),
            "must be at most 86400",
        );
        if a.otp_self_approval && a.dm_policy != AccessPolicy::Allowlist {
            self.warn(
                &format!("{key}.otp_self_approval"),
                "has no effect unless dm_policy is \"allowlist\"",
            );
        }
        if a.enabled
            && a.dm_policy == AccessPolicy::Allowlist
            && a.user_allowlist.is_empty()
            && !a.otp_self_approval
        {
            self.warn(
                &format!("{key}.dm_policy"),
                "is \"allowlist\" but user_allowlist is empty: nobody can DM this bot",
            );
        }
        if a.enabled && a.room_policy == AccessPolicy::Allowlist && a.room_allowlist.is_empty() {
            self.warn(
                &format!("{key}.room_policy"),
                "is \"allowlist\" but room_allowlist is empty: the bot answers in no group room",
            );
        }
        self.require(
            a.stream_min_initial_chars <= 10_000,
            &format!("{key}.stream_min_initial_chars"),
            "must be at most 10000",
        );
        self.require(
            a.edit_throttle_ms >= 50,
            &format!("{key}.edit_throttle_ms"),
            "must be at least 50",
        );
        self.require(
            a.max_edits_per_message >= 1,
            &format!("{key}.max_edits_per_message"),
            "must be at least 1",
        );
        self.require(
            a.history_max_messages <= 200,
            &format!("{key}.history_max_messages"),
            "must be at most 200",
        );
        let reaction = a.ack_reaction.trim();
        self.require(
            reaction.chars().count() <= 16 && !reaction.chars().any(char::is_control),
            &format!("{key}.ack_reaction"),
            "must be a short reaction key (an emoji) or empty",
        );
        ConversationSpec {
            dm_policy: a.dm_policy,
            room_policy: a.room_policy,
            mention_mode: a.mention_mode,
            allow_room_mentions: a.allow_room_mentions,
            otp_self_approval: a.otp_self_approval,
            otp_ttl_secs: a.otp_ttl_secs,
            otp_cooldown_secs: a.otp_cooldown_secs,
            user_allowlist: a.user_allowlist.clone(),
            room_allowlist: a.room_allowlist.clone(),
            auto_join: a.auto_join,
            stream_mode: a.stream_mode,
            stream_min_initial_chars: a.stream_min_initial_chars,
            edit_throttle_ms: a.edit_throttle_ms,
            max_edits_per_message: a.max_edits_per_message,
            reply_to_message: a.reply_to_message,
            ack_reaction: (!reaction.is_empty()).then(|| reaction.to_owned()),
            typing_notices: a.typing_notices,
            cue_delay_ms: a.cue_delay_ms,
            read_receipts: a.read_receipts,
            history_max_messages: a.history_max_messages,
            utd_notice_cooldown_secs: a.utd_notice_cooldown_secs,
        }
    }

    /// Resolves a secret given inline or as `<name>_file`; reports both-set, unreadable, empty.
    fn secret(
        &mut self,
        table: &str,
        name: &str,
        inline: &Option<Secret>,
        file: &Option<PathBuf>,
    ) -> Option<Secret> {
        let key = format!("{table}.{name}");
        let file_key = format!("{table}.{name}_file");
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.fail(&key, &format!("set either {name} or {name}_file, not both"));
                None
            }
            (Some(secret), None) if secret.is_empty() => {
                self.fail(&key, "is empty");
                None
            }
            (Some(secret), None) => Some(secret.clone()),
            (None, Some(path)) => match read_secret_file(path) {
                Ok(secret) => Some(secret),
                Err(message) => {
                    self.fail(&file_key, &message);
                    None
                }
            },
            (None, None) => None,
        }
    }

    fn backend(&mut self, name: &str, backend: &BackendConfig) -> Option<BackendSpec> {
        let key = format!("backends.{name}");
        match backend {
            BackendConfig::Echo { prefix } => Some(BackendSpec::Echo {
                prefix: prefix.clone(),
            }),
            BackendConfig::Openai {
                base_url,
                model,
                api_key,
                api_key_file,
                system_prompt,
                request_timeout_secs,
                images,
            } => {
                let scheme_ok = matches!(base_url.scheme(), "http" | "https");
                self.require(
                    scheme_ok,
                    &format!("{key}.base_url"),
                    "must be an http(s) URL",
                );
                self.require(
                    !model.is_empty(),
                    &format!("{key}.model"),
                    "must not be empty",
                );
                self.require(
                    *request_timeout_secs >= 1,
                    &format!("{key}.request_timeout_secs"),
                    "must be at least 1",
                );
                let api_key = self.secret(&key, "api_key", api_key, api_key_file);
                Some(BackendSpec::Openai {
                    base_url: base_url.clone(),
                    model: model.clone(),
                    api_key,
                    system_prompt: system_prompt.clone(),
                    request_timeout_secs: *request_timeout_secs,
                    images: *images,
                })
            }
            BackendConfig::Webhook {
                url,
                token,
                token_file,
                format,
                request_timeout_secs,
                images,
            } => {
                let scheme_ok = matches!(url.scheme(), "http" | "https");
                self.require(scheme_ok, &format!("{key}.url"), "must be an http(s) URL");
                self.require(
                    *request_timeout_secs >= 1,
                    &format!("{key}.request_timeout_secs"),
                    "must be at least 1",
                );
                let token = self.secret(&key, "token", token, token_file);
                Some(BackendSpec::Webhook {
                    url: url.clone(),
                    token,
                    format: *format,
                    model: None,
                    system_prompt: None,
                    request_timeout_secs: *request_timeout_secs,
                    images: *images,
                })
            }
            BackendConfig::Command {
                command,
                input,
                working_dir,
                request_timeout_secs,
            } => {
                self.require(
                    command.first().is_some_and(|p| !p.trim().is_empty()),
                    &format!("{key}.command"),
                    "must name a program, e.g. [\"my-agent\", \"--flag\"]",
                );
                self.require(
                    *request_timeout_secs >= 1,
                    &format!("{key}.request_timeout_secs"),
                    "must be at least 1",
                );
                if let Some(dir) = working_dir {
                    self.require(
                        dir.is_dir(),
                        &format!("{key}.working_dir"),
                        &format!("{} is not a directory", dir.display()),
                    );
                }
                Some(BackendSpec::Command {
                    command: command.clone(),
                    input: *input,
                    working_dir: working_dir.clone(),
                    model: None,
                    system_prompt: None,
                    request_timeout_secs: *request_timeout_secs,
                })
            }
        }
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(trimmed))
}

/// Names where a value came from: a file path, the environment variable, or the layer.
fn describe_origin(md: &Metadata, path: &[String]) -> String {
    if md.name.contains("environment") {
        let var: Vec<String> = path.iter().map(|k| k.to_ascii_uppercase()).collect();
        return format!("environment variable {ENV_PREFIX}{}", var.join("__"));
    }
    match md.source.as_ref().and_then(|s| s.file_path()) {
        Some(file) => format!("file {}", file.display()),
        None => md.name.to_string(),
    }
}

fn walk(value: &Value, path: &mut Vec<String>, visit: &mut dyn FnMut(&[String], &Value)) {
    match value {
        Value::Dict(_, dict) if !dict.is_empty() => {
            for (k, v) in dict {
                path.push(k.clone());
                walk(v, path, visit);
                path.pop();
            }
        }
        leaf => visit(path, leaf),
    }
}

fn render(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Dict(_, d) if d.is_empty() => "{}".into(),
        other => serde_json::to_string(other).unwrap_or_else(|_| "?".into()),
    }
}

/// A provider wrapper that gives a layer a readable name in errors and `mxfleet check`.
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P> Named<P> {
    fn new(name: &'static str, inner: P) -> Self {
        Self { name, inner }
    }
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}
