//! The Prometheus text exposition, served by the admin API (with its token) and by the
//! optional unauthenticated metrics listener.

use std::{collections::BTreeMap, fmt::Write as _};

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use mxfleet_core::{AccountStatus, BACKEND_BUCKETS_SECS, StatusBoard};
use mxfleet_store::{Store, now_ms};

/// The Prometheus text exposition of the fleet's counters and gauges, as an HTTP response.
pub(crate) fn exposition(board: &StatusBoard, store: &Store) -> Response {
    let snapshot = board.snapshot();
    let now = now_ms();
    let mut out = String::new();
    let states = [
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
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
    let accounts = &snapshot.accounts;
    family(
        "mxfleet_account_state",
        "gauge",
        "1 for the state each account is in.",
        &mut accounts.iter().flat_map(|(id, s)| {
            let current = s.state.to_string();
            states.iter().map(move |st| {
                (
                    format!("account=\"{id}\",state=\"{st}\""),
                    u8::from(current == *st).to_string(),
                )
            })
        }),
    );
    let counter = |f: fn(&AccountStatus) -> u64| {
        accounts
            .iter()
            .map(move |(id, s)| (format!("account=\"{id}\""), f(s).to_string()))
            .collect::<Vec<_>>()
    };
    family(
        "mxfleet_account_restarts_total",
        "counter",
        "Restarts of the account or its children.",
        &mut counter(|s| u64::from(s.restarts)).into_iter(),
    );
    family(
        "mxfleet_messages_in_total",
        "counter",
        "Messages accepted for an answer.",
        &mut counter(|s| s.messages_in).into_iter(),
    );
    family(
        "mxfleet_messages_out_total",
        "counter",
        "Answers sent.",
        &mut counter(|s| s.replies_out).into_iter(),
    );
    family(
        "mxfleet_messages_failed_total",
        "counter",
        "Messages given up on after every attempt failed (the reason is in the status and log).",
        &mut counter(|s| s.messages_failed).into_iter(),
    );
    family(
        "mxfleet_messages_rate_limited_total",
        "counter",
        "Messages skipped by the per-sender or per-room rate limits, or shed by a full room backlog.",
        &mut counter(|s| s.rate_limited).into_iter(),
    );
    family(
        "mxfleet_messages_waiting",
        "gauge",
        "Messages queued in the account's room workers, not yet taken up (a growing backlog).",
        &mut counter(|s| s.messages_waiting).into_iter(),
    );
    family(
        "mxfleet_backend_errors_total",
        "counter",
        "Answers whose backend failed; the room was told an error id, the details are in the log.",
        &mut counter(|s| s.backend_errors).into_iter(),
    );
    family(
        "mxfleet_messages_ignored_total",
        "counter",
        "Messages the gate turned away before storing them: not addressed to the bot, outside the access lists, or from another bot of this fleet.",
        &mut counter(|s| s.messages_ignored).into_iter(),
    );
    family(
        "mxfleet_answers_cut_total",
        "counter",
        "Answers cut at max_answer_chars or max_answer_parts (a runaway backend).",
        &mut counter(|s| s.answers_cut).into_iter(),
    );
    family(
        "mxfleet_messages_skipped_old_total",
        "counter",
        "Messages skipped as older than catch_up_max_age_secs.",
        &mut counter(|s| s.skipped_old).into_iter(),
    );
    family(
        "mxfleet_otp_challenges_total",
        "counter",
        "One-time-code challenges issued.",
        &mut counter(|s| s.otp_challenges).into_iter(),
    );
    family(
        "mxfleet_undecryptable_total",
        "counter",
        "Messages that could not be decrypted when they arrived.",
        &mut counter(|s| s.undecryptable).into_iter(),
    );
    family(
        "mxfleet_undecryptable_notices_total",
        "counter",
        "Notices posted about undecryptable messages (one per room and Megolm session).",
        &mut counter(|s| s.undecryptable_notices).into_iter(),
    );
    family(
        "mxfleet_decrypted_late_total",
        "counter",
        "Undecryptable messages decrypted later, once their keys arrived.",
        &mut counter(|s| s.decrypted_late).into_iter(),
    );
    family(
        "mxfleet_sync_lag_seconds",
        "gauge",
        "Seconds since the last successful sync.",
        &mut accounts.iter().filter_map(|(id, s)| {
            let last = s.last_sync_ms?;
            Some((
                format!("account=\"{id}\""),
                format!("{:.3}", now.saturating_sub(last) as f64 / 1000.0),
            ))
        }),
    );
    backend_histogram(&mut out, accounts);
    // Process-wide, without labels.
    for (name, kind, help, value) in [
        (
            "mxfleet_database_bytes",
            "gauge",
            "Size of mxfleet.redb (sessions, inbox, memory, OTP, keys); pruned as in docs/operations.md.",
            store.size_bytes(),
        ),
        (
            "mxfleet_log_lines_dropped_total",
            "counter",
            "Log lines dropped because the log consumer (stderr) did not keep up.",
            mxfleet_telemetry::dropped_log_lines(),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// `mxfleet_backend_seconds`, a histogram per account of the time backends took per answer.
fn backend_histogram(out: &mut String, accounts: &BTreeMap<String, AccountStatus>) {
    let name = "mxfleet_backend_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time a backend took per answer (request to last token).\n# TYPE {name} histogram"
    );
    for (id, s) in accounts {
        for (le, count) in BACKEND_BUCKETS_SECS.iter().zip(s.backend_cumulative()) {
            let _ = writeln!(out, "{name}_bucket{{account=\"{id}\",le=\"{le}\"}} {count}");
        }
        let (count, sum) = (s.backend_answers, s.backend_ms_total as f64 / 1000.0);
        let _ = writeln!(out, "{name}_bucket{{account=\"{id}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{account=\"{id}\"}} {sum:.3}");
        let _ = writeln!(out, "{name}_count{{account=\"{id}\"}} {count}");
    }
}
