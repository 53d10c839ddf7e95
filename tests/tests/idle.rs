//! End-to-end test of what wakes an idle bot: a bot reads neither presence nor typing notices
//! nor read receipts, so a person typing, reading or coming online does not end its long-poll.
//! Each wake-up costs a sync response's processing (matrix-sdk's stores and crypto included); in
//! a fleet, every bot sharing a room with that person pays it.

#![recursion_limit = "256"]

use std::time::Duration;

use anyhow::{Context, Result};
use matrix_sdk::ruma::{
    api::client::{presence::set_presence, receipt::create_receipt},
    events::receipt::ReceiptThread,
    presence::PresenceState,
};
use mxfleet_testkit::Scenario;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The bot's completed sync requests, from the fleet's metrics.
fn syncs(metrics: &str) -> Result<u64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("mxfleet_sync_request_seconds_count") && l.contains("account=\"bot\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .with_context(|| format!("no sync count for the bot in:\n{metrics}"))
}

#[tokio::test]
async fn a_person_typing_reading_and_coming_online_does_not_wake_an_idle_bot() -> Result<()> {
    let s = Scenario::new()
        .admin()
        .human()
        .bot(|b| b.open_dms())
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").credentials());
    let room = human.dm(&bot.0).await?;
    human.send(&room, "hello").await?;
    let answer = human
        .expect_message(&room, &bot.0, "hello", TIMEOUT)
        .await?;
    // The answer's own echo and the cues' clean-up come down the bot's sync; let them pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = syncs(&s.metrics().await?)?;

    let joined = human.client.get_room(&room).context("the human's room")?;
    for _ in 0..3 {
        joined.typing_notice(true).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        joined.typing_notice(false).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let event_id = answer.event_id.parse()?;
    let mut receipt = create_receipt::v3::Request::new(
        room.clone(),
        create_receipt::v3::ReceiptType::Read,
        event_id,
    );
    receipt.thread = ReceiptThread::Unthreaded;
    human.client.send(receipt).await?;
    let me = human.client.user_id().context("the human's id")?.to_owned();
    for state in [PresenceState::Unavailable, PresenceState::Online] {
        let presence = set_presence::v3::Request::new(me.clone(), state);
        human.client.send(presence).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let after = syncs(&s.metrics().await?)?;
    // The long-poll lasts 30 s: none ends by its timeout within these few seconds.
    assert!(
        after.saturating_sub(before) <= 1,
        "the bot's long-poll was woken {} times by typing, a read receipt and presence",
        after.saturating_sub(before)
    );
    Ok(())
}
