//! The deployment files, checked with the real tools, and the process's side of them: the
//! systemd unit passes `systemd-analyze verify`, and the fleet speaks systemd's notify protocol
//! to a socket the test holds (as systemd would).

#![recursion_limit = "256"]

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use mxfleet_testkit::{Scenario, binary};

/// The checkout's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> Result<()> {
    let unit = std::fs::read_to_string(root().join("deploy/mxfleet.service"))?;
    ensure!(unit.contains("Type=notify") && unit.contains("ExecReload="));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let bin = binary();
    let unit = unit.replace("/usr/local/bin/mxfleet", &bin.display().to_string());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mxfleet.service");
    std::fs::write(&path, unit)?;
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .context("systemd-analyze (Debian's systemd package) is needed")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // It reports what it ignores on stderr with exit code 0: any finding fails.
    ensure!(
        verified.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    Ok(())
}

/// The notifications on `socket` until `until` is among them or `within` passes.
async fn notifications(
    socket: &tokio::net::UnixDatagram,
    seen: &mut Vec<String>,
    until: &str,
    within: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    while !seen.iter().any(|n| n.contains(until)) {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .with_context(|| format!("no {until:?} within {within:?}; got {seen:?}"))??;
        seen.push(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned());
    }
    Ok(())
}

#[tokio::test]
async fn the_fleet_tells_systemd_it_is_ready_feeds_the_watchdog_and_says_when_it_stops()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path)?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .env("NOTIFY_SOCKET", &path.display().to_string())
        .env("WATCHDOG_USEC", "1000000")
        .start()
        .await?;
    let mut seen = Vec::new();
    notifications(&socket, &mut seen, "READY=1", Duration::from_secs(30)).await?;
    let ready = seen.iter().find(|n| n.contains("READY=1")).cloned();
    ensure!(
        ready
            .as_deref()
            .is_some_and(|r| r.contains("STATUS=1 account: 1 syncing")),
        "{seen:?}"
    );
    // Fed every half second while the supervisor answers.
    seen.clear();
    tokio::time::sleep(Duration::from_secs(3)).await;
    notifications(&socket, &mut seen, "WATCHDOG=1", Duration::from_secs(1)).await?;
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = socket.try_recv(&mut buf) {
        seen.push(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned());
    }
    let fed = seen.iter().filter(|n| n.as_str() == "WATCHDOG=1").count();
    ensure!(fed >= 4, "watchdog fed {fed} times in 3 s: {seen:?}");

    s.fleet.stop().await?;
    notifications(&socket, &mut seen, "STOPPING=1", Duration::from_secs(5)).await?;
    Ok(())
}
