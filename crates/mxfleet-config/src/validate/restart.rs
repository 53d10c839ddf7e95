//! The restart schedule and the shutdown deadline.

use super::Checker;
use crate::Config;

/// Checks `[restart]`, `shutdown_timeout_secs` and `shutdown_drain_secs`.
pub(super) fn check(check: &mut Checker<'_>, raw: &Config) {
    let r = &raw.restart;
    check.require(
        r.initial_delay_ms >= 1,
        "restart.initial_delay_ms",
        "must be at least 1",
    );
    check.require(
        r.max_delay_ms >= r.initial_delay_ms,
        "restart.max_delay_ms",
        "must be at least restart.initial_delay_ms",
    );
    check.require(
        r.multiplier >= 1.0,
        "restart.multiplier",
        "must be at least 1.0",
    );
    check.require(
        (0.0..=1.0).contains(&r.jitter_ratio),
        "restart.jitter_ratio",
        "must be between 0.0 and 1.0",
    );
    check.require(
        r.max_restarts >= 1,
        "restart.max_restarts",
        "must be at least 1",
    );
    check.require(
        r.restart_window_secs >= 1,
        "restart.restart_window_secs",
        "must be at least 1",
    );
    check.require(
        raw.shutdown_timeout_secs >= 1,
        "shutdown_timeout_secs",
        "must be at least 1",
    );
    check.require(
        raw.shutdown_drain_secs < raw.shutdown_timeout_secs,
        "shutdown_drain_secs",
        "must be below shutdown_timeout_secs (the final edits need time after the drain)",
    );
}
