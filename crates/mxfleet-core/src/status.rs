//! The fleet's live status: one record per account, shared by the actors, written to
//! `data_dir/status.json` for `mxfleet status` and operators' tooling.
//!
//! Writes are coalesced: a background task flushes within [`FLUSH_INTERVAL`] of a state change,
//! within [`COUNTERS_FLUSH_INTERVAL`] when counters moved, and within [`SYNC_TIMES_FLUSH_INTERVAL`]
//! when only last-sync times did (every account's long-poll moves its last sync time, and a fleet
//! of a thousand would otherwise rewrite the whole file four times a second while idle). The
//! rename is atomic, so readers never see half a file.
//! State transitions are also logged, so the log alone tells an account's story.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use mxfleet_store::now_ms;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How soon a changed account state is written out.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// How soon a change of counters (and no state) is written out.
pub const COUNTERS_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a change of last-sync times alone is written out.
pub const SYNC_TIMES_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// The status file's name inside the data directory.
pub const STATUS_FILE: &str = "status.json";

/// Where an account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Spawned, not yet connected.
    Starting,
    /// Restoring its session or logging in.
    Connecting,
    /// Connected and syncing.
    Syncing,
    /// Waiting before a restart.
    Backoff,
    /// Local storage failed (disk full): waiting for it, everything claimed kept.
    Degraded,
    /// Credentials rejected; not restarted until the operator acts.
    AuthFailed,
    /// A permanent error (e.g. a store that does not match); not restarted.
    Failed,
    /// Stopped on request.
    Stopped,
    /// `enabled = false` in the config.
    Disabled,
}

impl std::fmt::Display for AccountState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Connecting => "connecting",
            Self::Syncing => "syncing",
            Self::Backoff => "backoff",
            Self::Degraded => "degraded",
            Self::AuthFailed => "auth_failed",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Disabled => "disabled",
        })
    }
}

/// One account's status.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountStatus {
    /// Current state.
    pub state: AccountState,
    /// When it entered this state (ms since the Unix epoch).
    pub since_ms: u64,
    /// The bot's user id, once known.
    pub user_id: Option<String>,
    /// The bot's device id, once known.
    pub device_id: Option<String>,
    /// The last error, without secrets.
    pub last_error: Option<String>,
    /// Restarts of the account or its sync since the process started.
    pub restarts: u32,
    /// While in backoff: when the next attempt is due.
    pub backoff_until_ms: Option<u64>,
    /// The last successful sync.
    pub last_sync_ms: Option<u64>,
    /// The state of the sync child.
    pub sync: ChildState,
    /// Messages accepted for an answer.
    pub messages_in: u64,
    /// Replies sent.
    pub replies_out: u64,
    /// Messages skipped as older than `catch_up_max_age_secs`.
    pub skipped_old: u64,
    /// Messages given up on: every attempt to answer them failed (see `last_error`).
    #[serde(default)]
    pub messages_failed: u64,
    /// Messages queued in the account's room workers, not yet taken up.
    #[serde(default)]
    pub messages_waiting: u64,
    /// Answers whose backend failed (the room was told an error id).
    #[serde(default)]
    pub backend_errors: u64,
    /// Answers cut at `max_answer_chars` or `max_answer_parts`.
    #[serde(default)]
    pub answers_cut: u64,
    /// Messages skipped by the rate limits (past the gate) or shed by a full room backlog.
    #[serde(default)]
    pub rate_limited: u64,
    /// Messages the gate turned away before they were stored (not addressed to the bot, or
    /// from a room or sender outside the access lists, or from another bot of this fleet).
    #[serde(default)]
    pub messages_ignored: u64,
    /// The state of the `StreamEditor` child.
    #[serde(default = "stopped")]
    pub stream_editor: ChildState,
    /// The state of the `OtpGate` child (`None`: self-approval is off).
    #[serde(default)]
    pub otp_gate: Option<ChildState>,
    /// One-time-code challenges issued.
    #[serde(default)]
    pub otp_challenges: u64,
    /// Messages that could not be decrypted when they arrived.
    #[serde(default)]
    pub undecryptable: u64,
    /// Notices posted about them.
    #[serde(default)]
    pub undecryptable_notices: u64,
    /// Of those messages, the ones decrypted later, once their keys arrived (and answered).
    #[serde(default)]
    pub decrypted_late: u64,
    /// Total time backends took for the answers so far (request to last token), in ms.
    #[serde(default)]
    pub backend_ms_total: u64,
    /// Answers timed in `backend_ms_total`.
    #[serde(default)]
    pub backend_answers: u64,
    /// Of those, how many took at most each of [`LATENCY_BUCKETS_SECS`] (not cumulative: an
    /// answer counts in the first bucket it fits; slower ones only in `backend_answers`).
    #[serde(default)]
    pub backend_buckets: Vec<u64>,
    /// How long turns took: from a message reaching its room's queue (the screen let it
    /// through) to its outcome recorded — the answer complete, or a skip or give-up.
    #[serde(default)]
    pub turns: Timings,
    /// Whether the account can read encrypted rooms, and why not.
    #[serde(default)]
    pub encryption: Option<String>,
    /// The state of the `CryptoActor` child (`None` for access-token accounts).
    #[serde(default)]
    pub crypto: Option<ChildState>,
    /// How the device's cross-signing ownership stands.
    #[serde(default)]
    pub ownership: Option<String>,
    /// How secret storage and the key backup stand (never the key).
    #[serde(default)]
    pub recovery: Option<String>,
}

fn stopped() -> ChildState {
    ChildState::Stopped
}

impl AccountStatus {
    fn new(state: AccountState, now: u64) -> Self {
        Self {
            state,
            since_ms: now,
            user_id: None,
            device_id: None,
            last_error: None,
            restarts: 0,
            backoff_until_ms: None,
            last_sync_ms: None,
            sync: ChildState::Stopped,
            messages_in: 0,
            replies_out: 0,
            skipped_old: 0,
            messages_ignored: 0,
            messages_failed: 0,
            messages_waiting: 0,
            backend_errors: 0,
            answers_cut: 0,
            rate_limited: 0,
            stream_editor: ChildState::Stopped,
            otp_gate: None,
            otp_challenges: 0,
            undecryptable: 0,
            undecryptable_notices: 0,
            decrypted_late: 0,
            backend_ms_total: 0,
            backend_answers: 0,
            backend_buckets: Vec::new(),
            turns: Timings::default(),
            encryption: None,
            crypto: None,
            ownership: None,
            recovery: None,
        }
    }
}

/// The state of a child actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Not running.
    Stopped,
    /// Running.
    Running,
    /// Waiting to be restarted.
    Restarting,
}

/// The whole fleet's status, as written to `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The process id of the fleet.
    pub pid: u32,
    /// When the fleet started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When this snapshot was taken.
    pub updated_ms: u64,
    /// Accounts by id.
    pub accounts: BTreeMap<String, AccountStatus>,
}

/// The upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS_SECS: [f64; 10] =
    [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A latency histogram over [`LATENCY_BUCKETS_SECS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// How many took at most each bound (not cumulative: each in the first bucket it fits;
    /// slower ones only in `count`).
    pub buckets: Vec<u64>,
    /// The sum of all, in ms.
    pub sum_ms: u64,
    /// How many were timed.
    pub count: u64,
}

impl Timings {
    /// Counts one that took `ms`.
    pub fn observe(&mut self, ms: u64) {
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.count = self.count.saturating_add(1);
        observe_bucket(&mut self.buckets, ms);
    }

    /// The cumulative counts, one per bound of [`LATENCY_BUCKETS_SECS`].
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0u64;
        (0..LATENCY_BUCKETS_SECS.len())
            .map(|i| {
                total = total.saturating_add(self.buckets.get(i).copied().unwrap_or(0));
                total
            })
            .collect()
    }
}

impl AccountStatus {
    /// Counts an answer whose backend took `ms`: in the total, and in its histogram bucket.
    pub fn observe_backend(&mut self, ms: u64) {
        self.backend_ms_total = self.backend_ms_total.saturating_add(ms);
        self.backend_answers = self.backend_answers.saturating_add(1);
        observe_bucket(&mut self.backend_buckets, ms);
    }

    /// The backend times as a histogram.
    pub fn backend_timings(&self) -> Timings {
        Timings {
            buckets: self.backend_buckets.clone(),
            sum_ms: self.backend_ms_total,
            count: self.backend_answers,
        }
    }
}

/// Counts `ms` in the first bucket of `buckets` whose bound it fits.
fn observe_bucket(buckets: &mut Vec<u64>, ms: u64) {
    let secs = ms as f64 / 1000.0;
    let Some(bucket) = LATENCY_BUCKETS_SECS.iter().position(|le| secs <= *le) else {
        return;
    };
    if buckets.len() < LATENCY_BUCKETS_SECS.len() {
        buckets.resize(LATENCY_BUCKETS_SECS.len(), 0);
    }
    if let Some(count) = buckets.get_mut(bucket) {
        *count = count.saturating_add(1);
    }
}

/// Whether the fleet is ready: what `/readyz` and `mxfleet health` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Every account is syncing or deliberately parked.
    pub ready: bool,
    /// The accounts that are not, with their states.
    pub waiting: BTreeMap<String, AccountState>,
}

impl FleetStatus {
    /// Ready when every account is syncing or deliberately parked (stopped by an operator, or
    /// disabled in the config): not while accounts are still starting, connecting or backing
    /// off, while storage is failing (`degraded`), or while an account needs the operator
    /// (`auth_failed`, `failed`). A replica with no accounts is ready.
    pub fn readiness(&self) -> Readiness {
        let waiting: BTreeMap<String, AccountState> = self
            .accounts
            .iter()
            .filter(|(_, a)| !settled(a.state))
            .map(|(id, a)| (id.clone(), a.state))
            .collect();
        Readiness {
            ready: waiting.is_empty(),
            waiting,
        }
    }
}

/// Whether an account in `state` lets the fleet count as ready.
fn settled(state: AccountState) -> bool {
    match state {
        AccountState::Syncing | AccountState::Stopped | AccountState::Disabled => true,
        AccountState::Starting
        | AccountState::Connecting
        | AccountState::Backoff
        | AccountState::Degraded
        | AccountState::AuthFailed
        | AccountState::Failed => false,
    }
}

/// Shared, cheap-to-clone handle on the fleet's status.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<Board>>,
}

#[derive(Debug)]
struct Board {
    status: FleetStatus,
    /// What changed since the last write.
    dirty: Dirt,
    /// When the file was last written.
    written: Instant,
    /// User ids of the accounts other replicas run (scale-out).
    peers: std::collections::HashSet<String>,
}

/// What changed on the board since its last write, least to most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dirt {
    /// Nothing.
    Clean,
    /// Last-sync times only.
    SyncTimes,
    /// Counters (and perhaps last-sync times).
    Counters,
    /// An account's state, or the set of accounts.
    State,
}

impl StatusBoard {
    /// An empty board.
    pub fn new() -> Self {
        let now = now_ms();
        let status = FleetStatus {
            pid: std::process::id(),
            started_ms: now,
            updated_ms: now,
            accounts: BTreeMap::new(),
        };
        Self {
            inner: Arc::new(Mutex::new(Board {
                status,
                dirty: Dirt::State,
                written: Instant::now(),
                peers: Default::default(),
            })),
        }
    }

    /// Moves `account` to `state`, recording `error` (or clearing it when `None` and the state
    /// is healthy), and logs the transition.
    pub fn transition(&self, account: &str, state: AccountState, error: Option<String>) {
        let mut board = self.lock();
        let now = now_ms();
        let new = !board.status.accounts.contains_key(account);
        let entry = board
            .status
            .accounts
            .entry(account.to_owned())
            .or_insert_with(|| AccountStatus::new(state, now));
        let previous = entry.state;
        if previous != state {
            entry.since_ms = now;
        }
        entry.state = state;
        if state != AccountState::Backoff {
            entry.backoff_until_ms = None;
        }
        if let Some(error) = &error {
            entry.last_error = Some(error.clone());
        }
        board.dirty = Dirt::State;
        drop(board);
        if new {
            // Outside the board's lock: the recorder takes its own.
            crate::measure::register_account(account);
        }
        if previous == state && error.is_none() {
            return;
        }
        match (state, error) {
            (AccountState::AuthFailed | AccountState::Failed, Some(e)) => {
                warn!(account, from = ?previous, to = ?state, error = %e, "account state changed")
            }
            (_, Some(e)) => {
                info!(account, from = ?previous, to = ?state, error = %e, "account state changed")
            }
            (_, None) => info!(account, from = ?previous, to = ?state, "account state changed"),
        }
    }

    /// Changes fields of `account`'s status in place (no log line).
    pub fn update(&self, account: &str, change: impl FnOnce(&mut AccountStatus)) {
        self.change(account, Dirt::Counters, change);
    }

    /// Notes that `account` finished a sync at `now_ms` (written out at the slowest pace).
    pub fn synced(&self, account: &str, now_ms: u64) {
        self.change(account, Dirt::SyncTimes, |s| s.last_sync_ms = Some(now_ms));
    }

    /// Forgets `account` (removed from the configuration).
    pub fn remove(&self, account: &str) {
        let mut board = self.lock();
        board.status.accounts.remove(account);
        board.dirty = Dirt::State;
    }

    /// Whether `user_id` belongs to one of the fleet's own accounts, here or on another
    /// replica. Bots of one fleet never answer each other: two of them in a room would otherwise
    /// talk forever.
    pub fn is_fleet_user(&self, user_id: &str) -> bool {
        let board = self.lock();
        board.peers.contains(user_id)
            || board
                .status
                .accounts
                .values()
                .any(|s| s.user_id.as_deref() == Some(user_id))
    }

    /// Sets the user ids of the accounts other replicas run.
    pub fn set_peers(&self, user_ids: impl IntoIterator<Item = String>) {
        self.lock().peers = user_ids.into_iter().collect();
    }

    /// The status of one account.
    pub fn account(&self, account: &str) -> Option<AccountStatus> {
        self.lock().status.accounts.get(account).cloned()
    }

    /// A snapshot of the whole fleet.
    pub fn snapshot(&self) -> FleetStatus {
        let mut status = self.lock().status.clone();
        status.updated_ms = now_ms();
        status
    }

    /// Writes the status to `data_dir/status.json` whenever it changes, until the board is
    /// dropped everywhere else.
    pub fn spawn_writer(&self, data_dir: &Path) -> tokio::task::JoinHandle<()> {
        let path = data_dir.join(STATUS_FILE);
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let board = Self { inner };
                if let Some(snapshot) = board.take_dirty() {
                    board.write(&path, snapshot).await;
                }
            }
        })
    }

    /// Writes the current status now (used at shutdown).
    pub async fn flush(&self, data_dir: &Path) {
        let snapshot = self.snapshot();
        {
            let mut board = self.lock();
            board.dirty = Dirt::Clean;
            board.written = Instant::now();
        }
        self.write(&data_dir.join(STATUS_FILE), snapshot).await;
    }

    fn take_dirty(&self) -> Option<FleetStatus> {
        let mut board = self.lock();
        let now = Instant::now();
        if !flush_due(board.dirty, now.saturating_duration_since(board.written)) {
            return None;
        }
        board.dirty = Dirt::Clean;
        board.written = now;
        let mut status = board.status.clone();
        status.updated_ms = now_ms();
        Some(status)
    }

    async fn write(&self, path: &Path, status: FleetStatus) {
        let path: PathBuf = path.into();
        let result = tokio::task::spawn_blocking(move || write_atomically(&path, &status)).await;
        if let Ok(Err(e)) | Err(e) = result.map_err(std::io::Error::other) {
            warn!(error = %e, "could not write status.json");
        }
    }

    /// Applies `change` to `account`'s record, if any, marking the board at least `dirt`.
    fn change(&self, account: &str, dirt: Dirt, change: impl FnOnce(&mut AccountStatus)) {
        let mut board = self.lock();
        if let Some(entry) = board.status.accounts.get_mut(account) {
            change(entry);
            board.dirty = board.dirty.max(dirt);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a board with `dirt`, written `since_write` ago, is written out now.
fn flush_due(dirt: Dirt, since_write: Duration) -> bool {
    match dirt {
        Dirt::Clean => false,
        Dirt::SyncTimes => since_write >= SYNC_TIMES_FLUSH_INTERVAL,
        Dirt::Counters => since_write >= COUNTERS_FLUSH_INTERVAL,
        Dirt::State => true,
    }
}

/// Reads a status file written by a running (or past) fleet.
pub fn read_status_file(data_dir: &Path) -> std::io::Result<FleetStatus> {
    let bytes = std::fs::read(data_dir.join(STATUS_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

fn write_atomically(path: &Path, status: &FleetStatus) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_are_written_at_once_counters_and_sync_times_at_their_pace() {
        let soon = FLUSH_INTERVAL;
        let cases = [
            (Dirt::Clean, SYNC_TIMES_FLUSH_INTERVAL * 2, false),
            (Dirt::SyncTimes, COUNTERS_FLUSH_INTERVAL, false),
            (Dirt::SyncTimes, SYNC_TIMES_FLUSH_INTERVAL, true),
            (Dirt::Counters, soon, false),
            (Dirt::Counters, COUNTERS_FLUSH_INTERVAL, true),
            (Dirt::State, Duration::ZERO, true),
            (Dirt::State, soon, true),
        ];
        for (dirt, since_write, due) in cases {
            assert_eq!(
                flush_due(dirt, since_write),
                due,
                "{dirt:?} after {since_write:?}"
            );
        }
    }

    #[test]
    fn backend_times_land_in_their_bucket_and_add_up_cumulatively() {
        let mut status = AccountStatus::new(AccountState::Syncing, 0);
        // 0.05 s and 0.1 s fit the first bucket (le 0.1), 0.7 s the fourth (le 1), 500 s none.
        for ms in [50, 100, 700, 500_000] {
            status.observe_backend(ms);
        }
        assert_eq!(status.backend_answers, 4);
        assert_eq!(status.backend_ms_total, 500_850);
        assert_eq!(
            status.backend_timings().cumulative(),
            [2, 2, 2, 3, 3, 3, 3, 3, 3, 3]
        );
        assert_eq!(
            AccountStatus::new(AccountState::Syncing, 0)
                .backend_timings()
                .cumulative(),
            [0; 10]
        );
    }

    #[test]
    fn ready_when_every_account_syncs_or_is_parked_on_purpose() {
        let fleet = |states: &[AccountState]| FleetStatus {
            pid: 1,
            started_ms: 0,
            updated_ms: 0,
            accounts: states
                .iter()
                .enumerate()
                .map(|(i, state)| (format!("a{i}"), AccountStatus::new(*state, 0)))
                .collect(),
        };
        use AccountState::*;
        for (states, ready) in [
            (&[][..], true),
            (&[Syncing, Syncing], true),
            (&[Syncing, Stopped, Disabled], true),
            (&[Syncing, Starting], false),
            (&[Syncing, Connecting], false),
            (&[Syncing, Backoff], false),
            (&[Syncing, Degraded], false),
            (&[Syncing, AuthFailed], false),
            (&[Failed], false),
        ] {
            let readiness = fleet(states).readiness();
            assert_eq!(readiness.ready, ready, "{states:?}");
            let waiting = states.iter().filter(|s| !settled(**s)).count();
            assert_eq!(readiness.waiting.len(), waiting, "{states:?}");
        }
    }
}
