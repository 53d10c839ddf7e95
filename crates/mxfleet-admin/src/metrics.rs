//! The Prometheus text exposition, served by the admin API (with its token) and by the
//! optional unauthenticated metrics listener.

use std::{collections::BTreeMap, fmt::Write as _, sync::OnceLock};

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use mxfleet_core::{AccountStatus, LATENCY_BUCKETS_SECS, StatusBoard, Timings};
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
    build_info(&mut out);
    process_metrics(&mut out, snapshot.started_ms);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// `mxfleet_backend_seconds` and `mxfleet_turn_seconds`, histograms per account.
fn backend_histogram(out: &mut String, accounts: &BTreeMap<String, AccountStatus>) {
    histogram(
        out,
        "mxfleet_backend_seconds",
        "Time a backend took per answer (request to last token).",
        accounts.iter().map(|(id, s)| (id, s.backend_timings())),
    );
    histogram(
        out,
        "mxfleet_turn_seconds",
        "Time from a message reaching its room's queue to its outcome recorded (mostly answers: the gate drops the rest before the queue).",
        accounts.iter().map(|(id, s)| (id, s.turns.clone())),
    );
}

/// One histogram family `name`, a series per account.
fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a String, Timings)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (id, timings) in series {
        for (le, count) in LATENCY_BUCKETS_SECS.iter().zip(timings.cumulative()) {
            let _ = writeln!(out, "{name}_bucket{{account=\"{id}\",le=\"{le}\"}} {count}");
        }
        let (count, sum) = (timings.count, timings.sum_ms as f64 / 1000.0);
        let _ = writeln!(out, "{name}_bucket{{account=\"{id}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{account=\"{id}\"}} {sum:.3}");
        let _ = writeln!(out, "{name}_count{{account=\"{id}\"}} {count}");
    }
}

/// The version and commit `mxfleet_build_info` reports, set once by the binary.
static BUILD: OnceLock<(String, String)> = OnceLock::new();

/// Sets what `mxfleet_build_info` reports (the binary's version and commit).
pub fn set_build_info(version: &str, commit: &str) {
    let _ = BUILD.set((version.to_owned(), commit.to_owned()));
}

/// `mxfleet_build_info{version, commit} 1`.
fn build_info(out: &mut String) {
    let (version, commit) = BUILD
        .get()
        .map_or((env!("CARGO_PKG_VERSION"), "unknown"), |(v, c)| {
            (v.as_str(), c.as_str())
        });
    let name = "mxfleet_build_info";
    let _ = writeln!(
        out,
        "# HELP {name} The running build: 1, labelled with its version and commit.\n# TYPE {name} gauge\n{name}{{version=\"{version}\",commit=\"{commit}\"}} 1"
    );
}

/// The standard `process_…` metrics, read from `/proc/self` (left out where unreadable).
fn process_metrics(out: &mut String, started_ms: u64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        });
    // utime and stime, fields 14 and 15 of /proc/self/stat; the 2nd (the name) may hold spaces.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after_name = stat.get(stat.rfind(')')?.saturating_add(2)..)?;
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let user = fields.get(11)?.parse::<u64>().ok()?;
            let system = fields.get(12)?.parse::<u64>().ok()?;
            Some(user.saturating_add(system) as f64 / clock_ticks())
        });
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    let rows: [(&str, &str, &str, Option<String>); 4] = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss.map(|v| v.to_string()),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu.map(|v| format!("{v:.2}")),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.map(|v| v.to_string()),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            Some(format!("{:.3}", started_ms as f64 / 1000.0)),
        ),
    ];
    for (name, kind, help, value) in rows {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 if it cannot say).
#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
