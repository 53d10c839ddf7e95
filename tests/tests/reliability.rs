//! End-to-end tests of mxfleet's core promise under faults: every message answered exactly once,
//! in order, through gaps, crashes and outages, and no account stuck after the fault is gone.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mxfleet_testkit::{
    CountingProxy, FakeOpenAi, Fault, Human, OwnedRoomId, Scenario, Synapse, soak::Tmpfs,
};

const TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN: &str = "shutdown_drain_secs = 2";

/// Waits until `bot` answered each of `questions` in `room` (its answer shows the question),
/// then checks each was answered exactly once and in the order asked.
async fn answered_once_in_order(
    human: &Human,
    room: &OwnedRoomId,
    bot: &str,
    questions: &[String],
) -> Result<()> {
    let shown = |h: &Human| -> Vec<String> {
        h.seen_from(room, bot)
            .iter()
            .map(|s| h.current_text(s))
            .collect()
    };
    let all = human
        .wait_for("every answer", TIMEOUT, |h| {
            let said = shown(h);
            questions
                .iter()
                .all(|q| said.iter().any(|a| a.contains(q.as_str())))
                .then_some(())
        })
        .await;
    all.with_context(|| format!("{bot} said {:?}", shown(human)))?;
    // Misbehaviour (a second answer) would come right after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let said = shown(human);
    for q in questions {
        let n = said.iter().filter(|a| a.contains(q.as_str())).count();
        ensure!(n == 1, "{q:?} answered {n} times: {said:?}");
    }
    let order: Vec<usize> = said
        .iter()
        .filter_map(|a| questions.iter().position(|q| a.contains(q.as_str())))
        .collect();
    ensure!(
        order.windows(2).all(|w| w[0] < w[1]),
        "answered out of order: {order:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_busy_room_and_dm_while_the_fleet_is_down_are_answered_whole_and_in_order() -> Result<()>
{
    // A small timeline limit, so that the gap is certain.
    let mut s = Scenario::new()
        .bot(|b| {
            // 32 questions within seconds are a burst past the default rate limits (tested in
            // security.rs); here every one must be answered.
            b.open_dms()
                .mentioned_in_rooms()
                .key("sync_timeline_limit = 5")
                .table("limits", "per_sender_per_minute = 100")
        })
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let room = human.room_with(&[&bot], false).await?;
    human.wait_joined(&room, &bot, TIMEOUT).await?;
    let dm = human.dm(&bot).await?;
    human.send(&dm, "are you there?").await?;
    human
        .expect_final_text(&dm, &bot, "are you there?", TIMEOUT)
        .await?;

    // While the fleet is down, more messages than one sync shows of a room.
    s.fleet.stop().await?;
    let in_room: Vec<String> = (1..=16).map(|i| format!("room question {i:02}")).collect();
    let in_dm: Vec<String> = (1..=16).map(|i| format!("dm question {i:02}")).collect();
    for (r, d) in in_room.iter().zip(&in_dm) {
        human
            .send_mentioning(&room, &format!("{bot} {r}"), &[&bot], false)
            .await?;
        human.send(&dm, d).await?;
    }
    s.fleet.start().await?;
    let human = &s.humans[0];
    answered_once_in_order(human, &room, &bot, &in_room).await?;
    answered_once_in_order(human, &dm, &bot, &in_dm).await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn messages_left_pending_by_a_crash_are_answered_in_the_order_they_arrived() -> Result<()> {
    // Slow answers (3.6 s each: three events 1.2 s apart), so that messages queue up behind
    // the first one, yet all six fit well within the wait for them.
    let llm = FakeOpenAi::start_with(200, Duration::from_millis(1200), None).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms().key("stream_mode = \"off\""))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    let questions: Vec<String> = (1..=6).map(|i| format!("question number {i}")).collect();
    for q in &questions {
        human.send(&dm, q).await?;
    }
    // Killed while the first is being answered and the others wait, claimed.
    human
        .wait_for("the first request", TIMEOUT, |_| {
            (!llm.requests().is_empty()).then_some(())
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.fleet.kill().await?;
    s.fleet.start().await?;
    let human = &s.humans[0];
    answered_once_in_order(human, &dm, &bot, &questions).await?;
    // Nothing of an answer had landed before the kill: each is one message, never edited
    // (the restart counts them all as retries, and a retry reads its message back).
    let edited: Vec<String> = human
        .seen_from(&dm, &bot)
        .iter()
        .filter(|m| !human.edits_of(&m.event_id).is_empty())
        .map(|m| human.current_text(m))
        .collect();
    ensure!(edited.is_empty(), "edited after the restart: {edited:?}");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn after_repeated_outages_every_account_syncs_within_seconds_of_the_homeserver_returning()
-> Result<()> {
    let synapse = Synapse::shared().await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    // Short long-polls, so requests in flight when the network goes end soon.
    let quick = "sync_timeout_secs = 2";
    let mut s = Scenario::new()
        .toml("[restart]\ninitial_delay_ms = 100\nmax_restarts = 3\nrestart_window_secs = 60")
        .bot_named("a", |b| b.open_dms().via(&proxy.url).key(quick))
        .bot_named("b", |b| b.open_dms().via(&proxy.url).key(quick))
        .human()
        .start()
        .await?;
    // Two network cuts in a row: many failed attempts within the restart window.
    for cut in [Duration::from_secs(6), Duration::from_secs(4)] {
        proxy.cut(true);
        s.fleet
            .wait_state("a", "backoff", Duration::from_secs(20))
            .await?;
        tokio::time::sleep(cut).await;
        proxy.cut(false);
        let back = tokio::time::Instant::now();
        for id in ["a", "b"] {
            s.fleet
                .wait_state(id, "syncing", Duration::from_secs(5))
                .await?;
        }
        let took = back.elapsed();
        ensure!(
            took <= Duration::from_secs(5),
            "syncing again after {took:?}"
        );
    }
    // And they answer.
    let (human, bot) = (&s.humans[0], s.bot("b").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "back?").await?;
    human.expect_final_text(&dm, &bot, "back?", TIMEOUT).await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_answer_whose_sends_fail_for_a_while_is_delivered_while_running() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms().via(&proxy.url).key("ack_reaction = \"\""))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "warm-up").await?;
    human
        .expect_final_text(&dm, &bot, "warm-up", TIMEOUT)
        .await?;

    // The homeserver refuses the bot's messages for a while (its sync still works).
    proxy.set_fault(Some(Fault {
        path_suffix: "/send/m.room.message/".into(),
        status: 502,
        body: "{}".into(),
    }));
    human.send(&dm, "answer me once it works again").await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.set_fault(None);
    // No restart: the fleet itself tries again.
    human
        .expect_final_text(&dm, &bot, "answer me once it works again", TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(human.count(&dm, &bot, "answer me once it works again") == 1);

    // A send the homeserver refuses for good ends the message as failed, with its reason, and
    // the room carries on.
    proxy.set_fault(Some(Fault {
        path_suffix: "/send/m.room.message/".into(),
        status: 403,
        body: r#"{"errcode":"M_FORBIDDEN","error":"you may not speak here"}"#.into(),
    }));
    human.send(&dm, "this one cannot be answered").await?;
    let failed = s
        .fleet
        .wait_for_status("a failed message", TIMEOUT, |status| {
            status["accounts"]["bot"]["messages_failed"] == 1
        })
        .await?;
    let reason = failed["accounts"]["bot"]["last_error"].to_string();
    ensure!(
        reason.contains("M_FORBIDDEN") || reason.contains("403"),
        "{reason}"
    );
    proxy.set_fault(None);
    human.send(&dm, "and this one can").await?;
    human
        .expect_final_text(&dm, &bot, "and this one can", TIMEOUT)
        .await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_lost_response_to_an_edit_never_truncates_the_answer() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    let text = "one two three four five six seven eight nine ten eleven twelve thirteen";
    let llm = FakeOpenAi::start_with(6, Duration::from_millis(120), Some(text.into())).await?;
    // One intermediate edit, then the final one.
    let streaming = "stream_min_initial_chars = 6\nedit_throttle_ms = 700\nack_reaction = \"\"";
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms().via(&proxy.url).key(streaming))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    // The first edit (the second send of a message) reaches the homeserver; its answer is lost.
    proxy.lose_response("/send/m.room.message/", 2);
    human.send(&dm, "count for me").await?;
    human.expect_final_text(&dm, &bot, text, TIMEOUT).await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_answer_retried_after_a_crash_corrects_the_message_its_first_attempt_left() -> Result<()>
{
    let synapse = Synapse::shared().await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    let first = "the first attempt's answer, which is longer and must not stay in the room";
    let second = "the second attempt's answer";
    let next = "the answer to the question that waited";
    let llm = FakeOpenAi::start_answering(
        200,
        Duration::from_millis(3),
        vec![first.into(), second.into(), next.into()],
    )
    .await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| {
            b.llm()
                .open_dms()
                .via(&proxy.url)
                .key("ack_reaction = \"\"")
        })
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.encrypted_dm(&bot).await?;
    // The answer's first send lands, its response is lost, and every send after it fails; a
    // second question waits behind it; the process dies while it keeps trying, before
    // anything confirmed the message.
    let sends = "/send/m.room.encrypted/";
    let fault = Fault {
        path_suffix: sends.into(),
        status: 502,
        body: "{}".into(),
    };
    proxy.lose_response_then_fail(sends, 1, fault);
    human.send(&dm, "answer me").await?;
    human
        .expect_final_text(&dm, &bot, first, TIMEOUT)
        .await
        .context("the first attempt's send never landed")?;
    human.send(&dm, "and then me").await?;
    let waiting = s
        .fleet
        .wait_for_status("the second question waiting", TIMEOUT, |status| {
            status["accounts"]["bot"]["messages_waiting"] == 1
        })
        .await;
    waiting.with_context(|| s.fleet.log_tail(20))?;
    s.fleet.kill().await?;
    proxy.set_fault(None);
    // After the restart both are retries with no draft. The first one's answer has other text,
    // and its send the same transaction id: the homeserver returns the first attempt's message,
    // which must end up showing the new answer. The second one's message is its own: read back
    // (decrypted), it shows the answer, and is not edited.
    s.fleet.start().await?;
    s.wait_syncing().await?;
    let human = &s.humans[0];
    human
        .expect_final_text(&dm, &bot, next, TIMEOUT)
        .await
        .with_context(|| s.fleet.log_tail(30))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = human.seen_from(&dm, &bot);
    let said: Vec<String> = answers.iter().map(|m| human.current_text(m)).collect();
    ensure!(said == [second, next], "the room shows {said:?}");
    let edits: Vec<usize> = answers
        .iter()
        .map(|m| human.edits_of(&m.event_id).len())
        .collect();
    ensure!(edits == [1, 0], "edits of each answer: {edits:?}");
    ensure!(llm.requests().len() == 3, "asked {}", llm.requests().len());
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_mid_stream_ends_the_answer_with_its_interrupted_edit() -> Result<()> {
    let text = "word ".repeat(300);
    let llm = FakeOpenAi::start_with(5, Duration::from_millis(40), Some(text)).await?;
    let streaming = "stream_min_initial_chars = 10\nedit_throttle_ms = 200";
    let mut s = Scenario::new()
        .toml(DRAIN)
        .llm(&llm)
        .bot(|b| b.llm().open_dms().key(streaming))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "a long one please").await?;
    let original = human
        .wait_for("first part", TIMEOUT, |h| {
            h.seen_from(&dm, &bot).into_iter().next()
        })
        .await?;
    let stopping = tokio::time::Instant::now();
    let status = s.fleet.stop().await?;
    ensure!(status.success(), "{status:?}");
    ensure!(
        stopping.elapsed() < Duration::from_secs(10),
        "took {:?}",
        stopping.elapsed()
    );
    // Before any restart, the answer ends with its interrupted edit.
    let finished = human
        .wait_for("interrupted edit", TIMEOUT, |h| {
            h.edits_of(&original.event_id)
                .into_iter()
                .find(|e| e.body.contains("interrupted"))
        })
        .await?;
    ensure!(finished.body.starts_with("word word"), "{}", finished.body);
    // And a restart does not answer it again.
    s.fleet.start().await?;
    s.wait_syncing().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let human = &s.humans[0];
    ensure!(human.seen_from(&dm, &bot).len() == 1, "answered again");
    ensure!(llm.requests().len() == 1);
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_message_that_once_crashed_a_room_worker_is_answered_and_the_room_carries_on()
-> Result<()> {
    // The bot's display name is "Mike"; the Kelvin sign folds to k, so "MiKe" matched the name
    // in the lower-cased copy at an offset that is no character boundary of the original.
    let mut s = Scenario::new()
        .bot(|b| b.open_dms().mentioned_in_rooms())
        .human()
        .prepare()
        .await?;
    let bot = s.bot("bot").credentials();
    let named = Human::login(s.homeserver(), &bot.0, &bot.1).await?;
    named
        .client
        .account()
        .set_display_name(Some("Mike"))
        .await?;
    drop(named);
    s.start().await?;
    let human = &s.humans[0];
    let room = human.room_with(&[&bot.0], false).await?;
    human.wait_joined(&room, &bot.0, TIMEOUT).await?;
    let poison = "Mi\u{212A}e: hi";
    human.send(&room, poison).await?;
    human.send(&room, "Mike: and after that?").await?;
    human
        .expect_final_text(&room, &bot.0, poison, TIMEOUT)
        .await?;
    human
        .expect_final_text(&room, &bot.0, "Mike: and after that?", TIMEOUT)
        .await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_first_sync_that_never_committed_does_not_turn_new_messages_into_history() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "hello").await?;
    human.expect_final_text(&dm, &bot, "hello", TIMEOUT).await?;
    s.fleet.stop().await?;

    // As if the process had died during its first sync: matrix-sdk stored its token, mxfleet
    // committed no position.
    s.fleet.forget_sync_position("bot").await?;
    let human = &s.humans[0];
    human
        .send(&dm, "sent while no position was committed")
        .await?;
    s.start().await?;
    let human = &s.humans[0];
    human
        .expect_final_text(&dm, &bot, "sent while no position was committed", TIMEOUT)
        .await
        .with_context(|| s.fleet.log_tail(40))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        human.count(&dm, &bot, "hello") == 1,
        "history answered again"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_and_survive_a_kill_right_after_a_refresh() -> Result<()> {
    let synapse = Synapse::start_private_configured(
        "refreshable_access_token_lifetime: 6s\nnonrefreshable_access_token_lifetime: 6s",
    )
    .await?;
    let proxy = CountingProxy::start(synapse.url()).await?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms().via(&proxy.url))
        .human()
        .start_on(&synapse)
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    // Several token lifetimes of conversation.
    for round in 1..=4 {
        let text = format!("round {round}");
        human.send(&dm, &text).await?;
        human.expect_final_text(&dm, &bot, &text, TIMEOUT).await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    // Killed right after a refresh: the restart uses the rotated tokens.
    let refreshes = || s.fleet.log().matches("access token refreshed").count();
    let before = refreshes();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while refreshes() == before {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no refresh seen:\n{}",
            s.fleet.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.fleet.kill().await?;
    s.start().await?;
    let human = &s.humans[0];
    human.send(&dm, "after the kill").await?;
    human
        .expect_final_text(&dm, &bot, "after the kill", TIMEOUT)
        .await?;
    ensure!(
        proxy.count_ending("/login") == 1,
        "logged in again instead of refreshing: {:?}",
        proxy
            .requests()
            .iter()
            .filter(|r| r.contains("/login") || r.contains("/refresh"))
            .collect::<Vec<_>>()
    );
    s.fleet.stop().await?;
    Ok(())
}

/// The device a bot's status shows once it is syncing.
async fn syncing_device(s: &mxfleet_testkit::Running, bot: &str) -> Result<String> {
    let record = s.fleet.wait_state(bot, "syncing", TIMEOUT).await?;
    Ok(record["device_id"]
        .as_str()
        .context("no device id")?
        .to_owned())
}

#[tokio::test]
async fn a_logged_out_account_comes_back_with_relogin_as_a_new_device() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let mut s = Scenario::new()
        .admin()
        .bot(|b| b.open_dms())
        .bot_named("tok", |b| b.open_dms().access_token())
        .human()
        .start_on(synapse)
        .await?;
    let (human, bot, api) = (&s.humans[0], s.bot("bot").user_id.clone(), s.api());
    let dm = human.encrypted_dm(&bot).await?;
    human.send(&dm, "before the logout").await?;
    human
        .expect_final_text(&dm, &bot, "before the logout", TIMEOUT)
        .await?;
    let old_device = syncing_device(&s, "bot").await?;

    // The homeserver ends the session: the device is deleted, its token dies with it.
    let admin = synapse.admin_token().await?;
    synapse
        .admin_delete_device(&admin, &bot, &old_device)
        .await?;
    s.fleet.wait_state("bot", "auth_failed", TIMEOUT).await?;

    // An access-token account cannot log in by itself: refused, untouched.
    let refused = reqwest::Client::new()
        .post(format!("{api}/accounts/tok/relogin"))
        .bearer_auth(mxfleet_testkit::ADMIN_TOKEN)
        .send()
        .await?;
    ensure!(refused.status() == 409, "{:?}", refused.text().await);

    let relogin = s.fleet.run_command(&["relogin", "bot"]).await?;
    ensure!(
        relogin.status.success(),
        "{}",
        String::from_utf8_lossy(&relogin.stderr)
    );
    let new_device = syncing_device(&s, "bot").await?;
    ensure!(
        new_device.starts_with("MXFLEET_BOT_") && new_device != old_device,
        "{new_device} after {old_device}"
    );
    let kept_aside = std::fs::read_dir(s.fleet.data_dir().join("accounts/bot"))?
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("matrix.replaced-")
        });
    ensure!(kept_aside, "the old stores were not kept aside");

    human.send(&dm, "after the relogin").await?;
    let answer = human
        .expect_final_text(&dm, &bot, "after the relogin", TIMEOUT)
        .await
        .with_context(|| s.fleet.log_tail(40))?;
    ensure!(answer.encrypted, "the answer was not encrypted");

    // The new device is the account's device from now on: a restart restores it.
    s.fleet.stop().await?;
    s.fleet.start().await?;
    ensure!(syncing_device(&s, "bot").await? == new_device);
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn relogin_auto_logs_a_logged_out_account_in_again_by_itself() -> Result<()> {
    let synapse = Synapse::shared().await?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms().key("relogin = \"auto\""))
        .human()
        .start_on(synapse)
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let old_device = syncing_device(&s, "bot").await?;
    let admin = synapse.admin_token().await?;
    synapse
        .admin_delete_device(&admin, &bot, &old_device)
        .await?;

    let status = s
        .fleet
        .wait_for_status("a new device", TIMEOUT, |status| {
            let record = &status["accounts"]["bot"];
            record["state"] == "syncing" && record["device_id"] != old_device.as_str()
        })
        .await?;
    ensure!(
        status["accounts"]["bot"]["device_id"]
            .as_str()
            .is_some_and(|d| d.starts_with("MXFLEET_BOT_")),
        "{status}"
    );
    let dm = human.dm(&bot).await?;
    human.send(&dm, "are you back?").await?;
    human
        .expect_message(&dm, &bot, "are you back?", TIMEOUT)
        .await?;
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_fresh_data_dir_does_not_take_over_a_device_that_has_keys() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .human()
        .start()
        .await?;
    let bot = s.bot("bot").user_id.clone();
    let old_device = syncing_device(&s, "bot").await?;
    s.fleet.stop().await?;

    // The whole data dir is lost (or another process owns the device).
    std::fs::remove_dir_all(s.fleet.data_dir())?;
    s.fleet.start().await?;
    let failed = s.fleet.wait_state("bot", "failed", TIMEOUT).await?;
    let error = failed["last_error"].as_str().unwrap_or_default().to_owned();
    ensure!(
        error.contains(&format!("device {old_device}"))
            && error.contains("already has encryption keys")
            && error.contains("mxfleet relogin bot"),
        "{error}"
    );
    s.fleet.stop().await?;

    s.reconfigure(|c| c.bot(|b| b.key("allow_new_device = true")))
        .await?;
    s.fleet.start().await?;
    let device = syncing_device(&s, "bot").await?;
    ensure!(device.starts_with("MXFLEET_BOT_"), "{device}");
    let human = &s.humans[0];
    let dm = human.encrypted_dm(&bot).await?;
    human.send(&dm, "hello from scratch").await?;
    human
        .expect_final_text(&dm, &bot, "hello from scratch", TIMEOUT)
        .await?;
    s.fleet.stop().await?;
    Ok(())
}

/// `GET {api}{path}` on the admin API: its HTTP status and JSON body.
async fn admin_get(api: &str, path: &str) -> Result<(u16, serde_json::Value)> {
    let response = reqwest::Client::new()
        .get(format!("{api}{path}"))
        .bearer_auth(mxfleet_testkit::ADMIN_TOKEN)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.bytes().await?;
    Ok((status, serde_json::from_slice(&body)?))
}

#[tokio::test]
async fn a_full_disk_degrades_the_accounts_and_everything_resumes_when_space_returns() -> Result<()>
{
    let mut s = Scenario::new()
        .admin()
        .toml(DRAIN)
        .bot_named("a", |b| b.open_dms())
        .bot_named("b", |b| b.open_dms())
        .human()
        .prepare()
        .await?;
    let disk = Tmpfs::mount(&s.fleet.data_dir(), "48m")?;
    s.start().await?;
    let (human, api) = (&s.humans[0], s.api());
    let (a, b) = (s.bot("a").user_id.clone(), s.bot("b").user_id.clone());
    let (dm_a, dm_b) = (human.dm(&a).await?, human.dm(&b).await?);
    for (room, bot) in [(&dm_a, &a), (&dm_b, &b)] {
        human.send(room, "warm up").await?;
        human.expect_message(room, bot, "warm up", TIMEOUT).await?;
    }

    let filler = disk.fill()?;
    let to_a: Vec<String> = (1..=3).map(|i| format!("while full {i} for a")).collect();
    let to_b = vec!["while full 1 for b".to_owned()];
    for q in &to_a {
        human.send(&dm_a, q).await?;
    }
    human.send(&dm_b, &to_b[0]).await?;

    // The fault is visible: accounts degraded, health unhealthy.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let degraded = loop {
        let (code, body) = admin_get(&api, "/health").await?;
        if code == 503 && body["status"] == "degraded" {
            break body;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "health never turned unhealthy: {code} {body}\n{}",
            s.fleet.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        degraded["degraded"]
            .as_array()
            .is_some_and(|ids| !ids.is_empty()),
        "{degraded}"
    );

    // Space returns: everything resumes by itself, nothing lost, nothing doubled.
    std::fs::remove_file(filler)?;
    answered_once_in_order(human, &dm_a, &a, &to_a)
        .await
        .with_context(|| s.fleet.log_tail(40))?;
    answered_once_in_order(human, &dm_b, &b, &to_b).await?;
    let (code, body) = admin_get(&api, "/health").await?;
    ensure!(code == 200 && body["status"] == "ok", "{code} {body}");
    for bot in ["a", "b"] {
        let (_, record) = admin_get(&api, &format!("/accounts/{bot}")).await?;
        ensure!(record["state"] == "syncing", "{record}");
    }
    s.fleet.stop().await?;
    drop(disk);
    Ok(())
}

#[tokio::test]
async fn an_answer_streaming_when_the_disk_fills_ends_whole_and_once() -> Result<()> {
    let llm = FakeOpenAi::start_with(4, Duration::from_millis(150), None).await?;
    let mut s = Scenario::new()
        .admin()
        .llm(&llm)
        .bot(|b| b.open_dms().llm())
        .human()
        .prepare()
        .await?;
    let disk = Tmpfs::mount(&s.fleet.data_dir(), "48m")?;
    s.start().await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    let question = "stream on while the disk fills";
    human.send(&dm, question).await?;
    human
        .wait_for("the answer begins", TIMEOUT, |h| {
            h.seen_from(&dm, &bot).into_iter().next()
        })
        .await?;

    // Mid-stream, the disk fills: the draft and inbox writes fail for a while.
    let filler = disk.fill()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    std::fs::remove_file(filler)?;

    let expected = FakeOpenAi::answer_for(question);
    human
        .expect_final_text(&dm, &bot, &expected, Duration::from_secs(60))
        .await
        .with_context(|| s.fleet.log_tail(40))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = human.seen_from(&dm, &bot).len();
    ensure!(
        answers == 1,
        "{answers} answers: {:?}",
        human.seen_from(&dm, &bot)
    );
    ensure!(
        llm.requests().len() == 1,
        "asked the backend {} times",
        llm.requests().len()
    );
    s.fleet.stop().await?;
    drop(disk);
    Ok(())
}

#[tokio::test]
async fn a_short_chaos_soak_loses_and_doubles_nothing() -> Result<()> {
    let config = mxfleet_testkit::soak::SoakConfig {
        duration: Duration::from_secs(100),
        accounts: 2,
        interval: Duration::from_millis(400),
        senders: 1,
        fault_every_secs: (6, 9),
        burst: 15,
        seed: 7,
    };
    let report = mxfleet_testkit::soak::run(&config).await?;
    println!("{report}");
    report.ensure_exactly_once()?;
    ensure!(report.faults.len() >= 5, "too few kinds of fault: {report}");
    Ok(())
}
