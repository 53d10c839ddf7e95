//! Pacing password logins per homeserver. A fleet's first start (or a mass re-login after a
//! homeserver reset) would send every account's `/login` at once; Synapse lets a small burst
//! through (`rc_login`: 3 per address, then one every ~6 s) and answers the rest with 429. Here
//! at most [`CONCURRENT_LOGINS`] logins to one homeserver are in flight, and a 429 holds every
//! login waiting for that homeserver until its `retry_after` has passed — not only the one
//! refused — so the storm follows the homeserver's pace instead of hammering it, and no
//! account fails its start for being rate limited.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::{sync::Semaphore, time::Instant};
use tracing::info;

use crate::{FailureClass, MatrixFailure};

/// Logins in flight per homeserver.
pub const CONCURRENT_LOGINS: usize = 4;
/// The wait after a 429 that names none.
const DEFAULT_HOLD: Duration = Duration::from_secs(5);
/// Refusals one login sits out before its failure is handed on (the account then backs off).
const MAX_REFUSALS: u32 = 30;

/// The pace of one homeserver's logins.
struct Pace {
    permits: Semaphore,
    /// No login to this homeserver starts before this instant.
    not_before: Mutex<Instant>,
}

/// Runs `login` (tried again after each 429) when `homeserver`'s pace allows.
pub async fn paced<T, F, Fut>(homeserver: &str, login: F) -> Result<T, MatrixFailure>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, MatrixFailure>>,
{
    let pace = pace_of(homeserver);
    let mut refusals = 0u32;
    loop {
        let permit = pace.permits.acquire().await;
        let not_before = *lock(&pace.not_before);
        tokio::time::sleep_until(not_before).await;
        let outcome = login().await;
        drop(permit);
        let hold = match &outcome {
            Err(MatrixFailure {
                class: FailureClass::RateLimited(wait),
                ..
            }) if refusals < MAX_REFUSALS => wait.unwrap_or(DEFAULT_HOLD),
            _ => return outcome,
        };
        refusals = refusals.saturating_add(1);
        let until = Instant::now() + hold;
        {
            let mut not_before = lock(&pace.not_before);
            *not_before = (*not_before).max(until);
        }
        info!(
            homeserver,
            wait_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
            "the homeserver rate-limits logins: every login to it waits"
        );
    }
}

/// The pace of `homeserver`, made on first use.
fn pace_of(homeserver: &str) -> Arc<Pace> {
    static PACES: OnceLock<Mutex<HashMap<String, Arc<Pace>>>> = OnceLock::new();
    let paces = PACES.get_or_init(Mutex::default);
    lock(paces)
        .entry(homeserver.to_owned())
        .or_insert_with(|| {
            Arc::new(Pace {
                permits: Semaphore::new(CONCURRENT_LOGINS),
                not_before: Mutex::new(Instant::now()),
            })
        })
        .clone()
}

/// Locks `mutex`, whatever a panic elsewhere left in it (an instant or a map of paces).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_refusal_holds_every_login_to_the_homeserver_for_its_retry_after() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let login = |calls: Arc<AtomicU32>| {
            move || {
                let calls = calls.clone();
                async move {
                    // The homeserver refuses the first login for 2 s; the rest pass.
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(MatrixFailure::new(
                            FailureClass::RateLimited(Some(Duration::from_secs(2))),
                            "429",
                        )),
                        _ => Ok(Instant::now()),
                    }
                }
            }
        };
        let first = paced("https://hs.test", login(calls.clone()));
        let second = async {
            // Starts after the refusal is known.
            tokio::time::sleep(Duration::from_millis(10)).await;
            paced("https://hs.test", login(calls.clone())).await
        };
        let (first, second) = tokio::join!(first, second);
        let (first, second) = (first.expect("first"), second.expect("second"));
        assert!(
            first - started >= Duration::from_secs(2),
            "the refused one waited"
        );
        assert!(
            second - started >= Duration::from_secs(2),
            "so did the one after it"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_and_other_homeservers_are_not_held() {
        let refused = || async {
            Err::<(), _>(MatrixFailure::new(
                FailureClass::RateLimited(Some(Duration::from_secs(60))),
                "429",
            ))
        };
        // b.test holds its logins for a minute, again and again.
        let held = tokio::spawn(paced("https://b.test", refused));
        tokio::task::yield_now().await;
        let started = Instant::now();
        let failed = paced("https://a.test", || async {
            Err::<(), _>(MatrixFailure::new(
                FailureClass::Auth { soft_logout: false },
                "bad password",
            ))
        })
        .await;
        assert!(matches!(
            failed,
            Err(MatrixFailure {
                class: FailureClass::Auth { .. },
                ..
            })
        ));
        paced("https://c.test", || async { Ok(()) })
            .await
            .expect("c");
        assert_eq!(Instant::now(), started, "nothing waited for b.test");
        held.abort();
    }
}
