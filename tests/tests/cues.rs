//! The cues with the default settings: a fast answer comes alone (no ack reaction, no typing,
//! no redaction afterwards: the answer is visible before `cue_delay_ms`), and a slow one is
//! acknowledged before its answer shows.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Result, ensure};
use mxfleet_testkit::{FakeOpenAi, Scenario};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn by_default_a_fast_answer_gets_no_cues_and_a_slow_one_is_acknowledged_first() -> Result<()>
{
    // Slow: 700 ms to the first event of the stream, 1.4 s to the first text.
    let llm = FakeOpenAi::start_with(64, Duration::from_millis(700), Some("slow".into())).await?;
    let mut s = Scenario::new()
        .llm(&llm)
        .bot_named("quick", |b| b.open_dms())
        .bot_named("slow", |b| b.open_dms().llm())
        .human()
        .start()
        .await?;
    let human = &s.humans[0];
    let (quick, slow) = (
        s.bot("quick").user_id.clone(),
        s.bot("slow").user_id.clone(),
    );

    // Two fast answers: room events are seen in order, so a reaction sent before the second
    // answer would be seen by the time it is.
    let dm = human.dm(&quick).await?;
    let first = human.send(&dm, "one").await?;
    human.expect_message(&dm, &quick, "one", TIMEOUT).await?;
    let second = human.send(&dm, "two").await?;
    human.expect_message(&dm, &quick, "two", TIMEOUT).await?;
    for asked in [&first, &second] {
        let reactions = human.reactions_on(asked);
        ensure!(
            reactions.is_empty(),
            "a fast answer got cues: {reactions:?}"
        );
    }

    // The slow answer: the ack reaction is there before any of the answer is.
    let dm = human.dm(&slow).await?;
    let asked = human.send(&dm, "take your time").await?;
    let ack = human
        .wait_for("the ack reaction", TIMEOUT, |h| {
            h.reactions_on(&asked)
                .into_iter()
                .find(|r| r.sender == slow)
        })
        .await?;
    ensure!(
        human.seen_from(&dm, &slow).is_empty(),
        "the answer showed before the ack reaction"
    );
    human.expect_final_text(&dm, &slow, "slow", TIMEOUT).await?;
    human
        .wait_for("the ack's redaction", TIMEOUT, |h| {
            h.was_redacted(&ack.event_id).then_some(())
        })
        .await?;
    s.fleet.stop().await?;
    Ok(())
}
