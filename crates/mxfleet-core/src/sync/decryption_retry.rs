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
use tokio::{task::JoinHandle, time::Instant};
use tracing::debug;

/// An event waiting for its keys: its room, the event, when it failed first.
pub(super) type Pending = (OwnedRoomId, Raw<AnySyncTimelineEvent>, Instant);

/// What a retry decrypted, and what still waits.
pub(super) type Retried = (Vec<InboundMessage>, Vec<Pending>);

/// Events that failed to decrypt, tried again when keys may have arrived: when matrix-sdk stores
/// room keys for their room, after a sync that carried to-device events, and every 30 s (each
/// failed try also asks matrix-sdk to look in the server-side key backup, which it does with
/// its own back-off). Bounded in number and age.
#[derive(Default)]
pub(super) struct DecryptionRetries {
    pending: Vec<Pending>,
    last_try: Option<Instant>,
}

impl DecryptionRetries {
    const MAX: usize = 256;
    const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    const INTERVAL: Duration = Duration::from_secs(30);

    pub(super) fn remember(&mut self, room_id: &OwnedRoomId, raw: Raw<AnySyncTimelineEvent>) {
        if self.pending.len() >= Self::MAX {
            self.pending.remove(0);
        }
        self.pending.push((room_id.clone(), raw, Instant::now()));
    }

    /// Whether any event waits for keys.
    pub(super) fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether an event waits in one of `rooms` (`None`: rooms unknown, say yes).
    pub(super) fn waits_in(&self, rooms: Option<&[OwnedRoomId]>) -> bool {
        rooms.is_none_or(|rooms| self.pending.iter().any(|(room, _, _)| rooms.contains(room)))
    }

    pub(super) fn due(&mut self, keys_may_have_arrived: bool) -> bool {
        let now = Instant::now();
        self.pending
            .retain(|(_, _, at)| now.duration_since(*at) < Self::MAX_AGE);
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
        self.pending
            .splice(0..0, still.into_iter().rev().take(room).rev());
    }

    /// Tries every pending event; returns the ones that now decrypt to messages.
    pub(super) async fn retry(
        &mut self,
        client: &Client,
        own_user: &OwnedUserId,
    ) -> Vec<InboundMessage> {
        let batch = self.take();
        let (decrypted, still) = try_decrypt(client.clone(), own_user.clone(), batch).await;
        self.put_back(still);
        decrypted
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
    for (room_id, raw, at) in batch {
        let Some(room) = client.get_room(&room_id) else {
            continue;
        };
        let encrypted = raw.cast_ref_unchecked::<OriginalSyncRoomEncryptedEvent>();
        match room.decrypt_event(encrypted, None).await {
            Ok(event) => match normalise(&room_id, &event, &own_user) {
                Normalised::Message(message) => decrypted.push(message),
                Normalised::Undecryptable(_) => still.push((room_id, raw, at)),
                _ => {}
            },
            Err(e) => {
                debug!(%room_id, error = %e, "decryption retry failed");
                still.push((room_id, raw, at));
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

    #[tokio::test(start_paused = true)]
    async fn failed_decryptions_are_retried_when_keys_may_have_arrived_or_every_30_s() {
        let mut retries = DecryptionRetries::default();
        assert!(!retries.due(true), "nothing pending");
        let raw = Raw::from_json(
            serde_json::value::to_raw_value(&serde_json::json!({"type": "m.room.encrypted"}))
                .unwrap_or_else(|_| Box::<serde_json::value::RawValue>::default()),
        );
        retries.remember(&owned_room_id!("!r:hs"), raw);
        assert!(retries.due(false), "first try at once");
        retries.last_try = Some(Instant::now());
        assert!(!retries.due(false));
        assert!(retries.due(true), "to-device events may carry the keys");
        tokio::time::advance(DecryptionRetries::INTERVAL).await;
        assert!(retries.due(false), "the backup may have delivered them");
        // Room keys stored for the room (or for unknown rooms) wake the retry; others do not.
        assert!(retries.waiting());
        assert!(retries.waits_in(Some(&[owned_room_id!("!r:hs")])));
        assert!(
            retries.waits_in(None),
            "a lagged key stream tries everything"
        );
        assert!(!retries.waits_in(Some(&[owned_room_id!("!other:hs")])));
        tokio::time::advance(DecryptionRetries::MAX_AGE).await;
        assert!(!retries.due(true), "given up after a day");
        assert!(!retries.waiting());
        assert!(retries.pending.is_empty());
    }
}
