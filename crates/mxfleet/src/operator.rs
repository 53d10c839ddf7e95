//! The commands that look at a fleet: `status` (from the admin API, else the status file),
//! account control, `otp`, `reload` — through the running fleet's admin API — and `health`
//! (the fleet's probes, else the status file).

use std::process::ExitCode;

use mxfleet_admin::{AdminClient, ClientError};
use mxfleet_config::Loaded;
use mxfleet_core::read_status_file;
use mxfleet_store::{DirLock, now_ms};

use crate::{block_on, not_here};

pub(crate) fn status(loaded: &Loaded, json: bool) -> ExitCode {
    if let Some(spec) = &loaded.config.admin {
        match block_on(AdminClient::new(spec).get("/accounts")) {
            Ok(accounts) => return print_accounts(&accounts, json),
            Err(e) => eprintln!("mxfleet: {e}; showing the status file instead"),
        }
    }
    status_from_file(loaded, json)
}

pub(crate) fn print_accounts(accounts: &serde_json::Value, json: bool) -> ExitCode {
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(accounts).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    out!(
        "{:<16} {:<12} {:<34} {:>8} {:>6} {:>6} {:>8}  LAST ERROR",
        "ACCOUNT",
        "STATE",
        "CHILDREN",
        "SYNC LAG",
        "IN",
        "OUT",
        "RESTARTS"
    );
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    for a in accounts.as_array().into_iter().flatten() {
        let children: Vec<String> = a["children"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        let lag = a["sync_lag_secs"]
            .as_f64()
            .map_or("-".to_owned(), |l| format!("{l:.1}s"));
        out!(
            "{:<16} {:<12} {:<34} {:>8} {:>6} {:>6} {:>8}  {}",
            text(&a["id"]),
            text(&a["state"]),
            children.join(" "),
            lag,
            a["messages_in"],
            a["replies_out"],
            a["restarts"],
            text(&a["last_error"]),
        );
    }
    ExitCode::SUCCESS
}

/// Sends an operator action to the running fleet.
pub(crate) fn control(loaded: &Loaded, account: &str, action: &str) -> ExitCode {
    if let Some(why) = not_here(loaded, account) {
        eprintln!("mxfleet: {why}");
        return ExitCode::FAILURE;
    }
    with_admin(loaded, |client| async move {
        client
            .post(&format!("/accounts/{account}/{action}"))
            .await?;
        out!("{action}: {account}");
        Ok(())
    })
}

pub(crate) fn otp_list(loaded: &Loaded) -> ExitCode {
    with_admin(loaded, |client| async move {
        let challenges = client.get("/otp").await?;
        let list = challenges.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out!("no pending challenges");
            return Ok(());
        }
        out!(
            "{:<16} {:<36} {:<8} {:>10} {:>8}  LOCKED",
            "ACCOUNT",
            "SENDER",
            "CODE",
            "EXPIRES",
            "ATTEMPTS"
        );
        let now = now_ms();
        for c in list {
            let left = |ms: &serde_json::Value| {
                ms.as_u64()
                    .map(|t| format!("{}s", t.saturating_sub(now) / 1000))
                    .unwrap_or_else(|| "-".into())
            };
            out!(
                "{:<16} {:<36} {:<8} {:>10} {:>8}  {}",
                c["account"].as_str().unwrap_or("-"),
                c["sender"].as_str().unwrap_or("-"),
                c["code"].as_str().unwrap_or("-"),
                left(&c["expires_ms"]),
                c["attempts"],
                left(&c["locked_until_ms"]),
            );
        }
        Ok(())
    })
}

pub(crate) fn otp_approved(loaded: &Loaded) -> ExitCode {
    with_admin(loaded, |client| async move {
        let approved = client.get("/approvals").await?;
        let list = approved.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out!("no approved senders");
            return Ok(());
        }
        out!("{:<16} {:<36} APPROVED", "ACCOUNT", "SENDER");
        let now = now_ms();
        for a in list {
            let ago = a["approved_ms"].as_u64().map_or_else(
                || "-".into(),
                |t| format!("{}s ago", now.saturating_sub(t) / 1000),
            );
            out!(
                "{:<16} {:<36} {ago}",
                a["account"].as_str().unwrap_or("-"),
                a["sender"].as_str().unwrap_or("-"),
            );
        }
        Ok(())
    })
}

pub(crate) fn otp_revoke(loaded: &Loaded, account: &str, user: &str) -> ExitCode {
    if let Some(why) = not_here(loaded, account) {
        eprintln!("mxfleet: {why}");
        return ExitCode::FAILURE;
    }
    with_admin(loaded, |client| async move {
        client
            .post(&format!("/approvals/{account}/{user}/revoke"))
            .await?;
        out!("revoked: {user} on {account} (their next DM is challenged again)");
        Ok(())
    })
}

pub(crate) fn reload(loaded: &Loaded) -> ExitCode {
    with_admin(loaded, |client| async move {
        let report = client.post("/reload").await?;
        out!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        Ok(())
    })
}

/// Runs `f` against the running fleet's admin API; exit 1 with the error if it fails.
pub(crate) fn with_admin<F, Fut>(loaded: &Loaded, f: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let Some(spec) = &loaded.config.admin else {
        eprintln!(
            "mxfleet: the admin API is not configured: set admin.token (or admin.token_file) \
             and restart the fleet"
        );
        return ExitCode::FAILURE;
    };
    match block_on(f(AdminClient::new(spec))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mxfleet: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn status_from_file(loaded: &Loaded, json: bool) -> ExitCode {
    let data_dir = &loaded.config.data_dir;
    let status = match read_status_file(data_dir) {
        Ok(status) => status,
        Err(e) => {
            eprintln!(
                "mxfleet: no status in {}: {e} (has the fleet run with this data dir?)",
                data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let running = DirLock::is_held(data_dir, "mxfleet.lock");
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    out!(
        "fleet pid {} {} (status updated {} s ago)",
        status.pid,
        if running { "running" } else { "not running" },
        now_ms().saturating_sub(status.updated_ms) / 1000
    );
    out!(
        "{:<20} {:<12} {:<8} {:>8} {:>8} {:>8}  LAST ERROR",
        "ACCOUNT",
        "STATE",
        "SYNC",
        "RESTARTS",
        "IN",
        "OUT"
    );
    for (id, s) in &status.accounts {
        out!(
            "{:<20} {:<12} {:<8} {:>8} {:>8} {:>8}  {}",
            id,
            format!("{:?}", s.state).to_lowercase(),
            format!("{:?}", s.sync).to_lowercase(),
            s.restarts,
            s.messages_in,
            s.replies_out,
            s.last_error.as_deref().unwrap_or("-")
        );
    }
    ExitCode::SUCCESS
}

/// `mxfleet health`: exit 0 when the running fleet is alive and ready (every account syncing or
/// deliberately parked), 1 otherwise, with one line saying why. Asks the fleet's own probes
/// when `[probes] bind` is set, else judges from the data dir (the fleet holds its lock) and
/// the status file.
pub(crate) fn health(loaded: &Loaded) -> ExitCode {
    let verdict = match loaded.config.probes {
        Some(bind) => block_on(health_from_probes(bind)),
        None => health_from_file(loaded),
    };
    match verdict {
        Ok(summary) => {
            out!("ready: {summary}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            out!("not ready: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// The fleet's answers on `/livez` and `/readyz` at `bind` (an unspecified address is asked on
/// loopback).
async fn health_from_probes(bind: std::net::SocketAddr) -> Result<String, String> {
    let mut addr = bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))?;
    let ask = |path: &'static str| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .map_err(|e| format!("the fleet does not answer on {addr}: {e}"))?;
            let ok = response.status().is_success();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            Ok::<_, String>((ok, body))
        }
    };
    let (alive, live) = ask("/livez").await?;
    if !alive {
        return Err(format!(
            "not alive: {}",
            live["reason"].as_str().unwrap_or("?")
        ));
    }
    let (ready, readiness) = ask("/readyz").await?;
    let waiting = readiness["waiting"]
        .as_object()
        .map(|w| {
            w.iter()
                .map(|(id, state)| format!("{id} ({})", state.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    match ready {
        true => Ok(format!(
            "the fleet on {addr} is alive and every account settled"
        )),
        false => Err(format!("waiting for {waiting}")),
    }
}

/// Readiness from the status file, if a fleet holds the data dir.
fn health_from_file(loaded: &Loaded) -> Result<String, String> {
    let data_dir = &loaded.config.data_dir;
    if !DirLock::is_held(data_dir, "mxfleet.lock") {
        return Err(format!("no fleet is running on {}", data_dir.display()));
    }
    let status = read_status_file(data_dir)
        .map_err(|e| format!("no status in {}: {e}", data_dir.display()))?;
    let readiness = status.readiness();
    let waiting: Vec<String> = readiness
        .waiting
        .iter()
        .map(|(id, state)| format!("{id} ({state})"))
        .collect();
    match readiness.ready {
        true => Ok(format!(
            "fleet pid {} runs {} accounts, every one settled",
            status.pid,
            status.accounts.len()
        )),
        false => Err(format!("waiting for {}", waiting.join(", "))),
    }
}
