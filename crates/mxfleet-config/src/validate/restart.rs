//! The restart schedule, the shutdown deadline, the log buffer, the inbox retention, the
//! blocking threads and the stores' page cache.

use super::Checker;
use crate::Config;

/// Checks `[restart]`, `shutdown_timeout_secs` and `shutdown_drain_secs`.
pub(super) fn check(check: &mut Checker<'_>, raw: &Config) {
    const HOUR_MS: u64 = 3_600_000;
    const DAY: u64 = 86_400;
    let r = &raw.restart;
    check.range("restart.initial_delay_ms", r.initial_delay_ms, 1, HOUR_MS);
    check.range("restart.max_delay_ms", r.max_delay_ms, 1, 24 * HOUR_MS);
    check.require(
        r.max_delay_ms >= r.initial_delay_ms,
        "restart.max_delay_ms",
        "must be at least restart.initial_delay_ms",
    );
    check.range("restart.multiplier", r.multiplier, 1.0, 10.0);
    check.range("restart.jitter_ratio", r.jitter_ratio, 0.0, 1.0);
    check.range("restart.healthy_after_secs", r.healthy_after_secs, 0, DAY);
    check.range("restart.max_restarts", r.max_restarts, 1, 10_000);
    check.range(
        "restart.restart_window_secs",
        r.restart_window_secs,
        1,
        7 * DAY,
    );
    check.range("shutdown_timeout_secs", raw.shutdown_timeout_secs, 1, 3600);
    check.range("log.buffer_lines", raw.log.buffer_lines, 64, 1_000_000);
    check.range("inbox_retention_days", raw.inbox_retention_days, 1, 3650);
    check.range("blocking_threads", raw.blocking_threads, 4, 1024);
    check.range("store_page_cache_kib", raw.store_page_cache_kib, 8, 65_536);
    check.require(
        raw.shutdown_drain_secs < raw.shutdown_timeout_secs,
        "shutdown_drain_secs",
        "must be below shutdown_timeout_secs (the final edits need time after the drain)",
    );
}
