//! Backfilling a gap: a sync returns at most `sync_timeline_limit` events of a room; a room with
//! more since the last sync arrives `limited`, with a `prev_batch` token. Without a backfill the
//! events before the returned ones would never be seen. The gap is read backwards with
//! `/messages` from `prev_batch` to the last committed position, and stops early at an event
//! already in the inbox, at one older than `catch_up_max_age_secs` (it would be skipped anyway),
//! or after `backfill_max_events`.

use mxfleet_matrix::{
    MatrixFailure,
    matrix_sdk::{
        Room,
        deserialized_responses::TimelineEvent,
        room::MessagesOptions,
        ruma::{UInt, events::AnySyncTimelineEvent, serde::Raw},
    },
};
use mxfleet_store::Store;
use tracing::{debug, info, warn};

use crate::error::AccountError;

/// Events asked for per `/messages` request.
const PAGE: u32 = 50;

/// Where a backfill stops.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds<'a> {
    /// The account (its inbox knows what was seen).
    pub(super) account: &'a str,
    /// Events sent before this (ms since the epoch) are not fetched.
    pub(super) oldest_ms: u64,
    /// The most events fetched.
    pub(super) max_events: usize,
}

/// The events of `room`'s gap before `prev_batch`, back to `since` (the last committed
/// position), oldest first.
pub(super) async fn gap(
    room: &Room,
    store: &Store,
    prev_batch: &str,
    since: Option<&str>,
    bounds: Bounds<'_>,
) -> Result<Vec<TimelineEvent>, AccountError> {
    let mut found: Vec<TimelineEvent> = Vec::new();
    let mut from = Some(prev_batch.to_owned());
    'pages: while let Some(token) = from.take() {
        let mut options = MessagesOptions::backward().from(Some(token.as_str()));
        options.to = since.map(str::to_owned);
        options.limit = UInt::from(PAGE);
        let page = room
            .messages(options)
            .await
            .map_err(|e| MatrixFailure::from_sdk("backfilling a gap", &e))?;
        let ids: Vec<String> = page.chunk.iter().filter_map(event_id).collect();
        let known = store.claimed(bounds.account, ids).await?;
        for event in page.chunk {
            let seen = event_id(&event).is_some_and(|id| known.contains(&id));
            let too_old = sent_ms(&event).is_some_and(|ts| ts < bounds.oldest_ms);
            if seen || too_old {
                debug!(seen, too_old, "backfill reached what came before the gap");
                break 'pages;
            }
            if found.len() >= bounds.max_events {
                warn!(
                    max = bounds.max_events,
                    "backfill_max_events reached: older events of the gap are not answered"
                );
                break 'pages;
            }
            found.push(event);
        }
        from = page.end.filter(|end| *end != token);
    }
    found.reverse();
    if !found.is_empty() {
        info!(room = %room.room_id(), events = found.len(), "backfilled a gap in the room's timeline");
    }
    Ok(found)
}

fn raw(event: &TimelineEvent) -> &Raw<AnySyncTimelineEvent> {
    event.raw()
}

fn event_id(event: &TimelineEvent) -> Option<String> {
    raw(event).get_field::<String>("event_id").ok().flatten()
}

fn sent_ms(event: &TimelineEvent) -> Option<u64> {
    raw(event)
        .get_field::<u64>("origin_server_ts")
        .ok()
        .flatten()
}
