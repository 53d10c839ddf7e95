//! A real Synapse on loopback.
//!
//! The shared instance is the one `scripts/test.sh` starts (`MXTEST_SYNAPSE_DIR`), so the whole
//! suite pays Synapse's start-up once and tests run in parallel with their own random users.
//! Without it (a bare `cargo test`), each test process starts its own. Tests that kill Synapse
//! use a private instance.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::sync::OnceCell;

use crate::{free_port, random_name, repo_root};

/// A running Synapse.
#[derive(Debug)]
pub struct Synapse {
    dir: PathBuf,
    url: String,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

static SHARED: OnceCell<Synapse> = OnceCell::const_new();

impl Synapse {
    /// The suite's shared Synapse.
    pub async fn shared() -> Result<&'static Synapse> {
        SHARED
            .get_or_try_init(|| async {
                match (
                    std::env::var("MXTEST_SYNAPSE_DIR"),
                    std::env::var("MXTEST_HOMESERVER"),
                ) {
                    (Ok(dir), Ok(url)) => Ok(Synapse {
                        dir: dir.into(),
                        url,
                        child: None,
                        _temp: None,
                    }),
                    _ => Synapse::start_private().await,
                }
            })
            .await
    }

    /// A Synapse of this test's own, with raised rate limits; stopped when dropped.
    pub async fn start_private() -> Result<Synapse> {
        Self::start_private_with(false).await
    }

    /// A Synapse of this test's own with Synapse's default rate limits (e.g. 0.2 messages per
    /// second after a burst of 10); stopped when dropped.
    pub async fn start_private_default_limits() -> Result<Synapse> {
        Self::start_private_with(true).await
    }

    /// A Synapse of this test's own (raised rate limits) with `yaml` added to its
    /// configuration, e.g. short token lifetimes; stopped when dropped.
    pub async fn start_private_configured(yaml: &str) -> Result<Synapse> {
        Self::start_configured(false, yaml).await
    }

    async fn start_private_with(default_limits: bool) -> Result<Synapse> {
        Self::start_configured(default_limits, "").await
    }

    async fn start_configured(default_limits: bool, yaml: &str) -> Result<Synapse> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_path_buf();
        let port = free_port()?;
        let port = port.to_string();
        let mut args = vec!["config", path_str(&dir)?, &port];
        if default_limits {
            args.push("default-ratelimits");
        }
        script(&args).await?;
        if !yaml.is_empty() {
            use std::io::Write;
            let mut config = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("homeserver.yaml"))?;
            writeln!(config, "{yaml}")?;
        }

        let mut synapse = Synapse {
            dir,
            url: format!("http://127.0.0.1:{port}"),
            child: None,
            _temp: Some(temp),
        };
        synapse.spawn().await?;
        Ok(synapse)
    }

    /// The client-server API base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the (private) Synapse with SIGKILL.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("only a private Synapse can be killed")
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Freezes the (private) Synapse with SIGSTOP: connections stay open, nothing answers.
    pub async fn pause(&self) -> Result<()> {
        self.signal("-STOP").await
    }

    /// Thaws a paused Synapse with SIGCONT.
    pub async fn resume(&self) -> Result<()> {
        self.signal("-CONT").await
    }

    async fn signal(&self, signal: &str) -> Result<()> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            bail!("only a private Synapse can be signalled")
        };
        let status = tokio::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// Starts the (private) Synapse again on the same port and database.
    pub async fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill()?;
        }
        self.spawn().await
    }

    /// Registers a user; returns its user id. Admins go through the shared-secret script.
    pub async fn register(&self, localpart: &str, password: &str, admin: bool) -> Result<String> {
        if admin {
            let dir = path_str(&self.dir)?;
            script(&["register", dir, localpart, password, "admin"]).await?;
        } else {
            let response = reqwest::Client::new()
                .post(format!("{}/_matrix/client/v3/register", self.url))
                .body(
                    json!({"username": localpart, "password": password,
                           "auth": {"type": "m.login.dummy"}, "inhibit_login": true})
                    .to_string(),
                )
                .send()
                .await?;
            let status = response.status();
            if !status.is_success() {
                bail!(
                    "registering {localpart}: HTTP {status}: {}",
                    response.text().await?
                );
            }
        }
        Ok(format!("@{localpart}:localhost"))
    }

    /// Registers a fresh random user; returns (user id, password).
    pub async fn fresh_user(&self, prefix: &str) -> Result<(String, String)> {
        let localpart = random_name(prefix);
        let password = format!("pw-{}", random_name(""));
        let user_id = self.register(&localpart, &password, false).await?;
        Ok((user_id, password))
    }

    /// Logs in over the raw API (a new device); returns (access token, device id).
    pub async fn login_token(&self, user_id: &str, password: &str) -> Result<(String, String)> {
        let response: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/_matrix/client/v3/login", self.url))
            .body(
                json!({"type": "m.login.password",
                       "identifier": {"type": "m.id.user", "user": user_id}, "password": password})
                .to_string(),
            )
            .send()
            .await?
            .error_for_status()?
            .json_value()
            .await?;
        let token = response["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned();
        let device = response["device_id"]
            .as_str()
            .context("no device_id")?
            .to_owned();
        Ok((token, device))
    }

    /// A fresh admin user's access token.
    pub async fn admin_token(&self) -> Result<String> {
        let localpart = random_name("admin");
        let password = format!("pw-{}", random_name(""));
        let user_id = self.register(&localpart, &password, true).await?;
        Ok(self.login_token(&user_id, &password).await?.0)
    }

    /// Deletes a device through the admin API (revoking its tokens).
    pub async fn admin_delete_device(
        &self,
        admin_token: &str,
        user_id: &str,
        device_id: &str,
    ) -> Result<()> {
        reqwest::Client::new()
            .delete(format!(
                "{}/_synapse/admin/v2/users/{user_id}/devices/{device_id}",
                self.url
            ))
            .bearer_auth(admin_token)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// The room's events as the server stores them (encrypted ones stay encrypted), newest
    /// first, through the admin API: `(sender, type)` pairs.
    pub async fn admin_room_events(
        &self,
        admin_token: &str,
        room_id: &str,
    ) -> Result<Vec<(String, String)>> {
        let path = format!("/_synapse/admin/v1/rooms/{room_id}/messages?dir=b&limit=1000");
        let value = self.admin_get(admin_token, &path).await?;
        let chunk = value["chunk"].as_array().context("no chunk")?;
        Ok(chunk
            .iter()
            .map(|e| {
                let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (field("sender"), field("type"))
            })
            .collect())
    }

    /// Every message of the room, oldest first, through the admin API (all pages): the
    /// homeserver's own history, for counting answers.
    pub async fn admin_room_messages(
        &self,
        admin_token: &str,
        room_id: &str,
    ) -> Result<Vec<StoredMessage>> {
        let mut messages = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/_synapse/admin/v1/rooms/{room_id}/messages?dir=f&limit=1000");
            if let Some(token) = &from {
                path.push_str(&format!("&from={token}"));
            }
            let value = self.admin_get(admin_token, &path).await?;
            let chunk = value["chunk"].as_array().context("no chunk")?;
            for e in chunk.iter().filter(|e| e["type"] == "m.room.message") {
                let content = &e["content"];
                let relation = &content["m.relates_to"];
                let replaces = (relation["rel_type"] == "m.replace")
                    .then(|| relation["event_id"].as_str().map(str::to_owned))
                    .flatten();
                // An edit's text is its new content, not the `* …` fallback.
                let body = match replaces {
                    Some(_) => &content["m.new_content"]["body"],
                    None => &content["body"],
                };
                messages.push(StoredMessage {
                    event_id: e["event_id"].as_str().unwrap_or_default().to_owned(),
                    sender: e["sender"].as_str().unwrap_or_default().to_owned(),
                    body: body.as_str().unwrap_or_default().to_owned(),
                    ts_ms: e["origin_server_ts"].as_u64().unwrap_or_default(),
                    replaces,
                });
            }
            match value["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
        Ok(messages)
    }

    /// `GET` of an admin API `path`, as JSON.
    async fn admin_get(&self, admin_token: &str, path: &str) -> Result<serde_json::Value> {
        reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(admin_token)
            .send()
            .await?
            .error_for_status()?
            .json_value()
            .await
    }

    /// The device ids of a user, through the admin API.
    pub async fn admin_devices(&self, admin_token: &str, user_id: &str) -> Result<Vec<String>> {
        let path = format!("/_synapse/admin/v2/users/{user_id}/devices");
        let value = self.admin_get(admin_token, &path).await?;
        let devices = value["devices"].as_array().context("no devices array")?;
        Ok(devices
            .iter()
            .filter_map(|d| d["device_id"].as_str().map(str::to_owned))
            .collect())
    }

    async fn spawn(&mut self) -> Result<()> {
        let venv = venv_path().await?;
        let python = PathBuf::from(venv.trim()).join("bin/python");
        let mut command = Command::new(python);
        command
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.join("homeserver.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kill_with_parent(&mut command);
        self.child = Some(command.spawn().context("starting synapse")?);
        wait_until_up(&self.url).await
    }
}

/// A message as the homeserver stored it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its event id.
    pub event_id: String,
    /// Who sent it.
    pub sender: String,
    /// Its `body` (of an edit: the new content's).
    pub body: String,
    /// `origin_server_ts`.
    pub ts_ms: u64,
    /// The message it edits (`m.replace`), if it is an edit.
    pub replaces: Option<String>,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // A private Synapse on PostgreSQL (`MXFLEET_SYNAPSE_DB=postgres`) stops its cluster.
            if self.dir.join("pg/data").is_dir() {
                let _ = std::process::Command::new(repo_root().join("scripts/synapse.sh"))
                    .arg("db-stop")
                    .arg(&self.dir)
                    .status();
            }
        }
    }
}

/// Waits until `url` answers `/versions`.
pub async fn wait_until_up(url: &str) -> Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..240 {
        let probe = client
            .get(format!("{url}/_matrix/client/versions"))
            .send()
            .await;
        if probe.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("synapse at {url} did not come up")
}

/// Makes the child die with the test process (Linux), so a failed test leaks no Synapse.
#[allow(unsafe_code)]
fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

async fn script(args: &[&str]) -> Result<()> {
    let output = tokio::process::Command::new(repo_root().join("scripts/synapse.sh"))
        .args(args)
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "synapse.sh {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The Synapse virtualenv, installed on first use by `scripts/setup-synapse.sh`.
async fn venv_path() -> Result<String> {
    let output = tokio::process::Command::new(repo_root().join("scripts/setup-synapse.sh"))
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "setup-synapse.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 temp path")
}

/// Reads a response body as JSON (reqwest's `json` feature is off in this workspace).
pub(crate) trait JsonValue {
    /// The body as a JSON value.
    async fn json_value(self) -> Result<serde_json::Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<serde_json::Value> {
        let bytes = self.bytes().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
