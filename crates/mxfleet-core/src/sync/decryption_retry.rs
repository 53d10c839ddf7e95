//! Decryption retries: events that failed to decrypt wait here for their keys, and are tried
//! again when keys may have arrived (room keys stored for their room, a sync with to-device
//! events, or every 30 s), bounded in number and age.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use mxfleet_matrix::{
    Normalised,
    matrix_sdk::{
        Client,
        ruma::{
            OwnedRoomId, OwnedUserId,
            events::{AnySyncTimelineEvent, room::encrypted::OriginalSyncRoomEncryptedEvent},
            serde::Raw,
        },
    },
    normalise,
};
use mxfleet_message::InboundMessage;
use mxfleet_store::StoredUndecryptable;
use tokio::{task::JoinHandle, time::Instant};
use tracing::debug;

/// An event waiting for its keys.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    room_id: OwnedRoomId,
    raw: Raw<AnySyncTimelineEvent>,
    /// When the bot first saw it (ms since the epoch): its catch-up age counts from then.
    first_seen_ms: u64,
}

/// A message that decrypted on a retry.
#[derive(Debug, Clone)]
pub(super) struct Decrypted {
    /// The message.
    pub(super) message: InboundMessage,
    /// When the bot first saw its event.
    pub(super) first_seen_ms: u64,
}

/// What a retry decrypted, and what still waits.
pub(super) type Retried = (Vec<Decrypted>, Vec<Pending>);

/// Events that failed to decrypt, tried again when keys may have arrived: when matrix-sdk stores
/// room keys for their room, after a sync that carried to-device events, and every 30 s (each
/// failed try also asks matrix-sdk to look in the server-side key backup, which it does with
/// its own back-off). Bounded in number and age, and kept in the store so that a restart
/// tries them again (the caller saves what [`DecryptionRetries::remember`] returns and
/// forgets what [`DecryptionRetries::take_forgotten`] gives back).
#[derive(Default)]
pub(super) struct DecryptionRetries {
    pending: Vec<Pending>,
    last_try: Option<Instant>,
    /// Events given up on (too old, or pushed out), whose records are to go.
    forgotten: Vec<String>,
}

impl DecryptionRetries {
    const MAX: usize = 256;
    const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    const INTERVAL: Duration = Duration::from_secs(30);

    /// Waits for the keys of `raw` in `room_id`, first seen `now_ms`; returns its record.
    pub(super) fn remember(
        &mut self,
        room_id: &OwnedRoomId,
        raw: Raw<AnySyncTimelineEvent>,
        now_ms: u64,
    ) -> Option<(String, StoredUndecryptable)> {
        let pending = Pending {
            room_id: room_id.clone(),
            raw,
            first_seen_ms: now_ms,
        };
        let record = pending.record();
        self.push(pending);
        record
    }

    /// Waits again for the events a previous process kept.
    pub(super) fn restore(&mut self, stored: Vec<(String, StoredUndecryptable)>) {
        for (event_id, record) in stored {
            match Pending::from_record(&record) {
                Some(pending) => self.push(pending),
                None => self.forgotten.push(event_id),
            }
        }
    }

    fn push(&mut self, pending: Pending) {
        if self.pending.len() >= Self::MAX {
            let evicted = self.pending.remove(0);
            self.forgotten.extend(evicted.event_id());
        }
        self.pending.push(pending);
    }

    /// Whether any event waits for keys.
    pub(super) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether an event waits in one of `rooms` (`None`: rooms unknown, say yes).
    pub(super) fn waits_in(&self, rooms: Option<&[OwnedRoomId]>) -> bool {
        rooms.is_none_or(|rooms| self.pending.iter().any(|p| rooms.contains(&p.room_id)))
    }

    /// Whether a try is due (events older than a day are given up first).
    pub(super) fn due(&mut self, keys_may_have_arrived: bool, now_ms: u64) -> bool {
        let max_age_ms = u64::try_from(Self::MAX_AGE.as_millis()).unwrap_or(u64::MAX);
        let (kept, expired): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now_ms.saturating_sub(p.first_seen_ms) < max_age_ms);
        self.pending = kept;
        self.forgotten
            .extend(expired.iter().filter_map(Pending::event_id));
        let now = Instant::now();
        let interval_passed = self
            .last_try
            .is_none_or(|t| now.duration_since(t) >= Self::INTERVAL);
        !self.pending.is_empty() && (keys_may_have_arrived || interval_passed)
    }

    /// Takes every pending event for a try.
    pub(super) fn take(&mut self) -> Vec<Pending> {
        self.last_try = Some(Instant::now());
        std::mem::take(&mut self.pending)
    }

    /// Keeps the events a try could not decrypt.
    pub(super) fn put_back(&mut self, still: Vec<Pending>) {
        let room = Self::MAX.saturating_sub(self.pending.len());
        let dropped = still.len().saturating_sub(room);
        let mut still = still.into_iter();
        self.forgotten
            .extend(still.by_ref().take(dropped).filter_map(|p| p.event_id()));
        self.pending.splice(0..0, still);
    }

    /// The event ids given up on since the last call.
    pub(super) fn take_forgotten(&mut self) -> Vec<String> {
        std::mem::take(&mut self.forgotten)
    }

    /// Tries every pending event; returns the ones that now decrypt to messages.
    pub(super) async fn retry(
        &mut self,
        client: &Client,
        own_user: &OwnedUserId,
    ) -> Vec<Decrypted> {
        let batch = self.take();
        let (decrypted, still) = try_decrypt(client.clone(), own_user.clone(), batch).await;
        self.put_back(still);
        decrypted
    }
}

impl Pending {
    fn event_id(&self) -> Option<String> {
        self.raw.get_field::<String>("event_id").ok().flatten()
    }

    /// The record kept in the store (`None`: an event without an id, not kept).
    fn record(&self) -> Option<(String, StoredUndecryptable)> {
        let record = StoredUndecryptable {
            room_id: self.room_id.to_string(),
            event: self.raw.json().get().to_owned(),
            first_seen_ms: self.first_seen_ms,
        };
        Some((self.event_id()?, record))
    }

    fn from_record(record: &StoredUndecryptable) -> Option<Self> {
        let room_id = OwnedRoomId::try_from(record.room_id.as_str()).ok()?;
        let json = serde_json::value::RawValue::from_string(record.event.clone()).ok()?;
        Some(Self {
            room_id,
            raw: Raw::from_json(json),
            first_seen_ms: record.first_seen_ms,
        })
    }
}

/// Tries to decrypt `batch`; returns the messages it now yields and the events still waiting.
pub(super) async fn try_decrypt(
    client: Client,
    own_user: OwnedUserId,
    batch: Vec<Pending>,
) -> Retried {
    let mut decrypted = Vec::new();
    let mut still = Vec::new();
    for pending in batch {
        let Some(room) = client.get_room(&pending.room_id) else {
            continue;
        };
        let encrypted = pending
            .raw
            .cast_ref_unchecked::<OriginalSyncRoomEncryptedEvent>();
        match room.decrypt_event(encrypted, None).await {
            Ok(event) => match normalise(&pending.room_id, &event, &own_user) {
                Normalised::Message(message) => decrypted.push(Decrypted {
                    message,
                    first_seen_ms: pending.first_seen_ms,
                }),
                Normalised::Undecryptable(_) => still.push(pending),
                _ => {}
            },
            Err(e) => {
                debug!(room_id = %pending.room_id, error = %e, "decryption retry failed");
                still.push(pending);
            }
        }
    }
    (decrypted, still)
}

/// The outcome of the retry in flight. Never resolves without one.
pub(super) async fn join_retry(
    in_flight: &mut Option<JoinHandle<Retried>>,
) -> Result<Retried, tokio::task::JoinError> {
    match in_flight {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The rooms of the next batch of stored room keys (`None` inside: unknown). Never resolves
/// without a stream.
pub(super) async fn next_room_keys<S>(stream: &mut Option<S>) -> Option<Option<Vec<OwnedRoomId>>>
where
    S: Stream<Item = Option<Vec<OwnedRoomId>>> + Unpin,
{
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use mxfleet_matrix::matrix_sdk::ruma::owned_room_id;

    use super::*;

    fn encrypted(event_id: &str) -> Raw<AnySyncTimelineEvent> {
        let json = serde_json::json!({"type": "m.room.encrypted", "event_id": event_id});
        Raw::from_json(
            serde_json::value::to_raw_value(&json)
                .unwrap_or_else(|_| Box::<serde_json::value::RawValue>::default()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn failed_decryptions_are_retried_when_keys_may_have_arrived_or_every_30_s() {
        let mut retries = DecryptionRetries::default();
        assert!(!retries.due(true, 0), "nothing pending");
        let record = retries.remember(&owned_room_id!("!r:hs"), encrypted("$e"), 1_000);
        assert_eq!(
            record.map(|(id, r)| (id, r.first_seen_ms)),
            Some(("$e".into(), 1_000))
        );
        assert!(retries.due(false, 1_000), "first try at once");
        retries.last_try = Some(Instant::now());
        assert!(!retries.due(false, 1_000));
        assert!(
            retries.due(true, 1_000),
            "to-device events may carry the keys"
        );
        tokio::time::advance(DecryptionRetries::INTERVAL).await;
        assert!(
            retries.due(false, 1_000),
            "the backup may have delivered them"
        );
        // Room keys stored for the room (or for unknown rooms) wake the retry; others do not.
        assert!(retries.waiting());
        assert!(retries.waits_in(Some(&[owned_room_id!("!r:hs")])));
        assert!(
            retries.waits_in(None),
            "a lagged key stream tries everything"
        );
        assert!(!retries.waits_in(Some(&[owned_room_id!("!other:hs")])));
        // Given up after a day (wall clock, so it holds across restarts), and forgotten.
        let a_day_later = 1_000 + 24 * 3600 * 1000;
        assert!(!retries.due(true, a_day_later), "given up after a day");
        assert!(!retries.waiting());
        assert_eq!(retries.take_forgotten(), ["$e"]);
    }

    #[test]
    fn what_waits_survives_a_restart_through_its_records() {
        let mut before = DecryptionRetries::default();
        let kept: Vec<_> = ["$a", "$b"]
            .into_iter()
            .filter_map(|id| before.remember(&owned_room_id!("!r:hs"), encrypted(id), 5))
            .collect();
        let mut after = DecryptionRetries::default();
        let broken = StoredUndecryptable {
            room_id: "not a room".into(),
            event: "{}".into(),
            first_seen_ms: 5,
        };
        after.restore(
            kept.into_iter()
                .chain([("$broken".into(), broken)])
                .collect(),
        );
        let restored: Vec<Option<String>> = after.take().iter().map(Pending::event_id).collect();
        assert_eq!(restored, [Some("$a".into()), Some("$b".into())]);
        assert_eq!(
            after.take_forgotten(),
            ["$broken"],
            "an unreadable record goes"
        );
    }
}
