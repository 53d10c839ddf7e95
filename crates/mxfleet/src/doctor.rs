//! `mxfleet doctor ACCOUNT`: checks one account without a running fleet, one line per check,
//! each with what to do when it fails.
//!
//! It never logs in with a password: a password login into the bot's device id would replace
//! the token a running or future fleet uses. Session checks use the stored session (only when no
//! fleet holds the data directory) or the configured access token.

use std::{process::ExitCode, time::Duration};

use mxfleet_config::{AccountAuth, AccountSpec, Loaded};
use mxfleet_store::{DirLock, Store};
use serde_json::Value;

/// One check's verdict.
enum Verdict {
    Pass,
    Warn,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, verdict: Verdict, check: &str, detail: &str, fix: Option<&str>) {
        let tag = match verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        out!("{tag}  {check}: {detail}");
        if let (Some(fix), false) = (fix, matches!(verdict, Verdict::Pass)) {
            out!("      fix: {fix}");
        }
    }
}

/// Runs every check for `account`.
pub(crate) fn run(loaded: &Loaded, account: &str) -> ExitCode {
    let Some(spec) = loaded.config.accounts.get(account) else {
        let why = crate::not_here(loaded, account).unwrap_or_default();
        eprintln!("mxfleet: {why}");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mxfleet: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report { failed: false };
    runtime.block_on(checks(loaded, spec, &mut report));
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn checks(loaded: &Loaded, spec: &AccountSpec, report: &mut Report) {
    use Verdict::{Fail, Pass, Warn};
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default();
    report.line(
        Pass,
        "config",
        &format!("account {} is valid", spec.id),
        None,
    );
    if !spec.enabled {
        report.line(
            Warn,
            "enabled",
            "the account has enabled = false",
            Some("set enabled = true to run it"),
        );
    }

    // The homeserver and its versions.
    let base = spec.homeserver.as_str().trim_end_matches('/').to_owned();
    match get_json(&http, &format!("{base}/_matrix/client/versions"), None).await {
        Ok(v) => {
            let versions: Vec<&str> = v["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let latest = versions.last().copied().unwrap_or("none");
            report.line(
                Pass,
                "homeserver",
                &format!("{base} answers; spec versions up to {latest}"),
                None,
            );
        }
        Err(e) => {
            report.line(Fail, "homeserver", &format!("{base}: {e}"), Some("check `homeserver` (the client-server API base URL), DNS, TLS and the firewall"));
            return;
        }
    }

    // Who the account is: with the configured token, or the stored session.
    let data_dir = &loaded.config.data_dir;
    let fleet_running = DirLock::is_held(data_dir, "mxfleet.lock");
    let token = match &spec.auth {
        AccountAuth::AccessToken(token) => {
            Some((token.expose().to_owned(), "configured access token"))
        }
        AccountAuth::Password(_) if fleet_running => {
            report.line(
                Warn,
                "session",
                "a fleet is running on this data dir; its stored session is not read",
                Some("`mxfleet status` shows the running account"),
            );
            None
        }
        AccountAuth::Password(_) => match stored_session(data_dir, &spec.id).await {
            Ok(Some(token)) => Some((token, "stored session")),
            Ok(None) => {
                report.line(Warn, "session", "no stored session yet; the first `mxfleet run` logs in (the password is not tried here: a login would replace the device's token)", None);
                None
            }
            Err(e) => {
                report.line(
                    Fail,
                    "session",
                    &e,
                    Some("check the data dir's permissions"),
                );
                None
            }
        },
    };
    if let Some((token, source)) = token {
        match get_json(&http, &format!("{base}/_matrix/client/v3/account/whoami"), Some(&token)).await {
            Ok(v) => {
                let user = v["user_id"].as_str().unwrap_or("?");
                let device = v["device_id"].as_str().unwrap_or("?");
                report.line(Pass, "whoami", &format!("{source}: {user}, device {device}"), None);
                if let Some(configured) = &spec.user_id
                    && configured != user
                {
                    report.line(Fail, "user id", &format!("the token belongs to {user}, the config says {configured}"), Some("fix `user_id` or use that account's token"));
                }
            }
            Err(e) => report.line(Fail, "whoami", &format!("{source} rejected: {e}"), Some(match spec.auth {
                AccountAuth::AccessToken(_) => "the token is revoked or wrong: create a new one and update access_token",
                AccountAuth::Password(_) => "the session was revoked (device deleted?): `mxfleet run` reports auth_failed; delete the session to log in again",
            })),
        }
    }

    // The account's matrix-sdk store and encryption readiness.
    let store_dir = data_dir.join("accounts").join(&spec.id).join("matrix");
    if store_dir.is_dir() {
        report.line(
            Pass,
            "store",
            &format!("{} exists", store_dir.display()),
            None,
        );
    } else {
        report.line(
            Warn,
            "store",
            &format!(
                "{} does not exist yet; the first run creates it",
                store_dir.display()
            ),
            None,
        );
    }
    match &spec.auth {
        AccountAuth::Password(_) => report.line(Pass, "encryption", &format!("password login: the bot owns device {} and its crypto store, so it can read encrypted rooms", spec.device_id), None),
        AccountAuth::AccessToken(_) => report.line(Warn, "encryption", "access-token login cannot decrypt (the token's device keys are elsewhere)", Some("use password login for encrypted rooms")),
    }
    if fleet_running {
        report.line(Pass, "fleet", "a fleet is running on this data dir", None);
    }
}

async fn stored_session(
    data_dir: &std::path::Path,
    account: &str,
) -> Result<Option<String>, String> {
    let path = data_dir.join("mxfleet.redb");
    if !path.exists() {
        return Ok(None);
    }
    // Held while the database is open: a fleet starting meanwhile waits for it.
    let _lock = DirLock::acquire(data_dir, "mxfleet.lock").map_err(|e| e.to_string())?;
    let store = Store::open(&path).map_err(|e| e.to_string())?;
    let session = store.session(account).await.map_err(|e| e.to_string())?;
    Ok(session.map(|s| s.access_token))
}

async fn get_json(http: &reqwest::Client, url: &str, token: Option<&str>) -> Result<Value, String> {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_connect() {
            "connection failed".to_owned()
        } else if e.is_timeout() {
            "timed out".to_owned()
        } else {
            "request failed".to_owned()
        }
    })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        let code = body["errcode"].as_str().unwrap_or("");
        Err(format!("HTTP {} {code}", status.as_u16()))
    }
}
