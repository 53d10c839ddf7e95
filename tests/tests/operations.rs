//! End-to-end tests of operating the fleet: the admin API and its token, the OTP gate, per-account
//! restarts, hot reload, the CLI and the status page — real Synapse, real binary, real clients.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mxfleet_testkit::{
    ADMIN_TOKEN as TOKEN, CountingProxy, FleetProcess, Human, Scenario, Synapse, free_port,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// `method path` with `token`; returns the status and the body as JSON (or a JSON string).
async fn call(method: &str, url: &str, token: Option<&str>) -> Result<(u16, Value)> {
    let client = reqwest::Client::new();
    let mut request = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_reports_the_fleet() -> Result<()> {
    let mut s = Scenario::new()
        .admin()
        .bot(|b| b.open_dms())
        .start()
        .await?;
    let api = s.api();

    for path in [
        "/health",
        "/metrics",
        "/accounts",
        "/accounts/bot",
        "/otp",
        "/approvals",
    ] {
        let url = format!("{api}{path}");
        assert_eq!(
            call("GET", &url, None).await?.0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            call("GET", &url, Some("wrong")).await?.0,
            401,
            "{path} with a wrong token"
        );
    }
    assert_eq!(
        call("POST", &format!("{api}/reload"), Some("wrong"))
            .await?
            .0,
        401
    );
    assert_eq!(
        call("POST", &format!("{api}/accounts/bot/stop"), None)
            .await?
            .0,
        401
    );
    assert_eq!(
        call("POST", &format!("{api}/approvals/bot/@x:hs/revoke"), None)
            .await?
            .0,
        401
    );

    let (status, health) = call("GET", &format!("{api}/health"), Some(TOKEN)).await?;
    assert_eq!((status, &health["syncing"]), (200, &Value::from(1)));
    let (_, one) = call("GET", &format!("{api}/accounts/bot"), Some(TOKEN)).await?;
    assert_eq!(one["state"], "syncing");
    assert_eq!(one["children"]["sync"], "running");
    assert_eq!(one["children"]["stream_editor"], "running");
    assert!(
        one["encryption"]
            .as_str()
            .is_some_and(|e| e.starts_with("available"))
    );
    assert_eq!(
        call("GET", &format!("{api}/accounts/nope"), Some(TOKEN))
            .await?
            .0,
        404
    );
    let (_, metrics) = call("GET", &format!("{api}/metrics"), Some(TOKEN)).await?;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for line in [
        "mxfleet_account_state{account=\"bot\",state=\"syncing\"} 1",
        "mxfleet_account_restarts_total{account=\"bot\",reason=\"network\"} 0",
        "mxfleet_sync_lag_seconds{account=\"bot\"}",
        "mxfleet_messages_in_total{account=\"bot\"} 0",
        "mxfleet_backend_seconds_count{account=\"bot\"} 0",
        "mxfleet_reply_first_visible_seconds_count{account=\"bot\"} 0",
    ] {
        ensure!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    // The status page's shell is static and public; everything it shows needs the token.
    let (status, page) = call("GET", &format!("{api}/"), None).await?;
    assert_eq!(status, 200);
    ensure!(page.as_str().is_some_and(|p| p.contains("Admin token")));
    ensure!(
        !s.fleet.all_logs().contains(TOKEN),
        "the admin token reached the logs"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn unknown_senders_approve_themselves_with_the_operators_code() -> Result<()> {
    let otp = "dm_policy = \"allowlist\"\notp_self_approval = true\notp_cooldown_secs = 4";
    let mut s = Scenario::new()
        .admin()
        .bot(|b| b.key(otp))
        .human()
        .start()
        .await?;
    let (human, bot, api) = (&s.humans[0], s.bot("bot").credentials(), s.api());
    let human_id = human.user_id.to_string();
    let dm = human.dm(&bot.0).await?;

    let said = |needle: &'static str| {
        let (dm, bot) = (dm.clone(), bot.0.clone());
        move |h: &Human| {
            h.seen_from(&dm, &bot)
                .into_iter()
                .find(|s| h.current_text(s).contains(needle))
        }
    };
    human.send(&dm, "hello, can we talk?").await?;
    human
        .wait_for("challenge", TIMEOUT, said("ask the operator"))
        .await
        .with_context(|| s.fleet.log_tail(40))?;

    // The code is visible to the operator only: API and CLI.
    let (_, pending) = call("GET", &format!("{api}/otp"), Some(TOKEN)).await?;
    let code = pending
        .as_array()
        .and_then(|l| l.iter().find(|c| c["sender"] == human_id.as_str()))
        .and_then(|c| c["code"].as_str())
        .context("no challenge listed")?
        .to_owned();
    ensure!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    let listed = s.fleet.run_command(&["otp", "list"]).await?;
    ensure!(
        String::from_utf8_lossy(&listed.stdout).contains(&code),
        "CLI does not list the code"
    );
    let seen: Vec<String> = human
        .all_from(&dm, &bot.0)
        .iter()
        .map(|s| s.body.clone())
        .collect();
    ensure!(
        !seen.iter().any(|b| b.contains(&code)),
        "the sender saw the code"
    );

    // Three wrong codes lock the sender out; the right code is then refused until the cooldown.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    human.send(&dm, wrong).await?;
    human
        .wait_for("wrong 1", TIMEOUT, said("2 attempts left"))
        .await?;
    human.send(&dm, wrong).await?;
    human
        .wait_for("wrong 2", TIMEOUT, said("1 attempt left"))
        .await?;
    human.send(&dm, wrong).await?;
    human
        .wait_for("lockout", TIMEOUT, said("Too many wrong codes"))
        .await?;
    let before = human.seen_from(&dm, &bot.0).len();
    human.send(&dm, &code).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        human.seen_from(&dm, &bot.0).len(),
        before,
        "locked out: no answer"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    human.send(&dm, &code).await?;
    human
        .wait_for("approval", TIMEOUT, said("you are approved"))
        .await?;
    human.send(&dm, "now a real question").await?;
    human
        .expect_final_text(&dm, &bot.0, "now a real question", TIMEOUT)
        .await?;

    // The approval survives a restart.
    s.fleet.stop().await?;
    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", TIMEOUT).await?;
    human.send(&dm, "still approved?").await?;
    human
        .expect_final_text(&dm, &bot.0, "still approved?", TIMEOUT)
        .await?;

    // The operator lists the approvals and withdraws this one: the next DM is challenged again.
    let approved = s.fleet.run_command(&["otp", "approved"]).await?;
    let approved = String::from_utf8_lossy(&approved.stdout).into_owned();
    ensure!(approved.contains(&human_id), "{approved}");
    let revoked = s
        .fleet
        .run_command(&["otp", "revoke", "bot", &human_id])
        .await?;
    ensure!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let challenges = |h: &Human| {
        h.seen_from(&dm, &bot.0)
            .iter()
            .filter(|s| h.current_text(s).contains("ask the operator"))
            .count()
    };
    let before = challenges(human);
    human.send(&dm, "am I still in?").await?;
    human
        .wait_for("a new challenge", TIMEOUT, |h| {
            (challenges(h) > before).then_some(())
        })
        .await?;
    ensure!(
        human.count(&dm, &bot.0, "am I still in?") == 0,
        "answered after the revocation"
    );
    let again = s
        .fleet
        .run_command(&["otp", "revoke", "bot", &human_id])
        .await?;
    ensure!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("is not approved"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    ensure!(
        !s.fleet.all_logs().contains(&code),
        "the code reached the logs"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn restarting_one_account_leaves_the_others_sync_alone() -> Result<()> {
    let synapse = Synapse::shared().await?;
    // B's traffic goes through a proxy that records every request with its query.
    let proxy = CountingProxy::start(synapse.url()).await?;
    let mut s = Scenario::new()
        .admin()
        .bot_named("a", |b| b.open_dms())
        .bot_named("b", |b| b.open_dms().via(&proxy.url))
        .human()
        .start()
        .await?;
    let (human, b, api) = (&s.humans[0], s.bot("b").credentials(), s.api());
    let dm_b = human.dm(&b.0).await?;
    let b_before = s.fleet.status().context("status")?["accounts"]["b"].clone();
    let requests_before = proxy.requests().len();

    let (status, _) = call("POST", &format!("{api}/accounts/a/restart"), Some(TOKEN)).await?;
    assert_eq!(status, 200);
    s.fleet.wait_state("a", "syncing", TIMEOUT).await?;
    let restarted = s.fleet.run_command(&["restart", "a"]).await?;
    ensure!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    s.fleet.wait_state("a", "syncing", TIMEOUT).await?;
    human.send(&dm_b, "b, are you still there?").await?;
    human
        .expect_final_text(&dm_b, &b.0, "b, are you still there?", TIMEOUT)
        .await?;

    // B never left `syncing`, was never restarted, and never began a new sync run (each run's
    // first /sync has timeout=0; the running loop long-polls).
    let b_after = s.fleet.status().context("status")?["accounts"]["b"].clone();
    assert_eq!(b_after["since_ms"], b_before["since_ms"]);
    assert_eq!(
        (b_after["state"].as_str(), b_after["restarts"].as_u64()),
        (Some("syncing"), Some(0))
    );
    let fresh_syncs: Vec<String> = proxy.requests()[requests_before..]
        .iter()
        .filter(|r| r.contains("/sync?") && r.contains("timeout=0"))
        .cloned()
        .collect();
    ensure!(
        fresh_syncs.is_empty(),
        "b restarted its sync: {fresh_syncs:?}"
    );

    // Stop and start through the CLI; unknown accounts are refused.
    let stop = s.fleet.run_command(&["stop", "a"]).await?;
    ensure!(stop.status.success());
    s.fleet.wait_state("a", "stopped", TIMEOUT).await?;
    let start = s.fleet.run_command(&["start", "a"]).await?;
    ensure!(start.status.success());
    s.fleet.wait_state("a", "syncing", TIMEOUT).await?;
    let unknown = s.fleet.run_command(&["restart", "nope"]).await?;
    ensure!(
        !unknown.status.success()
            && String::from_utf8_lossy(&unknown.stderr).contains("no account \"nope\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let table = s.fleet.run_command(&["status"]).await?;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    ensure!(
        table.contains("stream_editor=running") && table.lines().count() == 3,
        "{table}"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn reload_adds_accounts_and_a_broken_config_changes_nothing() -> Result<()> {
    let mut s = Scenario::new()
        .admin()
        .bot_named("a", |b| b.open_dms())
        .bot_named("b", |b| b.open_dms())
        .without("b")
        .human()
        .start()
        .await?;
    let (b, api) = (s.bot("b").credentials(), s.api());
    let a_since = s.fleet.status().context("status")?["accounts"]["a"]["since_ms"].clone();

    // Add b: it starts and answers; a is untouched.
    s.reconfigure(|c| c.with("b")).await?;
    let out = s.fleet.run_command(&["reload"]).await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["added"], serde_json::json!(["b"]));
    assert_eq!(report["unchanged"], serde_json::json!(["a"]));
    s.fleet.wait_state("b", "syncing", TIMEOUT).await?;
    let human = &s.humans[0];
    let dm = human.dm(&b.0).await?;
    human.send(&dm, "hello new bot").await?;
    human
        .expect_final_text(&dm, &b.0, "hello new bot", TIMEOUT)
        .await?;
    assert_eq!(
        s.fleet.status().context("status")?["accounts"]["a"]["since_ms"],
        a_since
    );

    // A broken config is rejected whole, by the API and by SIGHUP, and nothing changes.
    let broken = "[accounts.c]\nhomeserver = \"not a url\"\nbackend = \"echo\"\nmention_mode = \"sometimes\"";
    s.reconfigure(|c| c.without("b").toml(broken)).await?;
    // The CLI reads the same file and refuses before it asks the fleet…
    let out = s.fleet.run_command(&["reload"]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    ensure!(stderr.contains("accounts.c.mention_mode"), "{stderr}");
    // …and the fleet itself rejects it through the API, naming every problem.
    let (status, body) = call("POST", &format!("{api}/reload"), Some(TOKEN)).await?;
    assert_eq!(status, 422);
    let body = body.to_string();
    for needle in [
        "accounts.c.homeserver",
        "accounts.c.mention_mode",
        "nothing changed",
    ] {
        ensure!(body.contains(needle), "no {needle:?} in {body}");
    }
    let pid = s.fleet.pid().context("pid")?;
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    ensure!(hup.success());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !s.fleet.all_logs().contains("reload rejected") {
        if tokio::time::Instant::now() > deadline {
            bail!("SIGHUP with a broken config logged no rejection");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = s.fleet.status().context("status")?;
    assert_eq!(
        status["accounts"]["b"]["state"], "syncing",
        "b kept running"
    );
    assert!(status["accounts"].get("c").is_none());
    let human = &s.humans[0];
    human.send(&dm, "still here after the bad reload?").await?;
    human
        .expect_final_text(&dm, &b.0, "still here after the bad reload?", TIMEOUT)
        .await?;

    // Removing b stops it.
    s.reconfigure(|_| {
        Scenario::new()
            .bot_named("a", |b| b.open_dms())
            .bot_named("b", |b| b.open_dms())
            .without("b")
    })
    .await?;
    let metrics = s.metrics().await?;
    ensure!(
        metrics.contains("mxfleet_account_state{account=\"b\",state=\"syncing\"} 1"),
        "b is in the metrics while it runs"
    );
    let out = s.fleet.run_command(&["reload"]).await?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["removed"], serde_json::json!(["b"]));
    // A removed account leaves the metrics (it must not linger as syncing).
    let metrics = s.metrics().await?;
    let lingering: Vec<&str> = metrics
        .lines()
        .filter(|l| l.contains("account=\"b\""))
        .collect();
    ensure!(lingering.is_empty(), "b lingers: {lingering:?}");
    ensure!(metrics.contains("account=\"a\""), "a is still measured");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_status_page_shows_the_accounts_in_a_real_browser() -> Result<()> {
    let mut s = Scenario::new()
        .admin()
        .bot_named("alpha", |b| b.open_dms())
        .bot_named("beta", |b| b.open_dms())
        .start()
        .await?;
    let api = s.api();
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
        .context("chromium is not installed (scripts/test.sh installs it)")?;
    let url = format!("{api}/#token={TOKEN}");
    let profile = tempfile_dir("chromium-profile")?;
    let headless = |extra: &[&str]| {
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=5000".into(),
            "--window-size=1280,600".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(url.clone());
        std::process::Command::new(chromium).args(args).output()
    };
    let dom = headless(&["--dump-dom"])?;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for needle in [
        "data-account=\"alpha\"",
        "data-account=\"beta\"",
        "state syncing",
        "2 accounts, 2 syncing",
    ] {
        ensure!(
            dom.contains(needle),
            "no {needle:?} in the rendered page:\n{dom}"
        );
    }
    let artifacts = mxfleet_testkit::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let shot = artifacts.join("status-page.png");
    let arg = format!("--screenshot={}", shot.display());
    headless(&[&arg])?;
    ensure!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot at {}",
        shot.display()
    );
    s.fleet.stop().await?;
    Ok(())
}

fn tempfile_dir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("mxfleet-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn doctor_checks_an_account_without_a_running_fleet() -> Result<()> {
    let down = format!(
        "[accounts.down]\nhomeserver = \"http://127.0.0.1:{}\"\naccess_token = \"nope\"\nbackend = \"echo\"",
        free_port()?
    );
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .toml(&down)
        .prepare()
        .await?;
    let bot = s.bot("bot").credentials();

    // Before the first run: reachable, no session yet (and no login attempted).
    let out = s.fleet.run_command(&["doctor", "bot"]).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "{text}");
    ensure!(
        text.contains("PASS  homeserver") && text.contains("WARN  session: no stored session"),
        "{text}"
    );

    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", TIMEOUT).await?;
    let out = s.fleet.run_command(&["doctor", "bot"]).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        text.contains("a fleet is running on this data dir"),
        "{text}"
    );
    s.fleet.stop().await?;

    // After it: the stored session is checked with whoami.
    let out = s.fleet.run_command(&["doctor", "bot"]).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "{text}");
    let whoami = format!(
        "PASS  whoami: stored session: {}, device MXFLEET_BOT",
        bot.0
    );
    ensure!(text.contains(&whoami), "{text}");
    ensure!(text.contains("PASS  encryption"), "{text}");

    // An unreachable homeserver fails with the fix, and exit 1.
    let out = s.fleet.run_command(&["doctor", "down"]).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    ensure!(
        text.contains("FAIL  homeserver") && text.contains("fix: check `homeserver`"),
        "{text}"
    );
    ensure!(
        !text.contains(&bot.1),
        "the password reached doctor's output"
    );
    Ok(())
}

#[tokio::test]
async fn two_replicas_split_the_accounts_and_their_bots_never_answer_each_other() -> Result<()> {
    // Group rooms answered without a mention: two echo bots in one room would echo each other
    // forever if either took the other's answer for a human's message.
    let everywhere = "room_policy = \"open\"\nmention_mode = \"always\"";
    let s = Scenario::new()
        .bot_named("alice", |b| b.open_dms().key(everywhere))
        .bot_named("bob", |b| b.open_dms().key(everywhere))
        .human()
        .prepare()
        .await?;
    let (human, accounts) = (&s.humans[0], s.config());
    let (bot_a, bot_b) = (s.bot("alice").credentials(), s.bot("bob").credentials());
    let owner = |id: &str| mxfleet_config::shard_of(id, 2);
    ensure!(owner("alice") != owner("bob"), "pick ids that hash apart");
    let mut replicas = Vec::new();
    for index in 0..2 {
        let mut fleet = FleetProcess::new(&format!(
            "[shard]\ncount = 2\nindex = {index}\n\n{accounts}"
        ))?;
        fleet.start().await?;
        replicas.push(fleet);
    }
    for id in ["alice", "bob"] {
        let here = owner(id) as usize;
        replicas[here].wait_state(id, "syncing", TIMEOUT).await?;
        let elsewhere = &replicas[1 - here];
        let status = elsewhere.status().unwrap_or_default();
        ensure!(
            status["accounts"].get(id).is_none(),
            "{id} runs on both replicas: {status}"
        );
        let refused = elsewhere.run_command(&["doctor", id]).await?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        ensure!(
            !refused.status.success() && stderr.contains(&format!("runs on replica {here} of 2")),
            "{stderr}"
        );
    }

    let room = human.room_with(&[&bot_a.0, &bot_b.0], false).await?;
    human.send(&room, "hello, both of you").await?;
    for bot in [&bot_a, &bot_b] {
        human
            .wait_for("answer", TIMEOUT, |h| {
                h.seen_from(&room, &bot.0)
                    .into_iter()
                    .find(|s| h.current_text(s).contains("hello, both of you"))
            })
            .await?;
    }
    // Each answered the human once, and neither answered the other's answer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for bot in [&bot_a, &bot_b] {
        let said = human.seen_from(&room, &bot.0).len();
        ensure!(said == 1, "{} sent {said} messages", bot.0);
    }
    for fleet in &mut replicas {
        fleet.stop().await?;
    }
    Ok(())
}

/// `GET url` without a token: the status code and the body.
async fn open_get(url: &str) -> Result<(u16, String)> {
    let response = reqwest::get(url).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

#[tokio::test]
async fn probes_and_metrics_answer_without_the_token_and_readiness_follows_the_accounts()
-> Result<()> {
    let (probes, metrics) = (free_port()?, free_port()?);
    let listeners = format!(
        "[probes]\nbind = \"127.0.0.1:{probes}\"\n\n[metrics]\nbind = \"127.0.0.1:{metrics}\""
    );
    let mut s = Scenario::new()
        .admin()
        .toml(&listeners)
        .bot(|b| b.open_dms())
        .bot_named("locked", |b| b.open_dms().not_awaited())
        .env("MXFLEET_ACCOUNTS__LOCKED__PASSWORD", "not the password")
        .start()
        .await?;
    s.fleet.wait_state("locked", "auth_failed", TIMEOUT).await?;
    let probe = |path: &str| format!("http://127.0.0.1:{probes}{path}");

    // Alive, not ready: an account needs the operator.
    let (code, body) = open_get(&probe("/livez")).await?;
    ensure!(code == 200 && body.contains("alive"), "{code} {body}");
    let (code, body) = open_get(&probe("/readyz")).await?;
    ensure!(
        code == 503 && body.contains("\"locked\":\"auth_failed\""),
        "{code} {body}"
    );
    let health = s.fleet.run_command(&["health"]).await?;
    let said = String::from_utf8_lossy(&health.stdout);
    ensure!(
        health.status.code() == Some(1) && said.contains("locked (auth_failed)"),
        "{health:?}"
    );

    // The operator parks it: ready.
    let (code, _) = call(
        "POST",
        &format!("{}/accounts/locked/stop", s.api()),
        Some(TOKEN),
    )
    .await?;
    ensure!(code == 200, "stop: {code}");
    s.fleet.wait_state("locked", "stopped", TIMEOUT).await?;
    let (code, body) = open_get(&probe("/readyz")).await?;
    ensure!(code == 200, "{code} {body}");
    let health = s.fleet.run_command(&["health"]).await?;
    ensure!(health.status.success(), "{health:?}");

    // Metrics without the token on their own listener; the admin API still wants it, and the
    // probe listener serves no metrics.
    let (code, body) = open_get(&format!("http://127.0.0.1:{metrics}/metrics")).await?;
    ensure!(
        code == 200 && body.contains("mxfleet_account_state{account=\"bot\",state=\"syncing\"} 1"),
        "{code} {body}"
    );
    let (code, _) = open_get(&format!("{}/metrics", s.api())).await?;
    ensure!(code == 401, "admin /metrics without the token: {code}");
    let (code, _) = open_get(&probe("/metrics")).await?;
    ensure!(code == 404, "metrics on the probe listener: {code}");

    // Stopped: `mxfleet health` says so.
    s.fleet.stop().await?;
    let health = s.fleet.run_command(&["health"]).await?;
    ensure!(health.status.code() == Some(1), "{health:?}");
    Ok(())
}
