//! The container image, built and run here with podman: `scripts/image.sh` packages the binary
//! under test on a Debian base made from Debian's packages (no registry needed), and the
//! containerised fleet — non-root, tini as PID 1, host network — answers a DM on the test
//! Synapse and passes its probes and its HEALTHCHECK.

#![recursion_limit = "256"]

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use mxfleet_testkit::{PodmanImage, Scenario, binary, free_port, output_text, repo_root};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `podman args`; its stdout, or its complaint.
fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman")
        .args(args)
        .output()
        .context("podman (Debian's package) is needed: scripts/image.sh installs it")?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        bail!(
            "podman {}: {said}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(said)
}

/// The container's log (podman prints the container's stderr on its own stderr).
fn container_log(name: &str) -> String {
    Command::new("podman")
        .args(["logs", name])
        .output()
        .map(|out| output_text(&out))
        .unwrap_or_default()
}

/// Removes the container when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "5", &self.0])
            .output();
    }
}

#[tokio::test]
async fn the_image_builds_here_and_the_containerised_fleet_answers_and_passes_its_probes()
-> Result<()> {
    // The image of the binary under test.
    let name = format!("mxfleet-test-{}", std::process::id());
    let tag = format!("localhost/{name}:test");
    let built = Command::new(repo_root().join("scripts/image.sh"))
        .arg("--binary")
        .arg(binary())
        .env("MXFLEET_IMAGE", &tag)
        .output()?;
    ensure!(
        built.status.success(),
        "scripts/image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    ensure!(String::from_utf8_lossy(&built.stdout).trim() == tag);
    let _image = PodmanImage(tag.clone());

    // Users and a config from a scenario that is not started here: the container runs it.
    let probes = free_port()?;
    let s = Scenario::new()
        .toml(&format!("[probes]\nbind = \"127.0.0.1:{probes}\""))
        .bot(|b| b.open_dms())
        .human()
        .prepare()
        .await?;
    let dir = tempfile::tempdir()?;
    let (config_dir, data_dir) = (dir.path().join("config"), dir.path().join("data"));
    std::fs::create_dir_all(&config_dir)?;
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(config_dir.join("mxfleet.toml"), s.config())?;
    // The image's user owns its data dir, as a volume's would be.
    let chowned = Command::new("chown")
        .arg("10001:10001")
        .arg(&data_dir)
        .status()?;
    ensure!(chowned.success(), "chown the data dir");
    let volumes = [
        format!("{}:/etc/mxfleet:ro", config_dir.display()),
        format!("{}:/var/lib/mxfleet", data_dir.display()),
    ];
    podman(&[
        "run",
        "--detach",
        "--runtime",
        "runc",
        "--network",
        "host",
        "--name",
        &name,
        "--volume",
        &volumes[0],
        "--volume",
        &volumes[1],
        &tag,
    ])?;
    let container = Container(name.clone());

    // Ready through its own probe, then a DM is answered.
    let readyz = format!("http://127.0.0.1:{probes}/readyz");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let ready = reqwest::get(&readyz).await.map(|r| r.status().as_u16());
        if matches!(ready, Ok(200)) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let logs = container_log(&container.0);
            bail!("the container never became ready ({ready:?}); its log:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "hello from the host").await?;
    human
        .expect_message(&dm, &bot, "hello from the host", TIMEOUT)
        .await?;
    let live = reqwest::get(format!("http://127.0.0.1:{probes}/livez")).await?;
    ensure!(live.status().as_u16() == 200, "livez: {}", live.status());

    // The image's HEALTHCHECK (mxfleet health) passes; it runs as 10001 under tini.
    podman(&["healthcheck", "run", &container.0]).context("the HEALTHCHECK")?;
    let pid1 = podman(&["exec", &container.0, "cat", "/proc/1/comm"])?;
    ensure!(pid1 == "tini", "PID 1 is {pid1}");
    let uid = podman(&["exec", &container.0, "id", "-u"])?;
    ensure!(uid == "10001", "runs as {uid}");

    // SIGTERM through tini stops the fleet cleanly.
    podman(&["stop", "--time", "20", &container.0])?;
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &container.0])?;
    ensure!(code == "0", "exit code {code}");
    let logs = container_log(&container.0);
    ensure!(logs.contains("mxfleet stopped"), "{logs}");
    drop(container);
    Ok(())
}
