//! Observability checked with the real tools: `promtool check metrics` (Debian's `prometheus`
//! package) on the fleet's exposition, and a real Prometheus that scrapes a running fleet and
//! answers queries for its series.

#![recursion_limit = "256"]

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use mxfleet_testkit::{Scenario, free_port, output_text, url_encode};

const TIMEOUT: Duration = Duration::from_secs(40);

/// `promtool check metrics` on `exposition`: its findings (empty when it has none).
fn promtool_findings(exposition: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian's prometheus package) is needed")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(exposition.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = output_text(&out);
    match out.status.success() {
        true => Ok(said.trim().to_owned()),
        false => bail!("promtool failed: {said}"),
    }
}

/// A Prometheus server scraping `target` every second, stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(target: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mxfleet\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )?;
        let port = free_port()?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("prometheus (Debian's prometheus package) is needed")?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// The samples of instant query `query`, as `(labels, value)`.
    async fn query(&self, query: &str) -> Result<Vec<(serde_json::Value, String)>> {
        let text = reqwest::Client::new()
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                url_encode(query)
            ))
            .send()
            .await?
            .text()
            .await?;
        let answer: serde_json::Value = serde_json::from_str(&text)?;
        let results = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(results
            .into_iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap_or_default().to_owned();
                (r["metric"].clone(), value)
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `mxfleet_…` names the Grafana dashboard's panels and the alert rules query, per file.
fn queried_metrics() -> Result<Vec<(&'static str, std::collections::BTreeSet<String>)>> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let deploy = root.parent().context("the checkout")?.join("deploy");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        deploy.join("grafana/mxfleet.json"),
    )?)?;
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard's panels")?;
    let mut exprs = Vec::new();
    for panel in panels {
        let targets = panel["targets"]
            .as_array()
            .context("a panel without targets")?;
        ensure!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            exprs.push(
                target["expr"]
                    .as_str()
                    .context("a target without expr")?
                    .to_owned(),
            );
        }
    }
    let alerts = std::fs::read_to_string(deploy.join("prometheus/alerts.yaml"))?;
    Ok(vec![
        (
            "deploy/grafana/mxfleet.json",
            metric_names(&exprs.join("\n")),
        ),
        ("deploy/prometheus/alerts.yaml", metric_names(&alerts)),
    ])
}

/// The `mxfleet_…` identifiers in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mxfleet_") {
        let tail = rest.get(at..).unwrap_or_default();
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail.get(..end).unwrap_or_default().to_owned());
        rest = tail.get(end..).unwrap_or_default();
    }
    names
}

#[tokio::test]
async fn prometheus_scrapes_the_fleet_and_promtool_accepts_its_metrics() -> Result<()> {
    let port = free_port()?;
    let mut s = Scenario::new()
        .toml(&format!("[metrics]\nbind = \"127.0.0.1:{port}\""))
        .bot(|b| b.open_dms())
        .human()
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "count me").await?;
    human.expect_message(&dm, &bot, "count me", TIMEOUT).await?;

    let target = format!("127.0.0.1:{port}");
    // The turn is timed just after its answer is recorded: wait for it.
    let mut exposition = String::new();
    for _ in 0..50 {
        exposition = reqwest::get(format!("http://{target}/metrics"))
            .await?
            .text()
            .await?;
        if exposition.contains("mxfleet_turn_seconds_count{account=\"bot\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let findings = promtool_findings(&exposition)?;
    ensure!(findings.is_empty(), "promtool check metrics: {findings}");
    let version = env!("CARGO_PKG_VERSION");
    for needle in [
        format!("mxfleet_build_info{{version=\"{version}\",commit=\""),
        "mxfleet_turn_seconds_count{account=\"bot\"} 1".to_owned(),
        "mxfleet_backend_seconds_count{account=\"bot\"} 1".to_owned(),
        // Real histograms by the library, for each step of the answer.
        "# TYPE mxfleet_reply_first_visible_seconds histogram".to_owned(),
        "mxfleet_reply_first_visible_seconds_count{account=\"bot\"} 1".to_owned(),
        "mxfleet_reply_complete_seconds_count{account=\"bot\"} 1".to_owned(),
        "mxfleet_backend_first_token_seconds_count{account=\"bot\"} 1".to_owned(),
        "mxfleet_send_seconds_bucket{account=\"bot\",le=\"+Inf\"} ".to_owned(),
        "mxfleet_sync_request_seconds_bucket{account=\"bot\",le=\"0.1\"} ".to_owned(),
        // Counters with a reason, there at 0 before their first event.
        "mxfleet_account_restarts_total{account=\"bot\",reason=\"network\"} 0".to_owned(),
        "mxfleet_messages_skipped_total{account=\"bot\",reason=\"too_old\"} 0".to_owned(),
        "mxfleet_messages_failed_total{account=\"bot\",reason=\"attempts\"} 0".to_owned(),
        "\nprocess_resident_memory_bytes ".to_owned(),
        "\nprocess_cpu_seconds_total ".to_owned(),
        "\nprocess_open_fds ".to_owned(),
        "\nprocess_start_time_seconds ".to_owned(),
    ] {
        ensure!(
            exposition.contains(&needle),
            "no {needle:?} in\n{exposition}"
        );
    }
    // Every series the dashboard and the alerts query is one the fleet exposes.
    for (file, queried) in queried_metrics()? {
        let missing: Vec<&String> = queried
            .iter()
            .filter(|name| !exposition.lines().any(|l| l.starts_with(name.as_str())))
            .collect();
        ensure!(
            missing.is_empty(),
            "{file} queries {missing:?}, which the fleet does not expose"
        );
    }

    let prometheus = Prometheus::scraping(&target)?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let answered = loop {
        let samples = prometheus
            .query("mxfleet_messages_out_total{account=\"bot\"}")
            .await
            .unwrap_or_default();
        if let Some((labels, value)) = samples.first() {
            break (labels.clone(), value.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("Prometheus never had mxfleet_messages_out_total");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure!(
        answered.1.parse::<f64>().unwrap_or(0.0) >= 1.0,
        "{answered:?}"
    );
    ensure!(answered.0["job"] == "mxfleet", "{answered:?}");
    let syncing = prometheus
        .query("mxfleet_account_state{state=\"syncing\"} == 1")
        .await?;
    ensure!(
        syncing.iter().any(|(l, _)| l["account"] == "bot"),
        "{syncing:?}"
    );
    s.fleet.stop().await?;
    Ok(())
}

#[tokio::test]
async fn traces_carry_the_service_name_and_resource_the_environment_gives() -> Result<()> {
    let collector = mxfleet_testkit::FakeCollector::start().await?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .human()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .env("OTEL_SERVICE_NAME", "fleet-under-test")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=bots",
        )
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=sesame")
        .env("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        // The message's own lines are at debug level.
        .env("RUST_LOG", "info,mxfleet_core=debug")
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "traced").await?;
    human.expect_message(&dm, &bot, "traced", TIMEOUT).await?;
    s.fleet.stop().await?; // flushes the batch exporter

    // Decoded from the OTLP protobuf, not searched for as bytes.
    let spans = collector.spans()?;
    let message = spans
        .iter()
        .find(|s| {
            s.name == "message" && s.attributes.get("account").map(String::as_str) == Some("bot")
        })
        .with_context(|| {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            format!("no message span for the bot among {names:?}")
        })?;
    let resource = &message.resource;
    let version = env!("CARGO_PKG_VERSION");
    for (key, expected) in [
        ("service.name", "fleet-under-test"),
        ("service.version", version),
        ("deployment.environment", "test"),
        ("team", "bots"),
    ] {
        ensure!(
            resource.get(key).map(String::as_str) == Some(expected),
            "{key}: {:?} in {resource:?}",
            resource.get(key)
        );
    }
    ensure!(
        resource
            .get("service.instance.id")
            .is_some_and(|id| id.ends_with("/0")),
        "service.instance.id (host/replica): {resource:?}"
    );
    ensure!(message.trace_id.len() == 16 && message.span_id.len() == 8);
    // The exporter sent the headers the environment gave.
    let exports = collector.received();
    ensure!(
        exports
            .iter()
            .all(|e| e.headers.get("x-collector-key").map(String::as_str) == Some("sesame")),
        "OTEL_EXPORTER_OTLP_HEADERS did not reach the collector"
    );
    // One message's tree: the sync that brought it, the message, and under the message the
    // backend call and the sends of the answer, all in one trace.
    let sync = spans
        .iter()
        .find(|s| s.span_id == message.parent_span_id)
        .context("the message span has no parent among the exported spans")?;
    ensure!(
        sync.name == "sync" && sync.trace_id == message.trace_id,
        "the message's parent: {sync:?}"
    );
    ensure!(
        sync.attributes.get("account").map(String::as_str) == Some("bot")
            && sync.attributes.get("messages").map(String::as_str) == Some("1"),
        "{:?}",
        sync.attributes
    );
    for child in ["backend", "send"] {
        ensure!(
            spans.iter().any(|s| s.name == child
                && s.parent_span_id == message.span_id
                && s.trace_id == message.trace_id),
            "no {child} span under the message"
        );
    }
    // The message's log lines name its trace and span, so a log line leads to the trace.
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (trace, span) = (hex(&message.trace_id), hex(&message.span_id));
    let logs = s.fleet.all_logs();
    ensure!(
        logs.lines()
            .any(|l| l.contains(&format!("\"trace_id\":\"{trace}\""))
                && l.contains(&format!("\"span_id\":\"{span}\""))),
        "no JSON log line names trace {trace} and span {span}"
    );
    Ok(())
}

#[tokio::test]
async fn traces_go_over_grpc_when_the_environment_says_so() -> Result<()> {
    let collector = mxfleet_testkit::FakeCollector::start_grpc().await?;
    let mut s = Scenario::new()
        .bot(|b| b.open_dms())
        .human()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=sesame")
        .start()
        .await?;
    let (human, bot) = (&s.humans[0], s.bot("bot").user_id.clone());
    let dm = human.dm(&bot).await?;
    human.send(&dm, "over grpc").await?;
    human
        .expect_message(&dm, &bot, "over grpc", TIMEOUT)
        .await?;
    s.fleet.stop().await?; // flushes the batch exporter

    let spans = collector.spans()?;
    let message = spans
        .iter()
        .find(|s| s.name == "message")
        .with_context(|| format!("no message span over gRPC among {spans:?}"))?;
    ensure!(
        spans
            .iter()
            .any(|s| s.span_id == message.parent_span_id && s.name == "sync"),
        "the message's sync span did not come over gRPC"
    );
    ensure!(
        collector
            .received()
            .iter()
            .all(|e| e.headers.get("x-collector-key").map(String::as_str) == Some("sesame")),
        "OTEL_EXPORTER_OTLP_HEADERS did not reach the collector as gRPC metadata"
    );
    Ok(())
}

#[tokio::test]
async fn the_backend_call_is_a_genai_span_whose_trace_context_reaches_the_backend() -> Result<()> {
    let collector = mxfleet_testkit::FakeCollector::start().await?;
    let llm = mxfleet_testkit::FakeOpenAi::start(64).await?;
    let agent = "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >/dev/null; echo \\\"trace $TRACEPARENT\\\"\"]";
    let mut s = Scenario::new()
        .llm(&llm)
        .backend("agent", agent)
        .bot_named("hooked", |b| b.open_dms().backend("llm"))
        .bot_named("agented", |b| b.open_dms().backend("agent"))
        .human()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .start()
        .await?;
    let human = &s.humans[0];
    let (hooked, agented) = (
        s.bot("hooked").user_id.clone(),
        s.bot("agented").user_id.clone(),
    );
    let dm = human.dm(&hooked).await?;
    human.send(&dm, "trace me").await?;
    human
        .expect_final_text(
            &dm,
            &hooked,
            "openai says: trace me — streamed with ünïcödé ✓",
            TIMEOUT,
        )
        .await?;
    let agent_dm = human.dm(&agented).await?;
    human.send(&agent_dm, "and me").await?;
    let said = human
        .wait_for("the agent's answer", TIMEOUT, |h| {
            h.seen_from(&agent_dm, &agented)
                .into_iter()
                .map(|seen| h.current_text(&seen))
                .find(|text| text.starts_with("trace "))
        })
        .await?;
    s.fleet.stop().await?; // flushes the batch exporter

    let spans = collector.spans()?;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    // The backend got the backend span's context in its traceparent header.
    let traceparent = llm
        .requests()
        .first()
        .and_then(|r| r.traceparent.clone())
        .context("the backend got no traceparent")?;
    let parts: Vec<&str> = traceparent.split('-').collect();
    ensure!(parts.len() == 4 && parts[0] == "00", "{traceparent}");
    let backend = spans
        .iter()
        .find(|s| s.name == "backend" && hex(&s.span_id) == parts[2])
        .with_context(|| format!("no backend span {traceparent} among {spans:?}"))?;
    ensure!(
        hex(&backend.trace_id) == parts[1],
        "{traceparent} vs {backend:?}"
    );
    // Usage as the backend reported it ("trace me" is 2 words in; the fake counts words).
    for (key, expected) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "base-model"),
        ("gen_ai.system", "openai"),
        ("gen_ai.usage.input_tokens", "2"),
        ("gen_ai.usage.output_tokens", "9"),
    ] {
        ensure!(
            backend.attributes.get(key).map(String::as_str) == Some(expected),
            "{key} in {:?}",
            backend.attributes
        );
    }
    // It sits under the message's span, in the message's trace.
    let message = spans
        .iter()
        .find(|s| s.span_id == backend.parent_span_id)
        .context("the backend span has no parent among the exported spans")?;
    ensure!(
        message.name == "message" && message.trace_id == backend.trace_id,
        "{message:?}"
    );

    // A command agent gets it as TRACEPARENT.
    let given = said.trim_start_matches("trace ").trim();
    ensure!(
        given.len() == 55 && given.starts_with("00-"),
        "the agent saw TRACEPARENT={given:?}"
    );
    let trace = given.split('-').nth(1).unwrap_or_default();
    let agent_span = spans
        .iter()
        .find(|s| s.name == "backend" && hex(&s.trace_id) == trace)
        .with_context(|| format!("the agent's trace {trace} is not a backend span's"))?;
    ensure!(
        agent_span
            .attributes
            .get("gen_ai.system")
            .map(String::as_str)
            == Some("command"),
        "{:?}",
        agent_span.attributes
    );
    Ok(())
}
