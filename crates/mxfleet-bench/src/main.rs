//! `mxfleet-bench`: runs 1, 10 and 100 accounts in one mxfleet process against a local Synapse
//! with the echo backend and prints, per fleet size:
//!
//! - **RSS**: the fleet process's resident memory once every account is syncing and has answered,
//!   in total and per account;
//! - **reply latency**: user sends → the user's own client receives the bot's reply, p50 / p99 /
//!   max, measured with a real matrix-sdk client and messages spread round-robin over the bots;
//! - **start-up**: time until every account is `syncing`, first with logins (a new fleet) and
//!   then with restored sessions (a restart);
//! - **streaming** (one account, an OpenAI-compatible test server streaming a long answer with
//!   the default stream settings): edits per answer, time from the backend's first token to the
//!   first visible message (measured in mxfleet, logged as `first_visible_ms`), and from the
//!   user's send to the first visible message and to the complete answer.
//!
//! Use `scripts/bench.sh`, which builds mxfleet in release mode first.

#![recursion_limit = "256"]

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{StreamExt, stream};
use mxfleet_testkit::{FakeOpenAi, FleetProcess, Human, Synapse};
use tokio::time::Instant;

/// Fleet benchmark against a local Synapse.
#[derive(Debug, Parser)]
struct Args {
    /// Fleet sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100])]
    accounts: Vec<usize>,
    /// Latency samples per fleet size.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Extra TOML lines for every benchmarked account (e.g. `ack_reaction = ""`).
    #[arg(long, default_value = "")]
    account_extra: String,
    /// Streamed answers to measure (0 skips the streaming measurement).
    #[arg(long, default_value_t = 10)]
    stream_answers: usize,
    /// The mxfleet binary to measure.
    #[arg(long, default_value = "target/release/mxfleet")]
    binary: PathBuf,
}

struct Row {
    accounts: usize,
    rss_kib: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    first_start: Duration,
    restored_start: Duration,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = std::fs::canonicalize(&args.binary).with_context(|| {
        format!(
            "{} not found; build it with cargo build --release -p mxfleet",
            args.binary.display()
        )
    })?;
    let synapse = Synapse::start_private().await?;
    eprintln!("synapse at {}", synapse.url());
    let (human_id, human_pw) = synapse.fresh_user("benchhuman").await?;
    let human = Human::login(synapse.url(), &human_id, &human_pw).await?;

    let mut rows = Vec::new();
    for &n in &args.accounts {
        eprintln!("== {n} account(s)");
        rows.push(
            measure(
                &synapse,
                &human,
                &binary,
                n,
                args.messages,
                &args.account_extra,
            )
            .await?,
        );
    }

    let streaming = if args.stream_answers > 0 {
        eprintln!("== streaming");
        Some(measure_streaming(&synapse, &human, &binary, args.stream_answers).await?)
    } else {
        None
    };

    println!();
    println!(
        "| accounts | RSS total | RSS / account | reply p50 | reply p99 | reply max | start (login) | start (restored) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} MiB | {:.2} MiB | {} ms | {} ms | {} ms | {} ms | {} ms |",
            r.accounts,
            r.rss_kib as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0 / r.accounts as f64,
            r.p50.as_millis(),
            r.p99.as_millis(),
            r.max.as_millis(),
            r.first_start.as_millis(),
            r.restored_start.as_millis(),
        );
    }
    if let Some(s) = streaming {
        println!();
        println!(
            "Streaming: {} answers of {} characters, {} deltas {} ms apart, default stream settings.",
            s.answers, s.chars, s.deltas, STREAM_DELTA_MS
        );
        println!();
        println!(
            "| edits / answer (median, max) | first token → visible p50 (max) | send → first visible p50 | send → complete p50 |"
        );
        println!("|---:|---:|---:|---:|");
        println!(
            "| {} , {} | {} ms ({} ms) | {} ms | {} ms |",
            s.edits_median,
            s.edits_max,
            s.first_visible_p50_ms,
            s.first_visible_max_ms,
            s.send_to_visible_p50.as_millis(),
            s.send_to_complete_p50.as_millis(),
        );
    }
    Ok(())
}

/// Milliseconds between two deltas of the streamed benchmark answer.
const STREAM_DELTA_MS: u64 = 10;
/// The benchmark's user sends far faster than the default rate limits allow, on purpose.
const UNLIMITED: &str = "limits = { per_sender_per_minute = 10000, per_room_per_minute = 10000 }";

struct StreamRow {
    answers: usize,
    chars: usize,
    deltas: usize,
    edits_median: usize,
    edits_max: usize,
    first_visible_p50_ms: u64,
    first_visible_max_ms: u64,
    send_to_visible_p50: Duration,
    send_to_complete_p50: Duration,
}

async fn measure_streaming(
    synapse: &Synapse,
    human: &Human,
    binary: &std::path::Path,
    answers: usize,
) -> Result<StreamRow> {
    let text: String = (1..=25)
        .map(|i| format!("Paragraph {i}: a streamed answer with **some** markup and `code`.\n\n"))
        .collect();
    let text = text.trim_end().to_owned();
    let chunk = 8;
    let llm = FakeOpenAi::start_with(
        chunk,
        Duration::from_millis(STREAM_DELTA_MS),
        Some(text.clone()),
    )
    .await?;
    let (bot, password) = synapse.fresh_user("benchstream").await?;
    let config = format!(
        "[backends.llm]\nkind = \"openai\"\nbase_url = {:?}\nmodel = \"bench\"\n\n\
         [accounts.stream]\nhomeserver = {:?}\nuser_id = {bot:?}\npassword = {password:?}\ndm_policy = \"open\"\nbackend = \"llm\"\n[accounts.stream.limits]\nper_sender_per_minute = 10000\nper_room_per_minute = 10000\n",
        llm.base_url,
        synapse.url()
    );
    let mut fleet = FleetProcess::with_binary(&config, binary.to_path_buf())?;
    fleet.start().await?;
    wait_all_syncing(&fleet, 1).await?;
    let room = human.dm(&bot).await?;
    let (mut edits, mut to_visible, mut to_complete) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..answers {
        let before = human.seen_from(&room, &bot).len();
        let sent = Instant::now();
        human.send(&room, &format!("stream #{k}")).await?;
        let original = human
            .wait_for("first part", Duration::from_secs(30), |h| {
                h.seen_from(&room, &bot).into_iter().nth(before)
            })
            .await?;
        to_visible.push(sent.elapsed());
        human
            .wait_for("complete answer", Duration::from_secs(60), |h| {
                (h.current_text(&original) == text).then_some(())
            })
            .await?;
        to_complete.push(sent.elapsed());
        edits.push(human.edits_of(&original.event_id).len());
    }
    fleet.stop().await?;
    let mut first_visible: Vec<u64> = fleet
        .all_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["first_visible_ms"].as_u64())
        .collect();
    first_visible.sort_unstable();
    edits.sort_unstable();
    to_visible.sort();
    to_complete.sort();
    Ok(StreamRow {
        answers,
        chars: text.chars().count(),
        deltas: text.chars().count().div_ceil(chunk),
        edits_median: edits[edits.len() / 2],
        edits_max: edits.last().copied().unwrap_or_default(),
        first_visible_p50_ms: first_visible
            .get(first_visible.len() / 2)
            .copied()
            .unwrap_or_default(),
        first_visible_max_ms: first_visible.last().copied().unwrap_or_default(),
        send_to_visible_p50: to_visible[to_visible.len() / 2],
        send_to_complete_p50: to_complete[to_complete.len() / 2],
    })
}

async fn measure(
    synapse: &Synapse,
    human: &Human,
    binary: &std::path::Path,
    n: usize,
    samples: usize,
    extra: &str,
) -> Result<Row> {
    let bots: Vec<(String, String)> = stream::iter(0..n)
        .map(|_| synapse.fresh_user("benchbot"))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let mut config = String::new();
    for (i, (user, password)) in bots.iter().enumerate() {
        config.push_str(&format!(
            "[accounts.bot{i}]\nhomeserver = {:?}\nuser_id = {user:?}\npassword = {password:?}\ndm_policy = \"open\"\nroom_policy = \"open\"\nmention_mode = \"always\"\nbackend = \"echo\"\n{extra}\n{UNLIMITED}\n\n",
            synapse.url()
        ));
    }
    let mut fleet = FleetProcess::with_binary(&config, binary.to_path_buf())?;

    let started = Instant::now();
    fleet.start().await?;
    wait_all_syncing(&fleet, n).await?;
    let first_start = started.elapsed();
    eprintln!("  all syncing after first start (logins): {first_start:?}");

    // `buffered` keeps the order, so room i is bot i's DM.
    let rooms: Vec<_> = stream::iter(bots.iter())
        .map(|(bot, _)| human.dm(bot))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let pairs: Vec<_> = bots.iter().map(|(bot, _)| bot.clone()).zip(rooms).collect();

    let mut latencies = Vec::with_capacity(samples);
    for k in 0..samples.max(n) {
        let (bot, room) = &pairs[k % pairs.len()];
        let body = format!("bench {n} #{k}");
        let sent = Instant::now();
        human.send(room, &body).await?;
        human
            .expect_message(room, bot, &body, Duration::from_secs(30))
            .await?;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(latencies.len() - 1)]
    };
    let rss_kib = rss_kib(fleet.pid().context("fleet not running")?)?;

    fleet.stop().await?;
    let started = Instant::now();
    fleet.start().await?;
    wait_all_syncing(&fleet, n).await?;
    let restored_start = started.elapsed();
    eprintln!("  all syncing after restart (restored sessions): {restored_start:?}");
    fleet.stop().await?;

    Ok(Row {
        accounts: n,
        rss_kib,
        p50: pick(0.5),
        p99: pick(0.99),
        max: pick(1.0),
        first_start,
        restored_start,
    })
}

async fn wait_all_syncing(fleet: &FleetProcess, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Some(status) = fleet.status() {
            let accounts = status["accounts"]
                .as_object()
                .map(|a| a.values().filter(|s| s["state"] == "syncing").count());
            // status.json from a previous run says "stopped"; only count this run's pid.
            let ours = status["pid"].as_u64() == fleet.pid().map(u64::from);
            if ours && accounts == Some(n) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "accounts did not all reach syncing:\n{}",
        fleet.log_tail(20)
    )
}

fn rss_kib(pid: u32) -> Result<u64> {
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
