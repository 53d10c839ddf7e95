//! End-to-end tests of conversations: the gate, streaming edits, threads, cues, commands and
//! backends, asserted on what a real matrix-sdk client sees from the real `mxfleet` binary.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mxfleet_testkit::{FakeOpenAi, FakeWebhook, Human, MembershipState, Scenario, Synapse};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Lets the bot misbehave for a while before counting.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn in_rooms_only_mentions_are_answered_and_at_room_is_not_one() -> Result<()> {
    let mut s = Scenario::new()
        .bot(|b| b.mentioned_in_rooms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let room = human.room_with(&[&bot.0], false).await?;

    human.send(&room, "nobody is mentioned here").await?;
    human
        .send_mentioning(&room, "@room look at this", &[], true)
        .await?;
    let asked = human
        .send_mentioning(&room, "bot, a question", &[&bot.0], false)
        .await?;
    let answer = human
        .expect_final_text(&room, &bot.0, "bot, a question", TIMEOUT)
        .await?;
    assert_eq!(
        answer.in_reply_to.as_deref(),
        Some(asked.as_str()),
        "rich reply"
    );
    // The text fallback: the MXID in the body, no m.mentions.
    let fallback = format!("{} what about this", bot.0);
    human.send(&room, &fallback).await?;
    human
        .expect_final_text(&room, &bot.0, &fallback, TIMEOUT)
        .await?;
    settle().await;
    let said: Vec<String> = human
        .seen_from(&room, &bot.0)
        .iter()
        .map(|s| human.current_text(s))
        .collect();
    assert_eq!(said, ["bot, a question", fallback.as_str()]);
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn invites_and_dms_follow_the_allowlists() -> Result<()> {
    let allowlists =
        "dm_policy = \"allowlist\"\nuser_allowlist = [{human0}]\nroom_policy = \"allowlist\"";
    let mut s = Scenario::new()
        .humans(2)
        .bot(|b| b.key(allowlists))
        .start()
        .await?;
    let (friend, stranger) = (&s.humans[0], &s.humans[1]);
    let bot = s.bot("bot").credentials();

    // A stranger's DM and the friend's (not allowlisted) group room: rejected.
    let stranger_dm = stranger.create_room(&[&bot.0], true).await?;
    let group = friend.create_room(&[&bot.0], false).await?;
    stranger
        .wait_membership(&stranger_dm, &bot.0, MembershipState::Leave, TIMEOUT)
        .await?;
    friend
        .wait_membership(&group, &bot.0, MembershipState::Leave, TIMEOUT)
        .await?;
    // The friend's DM is joined and answered.
    let dm = friend.dm(&bot.0).await?;
    friend.send(&dm, "hello friend").await?;
    friend
        .expect_final_text(&dm, &bot.0, "hello friend", TIMEOUT)
        .await?;
    assert!(stranger.seen_from(&stranger_dm, &bot.0).is_empty());
    let log = s.fleet.all_logs();
    ensure!(log.contains("invite rejected"), "no rejection logged");
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_streamed_answer_is_one_message_edited_in_place_with_cues() -> Result<()> {
    let text: String = (1..=12)
        .map(|i| format!("Paragraph {i} has **bold** words and `code`, streamed slowly.\n\n"))
        .collect();
    let text = text.trim_end().to_owned();
    let llm = FakeOpenAi::start_with(7, Duration::from_millis(12), Some(text.clone())).await?;
    // Cues on receipt (the default waits for a slow answer).
    let streaming = "stream_min_initial_chars = 20\nedit_throttle_ms = 300\n\
max_edits_per_message = 6\ncue_delay_ms = 0";
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms().key(streaming))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.dm(&bot.0).await?;
    let asked = human.send(&dm, "tell me a long story").await?;

    // The ack reaction appears while the answer streams…
    let ack = human
        .wait_for("ack reaction", TIMEOUT, |h| {
            h.reactions_on(&asked)
                .into_iter()
                .find(|r| r.sender == bot.0 && r.key == "👀")
        })
        .await?;
    let original = human.expect_final_text(&dm, &bot.0, &text, TIMEOUT).await?;
    // …and is redacted once it is done.
    human
        .wait_for("ack redaction", TIMEOUT, |h| {
            h.was_redacted(&ack.event_id).then_some(())
        })
        .await?;

    assert_eq!(
        human.seen_from(&dm, &bot.0).len(),
        1,
        "one message, edited in place"
    );
    assert!(
        original.body.len() < text.len(),
        "the first send came early"
    );
    let edits = human.edits_of(&original.event_id);
    ensure!(
        (2..=6).contains(&edits.len()),
        "{} edits (bound 6)",
        edits.len()
    );
    let last = edits.last().context("no edit")?;
    assert_eq!(last.body, text, "the final edit holds the full text");
    let html = last.formatted.as_deref().unwrap_or_default();
    assert!(
        html.contains("<strong>bold</strong>") && html.contains("<code>code</code>"),
        "{html}"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn names_changed_while_the_bot_runs_count_at_once() -> Result<()> {
    // Members' names are read once per room and kept until the sync brings a member event of
    // the room: a rename of the bot (what addresses it) or of a speaker (what the backend is
    // told) counts for the very next message.
    let llm = FakeOpenAi::start(40).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().mentioned_in_rooms())
        .human()
        .prepare()
        .await?;
    let bot = s.bot("bot").credentials();
    let other_device = Human::login(s.homeserver(), &bot.0, &bot.1).await?;
    let account = other_device.client.account();
    account.set_display_name(Some("Mike")).await?;
    s.start().await?;
    let human = &s.humans[0];
    human.client.account().set_display_name(Some("Ann")).await?;
    let room = human.room_with(&[&bot.0], false).await?;
    human.wait_joined(&room, &bot.0, TIMEOUT).await?;
    // In a group room the backend is told who speaks: the answer echoes it.
    human.send(&room, "Mike: first").await?;
    let first = FakeOpenAi::answer_for("Ann: Mike: first");
    human
        .expect_final_text(&room, &bot.0, &first, TIMEOUT)
        .await?;

    // Synapse writes a rename's member events after it answers: both are waited for, so the
    // message comes after them.
    account.set_display_name(Some("Zed")).await?;
    human
        .client
        .account()
        .set_display_name(Some("Anna"))
        .await?;
    wait_named(human, &room, &bot.0, "Zed").await?;
    let me = human.client.user_id().context("logged in")?.to_string();
    wait_named(human, &room, &me, "Anna").await?;
    human.send(&room, "Zed: second").await?;
    let second = FakeOpenAi::answer_for("Anna: Zed: second");
    human
        .expect_final_text(&room, &bot.0, &second, TIMEOUT)
        .await
        .with_context(|| s.fleet.log_tail(30))?;

    // The old name no longer addresses the bot.
    human.send(&room, "Mike: third").await?;
    human.send(&room, "Zed: fourth").await?;
    let fourth = FakeOpenAi::answer_for("Anna: Zed: fourth");
    human
        .expect_final_text(&room, &bot.0, &fourth, TIMEOUT)
        .await?;
    ensure!(llm.requests().len() == 3, "the old name was answered");
    s.fleet.stop().await?;
    Ok(())
}

/// Waits until `human` sees `user` named `name` in `room_id`.
async fn wait_named(
    human: &Human,
    room_id: &matrix_sdk::ruma::RoomId,
    user: &str,
    name: &str,
) -> Result<()> {
    let user = matrix_sdk::ruma::UserId::parse(user)?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let room = human.client.get_room(room_id).context("the room")?;
        let member = room.get_member_no_sync(&user).await?;
        if member.as_ref().and_then(|m| m.display_name()) == Some(name) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{user} not named {name:?} within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_threaded_question_is_answered_in_the_thread_with_its_history() -> Result<()> {
    let llm =
        FakeOpenAi::start_with(5, Duration::from_millis(2), Some("It is cheese.".into())).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .human()
        .bot(|b| {
            b.llm()
                .mentioned_in_rooms()
                .table("user_overrides.{human0}", "model = \"user-model\"")
        })
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let room = human.room_with(&[&bot.0], false).await?;

    let root = human
        .send(&room, "Thread root: the topic is cheese")
        .await?;
    human
        .send_in_thread(&room, &root, "first detail: cheddar", &[])
        .await?;
    human
        .send_in_thread(&room, &root, "what is the topic?", &[&bot.0])
        .await?;
    let answer = human
        .expect_final_text(&room, &bot.0, "It is cheese.", TIMEOUT)
        .await?;
    assert_eq!(answer.thread_root.as_deref(), Some(root.as_str()));

    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "only the mention was answered");
    let body = &requests[0].body;
    assert_eq!(
        body["model"], "user-model",
        "the user override routes the model"
    );
    let contents: Vec<&str> = body["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    let joined = contents.join("\n");
    for earlier in [
        "the topic is cheese",
        "first detail: cheddar",
        "what is the topic?",
    ] {
        assert!(
            joined.contains(earlier),
            "backend did not see {earlier:?}: {contents:?}"
        );
    }
    assert!(
        contents
            .last()
            .is_some_and(|c| c.ends_with("what is the topic?"))
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn commands_answer_directly_and_new_forgets_the_conversation() -> Result<()> {
    let llm = FakeOpenAi::start(50).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.dm(&bot.0).await?;

    let said = |needle: &'static str| {
        let dm = dm.clone();
        let bot = bot.0.clone();
        move |h: &Human| {
            h.seen_from(&dm, &bot)
                .into_iter()
                .find(|s| h.current_text(s).contains(needle))
        }
    };
    human.send(&dm, "!help").await?;
    human
        .wait_for("help", TIMEOUT, said("`!new` starts"))
        .await?;
    human.send(&dm, "!status").await?;
    human
        .wait_for("status", TIMEOUT, said("base-model"))
        .await?;
    human.send(&dm, "!frobnicate").await?;
    human
        .wait_for("unknown", TIMEOUT, said("Unknown command `!frobnicate`"))
        .await?;
    assert!(
        llm.requests().is_empty(),
        "commands never reach the backend"
    );

    human.send(&dm, "remember the word pineapple").await?;
    human
        .wait_for("answer 1", TIMEOUT, said("openai says: remember"))
        .await?;
    human.send(&dm, "what was the word?").await?;
    human
        .wait_for("answer 2", TIMEOUT, said("openai says: what was"))
        .await?;
    human.send(&dm, "!new").await?;
    human
        .wait_for("reset", TIMEOUT, said("Started a new conversation"))
        .await?;
    human.send(&dm, "fresh start").await?;
    human
        .wait_for("answer 3", TIMEOUT, said("openai says: fresh"))
        .await?;

    let requests = llm.requests();
    assert_eq!(requests.len(), 3);
    let text = |i: usize| requests[i].body["messages"].to_string();
    assert!(
        text(1).contains("pineapple"),
        "memory carries the conversation: {}",
        text(1)
    );
    assert!(
        !text(2).contains("pineapple"),
        "!new forgot it: {}",
        text(2)
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn webhook_and_command_backends_answer() -> Result<()> {
    let hook = FakeWebhook::start().await?;
    let hook_backend = format!(
        "kind = \"webhook\"\nurl = {:?}\ntoken = \"hook-secret\"",
        hook.url
    );
    let cli_backend = "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"read line; printf 'cli heard: %s' \\\"$line\\\"\"]";
    let mut s = Scenario::new()
        .backend("hook", &hook_backend)
        .backend("cli", cli_backend)
        .bot_named("hook", |b| b.backend("hook").open_dms())
        .bot_named("cli", |b| b.backend("cli").open_dms())
        .human()
        .start()
        .await?;
    let human = &s.humans[0];
    let (hook_bot, cli_bot) = (s.bot("hook").credentials(), s.bot("cli").credentials());
    let dm_hook = human.dm(&hook_bot.0).await?;
    let dm_cli = human.dm(&cli_bot.0).await?;
    human.send(&dm_hook, "ping over http").await?;
    human.send(&dm_cli, "ping over stdin").await?;
    human
        .expect_final_text(
            &dm_hook,
            &hook_bot.0,
            "agent heard: ping over http",
            TIMEOUT,
        )
        .await?;
    human
        .expect_final_text(&dm_cli, &cli_bot.0, "cli heard: ping over stdin", TIMEOUT)
        .await?;
    let requests = hook.requests();
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer hook-secret")
    );
    assert_eq!(requests[0].body["room_id"], dm_hook.as_str());
    assert_eq!(requests[0].body["sender"], human.user_id.as_str());
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_answer_cut_short_by_a_crash_is_finished_as_interrupted() -> Result<()> {
    let text = "word ".repeat(400);
    let llm = FakeOpenAi::start_with(5, Duration::from_millis(40), Some(text)).await?;
    let streaming = "stream_min_initial_chars = 10\nedit_throttle_ms = 200";
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms().key(streaming))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.dm(&bot.0).await?;
    human.send(&dm, "a long one please").await?;
    // Killed while the answer streams (it takes ~16 s).
    let original = human
        .wait_for("first part", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0).into_iter().next()
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.fleet.kill().await?;
    s.fleet.start().await?;
    let finished = human
        .wait_for("interrupted edit", TIMEOUT, |h| {
            h.edits_of(&original.event_id)
                .into_iter()
                .find(|e| e.body.contains("interrupted"))
        })
        .await?;
    assert!(finished.body.starts_with("word word"), "{}", finished.body);
    settle().await;
    assert_eq!(
        human.seen_from(&dm, &bot.0).len(),
        1,
        "not answered a second time"
    );
    assert_eq!(llm.requests().len(), 1);
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn with_synapse_default_rate_limits_a_long_stream_ends_with_the_full_text() -> Result<()> {
    let synapse = Synapse::start_private_default_limits().await?;
    let text: String = (1..=40)
        .map(|i| format!("Line {i} of a long answer that keeps coming.\n"))
        .collect();
    let text = text.trim_end().to_owned();
    let llm = FakeOpenAi::start_with(10, Duration::from_millis(15), Some(text.clone())).await?;
    // Aggressive streaming so the homeserver's 429s are certain.
    let streaming =
        "stream_min_initial_chars = 5\nedit_throttle_ms = 100\nmax_edits_per_message = 100";
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms().key(streaming))
        .human()
        .start_on(&synapse)
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.dm(&bot.0).await?;
    human.send(&dm, "go").await?;
    human
        .expect_final_text(&dm, &bot.0, &text, Duration::from_secs(120))
        .await?;
    assert_eq!(human.seen_from(&dm, &bot.0).len(), 1);
    // The outcome is logged once the last edit landed.
    let mut rate_limited = None;
    for _ in 0..100 {
        rate_limited = s
            .fleet
            .all_logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["fields"]["rate_limited"].as_u64());
        if rate_limited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate_limited = rate_limited.unwrap_or_default();
    ensure!(
        rate_limited > 0,
        "the homeserver never rate-limited the stream; the test proves nothing: {}",
        s.fleet
            .all_logs()
            .lines()
            .filter(|l| l.contains("answered"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    s.fleet.stop().await?;
    Ok(())
}

/// Waits until `bot`'s answer in `room_id` mentions `question` (group-room answers name the
/// speaker too).
async fn answered(
    human: &Human,
    room_id: &matrix_sdk::ruma::RoomId,
    bot: &str,
    question: &str,
) -> Result<()> {
    let found = human
        .wait_for("answer", TIMEOUT, |h| {
            h.seen_from(room_id, bot)
                .into_iter()
                .find(|s| h.current_text(s).contains(question))
        })
        .await;
    found.with_context(|| {
        let seen: Vec<String> = human
            .seen_from(room_id, bot)
            .iter()
            .map(|s| human.current_text(s))
            .collect();
        format!("no answer mentioning {question:?}; {bot} said {seen:?}")
    })?;
    Ok(())
}

/// Upgrades `room_id` (as its creator) and returns the replacement room.
async fn upgrade(
    human: &Human,
    room_id: &matrix_sdk::ruma::RoomId,
) -> Result<matrix_sdk::ruma::OwnedRoomId> {
    use matrix_sdk::ruma::{RoomVersionId, api::client::room::upgrade_room::v3::Request};
    let response = human
        .client
        .send(Request::new(room_id.to_owned(), RoomVersionId::V11))
        .await?;
    Ok(response.replacement_room)
}

/// Creates a room as `human` with `preset`, inviting `invitees`, claiming `predecessor` in its
/// creation content if given.
async fn create_room_as(
    human: &Human,
    preset: matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset,
    invitees: &[&str],
    predecessor: Option<&matrix_sdk::ruma::RoomId>,
) -> Result<matrix_sdk::ruma::OwnedRoomId> {
    use matrix_sdk::ruma::{OwnedUserId, api::client::room::create_room::v3::Request, serde::Raw};
    let mut request = Request::new();
    request.preset = Some(preset);
    request.invite = invitees
        .iter()
        .map(|u| OwnedUserId::try_from(*u))
        .collect::<Result<_, _>>()?;
    if let Some(old) = predecessor {
        let content = serde_json::json!({ "predecessor": { "room_id": old } });
        request.creation_content = Some(Raw::new(&content)?.cast_unchecked());
    }
    Ok(human
        .client
        .create_room(request)
        .await?
        .room_id()
        .to_owned())
}

#[tokio::test]
async fn upgraded_rooms_are_followed_with_their_memory_and_forged_ones_refused() -> Result<()> {
    use matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset;
    let llm = FakeOpenAi::start(50).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm())
        .human()
        .prepare()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    // Room ids in the allowlist (aliases would move with the upgrade and prove nothing).
    let public = create_room_as(human, RoomPreset::PublicChat, &[&bot.0], None).await?;
    let private = human.create_room(&[&bot.0], false).await?;
    let allowlist = format!(
        "room_policy = \"allowlist\"\nroom_allowlist = [{:?}, {:?}]\nmention_mode = \"always\"",
        public.as_str(),
        private.as_str()
    );
    s.reconfigure(|c| c.bot(|b| b.key(&allowlist))).await?;
    s.start().await?;
    let human = &s.humans[0];
    human.wait_joined(&public, &bot.0, TIMEOUT).await?;
    human.wait_joined(&private, &bot.0, TIMEOUT).await?;
    human.send(&public, "remember the number 4242").await?;
    answered(human, &public, &bot.0, "remember the number 4242").await?;

    // A public room's upgrade: the bot joins the new room by itself and remembers.
    let new_public = upgrade(human, &public).await?;
    human.wait_joined(&new_public, &bot.0, TIMEOUT).await?;
    human.send(&new_public, "which number was it?").await?;
    answered(human, &new_public, &bot.0, "which number was it?").await?;
    let last = llm
        .requests()
        .last()
        .map(|r| r.body["messages"].to_string())
        .unwrap_or_default();
    ensure!(
        last.contains("4242"),
        "the memory stayed in the old room: {last}"
    );

    // An invite-only room's upgrade: the bot cannot join alone; the invite that follows (as
    // Element sends when upgrading) is accepted although the new id is in no allowlist.
    let new_private = upgrade(human, &private).await?;
    human
        .client
        .get_room(&new_private)
        .context("the human is not in the upgraded room")?
        .invite_user_by_id(&matrix_sdk::ruma::OwnedUserId::try_from(bot.0.as_str())?)
        .await?;
    human.wait_joined(&new_private, &bot.0, TIMEOUT).await?;
    human.send(&new_private, "still here?").await?;
    answered(human, &new_private, &bot.0, "still here?").await?;

    // A room that merely claims an allowed room as its predecessor (no tombstone names it) is
    // an ordinary room outside the allowlist: its invite is rejected.
    let forged = create_room_as(human, RoomPreset::PrivateChat, &[&bot.0], Some(&public)).await?;
    human
        .wait_membership(&forged, &bot.0, MembershipState::Leave, TIMEOUT)
        .await?;
    ensure!(
        s.fleet.all_logs().contains("followed the room upgrade"),
        "no log line for the upgrade"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn voice_messages_are_transcribed_and_locations_and_files_described() -> Result<()> {
    let llm = FakeOpenAi::start(50).await?;
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
                .key("transcription = \"stt\"\nmax_media_bytes = 1024")
        })
        .bot_named("deaf", |b| b.llm().open_dms())
        .human()
        .start()
        .await?;
    let human = &s.humans[0];
    let (bot, deaf) = (s.bot("bot").credentials(), s.bot("deaf").credentials());

    // In an encrypted DM the voice message's file is encrypted too: downloaded, decrypted,
    // transcribed, and its words answered.
    let dm = human.encrypted_dm(&bot.0).await?;
    let words = "please tell me a joke";
    human
        .send_file(&dm, "voice.ogg", "audio/ogg", words.as_bytes().to_vec())
        .await?;
    let answer = human
        .expect_final_text(&dm, &bot.0, &FakeOpenAi::answer_for(words), TIMEOUT)
        .await?;
    ensure!(answer.encrypted, "the answer went out in plaintext");
    let transcription = llm
        .requests()
        .into_iter()
        .find_map(|r| r.body.get("transcription").cloned())
        .context("nothing was transcribed")?;
    ensure!(
        transcription["model"] == "whisper-1"
            && transcription["file_name"] == "voice.ogg"
            && transcription["content_type"] == "audio/ogg"
            && transcription["bytes"] == words.len(),
        "{transcription}"
    );

    // Longer than max_media_bytes: not downloaded, and the sender is told.
    human
        .send_file(&dm, "long.ogg", "audio/ogg", vec![b'a'; 2048])
        .await?;
    human
        .wait_for("too long", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.body.contains("too long") && s.body.contains("max_media_bytes"))
        })
        .await?;

    // A location reaches the backend as text with its geo: URI; an image as a description.
    human
        .send_location(&dm, "Big Ben", "geo:51.5007,-0.1246")
        .await?;
    answered(human, &dm, &bot.0, "geo:51.5007,-0.1246").await?;
    human
        .send_file(&dm, "cat.png", "image/png", vec![0x89, b'P', b'N', b'G'])
        .await?;
    answered(human, &dm, &bot.0, "[sent an image: cat.png, image/png").await?;

    // Without a transcription backend the bot says how to set one up instead of going silent.
    let deaf_dm = human.dm(&deaf.0).await?;
    human
        .send_file(
            &deaf_dm,
            "voice.ogg",
            "audio/ogg",
            words.as_bytes().to_vec(),
        )
        .await?;
    human
        .wait_for("guidance", TIMEOUT, |h| {
            h.seen_from(&deaf_dm, &deaf.0)
                .into_iter()
                .find(|s| s.body.contains("speech-to-text is not set up"))
        })
        .await?;
    let chats = llm
        .requests()
        .iter()
        .filter(|r| r.body.get("messages").is_some())
        .count();
    ensure!(
        chats == 3,
        "{chats} chat requests; the refusals must not reach the backend"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_backend_asks_with_a_poll_and_the_vote_comes_back_as_words() -> Result<()> {
    let asked = "Happy to help.\n\n```poll\nWhat shall we eat?\n- Pizza\n- Sushi\n```\n";
    let llm = FakeOpenAi::start_with(5, Duration::from_millis(2), Some(asked.to_owned())).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms().key("edit_throttle_ms = 50"))
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.encrypted_dm(&bot.0).await?;
    human.send(&dm, "dinner?").await?;

    let poll = human
        .wait_for("poll", TIMEOUT, |h| {
            h.polls_from(&dm, &bot.0).into_iter().next()
        })
        .await?;
    let answers: Vec<&str> = poll.answers.iter().map(|(_, text)| text.as_str()).collect();
    ensure!(
        poll.question == "What shall we eat?" && answers == ["Pizza", "Sushi"],
        "{poll:?}"
    );
    ensure!(poll.encrypted, "the poll went out in plaintext");
    // Streamed in chunks of 5 characters, yet no version of the text ever showed the block.
    let shown: Vec<String> = human
        .all_from(&dm, &bot.0)
        .into_iter()
        .map(|s| s.body)
        .collect();
    ensure!(
        shown
            .iter()
            .all(|t| !t.contains('`') && !t.contains("Sushi")),
        "{shown:?}"
    );
    ensure!(
        human
            .seen_from(&dm, &bot.0)
            .iter()
            .any(|s| human.current_text(s).trim() == "Happy to help."),
        "{shown:?}"
    );

    // The vote reaches the backend as the chosen answer's words.
    let (sushi, _) = poll
        .answers
        .iter()
        .find(|(_, text)| text == "Sushi")
        .context("no Sushi")?;
    human.vote(&dm, &poll.event_id, sushi).await?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let last_user = llm
            .requests()
            .last()
            .and_then(|r| r.body["messages"].as_array().cloned())
            .and_then(|m| m.last().cloned())
            .map(|m| m["content"].to_string())
            .unwrap_or_default();
        if last_user.contains("What shall we eat?") && last_user.contains("Sushi") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the vote never reached the backend: {last_user}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_backend_shares_a_location_with_a_location_block() -> Result<()> {
    let answer = "It is right here:\n```location\ngeo:51.5007,-0.1246\nBig Ben, London\n```\n";
    let llm = FakeOpenAi::start_with(4, Duration::from_millis(2), Some(answer.to_owned())).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot(|b| b.llm().open_dms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let dm = human.dm(&bot.0).await?;
    human.send(&dm, "where is Big Ben?").await?;
    let shared = human
        .wait_for("location", TIMEOUT, |h| {
            h.seen_from(&dm, &bot.0)
                .into_iter()
                .find(|s| s.geo_uri.is_some())
        })
        .await?;
    ensure!(
        shared.geo_uri.as_deref() == Some("geo:51.5007,-0.1246")
            && shared.body == "Big Ben, London",
        "{shared:?}"
    );
    let texts: Vec<String> = human
        .all_from(&dm, &bot.0)
        .into_iter()
        .filter(|s| s.geo_uri.is_none())
        .map(|s| s.body)
        .collect();
    ensure!(
        texts
            .iter()
            .all(|t| !t.contains("geo:") && !t.contains('`')),
        "the block showed: {texts:?}"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn images_reach_a_backend_that_sees_them() -> Result<()> {
    let llm = FakeOpenAi::start(50).await?;
    let vision = format!(
        "kind = \"openai\"\nbase_url = {:?}\nmodel = \"a-vision-model\"\nimages = true",
        llm.base_url
    );
    let mut s = Scenario::new()
        .backend("vision", &vision)
        .bot(|b| b.backend("vision").open_dms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    // Encrypted: the image is uploaded encrypted, downloaded and decrypted by the bot.
    let dm = human.encrypted_dm(&bot.0).await?;
    let png: Vec<u8> = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3];
    human
        .send_file(&dm, "cat.png", "image/png", png.clone())
        .await?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let parts = loop {
        let parts = llm
            .requests()
            .into_iter()
            .filter_map(|r| {
                r.body["messages"].as_array()?.last()?["content"]
                    .as_array()
                    .cloned()
            })
            .next();
        if let Some(parts) = parts {
            break parts;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no request with an image: {:?}",
            llm.requests()
                .iter()
                .map(|r| r.body.to_string())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        parts[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("[sent an image: cat.png, image/png; attached]")),
        "{parts:?}"
    );
    // 89 50 4e 47 0d 0a 1a 0a 01 02 03, base64-encoded.
    ensure!(
        parts[1]["image_url"]["url"] == "data:image/png;base64,iVBORw0KGgoBAgM=",
        "{parts:?}"
    );
    s.fleet.stop().await?;
    Ok(())
}

/// An OpenAI-compatible endpoint that always fails with HTTP 500 and `body`.
async fn failing_backend(body: &'static str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = vec![0u8; 65536];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    Ok(url)
}

#[tokio::test]
async fn a_backend_error_reaches_the_room_as_an_id_and_its_details_only_the_log() -> Result<()> {
    let url = failing_backend(r#"{"error": {"message": "upstream rejected key sk-live-TOPSECRET at http://10.0.0.7:8080/internal"}}"#).await?;
    let mut s = Scenario::new()
        .backend(
            "broken",
            &format!(
                "kind = \"openai\"\nbase_url = \"{url}\"\nmodel = \"m\"\nrequest_timeout_secs = 10"
            ),
        )
        .bot(|b| b.open_dms().backend("broken"))
        .human()
        .admin()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "are you there?").await?;
    let answer = human
        .wait_for("the error answer", TIMEOUT, |h| {
            h.seen_from(&dm, &bot)
                .into_iter()
                .map(|seen| h.current_text(&seen))
                .find(|text| text.contains("error"))
        })
        .await?;
    ensure!(
        !answer.contains("TOPSECRET") && !answer.contains("10.0.0.7") && !answer.contains("HTTP"),
        "the room got the backend's details: {answer}"
    );
    let id: String = answer
        .split("error ")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_hexdigit).collect())
        .unwrap_or_default();
    ensure!(id.len() == 8, "no error id in {answer:?}");
    let logs = s.fleet.all_logs();
    ensure!(
        logs.lines()
            .any(|l| l.contains(&id) && l.contains("TOPSECRET")),
        "the log does not tie error {id} to its details"
    );
    // Counted for the alert on backend failures (recorded just after the answer is sent).
    let counted = "mxfleet_backend_errors_total{account=\"bot\"} 1";
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = s.metrics().await?;
        if metrics.lines().any(|l| l == counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(metrics.lines().any(|l| l == counted), "{metrics}");
    s.fleet.stop().await?;
    Ok(())
}
