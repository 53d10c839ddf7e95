//! systemd's service notifications for `Type=notify` units, off unless systemd set
//! `NOTIFY_SOCKET`: `READY=1` once every account has had its first go at connecting (or after
//! [`READY_PATIENCE`], so one unreachable homeserver cannot fail the start), `STATUS=` with a
//! one-line summary whenever it changes, `WATCHDOG=1` at half the `WatchdogSec=` interval while
//! the fleet supervisor answers, and `STOPPING=1` at shutdown.

use std::{
    os::{linux::net::SocketAddrExt, unix::net::UnixDatagram},
    time::{Duration, Instant},
};

use mxfleet_admin::probes::supervisor_answers;
use mxfleet_core::{AccountState, FleetMsg, FleetStatus, StatusBoard};
use ractor::ActorRef;
use tracing::{debug, info, warn};

/// How long `READY=1` waits for the accounts' first connection attempts.
pub(crate) const READY_PATIENCE: Duration = Duration::from_secs(60);
/// How often the summary is looked at (and the watchdog fed, if its interval is longer).
const TICK: Duration = Duration::from_secs(1);

/// The socket systemd listens on for this service.
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The notifier of `NOTIFY_SOCKET`, if systemd set one (`@…` is an abstract socket).
    pub(crate) fn from_env() -> Option<Self> {
        let path = std::env::var("NOTIFY_SOCKET").ok()?;
        let addr = match path.strip_prefix('@') {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
            None => std::os::unix::net::SocketAddr::from_pathname(&path),
        };
        let (socket, addr) = match (UnixDatagram::unbound(), addr) {
            (Ok(socket), Ok(addr)) => (socket, addr),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, socket = %path, "cannot talk to systemd's notify socket");
                return None;
            }
        };
        Some(Self { socket, addr })
    }

    /// Sends `state` (`KEY=value` lines); a failure is logged, never fatal.
    pub(crate) fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            warn!(error = %e, "systemd notification not sent");
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

/// Tells systemd how the fleet is doing until aborted.
pub(crate) async fn keep_informed(
    notifier: Notifier,
    board: StatusBoard,
    fleet: ActorRef<FleetMsg>,
    watchdog: Option<Duration>,
) {
    let started = Instant::now();
    let feed_every = watchdog.map(|w| w / 2);
    let tick = feed_every.map_or(TICK, |f| f.min(TICK));
    let (mut ready, mut said, mut fed) = (false, String::new(), None::<Instant>);
    loop {
        let status = board.snapshot();
        let summary = summary(&status);
        if !ready && (first_attempts_done(&status) || started.elapsed() >= READY_PATIENCE) {
            ready = true;
            info!(%summary, "telling systemd the fleet is ready");
            notifier.notify(&format!("READY=1\nSTATUS={summary}"));
            said.clone_from(&summary);
        } else if summary != said {
            notifier.notify(&format!("STATUS={summary}"));
            said = summary;
        }
        let due = feed_every.is_some_and(|every| fed.is_none_or(|at| at.elapsed() >= every));
        if due {
            // Fed only while the supervisor's mailbox moves: a stuck fleet is restarted.
            if supervisor_answers(&fleet, tick).await {
                notifier.notify("WATCHDOG=1");
                fed = Some(Instant::now());
            } else {
                warn!("the fleet supervisor did not answer: systemd's watchdog is not fed");
            }
        }
        debug!(ready, "systemd informed");
        tokio::time::sleep(tick).await;
    }
}

/// One line for `systemctl status`: the accounts by state, e.g. `3 accounts: 2 syncing,
/// 1 auth_failed`.
pub(crate) fn summary(status: &FleetStatus) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for account in status.accounts.values() {
        let state = account.state.to_string();
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    counts.sort();
    let total = status.accounts.len();
    let by_state: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    match total {
        0 => "no accounts on this replica".to_owned(),
        1 => format!("1 account: {}", by_state.join(", ")),
        _ => format!("{total} accounts: {}", by_state.join(", ")),
    }
}

/// Whether every account has had its first go at connecting (none is starting or connecting).
fn first_attempts_done(status: &FleetStatus) -> bool {
    status
        .accounts
        .values()
        .all(|a| !matches!(a.state, AccountState::Starting | AccountState::Connecting))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(states: &[AccountState]) -> FleetStatus {
        let board = StatusBoard::new();
        for (i, state) in states.iter().enumerate() {
            board.transition(&format!("a{i}"), *state, None);
        }
        board.snapshot()
    }

    #[test]
    fn the_summary_counts_accounts_by_state_and_ready_waits_for_first_attempts() {
        use AccountState::*;
        for (states, line, done) in [
            (&[][..], "no accounts on this replica", true),
            (&[Syncing], "1 account: 1 syncing", true),
            (
                &[Syncing, AuthFailed, Syncing],
                "3 accounts: 1 auth_failed, 2 syncing",
                true,
            ),
            (
                &[Syncing, Backoff],
                "2 accounts: 1 backoff, 1 syncing",
                true,
            ),
            (
                &[Syncing, Connecting],
                "2 accounts: 1 connecting, 1 syncing",
                false,
            ),
            (&[Starting], "1 account: 1 starting", false),
        ] {
            let status = fleet(states);
            assert_eq!(summary(&status), line, "{states:?}");
            assert_eq!(first_attempts_done(&status), done, "{states:?}");
        }
    }
}
