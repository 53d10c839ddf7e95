//! The Prometheus exposition, served by the admin API (with its token) and by the optional
//! unauthenticated metrics listener.
//!
//! One `metrics-exporter-prometheus` recorder renders everything: the histograms and
//! reason-labelled counters the fleet records as things happen ([`mxfleet_core::measure`]),
//! the status board's per-account totals and gauges (copied in at each scrape: the board keeps
//! them for `status.json`), `mxfleet_build_info`, and the standard `process_…` metrics
//! (`metrics-process`). Names and units follow Prometheus's conventions.

use std::{collections::BTreeSet, sync::OnceLock, time::Duration};

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use mxfleet_core::{
    AccountStatus, LATENCY_BUCKETS_SECS, StatusBoard,
    measure::{self, Kind},
};
use mxfleet_store::{Store, now_ms};

/// How often the recorder's histograms are folded, scraped or not (bounds their memory).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The states `mxfleet_account_state` has a series for.
const STATES: [&str; 9] = [
    "starting",
    "connecting",
    "syncing",
    "backoff",
    "degraded",
    "auth_failed",
    "failed",
    "stopped",
    "disabled",
];

/// A running total of the status board exposed as a counter: its name, help, and value.
type BoardCounter = (&'static str, &'static str, fn(&AccountStatus) -> u64);

/// The status board's running totals, exposed as counters.
const BOARD_COUNTERS: [BoardCounter; 8] = [
    (
        "mxfleet_messages_in_total",
        "Messages accepted for an answer.",
        |s| s.messages_in,
    ),
    ("mxfleet_messages_out_total", "Answers sent.", |s| {
        s.replies_out
    }),
    (
        "mxfleet_backend_errors_total",
        "Answers whose backend failed; the room was told an error id, the details are in the log.",
        |s| s.backend_errors,
    ),
    (
        "mxfleet_answers_cut_total",
        "Answers cut at max_answer_chars or max_answer_parts (a runaway backend).",
        |s| s.answers_cut,
    ),
    (
        "mxfleet_otp_challenges_total",
        "One-time-code challenges issued.",
        |s| s.otp_challenges,
    ),
    (
        "mxfleet_undecryptable_total",
        "Messages that could not be decrypted when they arrived.",
        |s| s.undecryptable,
    ),
    (
        "mxfleet_undecryptable_notices_total",
        "Notices posted about undecryptable messages (one per room and Megolm session).",
        |s| s.undecryptable_notices,
    ),
    (
        "mxfleet_decrypted_late_total",
        "Undecryptable messages decrypted later, once their keys arrived.",
        |s| s.decrypted_late,
    ),
];

/// The recorder's handle and the process collector, once installed.
struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// The Prometheus text exposition of the fleet, as an HTTP response.
pub(crate) fn exposition(board: &StatusBoard, store: &Store) -> Response {
    let exporter = exporter();
    let snapshot = board.snapshot();
    let now = now_ms();
    for (id, status) in &snapshot.accounts {
        let current = status.state.to_string();
        for state in STATES {
            gauge!("mxfleet_account_state", "account" => id.clone(), "state" => state)
                .set(f64::from(u8::from(current == state)));
        }
        for (name, _, value) in BOARD_COUNTERS {
            counter!(name, "account" => id.clone()).absolute(value(status));
        }
        gauge!("mxfleet_messages_waiting", "account" => id.clone())
            .set(status.messages_waiting as f64);
        if let Some(last) = status.last_sync_ms {
            gauge!("mxfleet_sync_lag_seconds", "account" => id.clone())
                .set(now.saturating_sub(last) as f64 / 1000.0);
        }
    }
    gauge!("mxfleet_database_bytes").set(store.size_bytes() as f64);
    counter!("mxfleet_log_lines_dropped_total").absolute(mxfleet_telemetry::dropped_log_lines());
    exporter.process.collect();
    let present = snapshot.accounts.keys().map(String::as_str).collect();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        of_present_accounts(&exporter.handle.render(), &present),
    )
        .into_response()
}

/// `exposition` without the samples of accounts no longer in the fleet (removed by a reload):
/// the recorder keeps every series it ever saw, and a removed account must not linger as, say,
/// `syncing`. Samples without an `account` label stay.
fn of_present_accounts(exposition: &str, present: &BTreeSet<&str>) -> String {
    let mut kept = String::with_capacity(exposition.len());
    for line in exposition.lines() {
        let account = line
            .split_once("account=\"")
            .filter(|_| !line.starts_with('#'))
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(account, _)| account);
        if account.is_none_or(|account| present.contains(account)) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// The installed exporter. The first call (the binary's [`set_build_info`] at start, or else
/// the first scrape) installs the process-wide recorder, describes every metric and starts the
/// upkeep thread.
fn exporter() -> &'static Exporter {
    EXPORTER.get_or_init(|| {
        let overhead = Matcher::Full(measure::OVERHEAD.name.into());
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECS)
            .and_then(|b| b.set_buckets_for_metric(overhead, &measure::OVERHEAD_BUCKETS_SECS));
        // The bucket lists are non-empty constants: building cannot fail on them.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed: /metrics shows only the fleet's totals"
            );
        }
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("mxfleet-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        describe();
        let process = metrics_process::Collector::default();
        process.describe();
        Exporter { handle, process }
    })
}

/// Describes every metric (the `# HELP` lines).
fn describe() {
    for metric in measure::ALL {
        match metric.kind {
            Kind::Counter => describe_counter!(metric.name, metric.help),
            Kind::Histogram => {
                describe_histogram!(metric.name, metrics::Unit::Seconds, metric.help)
            }
        }
    }
    for (name, help, _) in BOARD_COUNTERS {
        describe_counter!(name, help);
    }
    describe_gauge!(
        "mxfleet_account_state",
        "1 for the state each account is in."
    );
    describe_gauge!(
        "mxfleet_messages_waiting",
        "Messages queued in the account's room workers, not yet taken up (a growing backlog)."
    );
    describe_gauge!(
        "mxfleet_sync_lag_seconds",
        metrics::Unit::Seconds,
        "Seconds since the last successful sync."
    );
    describe_gauge!(
        "mxfleet_database_bytes",
        metrics::Unit::Bytes,
        "Size of mxfleet.redb (sessions, inbox, memory, OTP, keys); pruned as in docs/operations.md."
    );
    describe_counter!(
        "mxfleet_log_lines_dropped_total",
        "Log lines dropped because the log consumer (stderr) did not keep up."
    );
    describe_gauge!(
        "mxfleet_build_info",
        "The running build: 1, labelled with its version and commit."
    );
}

/// Sets what `mxfleet_build_info` reports (the binary's version and commit), installing the
/// recorder: the binary calls it at start, before any account records anything.
pub fn set_build_info(version: &str, commit: &str) {
    exporter();
    gauge!("mxfleet_build_info", "version" => version.to_owned(), "commit" => commit.to_owned())
        .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_accounts_series_are_left_out() {
        let exposition = "# HELP mxfleet_account_state 1 for the state.\n\
# TYPE mxfleet_account_state gauge\n\
mxfleet_account_state{account=\"kept\",state=\"syncing\"} 1\n\
mxfleet_account_state{account=\"gone\",state=\"syncing\"} 1\n\
mxfleet_turn_seconds_bucket{account=\"gone\",le=\"0.1\"} 0\n\
mxfleet_turn_seconds_bucket{account=\"kept\",le=\"0.1\"} 2\n\
mxfleet_account_restarts_total{account=\"keptx\",reason=\"network\"} 0\n\
mxfleet_database_bytes 4096\n";
        let present = BTreeSet::from(["kept"]);
        let kept = of_present_accounts(exposition, &present);
        assert_eq!(
            kept,
            "# HELP mxfleet_account_state 1 for the state.\n\
# TYPE mxfleet_account_state gauge\n\
mxfleet_account_state{account=\"kept\",state=\"syncing\"} 1\n\
mxfleet_turn_seconds_bucket{account=\"kept\",le=\"0.1\"} 2\n\
mxfleet_database_bytes 4096\n"
        );
    }
}
