//! What the fleet measures as it happens: latency histograms, and counters labelled with a
//! reason, recorded through the `metrics` facade. Until the binary installs its Prometheus
//! recorder (see `mxfleet-admin`), every call here is a no-op, so tests and tools pay nothing.
//!
//! The account's running totals for `status.json` stay on the [`StatusBoard`]; what is here is
//! what Prometheus needs beyond them: distributions and reasons.
//!
//! [`StatusBoard`]: crate::StatusBoard

use std::time::Duration;

/// How a metric is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter labelled with `account` and `reason`.
    Counter,
    /// A histogram of seconds labelled with `account`, over [`LATENCY_BUCKETS_SECS`].
    ///
    /// [`LATENCY_BUCKETS_SECS`]: crate::LATENCY_BUCKETS_SECS
    Histogram,
}

/// One metric the fleet records as things happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its name, by Prometheus's conventions (unit and `_total` suffixes).
    pub name: &'static str,
    /// How it is exposed.
    pub kind: Kind,
    /// What it measures.
    pub help: &'static str,
    /// For counters: every reason it is counted for (each series exists from the account's
    /// start, at 0, so `increase()` sees its first step).
    pub reasons: &'static [&'static str],
}

/// From a message received (its sync response arrived) to the first message of its answer in
/// the room.
pub const REPLY_FIRST_VISIBLE: Metric = histogram(
    "mxfleet_reply_first_visible_seconds",
    "Time from a message received (its sync response arrived) to the first message of its answer visible in the room.",
);
/// From a message received to its answer complete.
pub const REPLY_COMPLETE: Metric = histogram(
    "mxfleet_reply_complete_seconds",
    "Time from a message received (its sync response arrived) to its answer complete (final edit sent).",
);
/// From the backend asked to its first token.
pub const BACKEND_FIRST_TOKEN: Metric = histogram(
    "mxfleet_backend_first_token_seconds",
    "Time from a backend asked to the first text of its answer.",
);
/// From the backend asked to its last token.
pub const BACKEND: Metric = histogram(
    "mxfleet_backend_seconds",
    "Time a backend took per answer (request to last token, delivery included).",
);
/// From a message reaching its room's queue to its outcome recorded.
pub const TURN: Metric = histogram(
    "mxfleet_turn_seconds",
    "Time from a message reaching its room's queue to its outcome recorded (answered, skipped or given up).",
);
/// One sync request, long-poll included.
pub const SYNC_REQUEST: Metric = histogram(
    "mxfleet_sync_request_seconds",
    "Duration of sync requests to the homeserver (an idle long-poll lasts sync_timeout_secs).",
);
/// One message sent or edited into a room.
pub const SEND: Metric = histogram(
    "mxfleet_send_seconds",
    "Duration of sending one message or edit into a room (encryption included).",
);
/// mxfleet's own time in an answer, the backend's excluded.
pub const OVERHEAD: Metric = histogram(
    "mxfleet_overhead_seconds",
    "mxfleet's own time per answer: from its sync response arriving to the backend asked, plus from the backend's first text to the first send request issued (for a streaming backend this includes waiting for stream_min_initial_chars).",
);
/// The buckets of [`OVERHEAD`]: milliseconds, not the seconds of the other latencies.
pub const OVERHEAD_BUCKETS_SECS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
/// Account and child restarts, by failure class.
pub const RESTARTS: Metric = counter(
    "mxfleet_account_restarts_total",
    "Restarts of the account or its sync, by the class of the failure.",
    &[
        "network",
        "rate_limited",
        "auth",
        "storage",
        "fatal",
        "start_failed",
    ],
);
/// Messages not answered on purpose, by why.
pub const SKIPPED: Metric = counter(
    "mxfleet_messages_skipped_total",
    "Messages not answered on purpose: ignored (not addressed to the bot, outside the access lists, from another bot of the fleet), too_old (older than catch_up_max_age_secs), rate_limited (past a rate limit), backlog_full (the room's queue was full).",
    &["ignored", "too_old", "rate_limited", "backlog_full"],
);
/// Messages given up on, by why.
pub const FAILED: Metric = counter(
    "mxfleet_messages_failed_total",
    "Messages given up on: attempts (every attempt failed) or permanent (an error retrying cannot fix); the details are in the status and log.",
    &["attempts", "permanent"],
);

/// Every metric recorded here, for the exporter to describe.
pub const ALL: [Metric; 11] = [
    REPLY_FIRST_VISIBLE,
    REPLY_COMPLETE,
    BACKEND_FIRST_TOKEN,
    BACKEND,
    TURN,
    SYNC_REQUEST,
    SEND,
    OVERHEAD,
    RESTARTS,
    SKIPPED,
    FAILED,
];

/// Records that something for `account` took `took`.
pub fn observe(metric: Metric, account: &str, took: Duration) {
    metrics::histogram!(metric.name, "account" => account.to_owned()).record(took.as_secs_f64());
}

/// Counts `n` events of `metric` for `account`, for `reason` (one of the metric's reasons).
pub fn count(metric: Metric, account: &str, reason: &'static str, n: u64) {
    debug_assert!(
        metric.reasons.contains(&reason),
        "{reason} of {}",
        metric.name
    );
    metrics::counter!(metric.name, "account" => account.to_owned(), "reason" => reason)
        .increment(n);
}

/// Creates `account`'s series: its histograms empty and its counters at 0, one per reason, so
/// the first event of each is a visible step.
pub fn register_account(account: &str) {
    for metric in ALL {
        match metric.kind {
            Kind::Histogram => {
                let _ = metrics::histogram!(metric.name, "account" => account.to_owned());
            }
            Kind::Counter => {
                for reason in metric.reasons {
                    count(metric, account, reason, 0);
                }
            }
        }
    }
}

const fn histogram(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
        reasons: &[],
    }
}

const fn counter(
    name: &'static str,
    help: &'static str,
    reasons: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        reasons,
    }
}
