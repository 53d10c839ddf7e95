//! The systems the benchmark measures with the same driver: mxfleet itself and its two anchors,
//! a bare matrix-sdk echo fleet (`sdk-echo`, in this crate) and a matrix-nio echo fleet
//! (`anchors/nio_echo.py`, matrix-nio from PyPI with encryption on). Each runs every account
//! in one process, answers a text with the same text, and says when all its accounts synced.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, stream};
use mxfleet_testkit::{FleetProcess, Human, OwnedRoomId, Synapse};
use serde_json::json;
use tokio::time::Instant;

/// Which system a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kind {
    /// mxfleet, with the echo backend.
    Mxfleet,
    /// The bare matrix-sdk echo fleet.
    SdkEcho,
    /// The matrix-nio echo fleet.
    NioEcho,
}

impl Kind {
    /// The name in tables and plots.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Mxfleet => "mxfleet",
            Kind::SdkEcho => "matrix-sdk echo",
            Kind::NioEcho => "matrix-nio echo",
        }
    }
}

/// Where the programs of the systems are.
#[derive(Debug, Clone)]
pub(crate) struct Programs {
    /// The mxfleet binary.
    pub(crate) mxfleet: PathBuf,
    /// The `sdk-echo` binary.
    pub(crate) sdk_echo: PathBuf,
    /// A Python with matrix-nio (and its encryption extras) installed.
    pub(crate) nio_python: PathBuf,
}

/// One account as a system is configured with it.
pub(crate) struct BotAccount<'a> {
    /// The homeserver's URL.
    pub(crate) homeserver: &'a str,
    /// The full user id.
    pub(crate) user_id: &'a str,
    /// The password.
    pub(crate) password: &'a str,
}

/// Registers `n` fresh bot users named after `prefix`; their ids and passwords.
pub(crate) async fn register_bots(
    synapse: &Synapse,
    prefix: &str,
    n: usize,
) -> Result<Vec<(String, String)>> {
    stream::iter(0..n)
        .map(|_| synapse.fresh_user(prefix))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// `bots` as accounts on `synapse`.
pub(crate) fn accounts_of<'a>(
    synapse: &'a Synapse,
    bots: &'a [(String, String)],
) -> Vec<BotAccount<'a>> {
    bots.iter()
        .map(|(user_id, password)| BotAccount {
            homeserver: synapse.url(),
            user_id,
            password,
        })
        .collect()
}

/// The human's DM with each of `bots`, in their order (room i is bot i's), joined.
pub(crate) async fn open_dms(human: &Human, bots: &[(String, String)]) -> Result<Vec<OwnedRoomId>> {
    stream::iter(bots)
        .map(|(bot, _)| human.dm(bot))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Whether `n` accounts of `fleet` (this run of it, not a previous one's status) are syncing.
pub(crate) fn fleet_synced(fleet: &FleetProcess, n: usize) -> bool {
    let Some(status) = fleet.status() else {
        return false;
    };
    let syncing = status["accounts"]
        .as_object()
        .map(|a| a.values().filter(|s| s["state"] == "syncing").count());
    // status.json from a previous run says "stopped"; only count this run's pid.
    let ours = status["pid"].as_u64() == fleet.pid().map(u64::from);
    ours && syncing == Some(n)
}

/// A system configured for a set of accounts, started and stopped by the driver.
pub(crate) enum Running {
    /// mxfleet, as the tests run it.
    Mxfleet(FleetProcess),
    /// An anchor process.
    Anchor(AnchorProcess),
}

impl Running {
    /// Configures `kind` for `bots`; mxfleet's accounts get `extra` TOML lines and `config_head`
    /// goes before them.
    pub(crate) fn new(
        kind: Kind,
        programs: &Programs,
        bots: &[BotAccount<'_>],
        config_head: &str,
        extra: &str,
    ) -> Result<Self> {
        match kind {
            Kind::Mxfleet => {
                let mut config = config_head.to_owned();
                for (i, bot) in bots.iter().enumerate() {
                    config.push_str(&format!(
                        "[accounts.bot{i}]\nhomeserver = {:?}\nuser_id = {:?}\npassword = {:?}\ndm_policy = \"open\"\nroom_policy = \"open\"\nmention_mode = \"always\"\nbackend = \"echo\"\n{extra}\n{UNLIMITED}\n\n",
                        bot.homeserver, bot.user_id, bot.password
                    ));
                }
                let fleet = FleetProcess::with_binary(&config, programs.mxfleet.clone())?;
                Ok(Running::Mxfleet(fleet))
            }
            Kind::SdkEcho => Ok(Running::Anchor(AnchorProcess::new(
                vec![programs.sdk_echo.clone().into_os_string()],
                bots,
            )?)),
            Kind::NioEcho => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("anchors/nio_echo.py");
                Ok(Running::Anchor(AnchorProcess::new(
                    vec![
                        programs.nio_python.clone().into_os_string(),
                        script.into_os_string(),
                    ],
                    bots,
                )?))
            }
        }
    }

    /// Starts the system.
    pub(crate) async fn start(&mut self) -> Result<()> {
        match self {
            Running::Mxfleet(fleet) => fleet.start().await,
            Running::Anchor(anchor) => anchor.start(),
        }
    }

    /// Waits until all `n` accounts have synced.
    pub(crate) async fn wait_ready(&mut self, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(900);
        while Instant::now() < deadline {
            if self.ready(n)? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("accounts did not all sync:\n{}", self.log_tail())
    }

    /// The process id, while running.
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Running::Mxfleet(fleet) => fleet.pid(),
            Running::Anchor(anchor) => anchor.child.as_ref().and_then(|c| c.id()),
        }
    }

    /// Stops the system (mxfleet with SIGTERM, an anchor with SIGKILL: its stores are sqlite
    /// with a journal, and it has nothing else to save).
    pub(crate) async fn stop(&mut self) -> Result<()> {
        match self {
            Running::Mxfleet(fleet) => fleet.stop().await.map(drop),
            Running::Anchor(anchor) => anchor.stop().await,
        }
    }

    fn ready(&mut self, n: usize) -> Result<bool> {
        match self {
            Running::Mxfleet(fleet) => Ok(fleet_synced(fleet, n)),
            Running::Anchor(anchor) => anchor.ready(n),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Running::Mxfleet(fleet) => fleet.log_tail(20),
            Running::Anchor(anchor) => anchor.log_tail(),
        }
    }
}

/// The benchmark's user sends far faster than the default rate limits allow, on purpose.
const UNLIMITED: &str = "limits = { per_sender_per_minute = 10000, per_room_per_minute = 10000 }";

/// An anchor fleet: a command given `accounts.json` and a ready file in its own directory.
pub(crate) struct AnchorProcess {
    dir: tempfile::TempDir,
    command: Vec<std::ffi::OsString>,
    child: Option<tokio::process::Child>,
}

impl AnchorProcess {
    fn new(command: Vec<std::ffi::OsString>, bots: &[BotAccount<'_>]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mxfleet-anchor-")
            .tempdir()?;
        let accounts: Vec<_> = bots
            .iter()
            .enumerate()
            .map(|(i, bot)| {
                json!({
                    "homeserver": bot.homeserver,
                    "user_id": bot.user_id,
                    "password": bot.password,
                    "store_dir": dir.path().join(format!("bot{i}")),
                })
            })
            .collect();
        std::fs::write(
            dir.path().join("accounts.json"),
            serde_json::to_vec(&accounts)?,
        )?;
        Ok(Self {
            dir,
            command,
            child: None,
        })
    }

    fn ready_file(&self) -> PathBuf {
        self.dir.path().join("ready")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("anchor.log")
    }

    fn start(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.ready_file());
        let (program, args) = self.command.split_first().context("no command")?;
        let log = std::fs::File::create(self.log_file())?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .arg(self.dir.path().join("accounts.json"))
            .arg(self.ready_file())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
        self.child = Some(child);
        Ok(())
    }

    fn ready(&mut self, n: usize) -> Result<bool> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!("the anchor exited ({status}):\n{}", self.log_tail());
        }
        let lines = std::fs::read_to_string(self.ready_file())
            .map(|text| text.lines().count())
            .unwrap_or(0);
        Ok(lines >= n)
    }

    async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
