//! End-to-end tests of encrypted conversations: the human is a matrix-sdk client with its own
//! device and keys; the bot must read and answer in encrypted rooms.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Context, Result};
use mxfleet_testkit::{FleetProcess, Human, Scenario, Synapse};

const TIMEOUT: Duration = Duration::from_secs(45);

/// The human's view of the bot's device (`MXFLEET_BOT`).
async fn bot_device(
    human: &Human,
    bot: &str,
) -> Result<matrix_sdk::encryption::identities::Device> {
    let bot_user = matrix_sdk::ruma::OwnedUserId::try_from(bot)?;
    let device_id: matrix_sdk::ruma::OwnedDeviceId = "MXFLEET_BOT".into();
    human
        .client
        .encryption()
        .get_device(&bot_user, &device_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the human does not know the bot's device"))
}

/// Waits until the human, asking the server afresh, sees the bot's device signed by the bot's
/// cross-signing identity.
async fn wait_device_signed(
    human: &Human,
    bot: &str,
    fleet: &FleetProcess,
    timeout: Duration,
) -> Result<()> {
    let bot_user = matrix_sdk::ruma::OwnedUserId::try_from(bot)?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Fresh from the server each time: the bootstrap runs beside the sync.
        let identity = human
            .client
            .encryption()
            .request_user_identity(&bot_user)
            .await?;
        if identity.is_some() && bot_device(human, bot).await?.is_cross_signed_by_owner() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the bot's device was never signed: {:?}\n{}",
            fleet.status(),
            fleet.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the `bot` account's status line `field` (`ownership`, `recovery`) contains
/// `wanted`; returns the line.
async fn wait_line(
    fleet: &FleetProcess,
    field: &str,
    wanted: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = fleet.status().unwrap_or_default();
        let line = status["accounts"]["bot"][field]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if line.contains(wanted) {
            return Ok(line);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{field} never said {wanted:?}: {line:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the emoji flow `sas` is cancelled (by the bot).
async fn wait_cancelled(
    sas: &matrix_sdk::encryption::verification::SasVerification,
    timeout: Duration,
) -> Result<()> {
    use futures_util::StreamExt;
    use matrix_sdk::encryption::verification::SasState;
    let mut changes = sas.changes();
    tokio::time::timeout(timeout, async {
        while !sas.is_cancelled() {
            if let Some(SasState::Cancelled(_)) = changes.next().await {
                break;
            }
        }
    })
    .await?;
    Ok(())
}

/// Requests a verification of `device`, waits until the bot accepts it, and starts the emoji
/// comparison.
async fn start_emoji_flow(
    device: &matrix_sdk::encryption::identities::Device,
) -> Result<matrix_sdk::encryption::verification::SasVerification> {
    use futures_util::StreamExt;
    use matrix_sdk::encryption::verification::VerificationRequestState;
    let request = device.request_verification().await?;
    let mut changes = request.changes();
    let ready = tokio::time::timeout(TIMEOUT, async {
        while let Some(state) = changes.next().await {
            match state {
                VerificationRequestState::Ready { .. } => return true,
                VerificationRequestState::Cancelled(_) => return false,
                _ => {}
            }
        }
        false
    })
    .await?;
    anyhow::ensure!(ready, "the bot did not accept the verification request");
    request
        .start_sas()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no emoji flow"))
}

#[tokio::test]
async fn an_encrypted_dm_is_read_and_answered_encrypted_across_restarts() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;

    // Five restarts, each followed by a new message that must be read and answered encrypted.
    for round in 0..5 {
        let text = format!("secret message {round}");
        human.send(&dm, &text).await?;
        let answer = human.expect_final_text(&dm, &bot.0, &text, TIMEOUT).await?;
        assert!(
            answer.encrypted,
            "round {round}: the answer came in plaintext"
        );
        s.fleet.stop().await?;
        s.fleet.start().await?;
        s.fleet.wait_state("bot", "syncing", TIMEOUT).await?;
    }
    let logs = s.fleet.all_logs();
    assert!(
        !logs.contains("One time key") && !logs.contains("already exists"),
        "key upload errors across restarts"
    );
    let status = s.fleet.status().unwrap_or_default();
    assert_eq!(status["accounts"]["bot"]["device_id"], "MXFLEET_BOT");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_undecryptable_message_gets_one_notice_per_session_and_no_answer() -> Result<()> {
    // This human's client withholds its room keys from unverified devices: the bot's.
    let mut s = Scenario::new()
        .admin()
        .bot(|b| b.open_dms())
        .wary_human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;

    human.send(&dm, "you cannot read this").await?;
    human.send(&dm, "nor this").await?;
    let notice = human
        .wait_for("notice", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("could not decrypt"))
        })
        .await?;
    assert!(notice.encrypted, "the notice went out in plaintext");
    // Both messages counted, one notice for the session, and nothing was answered.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = s.fleet.status().unwrap_or_default();
        // The notice is counted once it is sent, a moment after the event.
        if status["accounts"]["bot"]["undecryptable"] == 2
            && status["accounts"]["bot"]["undecryptable_notices"] == 1
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not counted: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(human.seen_from(&dm, &bot.0).len(), 1, "only the notice");
    assert_eq!(
        s.fleet.status().unwrap_or_default()["accounts"]["bot"]["undecryptable_notices"],
        1,
        "one notice per session"
    );
    assert_eq!(
        s.fleet.status().unwrap_or_default()["accounts"]["bot"]["state"],
        "syncing"
    );
    // The same counts as Prometheus metrics.
    let metrics = s.metrics().await?;
    for line in [
        "mxfleet_undecryptable_total{account=\"bot\"} 2",
        "mxfleet_undecryptable_notices_total{account=\"bot\"} 1",
        "mxfleet_decrypted_late_total{account=\"bot\"} 0",
    ] {
        anyhow::ensure!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_lost_crypto_store_fails_fast_until_a_new_device_is_allowed() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .human()
        .start()
        .await?;
    let bot = s.bot("bot").credentials();
    s.fleet.stop().await?;

    std::fs::remove_dir_all(s.fleet.data_dir().join("accounts/bot/matrix"))?;
    s.fleet.start().await?;
    let failed = s.fleet.wait_state("bot", "failed", TIMEOUT).await?;
    let error = failed["last_error"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        error.contains("crypto store of device MXFLEET_BOT is missing")
            && error.contains("allow_new_device"),
        "{error}"
    );
    s.fleet.stop().await?;

    s.reconfigure(|c| c.bot(|b| b.key("allow_new_device = true")))
        .await?;
    s.fleet.start().await?;
    let running = s.fleet.wait_state("bot", "syncing", TIMEOUT).await?;
    let device = running["device_id"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        device.starts_with("MXFLEET_BOT_") && device != "MXFLEET_BOT",
        "{device}"
    );
    let human = &s.humans[0];
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, "hello new device").await?;
    let answer = human
        .expect_final_text(&dm, &bot.0, "hello new device", TIMEOUT)
        .await?;
    assert!(answer.encrypted);
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_bot_owned_device_is_signed_by_the_bots_identity_once() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.open_dms().key("ownership_mode = \"bot_owned\""))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());

    wait_device_signed(human, &bot.0, &s.fleet, TIMEOUT).await?;
    // status.json is flushed every 250 ms: wait for it to say so too.
    wait_line(&s.fleet, "ownership", "bootstrapped now", TIMEOUT).await?;

    // Idempotent: a restart finds the keys, and the server's identity matching them.
    s.fleet.stop().await?;
    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", TIMEOUT).await?;
    wait_line(&s.fleet, "ownership", "set up, device signed", TIMEOUT).await?;
    anyhow::ensure!(
        !s.fleet.all_logs().contains(&bot.1),
        "the password reached the logs"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_cross_signing_upload_awaiting_approval_is_surfaced_and_retried() -> Result<()> {
    use mxfleet_testkit::{CountingProxy, Fault};
    const UPLOAD: &str = "/keys/device_signing/upload";
    const APPROVE_AT: &str =
        "https://auth.example.test/account/?action=org.matrix.cross_signing_reset";
    let synapse = Synapse::shared().await?;
    // A homeserver that delegates its auth (OAuth, MAS) answers the cross-signing upload with
    // the approval stage instead of a password stage until the user approves (MSC4312); the
    // proxy in front of Synapse answers so until it is healed.
    let proxy = CountingProxy::start(synapse.url()).await?;
    let approval = serde_json::json!({
        "session": "approval-session",
        "flows": [{ "stages": ["m.oauth"] }],
        "params": {
            "m.oauth": { "url": APPROVE_AT },
            "org.matrix.cross_signing_reset": { "url": APPROVE_AT },
        },
        "msg": "To reset your cross-signing identity, approve it first and then try again.",
    });
    proxy.set_fault(Some(Fault {
        path_suffix: UPLOAD.into(),
        status: 401,
        body: approval.to_string(),
    }));
    let mut s = Scenario::new()
        .bot(|b| {
            b.open_dms()
                .via(&proxy.url)
                .key("ownership_mode = \"bot_owned\"")
        })
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());

    let line = wait_line(&s.fleet, "ownership", APPROVE_AT, TIMEOUT).await?;
    anyhow::ensure!(line.contains("approved"), "{line}");
    anyhow::ensure!(
        s.fleet.all_logs().contains(APPROVE_AT),
        "the approval URL is not in the logs"
    );
    let refused = proxy.count_ending(UPLOAD);
    anyhow::ensure!(refused >= 1, "no upload was tried");
    // Not signed while the approval is pending, and the bot keeps answering meanwhile.
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, "still there?").await?;
    human
        .expect_final_text(&dm, &bot.0, "still there?", TIMEOUT)
        .await?;
    anyhow::ensure!(!bot_device(human, &bot.0).await?.is_cross_signed_by_owner());

    // The user approves; the next try (every 30 s) uploads the same keys and signs the device.
    proxy.set_fault(None);
    wait_device_signed(human, &bot.0, &s.fleet, Duration::from_secs(75)).await?;
    wait_line(&s.fleet, "ownership", "bootstrapped now", TIMEOUT).await?;
    anyhow::ensure!(proxy.count_ending(UPLOAD) > refused, "never retried");
    anyhow::ensure!(
        !s.fleet.all_logs().contains(&bot.1),
        "the password reached the logs"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn sas_verification_by_chat_needs_the_users_verify_yes() -> Result<()> {
    use futures_util::StreamExt;
    use matrix_sdk::encryption::verification::SasState;
    let mut s = Scenario::new()
        .human()
        .bot(|b| {
            b.open_dms()
                .key("user_allowlist = [{human0}]\nverification_timeout_secs = 60")
        })
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, "hello before verifying").await?;
    human
        .expect_final_text(&dm, &bot.0, "hello before verifying", TIMEOUT)
        .await?;

    // The human starts a verification of the bot's device, then the emoji comparison.
    let device = bot_device(human, &bot.0).await?;
    assert!(!device.is_verified());
    let sas = start_emoji_flow(&device).await?;
    let mut sas_changes = sas.changes();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(state) = sas_changes.next().await {
            if matches!(state, SasState::KeysExchanged { .. }) {
                break;
            }
        }
    })
    .await
    .map_err(|_| {
        let log: Vec<String> = s
            .fleet
            .all_logs()
            .lines()
            .filter(|l| l.contains("erif") || l.contains("WARN"))
            .map(str::to_owned)
            .collect();
        anyhow::anyhow!(
            "no keys exchanged within {TIMEOUT:?}; sas state {:?}; bot log: {log:#?}",
            sas.state()
        )
    })?;
    let emojis = sas.emoji().ok_or_else(|| anyhow::anyhow!("no emoji"))?;

    // The bot shows the same seven emoji in the chat…
    let shown = human
        .wait_for("emoji in the chat", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("Compare these emoji"))
        })
        .await?;
    for emoji in &emojis {
        anyhow::ensure!(
            shown.body.contains(emoji.symbol),
            "{} missing in {}",
            emoji.symbol,
            shown.body
        );
    }
    // …and does not confirm by itself: our confirmation alone does not finish it.
    sas.confirm().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(!sas.is_done(), "the bot confirmed without `verify yes`");

    human.send(&dm, "verify yes").await?;
    tokio::time::timeout(TIMEOUT, async {
        while !sas.is_done() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await?;
    let device = bot_device(human, &bot.0).await?;
    anyhow::ensure!(
        device.is_verified(),
        "the bot's device is not verified in the human's view"
    );
    human
        .wait_for("done message", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("Verified"))
        })
        .await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn after_a_store_wipe_the_recovery_key_makes_old_messages_readable() -> Result<()> {
    use mxfleet_testkit::FakeOpenAi;
    let llm = FakeOpenAi::start(50).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms().key("ownership_mode = \"bot_owned\""))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    wait_line(&s.fleet, "recovery", "set up now", TIMEOUT).await?;
    let dm = human.encrypted_dm(&bot.0).await?;
    human
        .send(&dm, "remember: the password is swordfish")
        .await?;
    human
        .wait_for("first answer", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0).into_iter().next()
        })
        .await?;
    // Give the key backup time to upload the room key.
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.fleet.stop().await?;

    let shown = s.fleet.run_command(&["recovery-key", "bot"]).await?;
    anyhow::ensure!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let key = String::from_utf8_lossy(&shown.stdout).trim().to_owned();
    anyhow::ensure!(
        key.split_whitespace().count() >= 12,
        "not a recovery key: {key:?}"
    );
    anyhow::ensure!(
        !s.fleet.all_logs().contains(&key),
        "the recovery key reached the logs"
    );

    // The store is lost; the operator allows a new device and gives the recovery key.
    std::fs::remove_dir_all(s.fleet.data_dir().join("accounts/bot/matrix"))?;
    let recovery = format!("allow_new_device = true\nrecovery_key = {key:?}");
    s.reconfigure(|c| c.bot(|b| b.key(&recovery))).await?;
    let human = &s.humans[0];
    s.fleet.start().await?;
    s.fleet.wait_state("bot", "syncing", TIMEOUT).await?;

    // The history the backend sees includes the message from before the wipe, decrypted with a
    // key from the backup (downloaded after the first failure, hence a few tries; the human's
    // client may also need a moment to share its keys with the new device).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    loop {
        round += 1;
        let question = format!("what was the password? ({round})");
        human.send(&dm, &question).await?;
        let _ = human
            .wait_for("answer", Duration::from_secs(10), |h| {
                h.seen_from(&dm, &bot.0)
                    .into_iter()
                    .find(|s| h.current_text(s).contains(&question))
            })
            .await;
        let last = llm
            .requests()
            .last()
            .map(|r| r.body["messages"].to_string())
            .unwrap_or_default();
        if last.contains("swordfish") {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the old message never became readable: {last}; status {:?}",
            s.fleet.status()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let status = s
        .fleet
        .wait_for_status("recovered", TIMEOUT, |status| {
            status["accounts"]["bot"]["recovery"]
                .as_str()
                .is_some_and(|r| r.starts_with("recovered"))
        })
        .await?;
    let ownership = status["accounts"]["bot"]["ownership"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(ownership.contains("set up, device signed"), "{ownership}");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_message_whose_keys_come_late_is_answered_once_they_arrive() -> Result<()> {
    use matrix_sdk::{config::SyncSettings, encryption::LocalTrust, ruma::device_id};
    const TEXT: &str = "a message whose keys come late";
    let synapse = Synapse::shared().await?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms().key("ownership_mode = \"bot_owned\""))
        .prepare()
        .await?;
    let bot = s.bot("bot").credentials();
    let (human_id, human_pw) = synapse.fresh_user("human").await?;
    let bot_user = matrix_sdk::ruma::OwnedUserId::try_from(bot.0.as_str())?;

    // Another device of the bot's user (the operator's own client, say): it set up the
    // cross-signing identity and the key backup, and it syncs only when the test says.
    let other = matrix_sdk::Client::builder()
        .homeserver_url(synapse.url())
        .build()
        .await?;
    other
        .matrix_auth()
        .login_username(&bot.0, &bot.1)
        .device_id("OTHER")
        .send()
        .await?;
    let first = other.sync_once(SyncSettings::default()).await?;
    other.encryption().bootstrap_cross_signing(None).await?;
    let recovery_key = other
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await?;

    let recovery = format!("recovery_key = {recovery_key:?}");
    s.reconfigure(|c| c.bot(|b| b.key(&recovery))).await?;
    s.start().await?;
    wait_line(&s.fleet, "recovery", "recovered", TIMEOUT).await?;

    // The human's client shares room keys only with devices it trusts: the other one, not the
    // bot's. The bot cannot read the message when it arrives.
    let human = Human::login_with(synapse.url(), &human_id, &human_pw, true).await?;
    human
        .client
        .encryption()
        .request_user_identity(&bot_user)
        .await?;
    human
        .client
        .encryption()
        .get_device(&bot_user, device_id!("OTHER"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the human does not know the other device"))?
        .set_local_trust(LocalTrust::Verified)
        .await?;
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, TEXT).await?;
    human
        .wait_for("notice", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("could not decrypt"))
        })
        .await?;
    anyhow::ensure!(
        human.count(&dm, &bot.0, TEXT) == 0,
        "answered without the keys?"
    );

    // The other device syncs now: it gets the room key and backs it up (it may also forward it
    // to the bot's device, which asked for it). The bot, retrying, reads and answers.
    other
        .sync_once(SyncSettings::default().token(first.next_batch))
        .await?;
    other.encryption().backups().wait_for_steady_state().await?;
    let answer = human
        .expect_final_text(&dm, &bot.0, TEXT, Duration::from_secs(150))
        .await?;
    anyhow::ensure!(answer.encrypted, "the late answer went out in plaintext");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while s.fleet.status().unwrap_or_default()["accounts"]["bot"]["decrypted_late"] != 1 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not counted: {:?}",
            s.fleet.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn in_an_encrypted_room_only_mentions_are_answered() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.open_dms().mentioned_in_rooms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let room = human.create_room_with(&[&bot.0], false, true).await?;
    human.wait_joined(&room, &bot.0, TIMEOUT).await?;

    human.send(&room, "just chatting, no bot here").await?;
    human
        .send_mentioning(&room, "bot, what do you say?", &[&bot.0], false)
        .await?;
    let answer = human
        .expect_final_text(&room, &bot.0, "bot, what do you say?", TIMEOUT)
        .await?;
    assert!(answer.encrypted);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        human.seen_from(&room, &bot.0).len(),
        1,
        "the unmentioned message was answered"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn verification_requests_from_strangers_are_declined() -> Result<()> {
    use futures_util::StreamExt;
    use matrix_sdk::encryption::verification::VerificationRequestState;
    // DMs are open, but the stranger is not in user_allowlist: no verification.
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, "hi").await?;
    human.expect_final_text(&dm, &bot.0, "hi", TIMEOUT).await?;
    let device = bot_device(human, &bot.0).await?;
    let request = device.request_verification().await?;
    let mut changes = request.changes();
    let cancelled = tokio::time::timeout(TIMEOUT, async {
        while let Some(state) = changes.next().await {
            match state {
                VerificationRequestState::Cancelled(_) => return true,
                VerificationRequestState::Ready { .. } => return false,
                _ => {}
            }
        }
        false
    })
    .await?;
    anyhow::ensure!(cancelled, "the stranger's request was not declined");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn nothing_the_bot_sends_into_an_encrypted_room_is_plaintext() -> Result<()> {
    use mxfleet_testkit::FakeOpenAi;
    let synapse = Synapse::shared().await?;
    // A streamed answer (send + edits), the ack reaction and its redaction, a command's answer.
    let text = "A long answer, streamed in pieces so that it is edited several times. ".repeat(6);
    let llm = FakeOpenAi::start_with(
        6,
        Duration::from_millis(10),
        Some(text.trim_end().to_owned()),
    )
    .await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| {
            b.llm()
                .open_dms()
                .key("stream_min_initial_chars = 10\nedit_throttle_ms = 100")
        })
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, "tell me").await?;
    let answer = human
        .expect_final_text(&dm, &bot.0, text.trim_end(), TIMEOUT)
        .await?;
    assert!(
        !human.edits_of(&answer.event_id).is_empty(),
        "the answer was not streamed"
    );
    human.send(&dm, "!help").await?;
    human
        .wait_for("help", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("Commands:"))
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let admin = synapse.admin_token().await?;
    let events = synapse.admin_room_events(&admin, dm.as_str()).await?;
    let from_bot: Vec<&str> = events
        .iter()
        .filter(|(sender, kind)| *sender == bot.0 && !kind.starts_with("m.room.member"))
        .map(|(_, kind)| kind.as_str())
        .collect();
    anyhow::ensure!(
        from_bot
            .iter()
            .filter(|k| **k == "m.room.encrypted")
            .count()
            >= 4,
        "{from_bot:?}"
    );
    // Reactions and redactions are not encryptable by the spec; everything else must be.
    for kind in &from_bot {
        anyhow::ensure!(
            matches!(
                *kind,
                "m.room.encrypted" | "m.reaction" | "m.room.redaction"
            ),
            "the bot sent a {kind} event into an encrypted room: {from_bot:?}"
        );
    }
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_access_token_account_neither_reads_nor_sends_in_encrypted_rooms() -> Result<()> {
    let mut s = Scenario::new()
        .bot_named("tok", |b| b.open_dms().access_token())
        .human()
        .start()
        .await?;
    let (human, bot_id) = (&s.humans[0], s.bot("tok").user_id.clone());
    let status = s.fleet.wait_state("tok", "syncing", TIMEOUT).await?;
    anyhow::ensure!(
        status["encryption"]
            .as_str()
            .is_some_and(|e| e.starts_with("unavailable")),
        "{status}"
    );
    let dm = human.encrypted_dm(&bot_id).await?;
    human.send(&dm, "a secret for a token bot").await?;
    human.send(&dm, "and another").await?;
    // It reads nothing, and it refuses to send into the encrypted room (its notice included):
    // what it encrypted with keys that are not its device's could not be trusted.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !s
        .fleet
        .all_logs()
        .contains("refused, the room is encrypted")
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no refusal logged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::ensure!(
        s.fleet
            .all_logs()
            .contains("access-token accounts cannot decrypt"),
        "no warning logged"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        human.all_from(&dm, &bot_id).is_empty(),
        "the token account sent something into the encrypted room"
    );
    // Counters reach status.json within COUNTERS_FLUSH_INTERVAL.
    let status = s
        .fleet
        .wait_for_status("both messages counted undecryptable", TIMEOUT, |status| {
            status["accounts"]["tok"]["undecryptable"] == 2
        })
        .await?;
    assert_eq!(status["accounts"]["tok"]["replies_out"], 0);
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn verify_show_repeats_the_emoji_and_verify_no_cancels() -> Result<()> {
    let mut s = Scenario::new()
        .human()
        .bot(|b| b.open_dms().key("user_allowlist = [{human0}]"))
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, "verify show").await?;
    human
        .wait_for("no flow yet", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("no verification in progress"))
        })
        .await?;

    let device = bot_device(human, &bot.0).await?;
    let sas = start_emoji_flow(&device).await?;
    human
        .wait_for("emoji", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("Compare these emoji"))
        })
        .await?;
    let emojis = sas.emoji().ok_or_else(|| anyhow::anyhow!("no emoji"))?;
    human.send(&dm, "verify show").await?;
    let shown = human
        .wait_for("shown again", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("The emoji to compare"))
        })
        .await?;
    anyhow::ensure!(
        emojis.iter().all(|e| shown.body.contains(e.symbol)),
        "{}",
        shown.body
    );

    human.send(&dm, "verify no").await?;
    wait_cancelled(&sas, TIMEOUT).await?;
    anyhow::ensure!(!device.is_verified(), "a mismatch verified the device");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn verify_cancel_and_the_timeout_end_a_flow_unverified() -> Result<()> {
    let mut s = Scenario::new()
        .human()
        .bot(|b| {
            b.open_dms()
                .key("user_allowlist = [{human0}]\nverification_timeout_secs = 5")
        })
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;
    let device = bot_device(human, &bot.0).await?;

    // `verify cancel` ends the flow at once.
    let sas = start_emoji_flow(&device).await?;
    human.send(&dm, "verify cancel").await?;
    human
        .wait_for("cancel confirmation", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body == "Verification cancelled.")
        })
        .await?;
    wait_cancelled(&sas, TIMEOUT).await?;
    anyhow::ensure!(
        !human
            .seen_from(&dm, &bot.0)
            .iter()
            .any(|s| s.body.contains("timed out")),
        "cancelled by the timeout, not by the word"
    );

    // A flow nobody answers is cancelled after verification_timeout_secs, and the bot says so.
    let sas = start_emoji_flow(&device).await?;
    human
        .wait_for("timeout notice", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("timed out"))
        })
        .await?;
    wait_cancelled(&sas, TIMEOUT).await?;
    anyhow::ensure!(
        !bot_device(human, &bot.0).await?.is_verified(),
        "an unanswered flow verified the device"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_undecryptable_message_is_answered_after_a_restart_when_its_keys_come() -> Result<()> {
    use matrix_sdk::{config::SyncSettings, encryption::LocalTrust, ruma::device_id};
    const TEXT: &str = "undecryptable until after a restart";
    let synapse = Synapse::shared().await?;
    // A short catch-up age: the message is older than it by the time its keys come, but it
    // was received in time.
    let mut s = Scenario::new()
        .bot(|b| {
            b.open_dms()
                .key("ownership_mode = \"bot_owned\"\ncatch_up_max_age_secs = 5")
        })
        .prepare()
        .await?;
    let bot = s.bot("bot").credentials();
    let (human_id, human_pw) = synapse.fresh_user("human").await?;
    let bot_user = matrix_sdk::ruma::OwnedUserId::try_from(bot.0.as_str())?;
    // The operator's other device holds the cross-signing identity and the key backup.
    let other = matrix_sdk::Client::builder()
        .homeserver_url(synapse.url())
        .build()
        .await?;
    other
        .matrix_auth()
        .login_username(&bot.0, &bot.1)
        .device_id("OTHER")
        .send()
        .await?;
    let first = other.sync_once(SyncSettings::default()).await?;
    other.encryption().bootstrap_cross_signing(None).await?;
    let recovery_key = other
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await?;
    let recovery = format!("recovery_key = {recovery_key:?}");
    s.reconfigure(|c| c.bot(|b| b.key(&recovery))).await?;
    s.start().await?;
    wait_line(&s.fleet, "recovery", "recovered", TIMEOUT).await?;

    // Keys shared only with the other device: the bot cannot read the message.
    let human = Human::login_with(synapse.url(), &human_id, &human_pw, true).await?;
    human
        .client
        .encryption()
        .request_user_identity(&bot_user)
        .await?;
    human
        .client
        .encryption()
        .get_device(&bot_user, device_id!("OTHER"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the human does not know the other device"))?
        .set_local_trust(LocalTrust::Verified)
        .await?;
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, TEXT).await?;
    human
        .wait_for("notice", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("could not decrypt"))
        })
        .await?;

    // The fleet stops; meanwhile the keys reach the backup, and the catch-up age passes.
    s.fleet.stop().await?;
    other
        .sync_once(SyncSettings::default().token(first.next_batch))
        .await?;
    other.encryption().backups().wait_for_steady_state().await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    s.start().await?;
    let answer = human
        .expect_final_text(&dm, &bot.0, TEXT, Duration::from_secs(150))
        .await
        .with_context(|| s.fleet.log())?;
    anyhow::ensure!(answer.encrypted, "the late answer went out in plaintext");
    s.fleet.stop().await?;
    Ok(())
}
