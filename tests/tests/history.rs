//! End-to-end tests of the room history an answer sees: read from what the sync recorded (no
//! `/messages` request per answer), and the same as the homeserver's — other people's
//! messages, redacted ones left out — whether the room was seen from its creation or the log
//! is filled by one fetch after a restart.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Context, Result};
use mxfleet_testkit::{FakeOpenAi, Scenario};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The texts the backend was given in its `n`th request.
fn contents(llm: &FakeOpenAi, n: usize) -> Result<Vec<String>> {
    let requests = llm.requests();
    let request = requests.get(n).context("the backend was not asked")?;
    Ok(request.body["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["content"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn an_answer_sees_the_rooms_recent_messages_without_redacted_ones_across_a_restart()
-> Result<()> {
    let llm = FakeOpenAi::start_with(1, Duration::from_millis(1), Some("Noted.".into())).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .human()
        .bot(|b| b.llm().mentioned_in_rooms())
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let room = human.room_with(&[&bot.0], false).await?;

    // Seen from the room's creation: the log is complete without any fetch.
    human.send(&room, "alpha: the budget is 40").await?;
    let secret = human.send(&room, "gamma: a typo, deleted").await?;
    human.send(&room, "beta: the deadline is Friday").await?;
    human.redact(&room, &secret).await?;
    human
        .send_mentioning(&room, "bot, first question", &[&bot.0], false)
        .await?;
    human
        .expect_final_text(&room, &bot.0, "Noted.", TIMEOUT)
        .await?;
    let first = contents(&llm, 0)?.join("\n");
    for said in ["alpha: the budget is 40", "beta: the deadline is Friday"] {
        assert!(
            first.contains(said),
            "backend did not see {said:?}: {first}"
        );
    }
    assert!(
        !first.contains("gamma"),
        "a redacted message reached the backend: {first}"
    );

    // After a restart the log is empty: one fetch fills it, with what came while away.
    s.fleet.stop().await?;
    human.send(&room, "delta: while the bot was away").await?;
    s.fleet.start().await?;
    s.wait_syncing().await?;
    human
        .send_mentioning(&room, "bot, second question", &[&bot.0], false)
        .await?;
    human
        .wait_for("the second answer", TIMEOUT, |h| {
            (h.seen_from(&room, &bot.0).len() >= 2).then_some(())
        })
        .await?;
    let second = contents(&llm, 1)?.join("\n");
    for said in ["alpha: the budget is 40", "delta: while the bot was away"] {
        assert!(
            second.contains(said),
            "backend did not see {said:?}: {second}"
        );
    }
    assert!(
        !second.contains("gamma"),
        "a redacted message reached the backend: {second}"
    );
    s.fleet.stop().await?;
    Ok(())
}
