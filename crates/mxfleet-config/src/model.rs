//! The typed configuration, as it is read from defaults, files, environment and flags.
//!
//! Every struct rejects unknown keys, every duration and size carries its unit in its name, and
//! every secret is a [`Secret`] with a `*_file` twin. These types are what the layers deserialize
//! into; [`crate::ValidConfig`] is what the rest of mxfleet runs on after validation.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::{Secret, defaults};

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
    /// At shutdown, how long answers in flight get to finish; answers still streaming then end
    /// with an "interrupted" edit. Below `shutdown_timeout_secs`.
    #[serde(default = "defaults::shutdown_drain_secs")]
    pub shutdown_drain_secs: u64,
    /// Answered (and skipped) inbox entries older than this many days are pruned.
    #[serde(default = "defaults::inbox_retention_days")]
    pub inbox_retention_days: u64,
    /// Threads for blocking work (the stores' SQLite and redb calls, file writes, DNS
    /// lookups), shared by all accounts. More threads than this wait their turn.
    #[serde(default = "defaults::blocking_threads")]
    pub blocking_threads: usize,
    /// The page cache of every SQLite connection of the accounts' stores, in KiB.
    #[serde(default = "defaults::store_page_cache_kib")]
    pub store_page_cache_kib: u32,
    /// How failed accounts and children are restarted.
    #[serde(default)]
    pub restart: RestartConfig,
    /// Named AI backends; accounts refer to them by name. `echo` is built in.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// The admin HTTP API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Unauthenticated health probes (`/livez`, `/readyz`) on a listener of their own.
    #[serde(default)]
    pub probes: ListenerConfig,
    /// Unauthenticated Prometheus metrics (`/metrics`) on a listener of their own.
    #[serde(default)]
    pub metrics: ListenerConfig,
    /// Which of several replicas this process is (scale-out); one replica owns every account.
    #[serde(default)]
    pub shard: ShardConfig,
    /// One table per bot account, keyed by a lower-case account id.
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountConfig>,
}

/// The admin HTTP API: on when a token is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on; loopback unless you put it behind TLS and a firewall.
    #[serde(default = "defaults::admin_bind")]
    pub bind: String,
    /// Bearer token every route requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: defaults::admin_bind(),
            token: None,
            token_file: None,
        }
    }
}

/// An optional unauthenticated listener (probes, metrics): off unless `bind` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to listen on, e.g. `0.0.0.0:9090` in a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
}

/// Scale-out: replica `index` of `count` runs the accounts whose id hashes to `index`
/// (see [`crate::shard_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// How many replicas share the accounts.
    #[serde(default = "defaults::shard_count")]
    pub count: u32,
    /// Which replica this is, from 0 (a StatefulSet pod's ordinal).
    #[serde(default)]
    pub index: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            count: defaults::shard_count(),
            index: 0,
        }
    }
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
    /// Lines that may wait for a slow log consumer; past it new lines are dropped (and counted
    /// in `mxfleet_log_lines_dropped_total`) rather than stalling the accounts.
    #[serde(default = "defaults::log_buffer_lines")]
    pub buffer_lines: usize,
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
        /// At most this many answers from this backend at once, across every account that uses
        /// it; more wait their turn (none: no limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_concurrent: Option<u32>,
        /// The model sees images: images users send are passed on (`image_url` parts).
        #[serde(default)]
        images: bool,
    },
    /// An external agent over HTTP: the conversation is POSTed as JSON, the answer streams back
    /// as SSE, NDJSON or one JSON/text body.
    Webhook {
        /// The URL to POST to.
        url: Url,
        /// Bearer token sent with each request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<Secret>,
        /// A file holding the bearer token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<PathBuf>,
        /// How the answer is read: `auto` (from its content type), `sse`, `ndjson` or `text`.
        #[serde(default = "defaults::webhook_format")]
        format: StreamFormat,
        /// Give up on a request after this long.
        #[serde(default = "defaults::request_timeout_secs")]
        request_timeout_secs: u64,
        /// At most this many answers from this backend at once, across every account that uses
        /// it; more wait their turn (none: no limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_concurrent: Option<u32>,
        /// The agent takes images: images users send are passed on (base64 in `images`).
        #[serde(default)]
        images: bool,
    },
    /// A CLI agent: spawned per answer, the prompt on its stdin, its stdout is the answer.
    Command {
        /// The program and its arguments, e.g. `["my-agent", "--stdin"]`. No shell is involved.
        command: Vec<String>,
        /// What goes to stdin: `prompt` (the last message) or `json` (the whole request).
        #[serde(default = "defaults::command_input")]
        input: CommandInput,
        /// The working directory of the process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        working_dir: Option<PathBuf>,
        /// Kill the process (and its process group) after this long.
        #[serde(default = "defaults::request_timeout_secs")]
        request_timeout_secs: u64,
        /// At most this many answers from this backend at once, across every account that uses
        /// it; more wait their turn (none: no limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_concurrent: Option<u32>,
        /// Environment variables set for the agent. It starts from an empty environment: only
        /// `PATH`, these and the ones named in `pass_env` reach it.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        /// Names of variables passed on from mxfleet's own environment (`MXFLEET_*` never is).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pass_env: Vec<String>,
        /// `none` (the default) or `bwrap`: run the agent under bubblewrap, with a read-only view
        /// of the system in which the data directory, the configuration file and the secret
        /// files are hidden, a private `/tmp`, and only `working_dir` writable.
        #[serde(default)]
        sandbox: Sandbox,
    },
}

/// Where a command backend's agent runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sandbox {
    /// A plain child process (own process group, cleared environment).
    #[default]
    None,
    /// Inside bubblewrap (`bwrap`), which must be installed.
    Bwrap,
}

/// How a webhook's answer is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// Decide from the response's content type.
    Auto,
    /// `text/event-stream`: each event's data is a JSON object with `delta` (or plain text).
    Sse,
    /// One JSON object per line with `delta`.
    Ndjson,
    /// The whole body is the answer (JSON `{"text": …}` or plain text).
    Text,
}

/// What a command backend gets on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandInput {
    /// The message to answer, as text.
    Prompt,
    /// The whole request (conversation, model, room) as one JSON object.
    Json,
}

/// One bot account. Its keys are flat in `[accounts.<id>]`; here they are grouped by concern,
/// and the groups that need no resolving ([`EncryptionConfig`], [`SyncConfig`],
/// [`ConversationConfig`]) are what the validated [`crate::AccountSpec`] carries as they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// Where and as whom the account logs in, and whether it runs.
    #[serde(flatten)]
    pub login: LoginConfig,
    /// Secrets, each inline or in a file.
    #[serde(flatten)]
    pub credentials: CredentialsConfig,
    /// Device ownership and verification.
    #[serde(flatten)]
    pub encryption: EncryptionConfig,
    /// Which backend answers, with which model and prompt, and the overrides.
    #[serde(flatten)]
    pub answering: AnsweringConfig,
    /// The sync loop.
    #[serde(flatten)]
    pub sync: SyncConfig,
    /// Who the bot talks to, and how it answers.
    #[serde(flatten)]
    pub conversation: ConversationConfig,
    /// Voice messages and files.
    #[serde(flatten)]
    pub media: MediaConfig,
}

/// Where and as whom an account logs in, and whether it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The homeserver's client-server API base URL.
    pub homeserver: Url,
    /// The bot's Matrix user id; found with whoami for access-token accounts when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The device id for password login; defaults to `MXFLEET_<ACCOUNT ID>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The device's display name; defaults to `mxfleet <account id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_display_name: Option<String>,
    /// Whether the account runs at all.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
}

/// An account's secrets, each given inline or as a `*_file` holding it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
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
    /// The recovery key of the account's secret storage (not the password): restores
    /// cross-signing and the key backup on a new device. Generated and kept in the data dir when
    /// `bot_owned` sets recovery up and none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<Secret>,
    /// A file holding the recovery key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key_file: Option<PathBuf>,
    /// Passphrase for the matrix-sdk store; generated once and kept in mxfleet's database if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_passphrase: Option<Secret>,
    /// A file holding the store passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_passphrase_file: Option<PathBuf>,
}

/// Device ownership and verification of a password account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Who manages the account's cross-signing identity: `user_managed` (the owner verifies the
    /// bot's device from their client) or `bot_owned` (the bot bootstraps it with its password).
    #[serde(default)]
    pub ownership_mode: OwnershipMode,
    /// A device verification not finished within this long is cancelled.
    #[serde(default = "defaults::verification_timeout_secs")]
    pub verification_timeout_secs: u64,
    /// If the account's crypto store is gone while its session is known, log in as a new device
    /// instead of failing (the old device's keys are lost either way).
    #[serde(default)]
    pub allow_new_device: bool,
    /// What happens after a hard logout (the session revoked or its device deleted): wait for
    /// `mxfleet relogin` (`manual`), or log in as a new device at once (`auto`, at most once
    /// every ten minutes).
    #[serde(default)]
    pub relogin: ReloginMode,
}

/// Which backend answers an account, with which model and prompt, and where others do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnsweringConfig {
    /// The name of the backend in `[backends]` (or the built-in `echo`); `provider` also works.
    #[serde(alias = "provider")]
    pub backend: String,
    /// Overrides the backend's model for this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Overrides the backend's system prompt for this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Backend/model overrides per room (id or alias).
    #[serde(default)]
    pub room_overrides: BTreeMap<String, RouteOverride>,
    /// Backend/model overrides per user id; they win over room overrides.
    #[serde(default)]
    pub user_overrides: BTreeMap<String, RouteOverride>,
}

/// An account's sync loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// After downtime, messages younger than this are answered; older ones are skipped.
    #[serde(default = "defaults::catch_up_max_age_secs")]
    pub catch_up_max_age_secs: u64,
    /// The long-poll timeout of each sync request.
    #[serde(default = "defaults::sync_timeout_secs")]
    pub sync_timeout_secs: u64,
    /// Restart the sync if no sync succeeded for this long (beyond the long-poll timeout).
    #[serde(default = "defaults::sync_stall_secs")]
    pub sync_stall_secs: u64,
    /// The most events of a room one sync returns; a room with more new events since the last
    /// sync (after downtime) is backfilled from its history, back to the last position.
    #[serde(default = "defaults::sync_timeline_limit")]
    pub sync_timeline_limit: u32,
    /// The most events backfilled per room and gap (older ones are skipped and counted).
    #[serde(default = "defaults::backfill_max_events")]
    pub backfill_max_events: u32,
}

/// How an account converses: who it talks to, how answers are shown, which cues it gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationConfig {
    /// Who may talk to the bot in direct messages.
    #[serde(default = "defaults::access_policy")]
    pub dm_policy: AccessPolicy,
    /// Which group rooms the bot talks in.
    #[serde(default = "defaults::access_policy")]
    pub room_policy: AccessPolicy,
    /// When the bot answers in group rooms.
    #[serde(default)]
    pub mention_mode: MentionMode,
    /// Whether an `@room` mention counts as mentioning the bot.
    #[serde(default)]
    pub allow_room_mentions: bool,
    /// Under `dm_policy = "allowlist"`, unknown DM senders may approve themselves with a
    /// one-time code that only the operator sees.
    #[serde(default)]
    pub otp_self_approval: bool,
    /// How long a one-time code stays valid.
    #[serde(default = "defaults::otp_ttl_secs")]
    pub otp_ttl_secs: u64,
    /// How long a sender is locked out after 3 wrong codes.
    #[serde(default = "defaults::otp_cooldown_secs")]
    pub otp_cooldown_secs: u64,
    /// New challenges per hour for the whole account, whoever asks (wrong codes: three times
    /// as many); past it strangers are ignored until the hour has passed.
    #[serde(default = "defaults::otp_challenges_per_hour")]
    pub otp_challenges_per_hour: u32,
    /// Users who may DM the bot under `dm_policy = "allowlist"` (full Matrix user ids).
    #[serde(default)]
    pub user_allowlist: Vec<String>,
    /// Rooms (ids or aliases) the bot talks in under `room_policy = "allowlist"`.
    #[serde(default)]
    pub room_allowlist: Vec<String>,
    /// How invites are handled.
    #[serde(default)]
    pub auto_join: AutoJoin,
    /// How streamed answers are shown.
    #[serde(default)]
    pub stream_mode: StreamMode,
    /// Characters collected before the first message of a streamed answer is sent.
    #[serde(default = "defaults::stream_min_initial_chars")]
    pub stream_min_initial_chars: usize,
    /// The minimum time between two edits of a streamed answer.
    #[serde(default = "defaults::edit_throttle_ms")]
    pub edit_throttle_ms: u64,
    /// The most edits one message of a streamed answer gets (the final edit included).
    #[serde(default = "defaults::max_edits_per_message")]
    pub max_edits_per_message: u32,
    /// The longest answer, in characters; the rest is not read and the answer ends with a note
    /// that it was cut.
    #[serde(default = "defaults::max_answer_chars")]
    pub max_answer_chars: usize,
    /// The most messages one answer is split into; past it the answer is cut as above.
    #[serde(default = "defaults::max_answer_parts")]
    pub max_answer_parts: usize,
    /// Answer with a rich reply to the message (outside threads).
    #[serde(default = "defaults::enabled")]
    pub reply_to_message: bool,
    /// Reaction put on a message while it is being answered; empty disables it (see
    /// [`ConversationConfig::ack_reaction`]).
    #[serde(default = "defaults::ack_reaction")]
    pub ack_reaction: String,
    /// Send the ack reaction and typing notices only if the answer is not visible this long
    /// after the message was received (0: at once, on receipt). A fast answer then comes alone.
    #[serde(default = "defaults::cue_delay_ms")]
    pub cue_delay_ms: u64,
    /// Show "typing…" while an answer is being prepared.
    #[serde(default = "defaults::enabled")]
    pub typing_notices: bool,
    /// Send a read receipt for each message the bot handles.
    #[serde(default)]
    pub read_receipts: bool,
    /// After a notice about an undecryptable message, no other notice for the same room and
    /// Megolm session for this long.
    #[serde(default = "defaults::utd_notice_cooldown_secs")]
    pub utd_notice_cooldown_secs: u64,
    /// How many earlier messages of the room or thread the backend sees.
    #[serde(default = "defaults::history_max_messages")]
    pub history_max_messages: usize,
    /// Rate limits on the messages the gate lets through (`[accounts.<id>.limits]`).
    #[serde(default)]
    pub limits: MessageLimits,
}

/// How many messages that passed the gate go on to the backend per minute; the rest are
/// skipped (counted, and the room told once a minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLimits {
    /// From one sender, in all the account's rooms together.
    #[serde(default = "defaults::per_sender_per_minute")]
    pub per_sender_per_minute: u32,
    /// In one room, from everyone together.
    #[serde(default = "defaults::per_room_per_minute")]
    pub per_room_per_minute: u32,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            per_sender_per_minute: defaults::per_sender_per_minute(),
            per_room_per_minute: defaults::per_room_per_minute(),
        }
    }
}

/// Voice messages and files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// An `openai` backend that transcribes voice messages (`/audio/transcriptions` with its
    /// `model`); without one, voice messages get a reply saying how to set it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcription: Option<String>,
    /// Media larger than this are not downloaded (the download stops there); `0` takes no
    /// media at all.
    #[serde(default = "defaults::max_media_bytes")]
    pub max_media_bytes: u64,
    /// A media download that takes longer than this is given up.
    #[serde(default = "defaults::media_timeout_secs")]
    pub media_timeout_secs: u64,
}

impl ConversationConfig {
    /// The acknowledgement reaction, if one is set (`ack_reaction` trimmed, not empty).
    pub fn ack_reaction(&self) -> Option<&str> {
        Some(self.ack_reaction.trim()).filter(|r| !r.is_empty())
    }
}

impl Default for ConversationConfig {
    /// The built-in defaults, as for a table that sets no conversation key.
    fn default() -> Self {
        Self {
            dm_policy: defaults::access_policy(),
            room_policy: defaults::access_policy(),
            mention_mode: MentionMode::default(),
            allow_room_mentions: false,
            otp_self_approval: false,
            otp_ttl_secs: defaults::otp_ttl_secs(),
            otp_cooldown_secs: defaults::otp_cooldown_secs(),
            otp_challenges_per_hour: defaults::otp_challenges_per_hour(),
            user_allowlist: Vec::new(),
            room_allowlist: Vec::new(),
            auto_join: AutoJoin::default(),
            stream_mode: StreamMode::default(),
            stream_min_initial_chars: defaults::stream_min_initial_chars(),
            edit_throttle_ms: defaults::edit_throttle_ms(),
            max_edits_per_message: defaults::max_edits_per_message(),
            max_answer_chars: defaults::max_answer_chars(),
            max_answer_parts: defaults::max_answer_parts(),
            reply_to_message: true,
            ack_reaction: defaults::ack_reaction(),
            cue_delay_ms: defaults::cue_delay_ms(),
            typing_notices: true,
            read_receipts: false,
            utd_notice_cooldown_secs: defaults::utd_notice_cooldown_secs(),
            history_max_messages: defaults::history_max_messages(),
            limits: MessageLimits::default(),
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            catch_up_max_age_secs: defaults::catch_up_max_age_secs(),
            sync_timeout_secs: defaults::sync_timeout_secs(),
            sync_stall_secs: defaults::sync_stall_secs(),
            sync_timeline_limit: defaults::sync_timeline_limit(),
            backfill_max_events: defaults::backfill_max_events(),
        }
    }
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            ownership_mode: OwnershipMode::default(),
            verification_timeout_secs: defaults::verification_timeout_secs(),
            allow_new_device: false,
            relogin: ReloginMode::default(),
        }
    }
}

/// What a password account does after a hard logout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloginMode {
    /// The account stays `auth_failed` until an operator runs `mxfleet relogin`.
    #[default]
    Manual,
    /// The fleet logs the account in again as a new device (rate-bounded).
    Auto,
}

/// Who manages an account's cross-signing identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnershipMode {
    /// Leave cross-signing to the account's owner.
    #[default]
    UserManaged,
    /// The bot creates its identity and signs its own device.
    BotOwned,
}

/// Who may use the bot in DMs or rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessPolicy {
    /// Anyone / any room.
    Open,
    /// Only the users / rooms in the allowlist.
    Allowlist,
    /// Nobody: such messages are ignored.
    Disabled,
}

/// When the bot answers in group rooms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MentionMode {
    /// Every message.
    Always,
    /// Only messages that mention the bot.
    #[default]
    Mention,
    /// Never (DMs only).
    None,
}

/// How invites are handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoJoin {
    /// Join every invite the access policies allow; reject the others.
    #[default]
    Always,
    /// Join only invites from `user_allowlist` users or to `room_allowlist` rooms; reject others.
    Allowlist,
    /// Leave invites alone.
    Off,
}

/// How streamed answers are shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// Send early, then edit the message as the answer grows.
    #[default]
    EditInPlace,
    /// Send one message when the answer is complete.
    Off,
}

/// A backend and/or model override for a room or user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOverride {
    /// The backend (provider) to use instead of the account's.
    #[serde(default, alias = "provider", skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The model to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The system prompt to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: defaults::data_dir(),
            log: LogConfig::default(),
            shutdown_timeout_secs: defaults::shutdown_timeout_secs(),
            shutdown_drain_secs: defaults::shutdown_drain_secs(),
            inbox_retention_days: defaults::inbox_retention_days(),
            blocking_threads: defaults::blocking_threads(),
            store_page_cache_kib: defaults::store_page_cache_kib(),
            restart: RestartConfig::default(),
            backends: BTreeMap::new(),
            admin: AdminConfig::default(),
            probes: ListenerConfig::default(),
            metrics: ListenerConfig::default(),
            shard: ShardConfig::default(),
            accounts: BTreeMap::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: defaults::log_level(),
            buffer_lines: defaults::log_buffer_lines(),
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
