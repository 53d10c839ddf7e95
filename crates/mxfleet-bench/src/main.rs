//! `mxfleet-bench`: runs fleets of 1, 10, 100 (and more) accounts in one process against a local
//! Synapse — mxfleet with its echo backend and, with the same driver, its anchors (a bare
//! matrix-sdk echo fleet and a matrix-nio echo fleet, [`systems`]) — and prints, per system and
//! fleet size:
//!
//! - **RSS**: the process's resident memory once every account is syncing and has answered, in
//!   total, per account and per account added to the one-account fleet;
//! - **reply latency**: user sends → the user's own client receives the reply, p50 / p99 / max,
//!   measured with a real matrix-sdk client and messages spread round-robin over the bots;
//! - **CPU**: seconds of CPU per 1,000 answered messages, and the share of one core used while
//!   every account idles (long-polling);
//! - **start-up**: time until every account has synced, first with logins (a new fleet) and then
//!   with restored sessions (a restart);
//! - for mxfleet, its **own time** per answer (`mxfleet_overhead_seconds`, p50 / p99);
//! - **streaming** (mxfleet, one account on an OpenAI-compatible test server, [`streaming`]);
//! - a **soak** (mxfleet): memory over a steady load, and its slope ([`soak`]).
//!
//! With `--plots DIR` it draws the figures as PNG files ([`plot`]). Use `scripts/bench.sh`,
//! which builds everything in release mode first.

#![recursion_limit = "256"]

mod plot;
mod soak;
mod streaming;
mod systems;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use mxfleet_testkit::{Human, Synapse};
use tokio::time::Instant;

use crate::systems::{Kind, Programs, Running};

/// Fleet benchmark against a local Synapse.
#[derive(Debug, Parser)]
struct Args {
    /// Fleet sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100])]
    accounts: Vec<usize>,
    /// Systems to measure, each at every size.
    #[arg(long, value_delimiter = ',', value_enum, default_values = ["mxfleet"])]
    systems: Vec<Kind>,
    /// Latency samples per fleet size (at least one per account).
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Seconds every account idles, after the exchanges, while the idle CPU is measured.
    #[arg(long, default_value_t = 20)]
    idle_secs: u64,
    /// Extra TOML lines for every benchmarked mxfleet account (e.g. `ack_reaction = ""`).
    #[arg(long, default_value = "")]
    account_extra: String,
    /// Streamed answers to measure (0 skips the streaming measurement).
    #[arg(long, default_value_t = 10)]
    stream_answers: usize,
    /// Minutes of the soak (0 skips it).
    #[arg(long, default_value_t = 0)]
    soak_minutes: u64,
    /// Accounts in the soak's fleet.
    #[arg(long, default_value_t = 100)]
    soak_accounts: usize,
    /// Messages per second the soak sends.
    #[arg(long, default_value_t = 5.0)]
    soak_rate: f64,
    /// Directory to write the PNG plots into.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// The mxfleet binary to measure.
    #[arg(long, default_value = "target/release/mxfleet")]
    binary: PathBuf,
    /// The bare matrix-sdk anchor.
    #[arg(long, default_value = "target/release/sdk-echo")]
    sdk_echo: PathBuf,
    /// A Python with matrix-nio[e2e] installed (`scripts/setup-nio.sh` makes one).
    #[arg(long, default_value = "~/.cache/mxfleet/nio-venv/bin/python")]
    nio_python: String,
}

/// What one system showed at one fleet size.
pub(crate) struct Row {
    pub(crate) system: Kind,
    pub(crate) accounts: usize,
    pub(crate) rss_kib: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    pub(crate) first_start: Duration,
    pub(crate) restored_start: Duration,
    /// CPU seconds per 1,000 answered messages.
    pub(crate) cpu_per_1000: f64,
    /// Percent of one core while idle.
    pub(crate) idle_cpu_pct: f64,
    /// mxfleet's own time per answer (`mxfleet_overhead_seconds`): p50 and p99, in ms.
    pub(crate) overhead_ms: Option<(f64, f64)>,
}

impl Row {
    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let programs = programs(&args)?;
    let synapse = Synapse::start_private().await?;
    // `MXFLEET_SYNAPSE_DB=postgres` (read by scripts/synapse.sh) puts Synapse on PostgreSQL.
    let database = std::env::var("MXFLEET_SYNAPSE_DB").unwrap_or_else(|_| "sqlite".into());
    eprintln!("synapse at {} (database: {database})", synapse.url());
    let (human_id, human_pw) = synapse.fresh_user("benchhuman").await?;
    let human = Human::login(synapse.url(), &human_id, &human_pw).await?;

    let mut rows = Vec::new();
    for &n in &args.accounts {
        for &system in &args.systems {
            eprintln!("== {} with {n} account(s)", system.label());
            let row = measure(&synapse, &human, &programs, system, n, &args).await;
            match row {
                Ok(row) => rows.push(row),
                // An anchor that cannot go as far as mxfleet is reported, not fatal.
                Err(e) => eprintln!("  {} failed at {n} accounts: {e:#}", system.label()),
            }
        }
    }
    let streaming = if args.stream_answers > 0 {
        eprintln!("== streaming");
        let binary = &programs.mxfleet;
        Some(streaming::measure_streaming(&synapse, &human, binary, args.stream_answers).await?)
    } else {
        None
    };
    let soak = if args.soak_minutes > 0 {
        eprintln!("== soak: {} minutes", args.soak_minutes);
        let settings = soak::Settings {
            minutes: args.soak_minutes,
            accounts: args.soak_accounts,
            rate: args.soak_rate,
            extra: args.account_extra.clone(),
        };
        Some(soak::run(&synapse, &human, &programs, &settings).await?)
    } else {
        None
    };

    print_rows(&rows);
    print_ratios(&rows);
    if let Some(s) = &streaming {
        streaming::print(s);
    }
    if let Some(s) = &soak {
        soak::print(s);
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)?;
        plot::fleet(dir, &rows)?;
        if let Some(s) = &soak {
            plot::soak(dir, s)?;
        }
        eprintln!("plots written to {}", dir.display());
    }
    Ok(())
}

/// The programs, checked to exist.
fn programs(args: &Args) -> Result<Programs> {
    let find = |path: &std::path::Path, hint: &str| {
        std::fs::canonicalize(path).with_context(|| format!("{} not found; {hint}", path.display()))
    };
    let home = std::env::var("HOME").unwrap_or_default();
    let nio = PathBuf::from(args.nio_python.replacen('~', &home, 1));
    Ok(Programs {
        mxfleet: find(
            &args.binary,
            "build it with cargo build --release -p mxfleet",
        )?,
        sdk_echo: match args.systems.contains(&Kind::SdkEcho) {
            true => find(
                &args.sdk_echo,
                "build it with cargo build --release -p mxfleet-bench",
            )?,
            false => args.sdk_echo.clone(),
        },
        // Not canonicalized: the venv's python is a symlink, and only through it is the venv
        // used.
        nio_python: match args.systems.contains(&Kind::NioEcho) && !nio.is_file() {
            true => anyhow::bail!(
                "{} not found; install it with scripts/setup-nio.sh",
                nio.display()
            ),
            false => nio,
        },
    })
}

/// Runs `system` with `n` accounts: start, DMs, the exchanges, idle, restart.
async fn measure(
    synapse: &Synapse,
    human: &Human,
    programs: &Programs,
    system: Kind,
    n: usize,
    args: &Args,
) -> Result<Row> {
    let bots = systems::register_bots(synapse, "benchbot", n).await?;
    let accounts = systems::accounts_of(synapse, &bots);
    let metrics_port = mxfleet_testkit::free_port()?;
    let head = format!("[metrics]\nbind = \"127.0.0.1:{metrics_port}\"\n\n");
    let mut running = Running::new(system, programs, &accounts, &head, &args.account_extra)?;

    let started = Instant::now();
    running.start().await?;
    running.wait_ready(n).await?;
    let first_start = started.elapsed();
    eprintln!("  all synced after first start (logins): {first_start:?}");

    let rooms = systems::open_dms(human, &bots).await?;
    let pairs: Vec<_> = bots.iter().map(|(bot, _)| bot.clone()).zip(rooms).collect();

    let pid = running.pid().context("not running")?;
    let cpu_before = cpu_secs(pid)?;
    let samples = args.messages.max(n);
    let mut latencies = Vec::with_capacity(samples);
    for k in 0..samples {
        let (bot, room) = &pairs[k % pairs.len()];
        let body = format!("bench {n} #{k}");
        let sent = Instant::now();
        human.send(room, &body).await?;
        human
            .expect_message(room, bot, &body, Duration::from_secs(30))
            .await?;
        latencies.push(sent.elapsed());
    }
    let cpu_per_1000 = (cpu_secs(pid)? - cpu_before) / samples as f64 * 1000.0;
    latencies.sort();
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(latencies.len() - 1)]
    };
    let rss_kib = rss_kib(pid)?;
    let overhead_ms = match system {
        Kind::Mxfleet => overhead_quantiles(metrics_port).await,
        _ => None,
    };
    let idle_cpu_pct = idle_cpu(pid, Duration::from_secs(args.idle_secs)).await?;

    running.stop().await?;
    let started = Instant::now();
    running.start().await?;
    running.wait_ready(n).await?;
    let restored_start = started.elapsed();
    eprintln!("  all synced after restart (restored sessions): {restored_start:?}");
    running.stop().await?;

    Ok(Row {
        system,
        accounts: n,
        rss_kib,
        p50: pick(0.5),
        p99: pick(0.99),
        max: pick(1.0),
        first_start,
        restored_start,
        cpu_per_1000,
        idle_cpu_pct,
        overhead_ms,
    })
}

/// Prints one table row per system and size.
fn print_rows(rows: &[Row]) {
    println!();
    println!(
        "| system | accounts | RSS total | RSS / account | per added account | reply p50 | reply p99 | reply max | start (login) | start (restored) | CPU s / 1000 msgs | idle CPU | own time p50 / p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let added =
            per_added_account(rows, r).map_or("–".to_owned(), |mib| format!("{mib:.2} MiB"));
        println!(
            "| {} | {} | {:.1} MiB | {:.2} MiB | {added} | {} ms | {} ms | {} ms | {} ms | {} ms | {:.2} | {:.1} % | {} |",
            r.system.label(),
            r.accounts,
            r.rss_mib(),
            r.rss_mib() / r.accounts as f64,
            r.p50.as_millis(),
            r.p99.as_millis(),
            r.max.as_millis(),
            r.first_start.as_millis(),
            r.restored_start.as_millis(),
            r.cpu_per_1000,
            r.idle_cpu_pct,
            r.overhead_ms.map_or("–".to_owned(), |(p50, p99)| format!(
                "{p50:.2} / {p99:.2} ms"
            )),
        );
    }
}

/// Prints mxfleet's figures against each anchor's, size by size.
fn print_ratios(rows: &[Row]) {
    let anchors: Vec<&Row> = rows.iter().filter(|r| r.system != Kind::Mxfleet).collect();
    if anchors.is_empty() {
        return;
    }
    println!();
    println!(
        "| accounts | against | RSS ratio | per-added-account ratio | p50 ratio | p99 ratio |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for anchor in anchors {
        let Some(ours) = rows
            .iter()
            .find(|r| r.system == Kind::Mxfleet && r.accounts == anchor.accounts)
        else {
            continue;
        };
        let added = match (
            per_added_account(rows, ours),
            per_added_account(rows, anchor),
        ) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "–".to_owned(),
        };
        println!(
            "| {} | {} | {:.2} | {added} | {:.2} | {:.2} |",
            anchor.accounts,
            anchor.system.label(),
            ours.rss_mib() / anchor.rss_mib(),
            ours.p50.as_secs_f64() / anchor.p50.as_secs_f64(),
            ours.p99.as_secs_f64() / anchor.p99.as_secs_f64(),
        );
    }
}

/// The memory each account beyond the first adds: against the same system's one-account row.
pub(crate) fn per_added_account(rows: &[Row], row: &Row) -> Option<f64> {
    let one = rows
        .iter()
        .find(|r| r.system == row.system && r.accounts == 1)?;
    (row.accounts > 1).then(|| (row.rss_mib() - one.rss_mib()) / (row.accounts - 1) as f64)
}

/// The process's resident memory.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    line.split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()
        .context("bad VmRSS")
}

/// The CPU time the process used so far (user and system), in seconds.
pub(crate) fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields counted here come after its ')'.
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    let ticks: f64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<f64>())
        .sum::<Result<f64, _>>()?;
    Ok(ticks / clock_ticks())
}

/// Kernel clock ticks per second (`getconf CLK_TCK`, asked once; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The process's CPU use over `span` of idling, in percent of one core.
async fn idle_cpu(pid: u32, span: Duration) -> Result<f64> {
    if span.is_zero() {
        return Ok(0.0);
    }
    let before = cpu_secs(pid)?;
    tokio::time::sleep(span).await;
    Ok((cpu_secs(pid)? - before) / span.as_secs_f64() * 100.0)
}

/// p50 and p99 of `mxfleet_overhead_seconds` over all accounts, in ms, interpolated within
/// the histogram's buckets as Prometheus's `histogram_quantile` does; `None` if the fleet's
/// metrics could not be read.
async fn overhead_quantiles(port: u16) -> Option<(f64, f64)> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = match reqwest::get(&url).await {
        Ok(response) => response.text().await.ok()?,
        Err(e) => {
            eprintln!("  could not read the fleet's metrics: {e}");
            return None;
        }
    };
    let mut buckets: std::collections::BTreeMap<u64, f64> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("mxfleet_overhead_seconds_bucket{") else {
            continue;
        };
        let le = rest.split("le=\"").nth(1)?.split('"').next()?;
        let count: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        // Bucket bounds as nanoseconds, so they sort; +Inf last.
        let bound = match le {
            "+Inf" => u64::MAX,
            le => (le.parse::<f64>().ok()? * 1e9).round() as u64,
        };
        *buckets.entry(bound).or_default() += count;
    }
    let quantile = |q: f64| -> Option<f64> {
        let total = *buckets.get(&u64::MAX)?;
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for (&bound, &count) in &buckets {
            if count >= rank {
                if bound == u64::MAX {
                    return Some(lower.0);
                }
                let upper = bound as f64 / 1e6;
                let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
                return Some(lower.0 + (upper - lower.0) * within);
            }
            lower = (bound as f64 / 1e6, count);
        }
        None
    };
    Some((quantile(0.5)?, quantile(0.99)?))
}
