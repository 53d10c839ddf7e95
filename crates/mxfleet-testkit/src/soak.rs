//! The chaos soak: a fleet on the echo backend answers a steady stream of DMs and room mentions
//! while faults are thrown at it — SIGKILL, SIGTERM and SIGSTOP of the fleet, network cuts and
//! lost responses through the proxy, Synapse killed and restarted, the data dir's disk full, and
//! bursts of messages while the fleet is down. At the end every message is looked up in the
//! homeserver's own history and its answers counted: sent, answered once, lost, doubled, the
//! answer latency, and how long each fault took to heal.
//!
//! `scripts/soak.sh` runs it for minutes; the e2e suite runs a short one.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::ruma::OwnedRoomId;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use crate::{CountingProxy, FleetProcess, Human, Scenario, Synapse};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long messages are sent and faults thrown.
    pub duration: Duration,
    /// How many bot accounts.
    pub accounts: usize,
    /// The pause between two messages of one stream.
    pub interval: Duration,
    /// How many streams send at once.
    pub senders: usize,
    /// The pause between two faults is drawn from this range (seconds).
    pub fault_every_secs: (u64, u64),
    /// Messages sent while the fleet is down, per kill or stop.
    pub burst: usize,
    /// Seed of the random choices (targets, pauses).
    pub seed: u64,
}

impl Default for SoakConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(600),
            accounts: 3,
            interval: Duration::from_millis(250),
            senders: 2,
            fault_every_secs: (12, 25),
            burst: 15,
            seed: 1,
        }
    }
}

/// What the soak saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Messages the homeserver holds from the human.
    pub sent: usize,
    /// Of those, answered exactly once.
    pub answered_once: usize,
    /// Never answered.
    pub lost: Vec<String>,
    /// Answered more than once.
    pub doubled: Vec<String>,
    /// Sends the human's client saw fail (during a Synapse outage); not counted as sent unless
    /// the homeserver has them.
    pub send_errors: usize,
    /// Faults thrown, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Answer latency (answer's server time minus the question's), milliseconds.
    pub latency_p50_ms: u64,
    /// 99th percentile of the answer latency.
    pub latency_p99_ms: u64,
    /// The longest answer latency.
    pub latency_max_ms: u64,
    /// From a fault's end to every account syncing again: median, milliseconds.
    pub recovery_p50_ms: u64,
    /// The slowest recovery.
    pub recovery_max_ms: u64,
    /// How long the soak ran, faults included.
    pub elapsed: Duration,
    /// Where the fleet's logs were kept, when something was lost or doubled.
    pub fleet_log: Option<PathBuf>,
}

impl SoakReport {
    /// Fails unless every message was answered exactly once.
    pub fn ensure_exactly_once(&self) -> Result<()> {
        ensure!(
            self.lost.is_empty() && self.doubled.is_empty() && self.sent > 0,
            "soak: {self}"
        );
        Ok(())
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        writeln!(f, "soak ran {} s", self.elapsed.as_secs())?;
        writeln!(f, "  sent           {}", self.sent)?;
        writeln!(f, "  answered once  {}", self.answered_once)?;
        writeln!(f, "  lost           {} {:?}", self.lost.len(), self.lost)?;
        writeln!(
            f,
            "  doubled        {} {:?}",
            self.doubled.len(),
            self.doubled
        )?;
        writeln!(
            f,
            "  send errors    {} (human side, during outages)",
            self.send_errors
        )?;
        writeln!(
            f,
            "  faults         {} ({})",
            self.faults.values().sum::<usize>(),
            faults.join(" ")
        )?;
        writeln!(
            f,
            "  latency        p50 {} ms, p99 {} ms, max {} ms",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        )?;
        write!(
            f,
            "  recovery       p50 {} ms, max {} ms (fault end to every account syncing)",
            self.recovery_p50_ms, self.recovery_max_ms
        )?;
        match &self.fleet_log {
            Some(path) => write!(f, "\n  fleet log      {}", path.display()),
            None => Ok(()),
        }
    }
}

/// The faults, thrown in turn (so that a short soak meets each of them).
const FAULTS: [&str; 7] = [
    "fleet_sigkill",
    "proxy_cut",
    "fleet_sigstop",
    "lost_responses",
    "fleet_sigterm",
    "synapse_restart",
    "disk_full",
];

/// Where the human sends a message.
#[derive(Debug, Clone)]
struct Target {
    room: OwnedRoomId,
    /// The bot to mention in a shared room; `None` in a DM.
    mention: Option<String>,
}

/// Runs the soak. Needs root for the disk-full fault (a tmpfs); without it that fault is left
/// out and the report shows it was not thrown.
pub async fn run(config: &SoakConfig) -> Result<SoakReport> {
    let mut synapse = Synapse::start_private().await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    let mut scenario = Scenario::new()
        .toml("shutdown_drain_secs = 3\n[restart]\ninitial_delay_ms = 200\nmax_delay_ms = 5000")
        .human();
    for i in 0..config.accounts {
        // The stream is faster than the default rate limits on purpose: the soak counts
        // delivery, so every message is meant to reach the backend.
        scenario = scenario.bot_named(&format!("s{i}"), |b| {
            b.open_dms()
                .mentioned_in_rooms()
                .via(&proxy.url)
                .table("limits", UNLIMITED)
        });
    }
    let mut running = scenario.prepare_on(&synapse).await?;
    let disk = Tmpfs::mount(&running.fleet.data_dir(), "256m").ok();
    running.start().await?;
    let bots: Vec<String> = (0..config.accounts)
        .map(|i| running.bot(&format!("s{i}")).user_id.clone())
        .collect();
    let targets = rooms(&running.humans[0], &bots).await?;

    let started = Instant::now();
    let seq = AtomicU64::new(0);
    let send_errors = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let recoveries = Mutex::new(Vec::new());
    let mut faults = BTreeMap::new();
    {
        let human = &running.humans[0];
        let sender = Sender {
            human,
            targets: &targets,
            seq: &seq,
            errors: &send_errors,
        };
        let mut chaos = Chaos {
            fleet: &mut running.fleet,
            synapse: &mut synapse,
            proxy: &proxy,
            disk: disk.as_ref(),
            sender: &sender,
            burst: config.burst,
            recoveries: &recoveries,
        };
        let steady = sender.steady(config, &done);
        let thrown = async {
            let thrown = chaos.throw(config, &mut faults).await;
            done.store(true, Ordering::SeqCst);
            thrown
        };
        let ((), thrown) = tokio::join!(steady, thrown);
        thrown?;
        // Whatever the last fault left behind is undone before counting.
        chaos.heal().await?;
    }
    let questions = seq.load(Ordering::SeqCst);
    let settled = settle(&synapse, &targets, &bots, questions).await?;
    let mut report = count(&settled, &bots);
    if !(report.lost.is_empty() && report.doubled.is_empty()) {
        // What the fleet logged and the rooms' history, to find out why (the run's temp dirs
        // and Synapse go with it).
        let path = std::env::temp_dir().join(format!("mxfleet-soak-{}.log", std::process::id()));
        let mut dump = running.fleet.all_logs();
        dump.push_str(&history_dump(&synapse, &targets).await.unwrap_or_default());
        if std::fs::write(&path, dump).is_ok() {
            report.fleet_log = Some(path);
        }
    }
    running.fleet.stop().await.ok();
    drop(disk);
    report.send_errors = usize::try_from(send_errors.load(Ordering::SeqCst)).unwrap_or(0);
    report.faults = faults;
    let mut recovered = recoveries.into_inner().unwrap_or_default();
    recovered.sort_unstable();
    report.recovery_p50_ms = percentile(&recovered, 50);
    report.recovery_max_ms = recovered.last().copied().unwrap_or(0);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Rate limits no soak stream reaches.
const UNLIMITED: &str = "per_sender_per_minute = 10000\nper_room_per_minute = 10000";

/// A DM with each bot and one room with all of them (answers there need a mention).
async fn rooms(human: &Human, bots: &[String]) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for bot in bots {
        let room = human.dm(bot).await?;
        targets.push(Target {
            room,
            mention: None,
        });
    }
    let all: Vec<&str> = bots.iter().map(String::as_str).collect();
    let shared = human.room_with(&all, false).await?;
    for bot in bots {
        human
            .wait_joined(&shared, bot, Duration::from_secs(60))
            .await?;
        targets.push(Target {
            room: shared.clone(),
            mention: Some(bot.clone()),
        });
    }
    Ok(targets)
}

/// The human's side: numbered messages, each with a token no other message contains.
struct Sender<'a> {
    human: &'a Human,
    targets: &'a [Target],
    seq: &'a AtomicU64,
    errors: &'a AtomicU64,
}

impl Sender<'_> {
    /// `config.senders` streams, each a message every `interval` (after the previous one's
    /// send returned), until `done`.
    async fn steady(&self, config: &SoakConfig, done: &AtomicBool) {
        let streams = (0..config.senders.max(1)).map(|i| async move {
            let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(100 + i as u64));
            while !done.load(Ordering::SeqCst) {
                let target = rng.random_range(0..self.targets.len());
                self.send(target).await;
                tokio::time::sleep(config.interval).await;
            }
        });
        futures_util::future::join_all(streams).await;
    }

    /// `n` messages at once, spread over the targets.
    async fn burst(&self, n: usize) {
        for i in 0..n {
            self.send(i % self.targets.len()).await;
        }
    }

    async fn send(&self, target: usize) {
        let Some(target) = self.targets.get(target) else {
            return;
        };
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let token = token(n);
        let sent = match &target.mention {
            None => {
                let send = self.human.send(&target.room, &token);
                tokio::time::timeout(SEND_TIMEOUT, send).await
            }
            Some(bot) => {
                let body = format!("{bot} {token}");
                let mentioned = [bot.as_str()];
                let send = self
                    .human
                    .send_mentioning(&target.room, &body, &mentioned, false);
                tokio::time::timeout(SEND_TIMEOUT, send).await
            }
        };
        if !matches!(sent, Ok(Ok(_))) {
            self.errors.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// How long one send of the human may take (a Synapse outage makes it fail).
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// The token of message `n`: unique, and not a prefix of another (`soak-7.` vs `soak-71.`).
fn token(n: u64) -> String {
    format!("soak-{n}.")
}

/// The fault thrower.
struct Chaos<'a> {
    fleet: &'a mut FleetProcess,
    synapse: &'a mut Synapse,
    proxy: &'a CountingProxy,
    disk: Option<&'a Tmpfs>,
    sender: &'a Sender<'a>,
    burst: usize,
    recoveries: &'a Mutex<Vec<u64>>,
}

impl Chaos<'_> {
    /// Throws faults in turn until `config.duration` has passed.
    async fn throw(
        &mut self,
        config: &SoakConfig,
        thrown: &mut BTreeMap<&'static str, usize>,
    ) -> Result<()> {
        let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(1));
        let deadline = Instant::now() + config.duration;
        let (low, high) = config.fault_every_secs;
        for kind in FAULTS.iter().cycle() {
            let pause = Duration::from_secs(rng.random_range(low..=high.max(low)));
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            if *kind == "disk_full" && self.disk.is_none() {
                continue;
            }
            let outage = Duration::from_millis(rng.random_range(3_000..=10_000));
            self.fault(kind, outage)
                .await
                .with_context(|| format!("fault {kind}"))?;
            *thrown.entry(kind).or_insert(0) += 1;
            let recovery = self.wait_recovered().await?;
            self.recoveries
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(recovery);
        }
        let rest = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(rest).await;
        Ok(())
    }

    async fn fault(&mut self, kind: &str, outage: Duration) -> Result<()> {
        match kind {
            "fleet_sigkill" => {
                self.fleet.kill().await?;
                self.sender.burst(self.burst).await;
                self.fleet.start().await?;
            }
            "fleet_sigterm" => {
                self.fleet.stop().await?;
                self.sender.burst(self.burst).await;
                self.fleet.start().await?;
            }
            "fleet_sigstop" => {
                let pid = self.fleet.pid().context("fleet not running")?;
                signal(pid, "-STOP").await?;
                tokio::time::sleep(outage).await;
                signal(pid, "-CONT").await?;
            }
            "proxy_cut" => {
                self.proxy.cut(true);
                tokio::time::sleep(outage).await;
                self.proxy.cut(false);
            }
            "lost_responses" => {
                // The requests reach Synapse, their answers never come back.
                self.proxy.lose_response("/send/", 0);
                self.proxy.lose_response("/sync", 0);
                self.proxy.lose_response("/send/", 2);
                tokio::time::sleep(outage).await;
            }
            "synapse_restart" => {
                self.synapse.kill()?;
                tokio::time::sleep(outage.min(Duration::from_secs(5))).await;
                self.synapse.restart().await?;
            }
            "disk_full" => {
                let disk = self.disk.context("no tmpfs")?;
                let filler = disk.fill()?;
                tokio::time::sleep(outage).await;
                std::fs::remove_file(filler)?;
            }
            other => bail!("unknown fault {other}"),
        }
        Ok(())
    }

    /// Milliseconds from now (a fault's end) until every account syncs again.
    async fn wait_recovered(&self) -> Result<u64> {
        let (start, since) = (Instant::now(), mxfleet_store::now_ms());
        let deadline = start + Duration::from_secs(180);
        loop {
            let status = self.fleet.status();
            let accounts = status.as_ref().and_then(|s| s["accounts"].as_object());
            let healed = accounts.is_some_and(|all| {
                !all.is_empty()
                    && all.values().all(|a| {
                        a["state"] == "syncing"
                            && a["last_sync_ms"].as_u64().is_some_and(|t| t >= since)
                    })
            });
            if healed {
                return Ok(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
            }
            ensure!(
                Instant::now() < deadline,
                "the fleet did not recover within 180 s: {status:?}\n{}",
                self.fleet.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Leaves the fleet running, the proxy open and Synapse up.
    async fn heal(&mut self) -> Result<()> {
        self.proxy.cut(false);
        if self.fleet.pid().is_none() {
            self.fleet.start().await?;
        }
        Ok(())
    }
}

async fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill {signal} {pid}");
    Ok(())
}

/// A question and the answers it got.
#[derive(Debug, Default, Clone)]
struct Tally {
    room: String,
    asked_ms: u64,
    answers: Vec<u64>,
}

/// Waits (up to two minutes) until every question in the homeserver's history has an answer,
/// then a little longer for doubles to show; returns the tallies by token.
async fn settle(
    synapse: &Synapse,
    targets: &[Target],
    bots: &[String],
    questions: u64,
) -> Result<BTreeMap<String, Tally>> {
    let admin = synapse.admin_token().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let tallies = tally(synapse, &admin, targets, bots, questions).await?;
        let open = tallies.values().filter(|t| t.answers.is_empty()).count();
        if open == 0 || Instant::now() >= deadline {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return tally(synapse, &admin, targets, bots, questions).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reads every room's history and matches answers to questions by token.
async fn tally(
    synapse: &Synapse,
    admin: &str,
    targets: &[Target],
    bots: &[String],
    questions: u64,
) -> Result<BTreeMap<String, Tally>> {
    let mut rooms: Vec<&OwnedRoomId> = targets.iter().map(|t| &t.room).collect();
    rooms.sort();
    rooms.dedup();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for room in rooms {
        let history = synapse.admin_room_messages(admin, room.as_str()).await?;
        // A streamed answer starts short and is completed by edits: its text is the last one.
        let mut text: BTreeMap<&str, &str> = BTreeMap::new();
        for m in &history {
            let target = m.replaces.as_deref().unwrap_or(&m.event_id);
            text.insert(target, &m.body);
        }
        for message in history.iter().filter(|m| m.replaces.is_none()) {
            let body = text
                .get(message.event_id.as_str())
                .copied()
                .unwrap_or_default();
            let Some(token) = find_token(body, questions) else {
                continue;
            };
            let tally = tallies.entry(token).or_default();
            if bots.contains(&message.sender) {
                tally.answers.push(message.ts_ms);
            } else {
                tally.asked_ms = message.ts_ms;
                tally.room = room.to_string();
            }
        }
    }
    // An answer without its question in the history cannot happen; keep only questions.
    tallies.retain(|_, t| t.asked_ms > 0);
    Ok(tallies)
}

/// Every room's history as text lines (for a report of what went wrong).
async fn history_dump(synapse: &Synapse, targets: &[Target]) -> Result<String> {
    let admin = synapse.admin_token().await?;
    let mut rooms: Vec<&OwnedRoomId> = targets.iter().map(|t| &t.room).collect();
    rooms.sort();
    rooms.dedup();
    let mut out = String::from("\n--- history ---\n");
    for room in rooms {
        for m in synapse.admin_room_messages(&admin, room.as_str()).await? {
            out.push_str(&format!(
                "{room} {} {} {} replaces={:?} {:?}\n",
                m.ts_ms, m.event_id, m.sender, m.replaces, m.body
            ));
        }
    }
    Ok(out)
}

/// The token in `body`, if it has one below `questions`.
fn find_token(body: &str, questions: u64) -> Option<String> {
    let start = body.find("soak-")?;
    let rest = body.get(start + 5..)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    let follows_dot = rest.get(digits.len()..)?.starts_with('.');
    (n < questions && follows_dot).then(|| token(n))
}

fn count(tallies: &BTreeMap<String, Tally>, _bots: &[String]) -> SoakReport {
    let mut report = SoakReport {
        sent: tallies.len(),
        ..SoakReport::default()
    };
    let mut latencies = Vec::new();
    for (token, tally) in tallies {
        match tally.answers.len() {
            0 => report.lost.push(format!("{token}@{}", tally.room)),
            1 => report.answered_once += 1,
            _ => report.doubled.push(token.clone()),
        }
        if let Some(first) = tally.answers.iter().min() {
            latencies.push(first.saturating_sub(tally.asked_ms));
        }
    }
    latencies.sort_unstable();
    report.latency_p50_ms = percentile(&latencies, 50);
    report.latency_p99_ms = percentile(&latencies, 99);
    report.latency_max_ms = latencies.last().copied().unwrap_or(0);
    report
}

/// The `p`-th percentile of sorted `values` (nearest rank).
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0)
}

/// A tmpfs mounted on a directory for as long as it lives (root only).
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`48m`) on `dir`, creating it.
    pub fn mount(dir: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()?;
        ensure!(
            status.success(),
            "mount tmpfs on {} (needs root)",
            dir.display()
        );
        Ok(Self(dir.to_owned()))
    }

    /// Fills the file system up to the last block; returns the filler file (remove it to
    /// free the space).
    pub fn fill(&self) -> Result<PathBuf> {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path)?;
        for chunk in [1 << 20, 4096, 512] {
            let block = vec![0u8; chunk];
            while file.write_all(&block).is_ok() {}
        }
        let _ = file.sync_all();
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_whole_and_percentiles_by_rank() {
        assert_eq!(find_token("soak-7.", 10).as_deref(), Some("soak-7."));
        assert_eq!(
            find_token("@bot:hs soak-71.", 100).as_deref(),
            Some("soak-71.")
        );
        assert_eq!(find_token("soak-71.", 50), None, "not asked");
        assert_eq!(find_token("soak-7", 10), None);
        assert_eq!(find_token("no token", 10), None);
        assert_eq!(percentile(&[], 50), 0);
        assert_eq!(percentile(&[5], 99), 5);
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 99), 99);
    }
}
