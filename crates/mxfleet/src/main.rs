//! The `mxfleet` command: run many Matrix bot accounts in one process.

/// `println!` that ignores a closed stdout (`mxfleet check | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod doctor;
mod operator;
mod retention;
mod systemd;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mxfleet_admin::{
    AdminState, ConfigLoader,
    probes::{OpenRoutes, OpenState, serve_open},
    reload_config,
};
use mxfleet_config::{ConfigError, ConfigIssue, Flags, Loaded, LogFormat, Sources};
use mxfleet_core::{FleetArgs, FleetMsg, StatusBoard, start_fleet};
use mxfleet_store::{DirLock, Store, StoreError};
use ractor::ActorRef;
use tracing::{error, info, warn};

/// Exit code for a command line that does not parse (`EX_USAGE`).
const EXIT_USAGE: u8 = 64;
/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code when another process holds the data directory.
const EXIT_LOCKED: u8 = 3;
/// How long a starting fleet waits for the data directory's lock (a `status` or `doctor`
/// looking at it holds it for milliseconds; another fleet holds it for good).
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// The version and the commit the binary was built from (see `build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MXFLEET_COMMIT"), ")");

/// Run many Matrix bot accounts in one process, connected to AI backends.
#[derive(Debug, Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// The TOML config file (also `MXFLEET_CONFIG`; default `config/mxfleet.toml`).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Overrides `log.level` (a tracing filter such as `info,mxfleet_core=debug`).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Remove everything an account left in the data dir (fleet stopped): its session and
    /// access token, keys, inbox, memory, OTP records and matrix-sdk stores.
    Forget {
        /// The account id (removed from the configuration, or disabled).
        account: String,
        /// Log the stored session out at the homeserver first (the token dies, the device goes).
        #[arg(long)]
        logout: bool,
        /// The homeserver to log out at, when the account is no longer configured.
        #[arg(long, value_name = "URL")]
        homeserver: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the fleet until SIGTERM or SIGINT.
    Run,
    /// Validate the configuration and print it merged, secrets redacted, with each value's origin.
    Check,
    /// Print each account's state: from the admin API of the running fleet, else from the data
    /// directory's status file.
    Status {
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start an account (also one that is stopped, failed or auth_failed) in the running fleet.
    Start {
        /// The account id.
        account: String,
    },
    /// Stop an account in the running fleet; it stays stopped until started.
    Stop {
        /// The account id.
        account: String,
    },
    /// Restart an account in the running fleet; the others are not touched.
    Restart {
        /// The account id.
        account: String,
    },
    /// Log a password account in again as a new device, after the homeserver ended its session
    /// (token revoked, device deleted); its old stores are kept aside.
    Relogin {
        /// The account id.
        account: String,
    },
    /// One-time-code challenges of unknown DM senders.
    Otp {
        #[command(subcommand)]
        command: OtpCommand,
    },
    /// Make the running fleet re-read its configuration (like SIGHUP).
    Reload,
    /// Exit 0 when the running fleet is alive and ready (every account syncing or deliberately
    /// parked), 1 otherwise: for scripts and health checks.
    Health,
    /// Check one account without a running fleet: homeserver, session, store, encryption.
    Doctor {
        /// The account id.
        account: String,
    },
    /// Accounts that left the configuration.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Show the recovery key mxfleet keeps for an account, or import one (fleet stopped).
    RecoveryKey {
        /// The account id.
        account: String,
        /// Keep this key for the account instead (read from stdin with `-`).
        #[arg(long, value_name = "KEY")]
        import: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OtpCommand {
    /// List pending challenges with their codes (give a code to the sender out of band).
    List,
    /// List the senders approved by a code.
    Approved,
    /// Withdraw a sender's approval: their next DM is challenged again.
    Revoke {
        /// The account id.
        account: String,
        /// The sender's user id.
        user: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

fn main() -> ExitCode {
    private_files();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` are not errors.
            return match e.use_stderr() {
                true => ExitCode::from(EXIT_USAGE),
                false => ExitCode::SUCCESS,
            };
        }
    };
    let sources = Sources {
        config_file: cli.config.clone(),
        flags: Flags {
            data_dir: cli.data_dir.clone(),
            log_format: cli.log_format.map(|f| match f {
                LogFormatArg::Human => LogFormat::Human,
                LogFormatArg::Json => LogFormat::Json,
            }),
            log_level: cli.log_level.clone(),
        },
    };
    let loaded = match mxfleet_config::load(&sources) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Every command that opens an account's stores (the fleet, `recovery-key`, `doctor`, …)
    // opens them with the configured page cache.
    mxfleet_matrix::set_page_cache_kib(loaded.config.store_page_cache_kib);
    match cli.command {
        Command::Check => {
            match &loaded.config.config_file {
                Some(file) => out!("# configuration is valid (file: {})", file.display()),
                None => {
                    out!("# configuration is valid (no config file; defaults and environment)")
                }
            }
            for warning in &loaded.config.warnings {
                out!("# warning: {warning}");
            }
            let shard = loaded.config.shard;
            if shard.count > 1 {
                let here: Vec<&str> = loaded.config.accounts.keys().map(String::as_str).collect();
                let elsewhere: Vec<String> = loaded
                    .config
                    .peers
                    .keys()
                    .map(|id| {
                        format!(
                            "{id} (replica {})",
                            mxfleet_config::shard_of(id, shard.count)
                        )
                    })
                    .collect();
                out!(
                    "# replica {} of {} runs: {}",
                    shard.index,
                    shard.count,
                    if here.is_empty() {
                        "no account".to_owned()
                    } else {
                        here.join(", ")
                    }
                );
                out!("# the other replicas run: {}", elsewhere.join(", "));
            }
            out!("{}", loaded.describe());
            ExitCode::SUCCESS
        }
        Command::Status { json } => operator::status(&loaded, json),
        Command::Run => run(loaded, sources),
        Command::Start { account } => operator::control(&loaded, &account, "start"),
        Command::Stop { account } => operator::control(&loaded, &account, "stop"),
        Command::Restart { account } => operator::control(&loaded, &account, "restart"),
        Command::Relogin { account } => operator::control(&loaded, &account, "relogin"),
        Command::Otp {
            command: OtpCommand::List,
        } => operator::otp_list(&loaded),
        Command::Otp {
            command: OtpCommand::Approved,
        } => operator::otp_approved(&loaded),
        Command::Otp {
            command: OtpCommand::Revoke { account, user },
        } => operator::otp_revoke(&loaded, &account, &user),
        Command::Reload => operator::reload(&loaded),
        Command::Health => operator::health(&loaded),
        Command::Doctor { account } => doctor::run(&loaded, &account),
        Command::RecoveryKey { account, import } => recovery_key(&loaded, &account, import),
        Command::Account {
            command:
                AccountCommand::Forget {
                    account,
                    logout,
                    homeserver,
                },
        } => retention::forget(&loaded, &account, logout, homeserver.as_deref()),
    }
}

fn run(loaded: Loaded, sources: Sources) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(loaded.config.blocking_threads)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mxfleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let instance = instance_id(loaded.config.shard.index);
        let _telemetry = match mxfleet_telemetry::init(&loaded.config.log, &instance) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("mxfleet: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        match run_fleet(loaded, sources).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                eprintln!("mxfleet: {e:#}");
                ExitCode::from(exit_code_for(&e))
            }
        }
    })
}

/// The exit code of a fleet that ended with `error`: 3 when another process holds the data
/// directory, 1 for everything else (the supervisor dying included).
fn exit_code_for(error: &anyhow::Error) -> u8 {
    let locked = error
        .downcast_ref::<StoreError>()
        .is_some_and(|s| matches!(s, StoreError::Locked { .. }));
    if locked { EXIT_LOCKED } else { 1 }
}

async fn run_fleet(loaded: Loaded, sources: Sources) -> anyhow::Result<()> {
    let config = loaded.config;
    for warning in &config.warnings {
        tracing::warn!(key = %warning.key, origin = %warning.origin, "configuration: {}", warning.message);
    }

    let data_dir = config.data_dir.clone();
    prepare_data_dir(&data_dir)?;
    let _lock = DirLock::acquire_waiting(&data_dir, "mxfleet.lock", LOCK_PATIENCE).map_err(
        |e| match e {
            StoreError::Locked { path } => {
                anyhow::Error::new(StoreError::Locked { path: path.clone() }).context(format!(
                    "another mxfleet process is already running on data dir {} (lock file {}); \
             two processes on one data dir would corrupt the accounts' stores",
                    data_dir.display(),
                    path.display()
                ))
            }
            other => anyhow::Error::new(other).context("cannot lock the data directory"),
        },
    )?;
    let store = Store::open(&data_dir.join("mxfleet.redb")).context("cannot open mxfleet.redb")?;
    retention::point_out_leftovers(&store, &config).await;
    let _tidy = AbortOnDrop(tokio::spawn(retention::keep_tidy(
        store.clone(),
        config.inbox_retention_days,
    )));

    mxfleet_admin::set_build_info(env!("CARGO_PKG_VERSION"), env!("MXFLEET_COMMIT"));
    let board = StatusBoard::new();
    let writer = board.spawn_writer(&data_dir);
    let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_secs);
    info!(version = VERSION, accounts = config.accounts.len(), data_dir = %data_dir.display(), "mxfleet starting");
    let admin = config.admin.clone();
    let listeners_at_start = (config.probes, config.metrics);
    let open = open_listeners(config.probes, config.metrics);
    let (fleet, handle) = start_fleet(FleetArgs {
        config,
        store: store.clone(),
        board: board.clone(),
    })
    .await
    .context("cannot start the fleet supervisor")?;

    let _systemd = systemd::Notifier::from_env().map(|notifier| {
        let watchdog = systemd::watchdog_interval();
        let informing = systemd::keep_informed(notifier, board.clone(), fleet.clone(), watchdog);
        AbortOnDrop(tokio::spawn(informing))
    });
    let mut _open_tasks = Vec::new();
    for (bind, routes) in open {
        let state = OpenState {
            board: board.clone(),
            store: store.clone(),
            fleet: fleet.clone(),
        };
        let (_, task) = serve_open(bind, state, routes)
            .await
            .with_context(|| format!("cannot listen on {bind} (probes.bind / metrics.bind)"))?;
        _open_tasks.push(AbortOnDrop(task));
    }
    let fixed = Fixed {
        data_dir: data_dir.clone(),
        admin: admin.clone(),
        listeners: listeners_at_start,
    };
    let loader = config_loader(sources, fixed);
    let _admin_task = match admin {
        Some(spec) => {
            let state = AdminState {
                board: board.clone(),
                store,
                fleet: fleet.clone(),
                token: spec.token.clone(),
                loader: loader.clone(),
            };
            let (_, task) = mxfleet_admin::serve(spec.bind, state)
                .await
                .with_context(|| format!("cannot listen on admin.bind {}", spec.bind))?;
            Some(AbortOnDrop(task))
        }
        None => {
            info!("admin API off (set admin.token to enable it)");
            None
        }
    };
    let _reloads = AbortOnDrop(tokio::spawn(reload_on_sighup(fleet.clone(), loader)));

    let mut handle = handle;
    tokio::select! {
        signal = shutdown_signal() => {
            info!(signal, "shutting down");
            if let Some(notifier) = systemd::Notifier::from_env() {
                notifier.notify("STOPPING=1\nSTATUS=shutting down");
            }
            fleet.stop(Some("shutdown".into()));
            // The supervisor stops each account within the deadline; this bounds the whole.
            if tokio::time::timeout(shutdown_timeout + Duration::from_secs(2), &mut handle).await.is_err() {
                let stragglers: Vec<String> = board.snapshot().accounts.into_iter()
                    .filter(|(_, s)| s.state != mxfleet_core::AccountState::Stopped)
                    .map(|(id, _)| id).collect();
                warn!(?stragglers, "shutdown deadline passed; exiting anyway");
            }
        }
        result = &mut handle => {
            // Only a shutdown stops the supervisor: ending on its own is a crash (its panic, if
            // any, is in the log above), and the process says so with its exit code.
            match result {
                Err(e) => anyhow::bail!("the fleet supervisor died: {e}"),
                Ok(()) => anyhow::bail!("the fleet supervisor stopped without being asked to"),
            }
        }
    }
    writer.abort();
    board.flush(&data_dir).await;
    info!("mxfleet stopped");
    Ok(())
}

/// This process's `service.instance.id` in traces: the host (a Kubernetes pod's name) and the
/// replica index, e.g. `mxfleet-2/2`.
fn instance_id(replica: u32) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}/{replica}")
}

/// The open listeners to start: one per address, serving the probes, the metrics or both.
fn open_listeners(
    probes: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Vec<(SocketAddr, OpenRoutes)> {
    let mut listeners: Vec<(SocketAddr, OpenRoutes)> = Vec::new();
    for (bind, is_probes) in [(probes, true), (metrics, false)] {
        let Some(bind) = bind else { continue };
        if !listeners.iter().any(|(b, _)| *b == bind) {
            listeners.push((bind, OpenRoutes::default()));
        }
        for (_, routes) in listeners.iter_mut().filter(|(b, _)| *b == bind) {
            routes.probes |= is_probes;
            routes.metrics |= !is_probes;
        }
    }
    listeners
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a reload cannot change (each needs a restart).
struct Fixed {
    data_dir: PathBuf,
    admin: Option<mxfleet_config::AdminSpec>,
    /// `probes.bind` and `metrics.bind`.
    listeners: (Option<SocketAddr>, Option<SocketAddr>),
}

/// Loads the configuration from the same sources as at start; a reload may not move the data
/// directory, change the admin API or move the open listeners (each needs a restart).
fn config_loader(sources: Sources, fixed: Fixed) -> ConfigLoader {
    let Fixed {
        data_dir,
        admin,
        listeners,
    } = fixed;
    Arc::new(move || {
        let config = mxfleet_config::load(&sources)?.config;
        let mut issues = Vec::new();
        if (config.probes, config.metrics) != listeners {
            issues.push(ConfigIssue {
                key: "probes.bind / metrics.bind".into(),
                message: "cannot change while running; restart mxfleet to apply it".into(),
                origin: "reload".into(),
            });
        }
        if config.data_dir != data_dir {
            issues.push(ConfigIssue {
                key: "data_dir".into(),
                message: format!(
                    "cannot change while running (still {}); restart mxfleet to move it",
                    data_dir.display()
                ),
                origin: "reload".into(),
            });
        }
        if config.admin != admin {
            issues.push(ConfigIssue {
                key: "admin".into(),
                message: "cannot change while running; restart mxfleet to apply it".into(),
                origin: "reload".into(),
            });
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { issues })
        }
    })
}

/// Applies the configuration anew on every SIGHUP.
async fn reload_on_sighup(fleet: ActorRef<FleetMsg>, loader: ConfigLoader) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; reload through the admin API only");
        return;
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the configuration");
        match reload_config(&fleet, &loader).await {
            Ok(report) => info!(?report, "reload applied"),
            Err(problems) => {
                for problem in &problems {
                    error!(%problem, "reload rejected; the fleet keeps running as it was");
                }
            }
        }
    }
}

/// Creates the data directory private to this user (it holds access tokens and store keys),
/// and warns if an existing one is readable by others.
fn prepare_data_dir(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    }
    let mode = std::fs::metadata(data_dir)
        .with_context(|| format!("cannot read data dir {}", data_dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        warn!(
            data_dir = %data_dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "the data dir is accessible to other users; it holds access tokens and store keys \
             (chmod 700 it)"
        );
    }
    Ok(())
}

/// Makes every file and directory mxfleet creates private to its user (`0600`/`0700`),
/// whatever umask it was started with: the data directory holds access tokens, store keys and
/// recovery keys, and matrix-sdk's and redb's files are created with the umask's modes. Command
/// agents inherit it.
#[allow(unsafe_code)]
fn private_files() {
    // SAFETY: umask(2) only swaps the process's file-creation mask; it cannot fail and touches
    // no memory. It runs first in `main`, before any thread exists.
    unsafe {
        libc::umask(0o077);
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only Ctrl-C through tokio's portable path is left.
        let _ = tokio::signal::ctrl_c().await;
        return "ctrl-c";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Why `account` is not one this replica runs, if it is not: unknown, or another replica's.
pub(crate) fn not_here(loaded: &Loaded, account: &str) -> Option<String> {
    let config = &loaded.config;
    if config.accounts.contains_key(account) {
        return None;
    }
    if config.peers.contains_key(account) {
        let owner = mxfleet_config::shard_of(account, config.shard.count);
        return Some(format!(
            "account {account:?} runs on replica {owner} of {}, not on this one (shard.index = \
             {}): use that replica's data dir and admin API",
            config.shard.count, config.shard.index
        ));
    }
    let known: Vec<&str> = config.accounts.keys().map(String::as_str).collect();
    Some(format!(
        "no account {account:?} in the configuration (accounts: {known:?})"
    ))
}

/// The data dir's lock and database, for a command that needs the fleet stopped (both are
/// held until dropped); on failure the reason is printed and the exit code returned: 3 while a
/// fleet runs on the data dir.
pub(crate) fn open_stopped(data_dir: &std::path::Path) -> Result<(DirLock, Store), ExitCode> {
    let opened = DirLock::acquire(data_dir, "mxfleet.lock")
        .and_then(|lock| Ok((lock, Store::open(&data_dir.join("mxfleet.redb"))?)));
    opened.map_err(|e| match e {
        StoreError::Locked { .. } => {
            eprintln!(
                "mxfleet: the fleet is running on this data dir; stop it first (the database is exclusive)"
            );
            ExitCode::from(EXIT_LOCKED)
        }
        e => {
            eprintln!("mxfleet: {e}");
            ExitCode::FAILURE
        }
    })
}

/// `mxfleet recovery-key`: the key is a secret, printed only on request, never logged.
fn recovery_key(loaded: &Loaded, account: &str, import: Option<String>) -> ExitCode {
    if let Some(why) = not_here(loaded, account) {
        eprintln!("mxfleet: {why}");
        return ExitCode::FAILURE;
    }
    // The key is read first: the data directory is held only while the database is open.
    let import = match import.as_deref() {
        Some("-") => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("mxfleet: could not read the key from stdin");
                return ExitCode::FAILURE;
            }
            Some(line.trim().to_owned())
        }
        other => other.map(str::to_owned),
    };
    let (_lock, store) = match open_stopped(&loaded.config.data_dir) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let outcome = block_on(async {
        match import {
            Some(key) if key.is_empty() => Err("the key is empty".to_owned()),
            Some(key) => store
                .save_recovery_key(account, &key)
                .await
                .map(|()| "kept; the next start recovers with it".to_owned())
                .map_err(|e| e.to_string()),
            None => match store.recovery_key(account).await {
                Ok(Some(key)) => Ok(key),
                Ok(None) => Err(format!(
                    "no recovery key kept for {account} (bot_owned sets one up; or set recovery_key)"
                )),
                Err(e) => Err(e.to_string()),
            },
        }
    });
    match outcome {
        Ok(text) => {
            out!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxfleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a future on a small runtime (CLI commands).
pub(crate) fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(future))
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_has_its_exit_code() {
        let locked = anyhow::Error::new(StoreError::Locked {
            path: "x/mxfleet.lock".into(),
        })
        .context("another mxfleet process is already running");
        assert_eq!(exit_code_for(&locked), EXIT_LOCKED);
        let died = anyhow::anyhow!("the fleet supervisor stopped without being asked to");
        assert_eq!(exit_code_for(&died), 1);
        let codes = [0, 1, EXIT_CONFIG, EXIT_LOCKED, EXIT_USAGE];
        let mut distinct = codes.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), codes.len());
    }
}
