//! `mxfleet-soak`: the chaos soak from the command line (see `mxfleet_testkit::soak`).
//!
//! ```text
//! mxfleet-soak [--duration-secs 600] [--accounts 3] [--interval-ms 250] [--seed 1]
//!              [--fault-every-secs 12] [--senders 2]
//! ```
//! Prints the report; exits 1 if any message was lost or answered twice.

use std::{process::ExitCode, time::Duration};

use mxfleet_testkit::soak::{SoakConfig, run};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mxfleet-soak: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "soak: {} s, {} accounts, {} senders each sending every {} ms, seed {}",
        config.duration.as_secs(),
        config.accounts,
        config.senders,
        config.interval.as_millis(),
        config.seed
    );
    match run(&config).await {
        Ok(report) => {
            println!("{report}");
            match report.ensure_exactly_once() {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("mxfleet-soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<SoakConfig, String> {
    let mut config = SoakConfig::default();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--duration-secs" => config.duration = Duration::from_secs(number),
            "--accounts" => {
                config.accounts = usize::try_from(number.clamp(1, 100)).unwrap_or(1);
            }
            "--interval-ms" => config.interval = Duration::from_millis(number.max(10)),
            "--seed" => config.seed = number,
            "--senders" => config.senders = usize::try_from(number.clamp(1, 16)).unwrap_or(1),
            "--fault-every-secs" => config.fault_every_secs = (number, number.saturating_mul(2)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(config)
}
