//! The `mxfleet` binary under test, run as a child process with its own config and data dir.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The log filter of fleets under test: mxfleet's debug lines, matrix-sdk's warnings.
const FLEET_LOG_FILTER: &str = "info,mxfleet_core=debug,matrix_sdk=warn,matrix_sdk_base=warn,\
                                matrix_sdk_crypto=warn,matrix_sdk::http_client=off,\
                                matrix_sdk_crypto::backups=error";

/// A fleet process and its files.

#[derive(Debug)]
pub struct FleetProcess {
    dir: tempfile::TempDir,
    config: PathBuf,
    binary: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: usize,
    /// Where the next start's stderr goes instead of `fleet-<n>.log`.
    stderr: Option<std::io::PipeWriter>,
}

impl FleetProcess {
    /// Writes a config (`accounts_toml` plus a private `data_dir`) without starting anything.
    pub fn new(accounts_toml: &str) -> Result<FleetProcess> {
        Self::with_binary(accounts_toml, binary())
    }

    /// Like [`FleetProcess::new`], running the given `mxfleet` binary.
    pub fn with_binary(accounts_toml: &str, binary: PathBuf) -> Result<FleetProcess> {
        let dir = tempfile::Builder::new().prefix("mxfleet-test-").tempdir()?;
        let config = dir.path().join("mxfleet.toml");
        std::fs::write(&config, config_text(dir.path(), accounts_toml))?;
        Ok(FleetProcess {
            dir,
            config,
            binary,
            env: Vec::new(),
            child: None,
            starts: 0,
            stderr: None,
        })
    }

    /// Sets an environment variable for the next starts.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Sends the next start's logs into `pipe` (e.g. one nobody reads) instead of a file.
    pub fn log_into(&mut self, pipe: std::io::PipeWriter) {
        self.stderr = Some(pipe);
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replaces the config file's content (same data dir), e.g. before a reload.
    pub fn rewrite_config(&self, accounts_toml: &str) -> Result<()> {
        std::fs::write(&self.config, config_text(self.dir.path(), accounts_toml))?;
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `mxfleet run`; its JSON logs go to `fleet-<n>.log`.
    pub async fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("already running");
        }
        self.starts += 1;
        let log = match self.stderr.take() {
            Some(pipe) => Stdio::from(pipe),
            None => Stdio::from(std::fs::File::create(
                self.dir.path().join(format!("fleet-{}.log", self.starts)),
            )?),
        };
        let child = self
            .command(&["run", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning mxfleet")?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the fleet with SIGTERM and waits for it to exit.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let pid = child.id().context("no pid")?;
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                child.kill().await?;
                bail!("mxfleet did not exit within 30 s of SIGTERM")
            }
        }
    }

    /// The running fleet's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the fleet with SIGKILL (no cleanup runs).
    pub async fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill().await?;
        Ok(())
    }

    /// Runs another `mxfleet` command with this config to completion.
    pub async fn run_command(&self, args: &[&str]) -> Result<Output> {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        Ok(
            tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                .await
                .context("command hung")??,
        )
    }

    /// Forgets `account`'s committed sync position in the stopped fleet's database, as if its
    /// first sync had died before committing (while matrix-sdk kept its own token).
    pub async fn forget_sync_position(&self, account: &str) -> Result<()> {
        if self.child.is_some() {
            bail!("stop the fleet first");
        }
        let store = mxfleet_store::Store::open(&self.data_dir().join("mxfleet.redb"))?;
        store.forget_sync_position(account).await?;
        Ok(())
    }

    /// How many messages `account` has in the stopped fleet's inbox, whatever their state.
    pub async fn inbox_len(&self, account: &str) -> Result<u64> {
        if self.child.is_some() {
            bail!("stop the fleet first");
        }
        let store = mxfleet_store::Store::open(&self.data_dir().join("mxfleet.redb"))?;
        Ok(store.inbox_len(account).await?)
    }

    /// The current `status.json`, if written.
    pub fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.data_dir().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until `account` is in `state`; returns its status record.
    pub async fn wait_state(&self, account: &str, state: &str, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self.status().map(|s| s["accounts"][account].clone());
            if let Some(record) = current.as_ref().filter(|r| r["state"] == state) {
                return Ok(record.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{account} not {state} within {timeout:?}; status: {current:?}\nlog tail:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the status satisfies `ok`; returns it.
    pub async fn wait_for_status(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.status().filter(|s| ok(s)) {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{what}: not in the status within {timeout:?}: {:?}\nlog tail:\n{}",
                    self.status(),
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of the current run's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The current run's whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("fleet-{}.log", self.starts)))
            .unwrap_or_default()
    }

    /// Every run's logs, concatenated.
    pub fn all_logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("fleet-{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);

        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", FLEET_LOG_FILTER);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MXFLEET_") && key != "MXFLEET_BIN" {
                command.env_remove(key);
            }
        }
        command
    }
}

fn config_text(dir: &Path, accounts_toml: &str) -> String {
    format!(
        "data_dir = {:?}\nshutdown_timeout_secs = 10\n\n{accounts_toml}",
        dir.join("data").display().to_string()
    )
}

/// The `mxfleet` binary: `MXFLEET_BIN`, or the one next to the test executable's directory.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("MXFLEET_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/<tool> → target/debug/mxfleet; target/debug/deps/<test> → the same.
    let beside = exe.parent().map(|d| d.join("mxfleet"));
    if let Some(bin) = beside.filter(|b| b.is_file()) {
        return bin;
    }
    exe.parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("mxfleet"), |d| d.join("mxfleet"))
}
