//! The streaming measurement: one account on an OpenAI-compatible test server streaming a long
//! Markdown answer with the default stream settings — edits per answer, the backend's first
//! token to the first visible message, the user's send to the first visible and to the complete
//! answer.

use std::time::Duration;

use anyhow::{Result, bail};
use mxfleet_testkit::{FakeOpenAi, FleetProcess, Human, Synapse};
use tokio::time::Instant;

/// Milliseconds between two deltas of the streamed benchmark answer.
pub(crate) const STREAM_DELTA_MS: u64 = 10;
/// What the streaming measurement saw.
pub(crate) struct StreamRow {
    pub(crate) answers: usize,
    pub(crate) chars: usize,
    pub(crate) deltas: usize,
    pub(crate) edits_median: usize,
    pub(crate) edits_max: usize,
    pub(crate) first_visible_p50_ms: u64,
    pub(crate) first_visible_max_ms: u64,
    pub(crate) send_to_visible_p50: Duration,
    pub(crate) send_to_complete_p50: Duration,
}

/// Measures `answers` streamed answers of one account.
pub(crate) async fn measure_streaming(
    synapse: &Synapse,
    human: &Human,
    binary: &std::path::Path,
    answers: usize,
) -> Result<StreamRow> {
    let text: String = (1..=25)
        .map(|i| format!("Paragraph {i}: a streamed answer with **some** markup and `code`.\n\n"))
        .collect();
    let text = text.trim_end().to_owned();
    let chunk = 8;
    let llm = FakeOpenAi::start_with(
        chunk,
        Duration::from_millis(STREAM_DELTA_MS),
        Some(text.clone()),
    )
    .await?;
    let (bot, password) = synapse.fresh_user("benchstream").await?;
    let config = format!(
        "[backends.llm]\nkind = \"openai\"\nbase_url = {:?}\nmodel = \"bench\"\n\n\
         [accounts.stream]\nhomeserver = {:?}\nuser_id = {bot:?}\npassword = {password:?}\ndm_policy = \"open\"\nbackend = \"llm\"\n[accounts.stream.limits]\nper_sender_per_minute = 10000\nper_room_per_minute = 10000\n",
        llm.base_url,
        synapse.url()
    );
    let mut fleet = FleetProcess::with_binary(&config, binary.to_path_buf())?;
    fleet.start().await?;
    wait_all_syncing(&fleet, 1).await?;
    let room = human.dm(&bot).await?;
    let (mut edits, mut to_visible, mut to_complete) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..answers {
        let before = human.seen_from(&room, &bot).len();
        let sent = Instant::now();
        human.send(&room, &format!("stream #{k}")).await?;
        let original = human
            .wait_for("first part", Duration::from_secs(30), |h| {
                h.seen_from(&room, &bot).into_iter().nth(before)
            })
            .await?;
        to_visible.push(sent.elapsed());
        human
            .wait_for("complete answer", Duration::from_secs(60), |h| {
                (h.current_text(&original) == text).then_some(())
            })
            .await?;
        to_complete.push(sent.elapsed());
        edits.push(human.edits_of(&original.event_id).len());
    }
    fleet.stop().await?;
    let mut first_visible: Vec<u64> = fleet
        .all_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["first_visible_ms"].as_u64())
        .collect();
    first_visible.sort_unstable();
    edits.sort_unstable();
    to_visible.sort();
    to_complete.sort();
    Ok(StreamRow {
        answers,
        chars: text.chars().count(),
        deltas: text.chars().count().div_ceil(chunk),
        edits_median: edits[edits.len() / 2],
        edits_max: edits.last().copied().unwrap_or_default(),
        first_visible_p50_ms: first_visible
            .get(first_visible.len() / 2)
            .copied()
            .unwrap_or_default(),
        first_visible_max_ms: first_visible.last().copied().unwrap_or_default(),
        send_to_visible_p50: to_visible[to_visible.len() / 2],
        send_to_complete_p50: to_complete[to_complete.len() / 2],
    })
}

/// Waits until `n` accounts of `fleet` are syncing.
async fn wait_all_syncing(fleet: &FleetProcess, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if crate::systems::fleet_synced(fleet, n) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!(
        "accounts did not all reach syncing:\n{}",
        fleet.log_tail(20)
    )
}

/// Prints the streaming measurement.
pub(crate) fn print(s: &StreamRow) {
    println!();
    println!(
        "Streaming: {} answers of {} characters, {} deltas {} ms apart, default stream settings.",
        s.answers, s.chars, s.deltas, STREAM_DELTA_MS
    );
    println!();
    println!(
        "| edits / answer (median, max) | first token → visible p50 (max) | send → first visible p50 | send → complete p50 |"
    );
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} , {} | {} ms ({} ms) | {} ms | {} ms |",
        s.edits_median,
        s.edits_max,
        s.first_visible_p50_ms,
        s.first_visible_max_ms,
        s.send_to_visible_p50.as_millis(),
        s.send_to_complete_p50.as_millis(),
    );
}
