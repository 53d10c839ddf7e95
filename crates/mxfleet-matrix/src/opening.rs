//! How many accounts open their stores at once. Opening an account's two SQLite stores and
//! loading its device's keys is disk and CPU work on the blocking pool. Started all together,
//! the accounts of a large fleet advance in step: a restart of 1,000 accounts had none of them
//! ready before 10 s and all of them within 5 s after, and only then did their first syncs
//! reach the homeserver, together. With a bounded number opening at a time, accounts come up in
//! a steady stream from the start and the first syncs of those that are up overlap the opening
//! of the rest (docs/benchmarks.md, run 14). Logins do not hold a place: they wait for the
//! homeserver's pace ([`crate::login_pace`]), not for the disk.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Accounts opening their stores at once, process-wide: twice the blocking pool's default
/// (`blocking_threads`), so the pool stays busy while some accounts are between two calls.
pub const CONCURRENT_OPENS: usize = 32;

/// The accounts opening their stores now.
static OPENING: Semaphore = Semaphore::const_new(CONCURRENT_OPENS);

/// A place among the accounts opening their stores, held until dropped.
pub(crate) struct Place {
    _permit: Option<SemaphorePermit<'static>>,
}

/// Waits for a place among the accounts opening their stores.
pub(crate) async fn place() -> Place {
    place_in(&OPENING).await
}

/// Waits for a place in `gate`. The gate is never closed; were it closed, the caller would go
/// ahead without a place rather than never start.
async fn place_in(gate: &'static Semaphore) -> Place {
    Place {
        _permit: gate.acquire().await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_bound_open_at_once_and_every_one_gets_a_place() {
        static GATE: Semaphore = Semaphore::const_new(3);
        static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let opens = (0..20).map(|i| {
            tokio::spawn(async move {
                let _place = place_in(&GATE).await;
                let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
                MOST.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10 + i)).await;
                IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for open in opens.collect::<Vec<_>>() {
            open.await.expect("opened");
        }
        assert_eq!(MOST.load(Ordering::SeqCst), 3);
        assert_eq!(GATE.available_permits(), 3, "every place given back");
    }
}
