//! The soak: mxfleet with a fleet of accounts under a steady load for many minutes, its RSS
//! sampled every few seconds. A leak shows as a slope: the least-squares line through the
//! samples after the first tenth (start-up and caches filling) is reported in MiB per hour,
//! with the CPU seconds per 1,000 messages over the whole load.

use std::time::Duration;

use anyhow::{Context, Result};
use mxfleet_testkit::{Human, Synapse};
use tokio::time::Instant;

use crate::{
    cpu_secs, rss_kib,
    systems::{self, Kind, Programs, Running},
};

/// What the soak runs.
pub(crate) struct Settings {
    /// How long the load lasts.
    pub(crate) minutes: u64,
    /// Accounts in the fleet.
    pub(crate) accounts: usize,
    /// Messages per second, round-robin over the accounts.
    pub(crate) rate: f64,
    /// Extra TOML lines per account.
    pub(crate) extra: String,
}

/// What the soak saw.
pub(crate) struct Soak {
    /// The settings' accounts, minutes and rate.
    pub(crate) accounts: usize,
    pub(crate) minutes: u64,
    pub(crate) rate: f64,
    /// (seconds since the load began, RSS in MiB).
    pub(crate) samples: Vec<(f64, f64)>,
    /// Messages answered.
    pub(crate) messages: usize,
    /// Slope of the RSS after the first tenth, MiB per hour.
    pub(crate) slope_mib_per_hour: f64,
    /// CPU seconds per 1,000 messages over the load.
    pub(crate) cpu_per_1000: f64,
}

/// How often the RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Runs the soak.
pub(crate) async fn run(
    synapse: &Synapse,
    human: &Human,
    programs: &Programs,
    settings: &Settings,
) -> Result<Soak> {
    let n = settings.accounts;
    let bots = systems::register_bots(synapse, "soakbot", n).await?;
    let accounts = systems::accounts_of(synapse, &bots);
    let mut running = Running::new(Kind::Mxfleet, programs, &accounts, "", &settings.extra)?;
    running.start().await?;
    running.wait_ready(n).await?;
    let rooms = systems::open_dms(human, &bots).await?;
    let pid = running.pid().context("not running")?;
    let cpu_before = cpu_secs(pid)?;
    let began = Instant::now();
    let until = began + Duration::from_secs(settings.minutes * 60);
    let gap = Duration::from_secs_f64(1.0 / settings.rate.max(0.01));
    let mut samples = vec![(0.0, rss_kib(pid)? as f64 / 1024.0)];
    let (mut next_sample, mut next_send) = (began + SAMPLE_EVERY, began);
    let mut sent = 0usize;
    while Instant::now() < until {
        if Instant::now() >= next_sample {
            let at = began.elapsed().as_secs_f64();
            samples.push((at, rss_kib(pid)? as f64 / 1024.0));
            next_sample += SAMPLE_EVERY;
        }
        tokio::time::sleep_until(next_send.min(next_sample)).await;
        if Instant::now() < next_send {
            continue;
        }
        let i = sent % n;
        let (bot, room) = (&bots[i].0, &rooms[i]);
        let body = format!("soak #{sent}");
        human.send(room, &body).await?;
        human
            .expect_message(room, bot, &body, Duration::from_secs(30))
            .await?;
        sent += 1;
        next_send += gap;
        if eprint_progress(sent) {
            eprintln!(
                "  {sent} messages, RSS {:.1} MiB",
                samples.last().map_or(0.0, |s| s.1)
            );
        }
    }
    let cpu_per_1000 = (cpu_secs(pid)? - cpu_before) / sent.max(1) as f64 * 1000.0;
    running.stop().await?;
    let steady: Vec<(f64, f64)> = samples.iter().skip(samples.len() / 10).copied().collect();
    Ok(Soak {
        accounts: n,
        minutes: settings.minutes,
        rate: settings.rate,
        slope_mib_per_hour: slope(&steady) * 3600.0,
        samples,
        messages: sent,
        cpu_per_1000,
    })
}

/// Prints the soak's figures.
pub(crate) fn print(s: &Soak) {
    let first = s.samples.first().map_or(0.0, |x| x.1);
    let last = s.samples.last().map_or(0.0, |x| x.1);
    let peak = s.samples.iter().map(|x| x.1).fold(0.0, f64::max);
    println!();
    println!(
        "Soak: {} accounts, {} minutes at {} messages/s ({} messages).",
        s.accounts, s.minutes, s.rate, s.messages
    );
    println!();
    println!(
        "| RSS at start | RSS at end | peak | slope (after the first tenth) | CPU s / 1000 msgs |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {first:.1} MiB | {last:.1} MiB | {peak:.1} MiB | {:+.2} MiB/hour | {:.2} |",
        s.slope_mib_per_hour, s.cpu_per_1000
    );
}

/// The least-squares slope of `points` (y per x); 0 for fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

/// Whether to print progress after `sent` messages.
fn eprint_progress(sent: usize) -> bool {
    sent.is_multiple_of(500)
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn the_slope_is_the_least_squares_line() {
        assert_eq!(slope(&[]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 2.0 * x as f64 + 1.0)).collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)]) - 0.5).abs() < 1e-9);
    }
}
