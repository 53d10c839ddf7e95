//! The restart schedule: exponential backoff with jitter and a cap, reset after a healthy run,
//! and a bounded restart intensity.
//!
//! Pure: time and randomness come in as arguments, so every rule is unit-tested without sleeping.
//! Erlang-style intensity: more than `max_restarts` failures within `window` park the subject at
//! the cap delay instead of restarting it quickly, and the fleet itself never gives up. An
//! *outage* (the homeserver down or unreachable, not the account's doing) backs off the same
//! way but is not counted and never parks: the account retries as soon as its homeserver
//! answers again.

use std::{collections::VecDeque, time::Duration};

use mxfleet_config::RestartConfig;
use tokio::time::Instant;

/// The schedule's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// First delay.
    pub initial: Duration,
    /// Cap on any delay.
    pub max: Duration,
    /// Growth per consecutive failure.
    pub multiplier: f64,
    /// Spread as a fraction of the delay.
    pub jitter_ratio: f64,
    /// A run this long resets the schedule.
    pub healthy_after: Duration,
    /// Failures allowed within `window` before parking.
    pub max_restarts: u32,
    /// The intensity window.
    pub window: Duration,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartDecision {
    /// Wait this long, then restart.
    pub delay: Duration,
    /// Consecutive failures so far (1 for the first).
    pub attempt: u32,
    /// Whether the intensity limit was exceeded and the delay is the cap.
    pub parked: bool,
}

/// Per-subject restart bookkeeping.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    consecutive: u32,
    recent: VecDeque<Instant>,
    started_at: Option<Instant>,
}

impl From<&RestartConfig> for RestartPolicy {
    fn from(c: &RestartConfig) -> Self {
        Self {
            initial: Duration::from_millis(c.initial_delay_ms),
            max: Duration::from_millis(c.max_delay_ms),
            multiplier: c.multiplier,
            jitter_ratio: c.jitter_ratio,
            healthy_after: Duration::from_secs(c.healthy_after_secs),
            max_restarts: c.max_restarts,
            window: Duration::from_secs(c.restart_window_secs),
        }
    }
}

impl RestartPolicy {
    /// The un-jittered delay before restart number `attempt` (1-based), capped.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let millis = self.initial.as_millis() as f64 * self.multiplier.powi(exponent);
        let capped = millis.min(self.max.as_millis() as f64);
        Duration::from_millis(capped as u64)
    }

    /// `delay` spread by the jitter ratio; `unit` is a uniform sample from [0, 1). Never above
    /// the cap.
    pub fn jittered(&self, delay: Duration, unit: f64) -> Duration {
        let factor = 1.0 + self.jitter_ratio * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        delay.mul_f64(factor.max(0.0)).min(self.max)
    }
}

impl RestartTracker {
    /// A tracker with nothing recorded.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            consecutive: 0,
            recent: VecDeque::new(),
            started_at: None,
        }
    }

    /// Records that the subject (re)started at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started_at = Some(now);
    }

    /// Records a failure of the subject's own at `now` and decides the delay. `unit` is a
    /// uniform random sample in [0, 1); `at_least` is a server-imposed minimum (429
    /// `retry_after`).
    pub fn failed(
        &mut self,
        now: Instant,
        unit: f64,
        at_least: Option<Duration>,
    ) -> RestartDecision {
        self.decide(now, unit, at_least, true)
    }

    /// Records a failure caused by an outage at `now`: the delay grows as for
    /// [`RestartTracker::failed`], but the failure is not counted towards parking.
    pub fn outage(&mut self, now: Instant, unit: f64) -> RestartDecision {
        self.decide(now, unit, None, false)
    }

    fn decide(
        &mut self,
        now: Instant,
        unit: f64,
        at_least: Option<Duration>,
        counted: bool,
    ) -> RestartDecision {
        let healthy = self
            .started_at
            .is_some_and(|start| now.saturating_duration_since(start) >= self.policy.healthy_after);
        if healthy {
            self.consecutive = 0;
        }
        self.started_at = None;
        self.consecutive = self.consecutive.saturating_add(1);

        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        if counted {
            self.recent.push_back(now);
        }
        let parked = counted && self.recent.len() > self.policy.max_restarts as usize;

        let delay = if parked {
            self.policy.max
        } else {
            self.policy
                .jittered(self.policy.base_delay(self.consecutive), unit)
        };
        let delay = at_least.map_or(delay, |min| delay.max(min));
        RestartDecision {
            delay,
            attempt: self.consecutive,
            parked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter_ratio: 0.2,
            healthy_after: Duration::from_secs(60),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = policy();
        let delays: Vec<u64> = (1..=9)
            .map(|n| p.base_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(p.base_delay(u32::MAX), p.max);
    }

    #[test]
    fn jitter_stays_within_the_ratio_and_the_cap() {
        let p = policy();
        let base = Duration::from_secs(10);
        for i in 0..100 {
            let d = p.jittered(base, f64::from(i) / 100.0);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert!(p.jittered(p.max, 0.999) <= p.max);
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_run_resets_the_schedule() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        t.started(start);
        assert_eq!(t.failed(start, 0.5, None).delay, Duration::from_millis(500));
        t.started(start + Duration::from_secs(1));
        assert_eq!(
            t.failed(start + Duration::from_secs(2), 0.5, None).delay,
            Duration::from_secs(1)
        );
        // Runs for longer than healthy_after, then fails: back to the first delay.
        t.started(start + Duration::from_secs(3));
        let d = t.failed(start + Duration::from_secs(100), 0.5, None);
        assert_eq!((d.delay, d.attempt), (Duration::from_millis(500), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_restarts_in_the_window_park_at_the_cap() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        for i in 0..5 {
            let d = t.failed(start + Duration::from_secs(i), 0.5, None);
            assert!(!d.parked, "failure {i} should not park");
        }
        let sixth = t.failed(start + Duration::from_secs(5), 0.5, None);
        assert!(sixth.parked);
        assert_eq!(sixth.delay, Duration::from_secs(60));
        // Once the window has passed, failures are counted afresh.
        let later = t.failed(start + Duration::from_secs(200), 0.5, None);
        assert!(!later.parked);
    }

    #[tokio::test(start_paused = true)]
    async fn outages_back_off_but_never_park_nor_count_towards_parking() {
        let mut t = RestartTracker::new(policy());
        let start = Instant::now();
        let delays: Vec<(u64, bool)> = (0..10)
            .map(|i| {
                let d = t.outage(start + Duration::from_secs(i), 0.5);
                (d.delay.as_millis() as u64, d.parked)
            })
            .collect();
        assert!(delays.iter().all(|(_, parked)| !parked), "{delays:?}");
        assert_eq!(delays[0].0, 500);
        assert!(delays.windows(2).all(|w| w[1].0 >= w[0].0), "{delays:?}");
        assert_eq!(delays[9].0, 60_000, "capped");
        // The account's own failures afterwards start their count from nothing.
        for i in 0..5 {
            let d = t.failed(start + Duration::from_secs(20 + i), 0.5, None);
            assert!(!d.parked, "own failure {i} parked after outages");
        }
        assert!(t.failed(start + Duration::from_secs(30), 0.5, None).parked);
    }

    #[tokio::test(start_paused = true)]
    async fn server_retry_after_is_a_floor() {
        let mut t = RestartTracker::new(policy());
        let d = t.failed(Instant::now(), 0.5, Some(Duration::from_secs(7)));
        assert_eq!(d.delay, Duration::from_secs(7));
    }
}
