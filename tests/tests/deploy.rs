//! The deployment files, checked with the real tools, and the process's side of them: the
//! systemd unit passes `systemd-analyze verify`, and the fleet speaks systemd's notify protocol
//! to a socket the test holds (as systemd would).

#![recursion_limit = "256"]

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use mxfleet_testkit::{Scenario, binary, output_text};

/// The checkout's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> Result<()> {
    let unit = std::fs::read_to_string(root().join("deploy/mxfleet.service"))?;
    ensure!(unit.contains("Type=notify") && unit.contains("ExecReload="));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let bin = binary();
    let unit = unit.replace("/usr/local/bin/mxfleet", &bin.display().to_string());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mxfleet.service");
    std::fs::write(&path, unit)?;
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .context("systemd-analyze (Debian's systemd package) is needed")?;
    let said = output_text(&verified);
    // It reports what it ignores on stderr with exit code 0: any finding fails.
    ensure!(
        verified.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    Ok(())
}

/// The notifications on `socket` until `until` is among them or `within` passes.
async fn notifications(
    socket: &tokio::net::UnixDatagram,
    seen: &mut Vec<String>,
    until: &str,
    within: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 4096];
    while !seen.iter().any(|n| n.contains(until)) {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .with_context(|| format!("no {until:?} within {within:?}; got {seen:?}"))??;
        seen.push(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned());
    }
    Ok(())
}

#[tokio::test]
async fn the_fleet_tells_systemd_it_is_ready_feeds_the_watchdog_and_says_when_it_stops()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path)?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .env("NOTIFY_SOCKET", &path.display().to_string())
        .env("WATCHDOG_USEC", "1000000")
        .start()
        .await?;
    let mut seen = Vec::new();
    notifications(&socket, &mut seen, "READY=1", Duration::from_secs(30)).await?;
    let ready = seen.iter().find(|n| n.contains("READY=1")).cloned();
    ensure!(
        ready
            .as_deref()
            .is_some_and(|r| r.contains("STATUS=1 account: 1 syncing")),
        "{seen:?}"
    );
    // Fed every half second while the supervisor answers.
    seen.clear();
    tokio::time::sleep(Duration::from_secs(3)).await;
    notifications(&socket, &mut seen, "WATCHDOG=1", Duration::from_secs(1)).await?;
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = socket.try_recv(&mut buf) {
        seen.push(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned());
    }
    let fed = seen.iter().filter(|n| n.as_str() == "WATCHDOG=1").count();
    ensure!(fed >= 4, "watchdog fed {fed} times in 3 s: {seen:?}");

    s.fleet.stop().await?;
    notifications(&socket, &mut seen, "STOPPING=1", Duration::from_secs(5)).await?;
    Ok(())
}

/// A program of the tools virtualenv (`scripts/setup-tools.sh`; `MXTEST_TOOLS_VENV`).
fn tool(name: &str) -> Result<PathBuf> {
    let venv = std::env::var_os("MXTEST_TOOLS_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mxfleet/tools-venv"))
        })
        .unwrap_or_default();
    let path = venv.join("bin").join(name);
    ensure!(
        path.exists(),
        "{} is missing: run scripts/setup-tools.sh",
        path.display()
    );
    Ok(path)
}

/// Runs the tools venv's Python on `script` with `args`; its stdout, or its complaint.
fn python(script: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool("python")?)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(said)
}

/// What kubernetes-validate's schemas cannot see: the PodMonitor (a CRD it has no schema for)
/// and the PodDisruptionBudget select the StatefulSet's pods and name its ports, the probes
/// point at mxfleet's routes, and the pod runs locked down.
const CROSS_CHECKS: &str = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pm = yaml.safe_load(open(sys.argv[2]))
def kind(k):
    found = next((d for d in docs if d["kind"] == k), None)
    if found is None:
        sys.exit(f"no {k} in {sys.argv[1]}")
    return found
sts, pdb = kind("StatefulSet"), kind("PodDisruptionBudget")
pod = sts["spec"]["template"]
labels = pod["metadata"]["labels"]
c = pod["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
selects = lambda sel: all(labels.get(k) == v for k, v in sel["matchLabels"].items())
problems = []
def need(ok, what):
    if not ok: problems.append(what)
need(pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1", "PodMonitor kind")
need(selects(pm["spec"]["selector"]), "the PodMonitor selects no mxfleet pod")
need(all(e["port"] in ports for e in pm["spec"]["podMetricsEndpoints"]), "the PodMonitor names no container port")
need(all(e.get("path", "/metrics") == "/metrics" for e in pm["spec"]["podMetricsEndpoints"]), "metrics path")
need(selects(pdb["spec"]["selector"]), "the PodDisruptionBudget selects no mxfleet pod")
for probe, path in [("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")]:
    get = c.get(probe, {}).get("httpGet", {})
    need(get.get("path") == path and get.get("port") in ports, probe)
psc, sc = pod["spec"]["securityContext"], c["securityContext"]
need(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "non-root")
need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
need(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
need(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
need(sc.get("capabilities", {}).get("drop") == ["ALL"], "all capabilities dropped")
tmp = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
need(any("emptyDir" in v for v in pod["spec"]["volumes"] if v["name"] in tmp), "/tmp on an emptyDir")
config = kind("ConfigMap")["data"]["mxfleet.toml"]
need('bind = "0.0.0.0:9090"' in config and ports.get("probes") == 9090, "probes on port 9090")
need('bind = "0.0.0.0:9091"' in config and ports.get("metrics") == 9091, "metrics on port 9091")
print("\n".join(problems))
sys.exit(1 if problems else 0)
"#;

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas_and_fit_together() -> Result<()> {
    let dir = root().join("deploy/kubernetes");
    let statefulset = dir.join("statefulset.yaml");
    let validated = Command::new(tool("kubernetes-validate")?)
        .args(["--strict", "--quiet"])
        .arg(&statefulset)
        .output()?;
    let said = output_text(&validated);
    // --quiet prints only warnings and failures: every resource must pass silently.
    ensure!(
        validated.status.success() && said.trim().is_empty(),
        "kubernetes-validate: {said}"
    );
    let podmonitor = dir.join("podmonitor.yaml");
    let paths = [
        statefulset.display().to_string(),
        podmonitor.display().to_string(),
    ];
    python(CROSS_CHECKS, &[&paths[0], &paths[1]])?;
    Ok(())
}

/// The StatefulSet's embedded config, its replica count and its shard count.
const EMBEDDED_CONFIG: &str = r#"
import sys, yaml, json
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kind = lambda k: next(d for d in docs if d["kind"] == k)
sts = kind("StatefulSet")
env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
print(json.dumps({"toml": kind("ConfigMap")["data"]["mxfleet.toml"],
                  "replicas": sts["spec"]["replicas"], "count": env["MXFLEET_SHARD__COUNT"]}))
"#;

#[test]
fn the_statefulsets_config_is_valid_on_every_replica_and_every_account_has_one() -> Result<()> {
    let statefulset = root().join("deploy/kubernetes/statefulset.yaml");
    let embedded: serde_json::Value = serde_json::from_str(&python(
        EMBEDDED_CONFIG,
        &[&statefulset.display().to_string()],
    )?)?;
    let replicas = embedded["replicas"].as_u64().context("replicas")?;
    ensure!(
        embedded["count"].as_str() == Some(replicas.to_string().as_str()),
        "MXFLEET_SHARD__COUNT {} is not spec.replicas {replicas}",
        embedded["count"]
    );
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mxfleet.toml");
    std::fs::write(&config, embedded["toml"].as_str().context("toml")?)?;
    // The mounted secret, here a file of our own.
    let password = dir.path().join("helper-password");
    std::fs::write(&password, "a password")?;
    let mut runs = Vec::new();
    for index in 0..replicas {
        let checked = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .arg("check")
            .env("MXFLEET_SHARD__COUNT", replicas.to_string())
            .env("MXFLEET_SHARD__INDEX", index.to_string())
            .env("MXFLEET_ACCOUNTS__HELPER__PASSWORD_FILE", &password)
            .output()?;
        let said = String::from_utf8_lossy(&checked.stdout).into_owned();
        ensure!(
            checked.status.success(),
            "replica {index}: {said}{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        runs.push(said);
    }
    let running = |account: &str| {
        runs.iter()
            .filter(|said| {
                said.lines().any(|l| {
                    l.starts_with("# replica ")
                        && l.split(" runs: ")
                            .nth(1)
                            .is_some_and(|ids| ids.split(", ").any(|id| id == account))
                })
            })
            .count()
    };
    ensure!(
        running("helper") == 1,
        "helper runs on {} replicas",
        running("helper")
    );
    Ok(())
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let dir = root().join("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts_test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .context("promtool (Debian's prometheus package) is needed")?;
        ensure!(
            out.status.success(),
            "promtool {}: {}",
            args.join(" "),
            output_text(&out)
        );
    }
    Ok(())
}
