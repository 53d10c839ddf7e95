//! End-to-end tests of hostile input and isolation: what an agent reading untrusted text can
//! reach, how far a runaway backend or a spoofing room gets, against a real Synapse.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Result, ensure};
use matrix_sdk::ruma::RoomId;
use mxfleet_testkit::{ADMIN_TOKEN, FleetProcess, Human, Scenario, Synapse, binary};

const TIMEOUT: Duration = Duration::from_secs(40);

/// A command backend whose agent prints `script`'s output, then `agent-done`.
fn agent(script: &str, sandbox: &str) -> String {
    let script = format!("{script}; echo agent-done");
    format!("kind = \"command\"\ncommand = [\"sh\", \"-c\", {script:?}]\nsandbox = {sandbox:?}")
}

/// The final text of the first answer from `bot` in `room` that has finished (`agent-done`).
async fn agent_answer(human: &Human, room: &RoomId, bot: &str) -> Result<String> {
    human
        .wait_for("the agent's answer", TIMEOUT, |h| {
            h.seen_from(room, bot)
                .iter()
                .map(|seen| h.current_text(seen))
                .find(|text| text.contains("agent-done"))
        })
        .await
}

#[tokio::test]
async fn a_command_agent_reads_no_secret_from_its_environment_or_the_data_dir() -> Result<()> {
    let sandboxed = std::path::Path::new("/usr/bin/bwrap").exists();
    let mut s = Scenario::new()
        .bot_named("plain", |b| b.backend("plain").open_dms())
        .bot_named("boxed", |b| b.backend("boxed").open_dms())
        .backend("plain", &agent("env", "none"))
        .backend("boxed", &agent("true", "none"))
        .admin()
        .human()
        .prepare()
        .await?;
    // The fleet holds secrets in its environment too: the password, given again by variable.
    let password = s.bot("plain").credentials().1;
    s.fleet
        .set_env("MXFLEET_ACCOUNTS__PLAIN__PASSWORD", &password);
    let (data, config) = (s.fleet.data_dir(), s.fleet.config_path().to_owned());
    let prying = format!(
        "env; ls -A {d} 2>&1; cat {d}/mxfleet.redb 2>&1 | head -c 400; cat {c} 2>&1; \
         tr '\\0' '\\n' < /proc/$PPID/environ 2>&1",
        d = data.display(),
        c = config.display()
    );
    let sandbox = if sandboxed { "bwrap" } else { "none" };
    s.reconfigure(|scenario| scenario.backend("boxed", &agent(&prying, sandbox)))
        .await?;
    s.start().await?;

    let human = &s.humans[0];
    let mut answers = Vec::new();
    let boxed = if sandboxed {
        &["plain", "boxed"][..]
    } else {
        &["plain"][..]
    };
    for id in boxed {
        let bot = s.bot(id).credentials().0;
        let dm = human.dm(&bot).await?;
        human.send(&dm, "print everything you can see").await?;
        answers.push((id, agent_answer(human, &dm, &bot).await?));
    }
    let data_files: Vec<String> = std::fs::read_dir(&data)?
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    ensure!(
        data_files.iter().any(|f| f == "mxfleet.redb"),
        "{data_files:?}"
    );
    for (id, answer) in &answers {
        // Access tokens (`syt_…`) live in mxfleet.redb; the admin token in the config file.
        for secret in [
            password.as_str(),
            ADMIN_TOKEN,
            "MXFLEET_",
            "syt_",
            "[admin]",
        ] {
            ensure!(
                !answer.contains(secret),
                "the {id} agent saw {secret:?}:\n{answer}"
            );
        }
        let listed = answer
            .lines()
            .find(|line| data_files.iter().any(|f| f == line.trim()));
        ensure!(
            listed.is_none(),
            "the {id} agent listed the data dir:\n{answer}"
        );
        ensure!(
            answer.contains("PATH="),
            "the {id} agent's env was not printed:\n{answer}"
        );
    }
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_runaway_agent_is_cut_at_the_answer_limits_and_stopped() -> Result<()> {
    // `yes` never stops: each line is 60 characters, so 2 messages of 8,000 bytes fill at once.
    let marker = format!("runaway-{}", std::process::id());
    let line = format!("{marker} {}", "x".repeat(40));
    let backend = format!("kind = \"command\"\ncommand = [\"yes\", {line:?}]");
    let mut s = Scenario::new()
        .backend("runaway", &backend)
        .bot(|b| {
            b.backend("runaway")
                .open_dms()
                .key("max_answer_parts = 2\nmax_answer_chars = 100000")
        })
        .admin()
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials().0);
    let dm = human.dm(&bot).await?;
    human.send(&dm, "talk forever").await?;
    let parts = human
        .wait_for("an answer cut at its limit", TIMEOUT, |h| {
            let texts: Vec<String> = h
                .seen_from(&dm, &bot)
                .iter()
                .map(|seen| h.current_text(seen))
                .collect();
            texts
                .last()
                .is_some_and(|t| t.ends_with("*(answer cut: it reached this bot's length limit)*"))
                .then_some(texts)
        })
        .await?;
    ensure!(parts.len() == 2, "{} messages", parts.len());
    ensure!(parts.iter().all(|p| p.contains(&marker)), "{parts:?}");
    // The agent was stopped, not left writing into a pipe nobody reads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()?;
    ensure!(
        still.stdout.is_empty(),
        "the agent still runs: {}",
        String::from_utf8_lossy(&still.stdout)
    );
    // Nothing more arrives after the cut.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        human.seen_from(&dm, &bot).len() == 2,
        "more messages after the cut"
    );
    let metrics = s.metrics().await?;
    let line = "mxfleet_answers_cut_total{account=\"bot\"} 1";
    ensure!(metrics.contains(line), "no {line:?} in\n{metrics}");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn data_dir_files_are_private_whatever_the_umask() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let synapse = Synapse::shared().await?;
    let (user_id, password) = synapse.fresh_user("bot").await?;
    // mxfleet started by a careless wrapper: umask 000 would make new files world-readable.
    let wrapper = std::env::temp_dir().join(format!("mxfleet-umask-{}.sh", std::process::id()));
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\numask 000\nexec {:?} \"$@\"\n", binary()),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let config = format!(
        "[accounts.bot]\nhomeserver = {:?}\nuser_id = {user_id:?}\npassword = {password:?}\nbackend = \"echo\"\n",
        synapse.url()
    );
    let mut fleet = FleetProcess::with_binary(&config, wrapper.clone())?;
    fleet.start().await?;
    fleet
        .wait_state("bot", "syncing", Duration::from_secs(60))
        .await?;
    let mut loose = Vec::new();
    let mut dirs = vec![fleet.data_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            let mode = meta.permissions().mode() & 0o777;
            if !meta.file_type().is_symlink() && mode & 0o077 != 0 {
                loose.push(format!("{:o} {}", mode, path.display()));
            }
        }
    }
    fleet.stop().await?;
    let _ = std::fs::remove_file(&wrapper);
    ensure!(loose.is_empty(), "readable by others: {loose:#?}");
    Ok(())
}

#[tokio::test]
async fn max_media_bytes_zero_takes_no_media_at_all() -> Result<()> {
    let llm = mxfleet_testkit::FakeOpenAi::start(50).await?;
    let stt = format!(
        "kind = \"openai\"\nbase_url = {:?}\nmodel = \"whisper-1\"",
        llm.base_url
    );
    let mut s = Scenario::new()
        .llm(&llm)
        .backend("stt", &stt)
        .bot(|b| {
            b.llm()
                .open_dms()
                .key("transcription = \"stt\"\nmax_media_bytes = 0")
        })
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials().0);
    let dm = human.dm(&bot).await?;
    human
        .send_file(&dm, "voice.ogg", "audio/ogg", b"tell me a joke".to_vec())
        .await?;
    human
        .wait_for("the refusal", TIMEOUT, |h| {
            h.seen_from(&dm, &bot)
                .into_iter()
                .find(|seen| seen.body.contains("I do not take voice messages or files"))
        })
        .await?;
    let transcribed = llm
        .requests()
        .iter()
        .any(|r| r.body.get("transcription").is_some());
    ensure!(!transcribed, "the audio reached the transcription backend");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_log_reader_that_stops_reading_stalls_nothing() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .admin()
        .human()
        .env("RUST_LOG", "debug")
        .toml("[log]\nbuffer_lines = 64")
        .prepare()
        .await?;
    // A pipe whose reader never reads: debug logs fill it, and the 64 lines waiting behind it,
    // within seconds.
    let (_unread, writer) = std::io::pipe()?;
    s.fleet.log_into(writer);
    s.start().await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials().0);
    let dm = human.dm(&bot).await?;
    // Answers keep coming while the log buffer overflows and lines are dropped (and counted).
    let mut metrics = String::new();
    for n in 0..40 {
        let text = format!("still there? {n}");
        human.send(&dm, &text).await?;
        human.expect_message(&dm, &bot, &text, TIMEOUT).await?;
        metrics = s.metrics().await?;
        let dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("mxfleet_log_lines_dropped_total "))
            .and_then(|v| v.parse::<u64>().ok());
        if dropped.is_some_and(|d| d > 0) && n >= 2 {
            break;
        }
        ensure!(n < 39, "no log line was ever dropped: {dropped:?}");
    }
    ensure!(metrics.contains("\nmxfleet_database_bytes "), "{metrics}");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn chatter_the_gate_refuses_is_never_stored() -> Result<()> {
    const CHATTER: usize = 30;
    let mut s = Scenario::new()
        .bot(|b| b.mentioned_in_rooms())
        .human()
        .admin()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials().0);
    let room = human.room_with(&[bot.as_str()], false).await?;
    for i in 0..CHATTER {
        human
            .send(&room, &format!("chatter {i}, not for the bot"))
            .await?;
    }
    human
        .send_mentioning(&room, "bot, a question", &[bot.as_str()], false)
        .await?;
    human
        .expect_final_text(&room, &bot, "bot, a question", TIMEOUT)
        .await?;
    let metrics = s.metrics().await?;
    let ignored = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("mxfleet_messages_skipped_total{account=\"bot\",reason=\"ignored\"} ")
        })
        .and_then(|n| n.trim().parse::<u64>().ok());
    s.fleet.stop().await?;
    let stored = s.fleet.inbox_len("bot").await?;
    ensure!(
        stored == 1,
        "{stored} messages stored in the inbox, only the question is for the bot"
    );
    ensure!(
        ignored.is_some_and(|n| n >= CHATTER as u64),
        "ignored messages counted: {ignored:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_direct_flag_on_a_room_of_three_does_not_make_it_a_dm() -> Result<()> {
    // DMs are open, group rooms closed: a room of three flagged "direct" by its creator must be
    // judged as the group room it is.
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .humans(2)
        .start()
        .await?;
    let bot = s.bot("bot").credentials().0;
    let (human, other) = (&s.humans[0], &s.humans[1]);
    let crowded = human
        .create_room(&[bot.as_str(), other.user_id.as_str()], true)
        .await?;
    human
        .wait_joined(&crowded, &bot, Duration::from_secs(30))
        .await?;
    human
        .send(&crowded, "answer me as if we were alone")
        .await?;
    let dm = human.dm(&bot).await?;
    human.send(&dm, "a real DM").await?;
    human
        .expect_message(&dm, &bot, "a real DM", TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answered = human.seen_from(&crowded, &bot);
    ensure!(
        answered.is_empty(),
        "the crowded room was treated as a DM: {:?}",
        answered.iter().map(|s| &s.body).collect::<Vec<_>>()
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_removed_account_is_pointed_out_then_forgotten_and_logged_out() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let mut s = Scenario::new()
        .bot_named("gone", |b| b.open_dms())
        .bot_named("kept", |b| b.open_dms())
        .start()
        .await?;
    let gone = s.bot("gone").credentials().0;
    s.fleet.stop().await?;
    let admin = synapse.admin_token().await?;
    ensure!(
        synapse
            .admin_devices(&admin, &gone)
            .await?
            .iter()
            .any(|d| d == "MXFLEET_GONE"),
        "the bot's device is not there to begin with"
    );
    // Still configured: refused.
    let refused = s.fleet.run_command(&["account", "forget", "gone"]).await?;
    ensure!(refused.status.code() == Some(1), "{refused:?}");

    // Removed from the configuration: its live token is pointed out at start.
    s.reconfigure(|scenario| scenario.without("gone")).await?;
    s.start().await?;
    let warned = s.fleet.all_logs().contains("still has a stored session");
    // While the fleet runs, the data dir is not touched.
    let running = s
        .fleet
        .run_command(&[
            "account",
            "forget",
            "gone",
            "--logout",
            "--homeserver",
            synapse.url(),
        ])
        .await?;
    s.fleet.stop().await?;
    ensure!(
        warned,
        "no warning about the leftover session:\n{}",
        s.fleet.all_logs()
    );
    ensure!(running.status.code() == Some(3), "{running:?}");

    let forgot = s
        .fleet
        .run_command(&[
            "account",
            "forget",
            "gone",
            "--logout",
            "--homeserver",
            synapse.url(),
        ])
        .await?;
    let said = String::from_utf8_lossy(&forgot.stdout);
    ensure!(forgot.status.success(), "{forgot:?}");
    ensure!(
        said.contains("logged gone out") && said.contains("forgot gone"),
        "{said}"
    );
    ensure!(
        !synapse
            .admin_devices(&admin, &gone)
            .await?
            .iter()
            .any(|d| d == "MXFLEET_GONE"),
        "the device (and its token) outlived the logout"
    );
    ensure!(!s.fleet.data_dir().join("accounts/gone").exists());
    // The other account is untouched, and nothing is pointed out any more.
    s.start().await?;
    s.fleet.stop().await?;
    let logs = s.fleet.all_logs();
    let last_run = logs.rsplit("mxfleet starting").next().unwrap_or_default();
    ensure!(
        !last_run.contains("still has a stored session"),
        "{last_run}"
    );
    Ok(())
}

/// The resident memory of process `pid`, in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `n` messages from `human` into `room`, as fast as they go.
async fn flood(human: &Human, room: &RoomId, who: &str, n: usize) -> Result<()> {
    for i in 0..n {
        human.send(room, &format!("{who} spam {i}")).await?;
    }
    Ok(())
}

/// Round trips of `n` DMs from `c` to the echo bot `bot`, each followed by one between `c` and
/// the human `d` who echoes by hand (the homeserver's own share, measured alongside); the
/// latencies of each, sorted.
async fn round_trips(
    (c, d): (&Human, &Human),
    (dm, pair): (&RoomId, &RoomId),
    bot: &str,
    n: usize,
    tag: &str,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut bot_trips, mut pair_trips) = (Vec::new(), Vec::new());
    for i in 0..n {
        let text = format!("{tag} {i}");
        let sent = std::time::Instant::now();
        c.send(dm, &text).await?;
        c.expect_message(dm, bot, &text, TIMEOUT).await?;
        bot_trips.push(sent.elapsed());

        let sent = std::time::Instant::now();
        c.send(pair, &text).await?;
        d.expect_message(pair, c.user_id.as_str(), &text, TIMEOUT)
            .await?;
        let echo = format!("{text} back");
        d.send(pair, &echo).await?;
        c.expect_message(pair, d.user_id.as_str(), &echo, TIMEOUT)
            .await?;
        pair_trips.push(sent.elapsed());
    }
    bot_trips.sort_unstable();
    pair_trips.sort_unstable();
    Ok((bot_trips, pair_trips))
}

#[tokio::test]
async fn a_flood_reaches_the_backend_only_within_the_limits_and_slows_no_one_else() -> Result<()> {
    // Per sender, two senders: the 2,000 messages (see docs/security.md).
    const FLOOD: usize = 1000;
    // Round trips measured idle and during the flood; compared at their 90th percentile, so
    // that one hiccup of a test running beside this one on the same two cores does not decide.
    const ROUNDS: usize = 20;
    let llm = mxfleet_testkit::FakeOpenAi::start_with(4, Duration::from_millis(40), None).await?;
    let slow = format!(
        "kind = \"openai\"\nbase_url = {:?}\nmodel = \"m\"\nmax_concurrent = 2",
        llm.base_url
    );
    let mut s = Scenario::new()
        .backend("slow", &slow)
        .bot_named("busy", |b| {
            b.backend("slow").open().table(
                "limits",
                "per_sender_per_minute = 8\nper_room_per_minute = 12",
            )
        })
        // The calm account's own limits leave room for the 2 × ROUNDS measured round trips.
        .bot_named("calm", |b| {
            b.open_dms().table(
                "limits",
                "per_sender_per_minute = 100\nper_room_per_minute = 100",
            )
        })
        .humans(4)
        .start()
        .await?;
    let (busy, calm) = (s.bot("busy").credentials().0, s.bot("calm").credentials().0);
    let pid = s.fleet.pid().unwrap_or_default();
    let (a, b, c, d) = (&s.humans[0], &s.humans[1], &s.humans[2], &s.humans[3]);
    let room = a
        .create_room(&[busy.as_str(), b.user_id.as_str()], false)
        .await?;
    a.wait_joined(&room, &busy, TIMEOUT).await?;
    b.client.join_room_by_id(&room).await?;
    let calm_dm = c.dm(&calm).await?;
    let pair = c.create_room(&[d.user_id.as_str()], true).await?;
    d.client.join_room_by_id(&pair).await?;
    c.wait_joined(&pair, d.user_id.as_str(), TIMEOUT).await?;
    let rooms = (calm_dm.as_ref(), pair.as_ref());
    let (idle, pair_idle) = round_trips((c, d), rooms, &calm, ROUNDS, "idle").await?;
    let rss_before = rss_kib(pid).unwrap_or_default();

    // The spammers only write: their syncs would load the homeserver on the same two cores.
    a.stop_syncing();
    b.stop_syncing();
    let started = std::time::Instant::now();
    let flooding =
        futures_util::future::try_join(flood(a, &room, "a", FLOOD), flood(b, &room, "b", FLOOD));
    let measuring = round_trips((c, d), rooms, &calm, ROUNDS, "busy");
    let (flooded, during) = tokio::join!(flooding, measuring);
    flooded?;
    let (during, pair_during) = during?;
    let mut rss_peak = rss_kib(pid).unwrap_or_default();
    // Let the bot work through what arrived.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kib(pid).unwrap_or_default());
    }
    let minutes = started.elapsed().as_secs() / 60 + 1;
    let asked = llm.requests().len();
    // Nearest rank: the 18th of 20 sorted round trips.
    let p90 = |l: &[Duration]| {
        l.get((l.len() * 9).div_ceil(10).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    let ratio = |during: &[Duration], idle: &[Duration]| {
        p90(during).as_secs_f64() / p90(idle).as_secs_f64().max(0.001)
    };
    let (slowdown, homeserver) = (ratio(&during, &idle), ratio(&pair_during, &pair_idle));
    eprintln!(
        "flood of {} messages: backend asked {asked} times, peak {} at once; calm DM p90 idle \
         {:?}, during {:?} ({slowdown:.2}x; max {:?} → {:?}); two humans' p90 idle {:?}, \
         during {:?} ({homeserver:.2}x; max {:?} → {:?}); RSS {} MiB before, {} MiB peak",
        2 * FLOOD,
        llm.peak_streams(),
        p90(&idle),
        p90(&during),
        idle.last(),
        during.last(),
        p90(&pair_idle),
        p90(&pair_during),
        pair_idle.last(),
        pair_during.last(),
        rss_before / 1024,
        rss_peak / 1024
    );
    ensure!(
        asked as u64 <= 12 * minutes,
        "the backend was asked {asked} times in {minutes} min"
    );
    ensure!(
        llm.peak_streams() <= 2,
        "{} answers at once",
        llm.peak_streams()
    );
    // Within 2× its idle p90 — unless the homeserver, on the same two cores, itself slowed
    // more than 1.6× (the two humans' round trips): then no more than 25% beyond that.
    ensure!(
        slowdown <= 2.0_f64.max(1.25 * homeserver),
        "calm DM p90 {:?} during the flood ({slowdown:.2}x its idle {:?}); the homeserver \
         alone slowed {homeserver:.2}x",
        p90(&during),
        p90(&idle)
    );
    ensure!(
        rss_peak < 400 * 1024,
        "RSS peaked at {} MiB",
        rss_peak / 1024
    );
    s.fleet.stop().await?;
    // What was over the limits was never stored: the inbox holds the admitted messages and,
    // at most once a minute, the one that told the room.
    let stored = s.fleet.inbox_len("busy").await?;
    ensure!(
        stored <= asked as u64 + minutes + 1,
        "{stored} of {} flooded messages stored, {asked} admitted",
        2 * FLOOD
    );
    Ok(())
}

/// Sends `n` questions tagged `tag` into `room` at once, then waits for each answer.
async fn ask_many(human: &Human, room: &RoomId, bot: &str, tag: &str, n: usize) -> Result<()> {
    for i in 0..n {
        human.send(room, &format!("{tag} {i}")).await?;
    }
    for i in 0..n {
        let answer = format!("openai says: {tag} {i} — streamed with ünïcödé ✓");
        human.expect_final_text(room, bot, &answer, TIMEOUT).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_backend_shared_by_accounts_streams_at_most_max_concurrent_answers() -> Result<()> {
    // Each answer streams for about a second; two accounts ask the same backend at once.
    let llm = mxfleet_testkit::FakeOpenAi::start_with(2, Duration::from_millis(60), None).await?;
    let shared = format!(
        "kind = \"openai\"\nbase_url = {:?}\nmodel = \"m\"\nmax_concurrent = 1",
        llm.base_url
    );
    let mut s = Scenario::new()
        .backend("shared", &shared)
        .bot_named("one", |b| b.backend("shared").open_dms())
        .bot_named("two", |b| b.backend("shared").open_dms())
        .humans(2)
        .start()
        .await?;
    let (one, two) = (s.bot("one").credentials().0, s.bot("two").credentials().0);
    let (h1, h2) = (&s.humans[0], &s.humans[1]);
    let (dm1, dm2) = (h1.dm(&one).await?, h2.dm(&two).await?);
    let (first, second) = tokio::join!(
        ask_many(h1, &dm1, &one, "first room", 3),
        ask_many(h2, &dm2, &two, "second room", 3)
    );
    first?;
    second?;
    ensure!(llm.requests().len() == 6, "{} asks", llm.requests().len());
    ensure!(
        llm.peak_streams() == 1,
        "{} answers streamed at once past max_concurrent = 1",
        llm.peak_streams()
    );
    s.fleet.stop().await?;
    Ok(())
}
