//! End-to-end tests of the core: real Synapse, real matrix-sdk human, the real `mxfleet` binary.
//! Each test registers its own random users, so tests share the Synapse but no state.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mxfleet_testkit::{CountingProxy, FakeOpenAi, Fault, FleetProcess, Human, Scenario, Synapse};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn two_accounts_answer_in_dms_and_a_shared_room() -> Result<()> {
    // One password account, one access-token account whose user id comes from whoami.
    let mut s = Scenario::new()
        .bot_named("alice", |b| b.open())
        .bot_named("tok", |b| b.open().access_token())
        .human()
        .start()
        .await?;
    let human = &s.humans[0];
    let (alice_bot, token_bot) = (s.bot("alice").user_id.clone(), s.bot("tok").user_id.clone());
    let tok = s.fleet.wait_state("tok", "syncing", REPLY_TIMEOUT).await?;
    assert_eq!(
        tok["user_id"],
        token_bot.as_str(),
        "whoami filled in the user id"
    );

    let dm_alice = human.dm(&alice_bot).await?;
    let dm_tok = human.dm(&token_bot).await?;
    let shared = human.room_with(&[&alice_bot, &token_bot], false).await?;

    human.send(&dm_alice, "hello alice").await?;
    human.send(&dm_tok, "hello token bot").await?;
    human.send(&shared, "hello both").await?;
    human
        .expect_message(&dm_alice, &alice_bot, "hello alice", REPLY_TIMEOUT)
        .await?;
    human
        .expect_message(&dm_tok, &token_bot, "hello token bot", REPLY_TIMEOUT)
        .await?;
    human
        .expect_message(&shared, &alice_bot, "hello both", REPLY_TIMEOUT)
        .await?;
    human
        .expect_message(&shared, &token_bot, "hello both", REPLY_TIMEOUT)
        .await?;

    // Bots of one fleet never answer each other: give them time to misbehave, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(human.count(&shared, &alice_bot, "hello both"), 1);
    assert_eq!(human.count(&shared, &token_bot, "hello both"), 1);

    let status = s.fleet.stop().await?;
    assert!(status.success(), "clean shutdown exits 0, got {status:?}");
    assert_eq!(
        s.fleet.status().context("status.json")?["accounts"]["alice"]["state"],
        "stopped"
    );
    Ok(())
}

#[tokio::test]
async fn restarts_reuse_the_session_and_answer_each_message_once() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    let mut s = Scenario::new()
        .bot(|b| b.open().via(&proxy.url))
        .human()
        .prepare()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());

    s.fleet.start().await?;
    let first = s.fleet.wait_state("bot", "syncing", REPLY_TIMEOUT).await?;
    let room = human.dm(&bot).await?;
    human.send(&room, "before restart").await?;
    human
        .expect_message(&room, &bot, "before restart", REPLY_TIMEOUT)
        .await?;

    // A clean restart, then a crash (SIGKILL) with a message sent while the fleet is down.
    s.fleet.stop().await?;
    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", REPLY_TIMEOUT).await?;
    human.send(&room, "between restarts").await?;
    human
        .expect_message(&room, &bot, "between restarts", REPLY_TIMEOUT)
        .await?;
    s.fleet.kill().await?;
    human.send(&room, "sent while down").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.fleet.start().await?;
    let last = s.fleet.wait_state("bot", "syncing", REPLY_TIMEOUT).await?;
    human
        .expect_message(&room, &bot, "sent while down", REPLY_TIMEOUT)
        .await?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    for body in ["before restart", "between restarts", "sent while down"] {
        assert_eq!(
            human.count(&room, &bot, body),
            1,
            "{body:?} answered exactly once"
        );
    }
    assert_eq!(
        proxy.count_ending("/login"),
        1,
        "only the very first start logs in: {:?}",
        proxy.requests()
    );
    assert_eq!(first["device_id"], last["device_id"], "the device is kept");
    let admin = synapse.admin_token().await?;
    assert_eq!(
        synapse.admin_devices(&admin, &bot).await?.len(),
        1,
        "no extra devices were created"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_new_account_ignores_history_and_old_messages_are_skipped() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let mut s = Scenario::new()
        .bot(|b| b.open().key("catch_up_max_age_secs = 3"))
        .human()
        .prepare()
        .await?;
    let (human, (bot, bot_pw)) = (&s.humans[0], s.bot("bot").credentials());
    // The bot joins a room with history before mxfleet ever runs.
    let bot_client = Human::login(synapse.url(), &bot, &bot_pw).await?;
    let room = human.room_with(&[], true).await?;
    human
        .client
        .get_room(&room)
        .context("room")?
        .invite_user_by_id(bot_client.user_id.as_ref())
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    bot_client.client.join_room_by_id(&room).await?;
    human.wait_joined(&room, &bot, REPLY_TIMEOUT).await?;
    human.send(&room, "old history").await?;
    drop(bot_client);

    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", REPLY_TIMEOUT).await?;
    human.send(&room, "fresh").await?;
    human
        .expect_message(&room, &bot, "fresh", REPLY_TIMEOUT)
        .await?;
    assert_eq!(
        human.count(&room, &bot, "old history"),
        0,
        "history before the first sync is not answered"
    );

    // Down for longer than catch_up_max_age_secs: that message is skipped and counted.
    s.fleet.stop().await?;
    human.send(&room, "too old by the time we are back").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", REPLY_TIMEOUT).await?;
    human.send(&room, "after catch-up").await?;
    human
        .expect_message(&room, &bot, "after catch-up", REPLY_TIMEOUT)
        .await?;
    assert_eq!(
        human.count(&room, &bot, "too old by the time we are back"),
        0
    );
    s.fleet
        .wait_for_status(
            "the old message counted as skipped",
            REPLY_TIMEOUT,
            |status| status["accounts"]["bot"]["skipped_old"] == 1,
        )
        .await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_device_fails_one_account_fast_and_the_other_keeps_answering() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let victim_proxy = CountingProxy::start(synapse.url()).await?;
    let mut s = Scenario::new()
        .bot_named("victim", |b| b.open().via(&victim_proxy.url))
        .bot_named("survivor", |b| b.open())
        .human()
        .start()
        .await?;
    let human = &s.humans[0];
    let (victim, survivor) = (
        s.bot("victim").user_id.clone(),
        s.bot("survivor").user_id.clone(),
    );
    let record = s
        .fleet
        .wait_state("victim", "syncing", REPLY_TIMEOUT)
        .await?;
    let device = record["device_id"]
        .as_str()
        .context("device id")?
        .to_owned();

    let admin = synapse.admin_token().await?;
    synapse
        .admin_delete_device(&admin, &victim, &device)
        .await?;
    let failed = s
        .fleet
        .wait_state("victim", "auth_failed", Duration::from_secs(10))
        .await?;
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("M_UNKNOWN_TOKEN") || e.contains("token")),
        "{failed}"
    );

    // No retry storm: nothing more reaches the homeserver for the failed account (whose
    // traffic all goes through its proxy).
    ensure!(
        victim_proxy.count_ending("/sync") > 1,
        "{:?}",
        victim_proxy.requests()
    );
    let after_failure = victim_proxy.requests().len();

    let room = human.dm(&survivor).await?;
    human.send(&room, "still there?").await?;
    human
        .expect_message(&room, &survivor, "still there?", REPLY_TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let extra = victim_proxy.requests()[after_failure..].to_vec();
    ensure!(extra.len() <= 1, "requests after auth_failed: {extra:?}");
    assert_eq!(
        s.fleet.status().context("status")?["accounts"]["victim"]["state"],
        "auth_failed"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn every_account_reconnects_after_synapse_is_killed_or_hangs() -> Result<()> {
    let mut synapse = Synapse::start_private().await?;
    let mut s = Scenario::new()
        .toml("[restart]\ninitial_delay_ms = 200\nmax_delay_ms = 2000")
        .bot_named("a", |b| b.open())
        .bot_named("b", |b| b.open().key("sync_timeout_secs = 2"))
        .human()
        .start_on(&synapse)
        .await?;
    let human = &s.humans[0];
    let (bot_a, bot_b) = (s.bot("a").user_id.clone(), s.bot("b").user_id.clone());
    let room_a = human.dm(&bot_a).await?;
    let room_b = human.dm(&bot_b).await?;
    human.send(&room_a, "ping a").await?;
    human
        .expect_message(&room_a, &bot_a, "ping a", REPLY_TIMEOUT)
        .await?;

    synapse.kill()?;
    s.fleet
        .wait_state("a", "backoff", Duration::from_secs(60))
        .await?;
    s.fleet
        .wait_state("b", "backoff", Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    synapse.restart().await?;

    s.fleet
        .wait_state("a", "syncing", Duration::from_secs(60))
        .await?;
    s.fleet
        .wait_state("b", "syncing", Duration::from_secs(60))
        .await?;
    human.send(&room_a, "after the outage a").await?;
    human.send(&room_b, "after the outage b").await?;
    human
        .expect_message(&room_a, &bot_a, "after the outage a", REPLY_TIMEOUT)
        .await?;
    human
        .expect_message(&room_b, &bot_b, "after the outage b", REPLY_TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        human.count(&room_a, &bot_a, "ping a"),
        1,
        "nothing answered twice"
    );

    // A hung Synapse (SIGSTOP): account b has a 2 s long-poll, so its request times out after
    // 2 + 15 s and the account shows the problem; on SIGCONT it recovers by itself.
    synapse.pause().await?;
    let hung = s
        .fleet
        .wait_state("b", "backoff", Duration::from_secs(40))
        .await;
    synapse.resume().await?;
    let hung = hung?;
    assert!(
        hung["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{hung}"
    );
    s.fleet
        .wait_state("b", "syncing", Duration::from_secs(60))
        .await?;
    human.send(&room_b, "after the freeze").await?;
    human
        .expect_message(&room_b, &bot_b, "after the freeze", REPLY_TIMEOUT)
        .await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_second_fleet_on_the_same_data_dir_exits_at_once() -> Result<()> {
    let mut s = Scenario::new().bot(|b| b.open()).start().await?;

    let started = std::time::Instant::now();
    let second = s.fleet.run_command(&["run"]).await?;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains("another mxfleet process is already running"),
        "stderr: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "exits at once");
    // The first one is undisturbed.
    assert_eq!(
        s.fleet.status().context("status")?["accounts"]["bot"]["state"],
        "syncing"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_command_looking_at_the_data_dir_does_not_make_a_starting_fleet_exit() -> Result<()> {
    let mut s = Scenario::new().bot(|b| b.open()).prepare().await?;
    // `mxfleet status`, `doctor` and `recovery-key` take the data dir's lock for a moment; a
    // fleet starting in that moment waits for it instead of taking it for a second fleet.
    let data_dir = s.fleet.data_dir();
    std::fs::create_dir_all(&data_dir)?;
    let lock = std::fs::File::create(data_dir.join("mxfleet.lock"))?;
    lock.lock()?;
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        drop(lock);
    });
    s.start().await?;
    let _ = release.join();
    let status = s.fleet.run_command(&["status"]).await?;
    assert!(status.status.success(), "{status:?}");
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("syncing"),
        "{status:?}"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn exit_codes_tell_usage_from_config_from_a_locked_data_dir() -> Result<()> {
    let fleet = FleetProcess::new("")?;
    let usage = fleet.run_command(&["frobnicate"]).await?;
    assert_eq!(usage.status.code(), Some(64), "{usage:?}");
    let help = fleet.run_command(&["--help"]).await?;
    assert_eq!(help.status.code(), Some(0), "{help:?}");
    // A running fleet's data dir: `recovery-key` needs it and says it is in use.
    let data_dir = fleet.data_dir();
    std::fs::create_dir_all(&data_dir)?;
    let lock = std::fs::File::create(data_dir.join("mxfleet.lock"))?;
    lock.lock()?;
    fleet
        .rewrite_config("[accounts.bot]\nhomeserver = \"http://127.0.0.1:1\"\naccess_token = \"t\"\nbackend = \"echo\"\n")?;
    let key = fleet.run_command(&["recovery-key", "bot"]).await?;
    assert_eq!(key.status.code(), Some(3), "{key:?}");
    drop(lock);
    Ok(())
}

#[tokio::test]
async fn malformed_config_is_rejected_with_key_and_source() -> Result<()> {
    let fleet = FleetProcess::new(
        "[accounts.bot]\nhomeserver = \"http://127.0.0.1:1\"\nuser_id = \"@bot:localhost\"\npasword = \"typo\"\nbackend = \"echo\"\nsync_timeout_secs = \"soon\"\n",
    )?;
    for command in [&["check"][..], &["run"][..]] {
        let output = fleet.run_command(command).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        assert!(
            stderr.contains("accounts.bot.pasword: unknown key"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("file {}", fleet.config_path().display())),
            "{stderr}"
        );
        assert!(
            stderr.contains("accounts.bot.sync_timeout_secs"),
            "{stderr}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn check_prints_the_merged_config_with_secrets_redacted() -> Result<()> {
    let fleet = FleetProcess::new(
        "[accounts.bot]\nhomeserver = \"http://127.0.0.1:1\"\nuser_id = \"@bot:localhost\"\npassword = \"sup3r-secret\"\nbackend = \"echo\"\n",
    )?;
    let output = fleet.run_command(&["check"]).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("sup3r-secret"), "{stdout}");
    assert!(
        stdout.contains("accounts.bot.password = \"[redacted]\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("accounts.bot.catch_up_max_age_secs = 600  # built-in default"),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test]
async fn the_openai_backend_streams_a_whole_answer() -> Result<()> {
    let llm = FakeOpenAi::start(3).await?;
    let backend = format!(
        "kind = \"openai\"\nbase_url = {:?}\nmodel = \"test-model\"\napi_key = \"sk-test\"\nsystem_prompt = \"be brief\"",
        llm.base_url
    );
    let mut s = Scenario::new()
        .backend("llm", &backend)
        .bot(|b| b.llm().open())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let room = human.dm(&bot).await?;
    human.send(&room, "what is mxfleet?").await?;
    let expected = FakeOpenAi::answer_for("what is mxfleet?");
    // Streamed: one message, edited in place until it shows the whole answer.
    human
        .expect_final_text(&room, &bot, &expected, REPLY_TIMEOUT)
        .await?;
    assert_eq!(human.seen_from(&room, &bot).len(), 1);

    let requests = llm.requests();

    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(requests[0].body["model"], "test-model");
    assert_eq!(requests[0].body["stream"], true);
    assert_eq!(requests[0].body["messages"][0]["content"], "be brief");
    assert!(
        !s.fleet.all_logs().contains("sk-test"),
        "the API key never reaches the logs"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_sync_backs_off_alone_and_recovers() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    let restart = "[restart]\ninitial_delay_ms = 100\nmax_delay_ms = 1500\nmax_restarts = 3\nrestart_window_secs = 60";
    let mut s = Scenario::new()
        .toml(restart)
        // A short long-poll, so the request in flight when the fault starts ends soon.
        .bot_named("flaky", |b| {
            b.open().via(&proxy.url).key("sync_timeout_secs = 2")
        })
        .bot_named("steady", |b| b.open())
        .human()
        .start()
        .await?;
    let human = &s.humans[0];
    let (flaky, steady) = (
        s.bot("flaky").user_id.clone(),
        s.bot("steady").user_id.clone(),
    );
    let flaky_room = human.dm(&flaky).await?;
    let steady_room = human.dm(&steady).await?;

    // The homeserver starts failing every /sync of one account.
    proxy.set_fault(Some(Fault {
        path_suffix: "/sync".into(),
        status: 500,
        body: r#"{"errcode":"M_UNKNOWN","error":"injected by the test"}"#.into(),
    }));
    s.fleet
        .wait_state("flaky", "backoff", REPLY_TIMEOUT)
        .await?;

    human.send(&steady_room, "are you unaffected?").await?;
    human
        .expect_message(&steady_room, &steady, "are you unaffected?", REPLY_TIMEOUT)
        .await?;
    human.send(&flaky_room, "sent during the outage").await?;

    // Repeated failures back off exponentially and hit the intensity bound.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let delays = loop {
        let delays = restart_delays(&s.fleet.log(), "flaky");
        if delays.iter().any(|(_, parked)| *parked) || tokio::time::Instant::now() > deadline {
            break delays;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        delays.len() >= 4,
        "expected several restarts, got {delays:?}"
    );
    ensure!(
        delays.iter().any(|(_, parked)| *parked),
        "never parked: {delays:?}"
    );
    ensure!(
        delays.iter().all(|(ms, _)| *ms <= 1500),
        "a delay exceeded the cap: {delays:?}"
    );
    ensure!(delays[2].0 > delays[0].0, "delays do not grow: {delays:?}");
    let steady_status = s.fleet.status().context("status")?["accounts"]["steady"].clone();
    assert_eq!(steady_status["state"], "syncing");
    assert_eq!(
        steady_status["restarts"], 0,
        "the other account was never restarted"
    );

    // Healed: the account resumes from its sync position and answers the message once.
    proxy.set_fault(None);
    s.fleet
        .wait_state("flaky", "syncing", Duration::from_secs(30))
        .await?;
    human
        .expect_message(&flaky_room, &flaky, "sent during the outage", REPLY_TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        human.count(&flaky_room, &flaky, "sent during the outage"),
        1
    );
    s.fleet.stop().await?;
    Ok(())
}

/// `(delay_ms, parked)` of each "restarting after backoff" line of `account` in a JSON log.
fn restart_delays(log: &str, account: &str) -> Vec<(u64, bool)> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| {
            v["fields"]["message"] == "restarting after backoff" && v["span"]["account"] == account
        })
        .map(|v| {
            (
                v["fields"]["delay_ms"].as_u64().unwrap_or(u64::MAX),
                v["fields"]["parked"] == true,
            )
        })
        .collect()
}

#[tokio::test]
async fn traces_reach_an_otlp_collector_and_a_dead_one_changes_nothing() -> Result<()> {
    let mut s = Scenario::new().bot(|b| b.open()).human().prepare().await?;
    let (human, (bot, bot_pw)) = (&s.humans[0], s.bot("bot").credentials());

    // A collector that does not exist: messages are answered all the same.
    let dead = format!("http://127.0.0.1:{}", mxfleet_testkit::free_port()?);
    s.fleet.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &dead);
    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", REPLY_TIMEOUT).await?;
    let room = human.dm(&bot).await?;
    human.send(&room, "anyone tracing?").await?;
    human
        .expect_message(&room, &bot, "anyone tracing?", REPLY_TIMEOUT)
        .await?;
    let stopped = s.fleet.stop().await?;
    assert!(stopped.success(), "{stopped:?}");

    // A live collector receives the message's spans, tagged with the account.
    let collector = mxfleet_testkit::FakeCollector::start().await?;
    s.fleet
        .set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint);
    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", REPLY_TIMEOUT).await?;
    human.send(&room, "traced message").await?;
    human
        .expect_message(&room, &bot, "traced message", REPLY_TIMEOUT)
        .await?;
    s.fleet.stop().await?; // flushes the batch exporter
    ensure!(!collector.exports().is_empty(), "no trace export arrived");
    for needle in ["mxfleet", "message", "account", "event_id"] {
        ensure!(collector.saw(needle), "no {needle:?} in the exported spans");
    }
    ensure!(!collector.saw(&bot_pw), "the password reached the traces");
    Ok(())
}
