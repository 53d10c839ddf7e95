//! End-to-end test of the login storm: a fleet's first start against a homeserver that
//! rate-limits logins follows the homeserver's pace — every account gets in without a single
//! account failing its start for being refused.

#![recursion_limit = "256"]

use anyhow::{Result, ensure};
use mxfleet_testkit::{Scenario, Synapse};

/// Accounts logging in at once.
const ACCOUNTS: usize = 8;

#[tokio::test]
async fn a_login_storm_follows_the_homeservers_pace_and_no_account_fails() -> Result<()> {
    // Two logins at once, then one every two seconds, from one address.
    let synapse = Synapse::start_private_configured(
        "rc_login:\n  address: {per_second: 0.5, burst_count: 2}\n  account: {per_second: 10000, burst_count: 10000}\n  failed_attempts: {per_second: 10000, burst_count: 10000}",
    )
    .await?;
    let mut scenario = Scenario::new();
    for i in 0..ACCOUNTS {
        scenario = scenario.bot_named(&format!("bot{i}"), |b| b.open_dms());
    }
    let s = scenario.start_on(&synapse).await?;
    let status = s.fleet.status().unwrap_or_default();
    let restarts: Vec<(String, u64)> = (0..ACCOUNTS)
        .map(|i| {
            let id = format!("bot{i}");
            let n = status["accounts"][&id]["restarts"]
                .as_u64()
                .unwrap_or(u64::MAX);
            (id, n)
        })
        .collect();
    ensure!(
        restarts.iter().all(|(_, n)| *n == 0),
        "accounts restarted during the storm: {restarts:?}\n{}",
        s.fleet.log_tail(30)
    );
    ensure!(
        s.fleet.log().contains("rate-limits logins"),
        "the homeserver never refused a login: the test proves nothing\n{}",
        s.fleet.log_tail(30)
    );
    Ok(())
}
