//! What mxfleet keeps, and for how long: answered inbox entries and expired OTP challenges are
//! pruned at start and every hour while running; sessions of accounts that left the
//! configuration are pointed out at start, and `mxfleet account forget ID` removes everything an
//! account left behind (logging its session out first, when asked).

use std::{path::Path, process::ExitCode, time::Duration};

use mxfleet_config::{Loaded, ValidConfig};
use mxfleet_store::{Store, now_ms};
use tracing::{info, warn};

use crate::{block_on, open_stopped};

/// How often the running fleet prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes now and then every hour, for as long as the fleet runs.
pub(crate) async fn keep_tidy(store: Store, inbox_days: u64) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        prune(&store, inbox_days).await;
    }
}

/// One pruning pass: finished inbox entries older than `inbox_days`, OTP challenges an hour
/// past their end.
pub(crate) async fn prune(store: &Store, inbox_days: u64) {
    let now = now_ms();
    let cutoff = now.saturating_sub(inbox_days.saturating_mul(86_400_000));
    match store.prune_inbox(cutoff).await {
        Ok(0) => {}
        Ok(n) => info!(entries = n, days = inbox_days, "pruned old inbox entries"),
        Err(e) => warn!(error = %e, "could not prune the inbox"),
    }
    match store.prune_otp(now).await {
        Ok(0) => {}
        Ok(n) => info!(challenges = n, "pruned expired OTP challenges"),
        Err(e) => warn!(error = %e, "could not prune the OTP challenges"),
    }
}

/// Warns about stored sessions (live access tokens) of accounts no replica runs any more.
pub(crate) async fn point_out_leftovers(store: &Store, config: &ValidConfig) {
    let Ok(stored) = store.session_accounts().await else {
        return;
    };
    for account in stored {
        if !config.accounts.contains_key(&account) && !config.peers.contains_key(&account) {
            warn!(
                %account,
                "an account no longer in the configuration still has a stored session (a live \
                 access token): `mxfleet account forget {account} --logout` removes it"
            );
        }
    }
}

/// `mxfleet account forget ID [--logout]`: with the fleet stopped, logs the stored session out
/// (if asked) and removes every row and file the account left.
pub(crate) fn forget(
    loaded: &Loaded,
    account: &str,
    logout: bool,
    homeserver: Option<&str>,
) -> ExitCode {
    let config = &loaded.config;
    if config
        .accounts
        .get(account)
        .is_some_and(|spec| spec.enabled)
    {
        eprintln!(
            "mxfleet: account {account:?} is still configured and enabled; remove it (or set \
             enabled = false) first"
        );
        return ExitCode::FAILURE;
    }
    let data_dir = &config.data_dir;
    let (_lock, store) = match open_stopped(data_dir) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let configured = config
        .accounts
        .get(account)
        .map(|spec| spec.homeserver.to_string());
    let outcome = block_on(async {
        if logout {
            let homeserver = homeserver
                .map(str::to_owned)
                .or(configured)
                .ok_or_else(|| {
                    "--logout needs --homeserver URL: the account is not in the configuration"
                        .to_owned()
                })?;
            log_out(&store, account, &homeserver).await?;
        }
        store
            .forget_account(account)
            .await
            .map_err(|e| e.to_string())
    });
    let rows = match outcome {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("mxfleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    let files = remove_account_dir(data_dir, account);
    out!("forgot {account}: {rows} database rows{files}");
    ExitCode::SUCCESS
}

/// Logs the stored session of `account` out at `homeserver` (the access token stops working
/// and the device is deleted). No stored session is nothing to do.
async fn log_out(store: &Store, account: &str, homeserver: &str) -> Result<(), String> {
    let Some(session) = store.session(account).await.map_err(|e| e.to_string())? else {
        out!("{account} has no stored session; nothing to log out");
        return Ok(());
    };
    let url = format!(
        "{}/_matrix/client/v3/logout",
        homeserver.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&session.access_token)
        .json(&serde_json::json!({}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("logging out at {homeserver}: {}", e.without_url()))?;
    match response.status().as_u16() {
        200 => out!("logged {account} out ({})", session.device_id),
        // The token was already dead: nothing left to log out.
        401 => out!("{account}'s session was already logged out"),
        status => {
            return Err(format!(
                "logging out at {homeserver}: the homeserver answered {status}"
            ));
        }
    }
    Ok(())
}

/// Removes `data_dir/accounts/<account>` (its matrix-sdk stores); says what happened.
fn remove_account_dir(data_dir: &Path, account: &str) -> String {
    let dir = data_dir.join("accounts").join(account);
    if !mxfleet_config::is_valid_account_id(account) || !dir.exists() {
        return String::new();
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => format!(", and {}", dir.display()),
        Err(e) => format!("; {} could not be removed: {e}", dir.display()),
    }
}
