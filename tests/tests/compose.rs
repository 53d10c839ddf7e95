//! `deploy/compose.yaml` brought up here with podman-compose (Debian's package): the images of
//! mxfleet (the binary under test), Synapse (Debian's python3-venv and PyPI's matrix-synapse)
//! and Prometheus (Debian's package) are built by `scripts/compose.sh` on a base made with
//! mmdebstrap; the stack's own Synapse registers the accounts, a real Matrix client logs in to
//! it and DMs the bot, which answers, and the stack's Prometheus scrapes the fleet and loads its
//! alert rules. The tracing services (compose.tracing.yaml) need upstream images and are not
//! run here.

#![recursion_limit = "256"]

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use mxfleet_testkit::{Human, PodmanImage, binary, free_port, output_text, repo_root, url_encode};

const TIMEOUT: Duration = Duration::from_secs(120);

/// One running stack, taken down with its volumes when dropped.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
}

impl Stack {
    /// `podman-compose -p project -f deploy/compose.yaml args…`, with the stack's environment.
    fn compose(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("podman-compose")
            .args(["-p", &self.project, "-f", "deploy/compose.yaml"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(repo_root())
            .output()
    }

    /// The log of `service`'s container, after the state of every container of the stack (an
    /// empty log says little without it: never created, not started, or exited).
    fn log(&self, service: &str) -> String {
        let label = format!("label=io.podman.compose.project={}", self.project);
        let states = Command::new("podman")
            .args(["ps", "-a", "--filter", &label])
            .args(["--format", "{{.Names}} {{.Status}} {{.Image}}"])
            .output()
            .map(|out| output_text(&out))
            .unwrap_or_default();
        let log = Command::new("podman")
            .args(["logs", &format!("{}_{service}_1", self.project)])
            .output()
            .map(|out| output_text(&out))
            .unwrap_or_default();
        format!("containers:\n{states}\nlog of {service}:\n{log}")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v"]);
        // podman-compose 1.0.3 may leave the named volumes: remove them by the project label.
        let label = format!("label=io.podman.compose.project={}", self.project);
        if let Ok(out) = Command::new("podman")
            .args(["volume", "ls", "-q", "--filter", &label])
            .output()
        {
            for volume in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("podman")
                    .args(["volume", "rm", "-f", volume])
                    .output();
            }
        }
    }
}

/// Waits until `url` answers 200.
async fn until_ok(url: &str, what: &str, stack: &Stack, service: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let status = reqwest::get(url).await.map(|r| r.status().as_u16());
        if matches!(status, Ok(200)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{what} never answered ({status:?}); the stack:\n{}",
                stack.log(service)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// GETs `url` as JSON.
async fn get_json(url: &str) -> Result<serde_json::Value> {
    let text = reqwest::get(url).await?.text().await?;
    Ok(serde_json::from_str(&text)?)
}

/// Builds the stack's images with scripts/compose.sh (mxfleet as `image`).
fn build_images(image: &str) -> Result<()> {
    let built = Command::new(repo_root().join("scripts/compose.sh"))
        .arg("--binary")
        .arg(binary())
        .env("MXFLEET_IMAGE", image)
        .output()?;
    ensure!(
        built.status.success(),
        "scripts/compose.sh: {}",
        output_text(&built)
    );
    Ok(())
}

#[tokio::test]
async fn compose_brings_up_synapse_mxfleet_and_prometheus_and_the_bot_answers() -> Result<()> {
    let id = std::process::id();
    let image = format!("localhost/mxfleet-compose-test-{id}:test");
    build_images(&image)?;
    // Synapse's and Prometheus's images are kept: they do not change with the code and take a
    // minute to build.
    let _image = PodmanImage(image.clone());
    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let [synapse, probes, metrics, prometheus] = ports.map(|p| p.to_string());
    let (bot_password, demo_password) = (format!("bot-{id}-pw"), format!("demo-{id}-pw"));
    let env = [
        ("MXFLEET_IMAGE", image.as_str()),
        ("MXFLEET_BOT_PASSWORD", &bot_password),
        ("DEMO_USER_PASSWORD", &demo_password),
        ("SYNAPSE_PORT", &synapse),
        ("MXFLEET_PROBES_PORT", &probes),
        ("MXFLEET_METRICS_PORT", &metrics),
        ("PROMETHEUS_PORT", &prometheus),
    ];
    let stack = Stack {
        project: format!("mxfleet-test-{id}"),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let up = stack.compose(&["up", "-d"])?;
    ensure!(
        up.status.success(),
        "podman-compose up: {}",
        output_text(&up)
    );

    // The stack's Synapse, then the fleet ready through its probe.
    let homeserver = format!("http://127.0.0.1:{synapse}");
    until_ok(
        &format!("{homeserver}/health"),
        "Synapse",
        &stack,
        "synapse",
    )
    .await?;
    let readyz = format!("http://127.0.0.1:{probes}/readyz");
    until_ok(&readyz, "mxfleet's /readyz", &stack, "mxfleet").await?;

    // The demo user the stack registered DMs the bot; the echo backend answers.
    let human = Human::login(&homeserver, "@demo:localhost", &demo_password).await?;
    let dm = human.dm("@helper:localhost").await?;
    human.send(&dm, "hello from compose").await?;
    human
        .expect_message(&dm, "@helper:localhost", "hello from compose", TIMEOUT)
        .await
        .with_context(|| stack.log("mxfleet"))?;

    // The stack's Prometheus scrapes the fleet (every 15 s) and has the alert rules.
    let api = format!("http://127.0.0.1:{prometheus}/api/v1");
    let query = "mxfleet_messages_out_total{account=\"helper\"}";
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let answer = get_json(&format!("{api}/query?query={}", url_encode(query)))
            .await
            .unwrap_or_default();
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok());
        if value.is_some_and(|v| v >= 1.0) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "Prometheus never had {query} ≥ 1: {answer}; its log:\n{}",
                stack.log("prometheus")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rules = get_json(&format!("{api}/rules")).await?;
    let names: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(
        names.contains(&"MxfleetRestartStorm"),
        "the stack's Prometheus has not loaded deploy/prometheus/alerts.yaml: {names:?}"
    );

    // Down cleanly: the fleet stops on SIGTERM.
    let down = stack.compose(&["stop"])?;
    ensure!(
        down.status.success(),
        "podman-compose stop: {}",
        output_text(&down)
    );
    let log = stack.log("mxfleet");
    ensure!(log.contains("mxfleet stopped"), "{log}");
    check_files_exist(&repo_root())?;
    Ok(())
}

/// The files compose.yaml mounts exist where it says (a moved file would mount an empty dir).
fn check_files_exist(root: &Path) -> Result<()> {
    for file in [
        "deploy/compose/mxfleet.toml",
        "deploy/compose/prometheus.yml",
        "deploy/prometheus/alerts.yaml",
        "deploy/compose/otel-collector.yaml",
    ] {
        ensure!(root.join(file).is_file(), "{file} is missing");
    }
    Ok(())
}
