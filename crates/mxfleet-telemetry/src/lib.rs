//! Logs and traces for mxfleet.
//!
//! Logs go to stderr, human-readable or JSON, filtered by `RUST_LOG` or the configured level,
//! through a writer thread with a bounded buffer of `log.buffer_lines`: the runtime threads
//! only queue a line, so a stalled log consumer (a full pipe, a stuck journald) costs dropped
//! lines — counted by [`dropped_log_lines`] — and never stalls an account.
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans are
//! also exported over OTLP by a batch processor on its own thread, so an unreachable
//! collector costs a bounded queue and never blocks message handling. The standard variables
//! choose the rest: `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, `http/json`
//! or `grpc`, whose exports run on a small Tokio runtime of their own), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER` and its argument,
//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`. A value mxfleet cannot honour is an
//! error at start, never a silent fallback.

use mxfleet_config::{LogConfig, LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// The count of dropped log lines, once logging is initialised.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the log consumer did not keep up (0 before [`init`]).
pub fn dropped_log_lines() -> u64 {
    DROPPED.get().map_or(0, |counter| {
        u64::try_from(counter.dropped_lines()).unwrap_or(u64::MAX)
    })
}

/// The service name traces carry unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "mxfleet";

/// The target of spans that last as long as an actor (a room worker, a sync loop): they give
/// log lines their account and room but are not exported as traces, where a span open for
/// hours is noise; the work inside them is exported as traces of its own.
pub const LIFETIME_TARGET: &str = "mxfleet::lifetime";

/// Added to a log filter that says nothing about matrix-sdk: its INFO lines are per-request
/// chatter, its HTTP client logs expected 404s as errors, and its backup task warns at every
/// room key while no key backup is set up. mxfleet logs its own classified failures.
const QUIET_MATRIX_SDK: &str = "matrix_sdk=warn,matrix_sdk_base=warn,matrix_sdk_crypto=warn,\
matrix_sdk_sqlite=warn,matrix_sdk::http_client=off,matrix_sdk_crypto::backups=error";

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("log level {0:?} is not a valid filter: {1}")]
    Filter(String, String),
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// An `OTEL_…` variable holds a value mxfleet does not honour.
    #[error("{variable}={value:?} is not supported: {expected}")]
    Unsupported {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Flushes and shuts the trace exporter down, and flushes the log lines still queued, when
/// dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Flushes the queued log lines when dropped (waiting a second at most).
    _logs: WorkerGuard,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Bounded by the SDK's own shutdown timeout; an absent collector cannot hang exit.
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: logs per `log`, plus OTLP export when configured by env,
/// spans tagged with `instance` as their `service.instance.id`.
pub fn init(log: &LogConfig, instance: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| TelemetryError::Filter(directives.clone(), e.to_string()))?,
        _ => {
            let directives = if log.level.contains("matrix_sdk") {
                log.level.clone()
            } else {
                format!("{},{QUIET_MATRIX_SDK}", log.level)
            };
            EnvFilter::try_new(&directives)
                .map_err(|e| TelemetryError::Filter(log.level.clone(), e.to_string()))?
        }
    };
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(log.buffer_lines)
        .thread_name("mxfleet-log-writer")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let fmt = match log.format {
        LogFormat::Human => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    }
    .with_filter(filter);

    let provider = if otlp_configured() {
        let protocol = check_environment(&|name| std::env::var(name).ok())?;
        Some(tracer_provider(protocol, resource(instance))?)
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .with_filter(EnvFilter::new(format!(
                "info,{LIFETIME_TARGET}=off,matrix_sdk=warn,matrix_sdk_base=warn,\
matrix_sdk_crypto=warn"
            )))
    });
    let _ = EXPORTING.set(provider.is_some());
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(TelemetryGuard {
        provider,
        _logs: worker,
    })
}

/// The tracer provider exporting over `protocol`. Endpoint and headers come from the
/// environment, the sampler too (the SDK's default configuration reads `OTEL_TRACES_SAMPLER`);
/// the protocol is the checked one, since the crate's own default would be JSON.
fn tracer_provider(
    protocol: Protocol,
    resource: Resource,
) -> Result<SdkTracerProvider, TelemetryError> {
    let failed = |e: &dyn std::fmt::Display| TelemetryError::Exporter(e.to_string());
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let provider = match protocol {
        Protocol::Grpc => {
            // tonic needs a Tokio reactor, which the batch processor's thread does not have:
            // the exports run on a small runtime of their own.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("mxfleet-otlp")
                .enable_all()
                .build()
                .map_err(|e| failed(&e))?;
            let exporter = {
                let _entered = runtime.enter();
                SpanExporter::builder()
                    .with_tonic()
                    .build()
                    .map_err(|e| failed(&e))?
            };
            builder.with_batch_exporter(OnRuntime {
                inner: std::sync::Arc::new(exporter),
                runtime: Some(runtime),
            })
        }
        _ => builder.with_batch_exporter(
            SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build()
                .map_err(|e| failed(&e))?,
        ),
    };
    Ok(provider.build())
}

/// A span exporter whose exports run on a Tokio runtime of its own (the gRPC one).
#[derive(Debug)]
struct OnRuntime {
    inner: std::sync::Arc<SpanExporter>,
    /// Shut down in the background when dropped (dropping a runtime may not block).
    runtime: Option<tokio::runtime::Runtime>,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        use opentelemetry_sdk::error::OTelSdkError;
        let inner = self.inner.clone();
        let task = self
            .runtime
            .as_ref()
            .map(|runtime| runtime.spawn(async move { inner.export(batch).await }));
        async move {
            match task {
                Some(task) => task
                    .await
                    .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string()))),
                None => Err(OTelSdkError::AlreadyShutdown),
            }
        }
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        opentelemetry_sdk::trace::SpanExporter::shutdown_with_timeout(&*self.inner, timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        opentelemetry_sdk::trace::SpanExporter::force_flush(&*self.inner)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export holds a clone.
        if let Some(inner) = std::sync::Arc::get_mut(&mut self.inner) {
            opentelemetry_sdk::trace::SpanExporter::set_resource(inner, resource);
        }
    }
}

impl Drop for OnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The resource every span carries: what the environment says (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, read by the SDK's detectors) wins; otherwise `service.name` is
/// `mxfleet`; `service.version` is this build's and `service.instance.id` is `instance`, unless
/// the environment's attributes name them.
fn resource(instance: &str) -> Resource {
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let named = |key: &str| {
        attributes
            .split(',')
            .any(|pair| pair.split('=').next().map(str::trim) == Some(key))
    };
    let mut builder = Resource::builder();
    let service_name_set = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|n| !n.is_empty());
    if !service_name_set && !named("service.name") {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    let ours = [
        ("service.version", env!("CARGO_PKG_VERSION").to_owned()),
        ("service.instance.id", instance.to_owned()),
    ];
    for (key, value) in ours {
        if !named(key) {
            builder = builder.with_attribute(opentelemetry::KeyValue::new(key, value));
        }
    }
    builder.build()
}

/// The samplers `OTEL_TRACES_SAMPLER` may name.
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// The OTLP protocol the environment asks for (`http/protobuf` unless it says otherwise), and
/// refuses the settings the SDK would otherwise ignore with only a warning: a protocol it cannot
/// speak, a sampler it does not know, a ratio that is not one.
fn check_environment(var: &dyn Fn(&str) -> Option<String>) -> Result<Protocol, TelemetryError> {
    let unsupported = |variable, value: String, expected| {
        Err(TelemetryError::Unsupported {
            variable,
            value,
            expected,
        })
    };
    // The signal's own variable wins over the generic one.
    let chosen = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|variable| Some((variable, var(variable).filter(|v| !v.is_empty())?)));
    let protocol = match chosen {
        None => Protocol::HttpBinary,
        Some((variable, value)) => match value.to_ascii_lowercase().as_str() {
            "http/protobuf" => Protocol::HttpBinary,
            "http/json" => Protocol::HttpJson,
            "grpc" => Protocol::Grpc,
            _ => {
                let expected = "one of http/protobuf (the default), http/json, grpc";
                return unsupported(variable, value, expected);
            }
        },
    };
    if protocol == Protocol::Grpc {
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|variable| Some((variable, var(variable).filter(|v| !v.is_empty())?)));
        if let Some((variable, endpoint)) = endpoint
            && endpoint.to_ascii_lowercase().starts_with("https:")
        {
            let expected = "gRPC without TLS (http://…), or https with http/protobuf";
            return unsupported(variable, endpoint, expected);
        }
    }
    let sampler = var("OTEL_TRACES_SAMPLER").filter(|v| !v.is_empty());
    if let Some(value) = &sampler
        && !SAMPLERS.contains(&value.as_str())
    {
        let expected = "one of always_on, always_off, traceidratio, parentbased_always_on, \
parentbased_always_off, parentbased_traceidratio";
        return unsupported("OTEL_TRACES_SAMPLER", value.clone(), expected);
    }
    if sampler.is_some_and(|s| s.ends_with("traceidratio"))
        && let Some(arg) = var("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.is_empty())
        && !arg
            .trim()
            .parse::<f64>()
            .is_ok_and(|ratio| (0.0..=1.0).contains(&ratio))
    {
        let expected = "a sampling ratio from 0.0 to 1.0";
        return unsupported("OTEL_TRACES_SAMPLER_ARG", arg, expected);
    }
    Ok(protocol)
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// The W3C `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), when traces are
/// exported; `None` otherwise.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let (trace, id, flags) = span_ids(span)?;
    Some(format!("00-{trace}-{id}-{flags:02x}"))
}

/// The OpenTelemetry trace id and span id of `span` (hex), when traces are exported.
pub fn trace_and_span_id(span: &tracing::Span) -> Option<(String, String)> {
    span_ids(span).map(|(trace, id, _)| (trace, id))
}

/// A span's trace context, carried to work that happens after the span ended (a message
/// answered after the sync that brought it): that work's span becomes its child.
#[derive(Debug, Clone, Default)]
pub struct TraceParent(Option<opentelemetry::Context>);

impl TraceParent {
    /// The trace context of `span` (empty when traces are not exported).
    pub fn of(span: &tracing::Span) -> Self {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        Self(otlp_active().then(|| span.context()))
    }

    /// Makes `span` a child of this context (nothing when it is empty).
    pub fn adopt(&self, span: &tracing::Span) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        if let Some(context) = &self.0 {
            let _ = span.set_parent(context.clone());
        }
    }
}

/// Whether spans are exported (set once by [`init`]).
static EXPORTING: OnceLock<bool> = OnceLock::new();

fn otlp_active() -> bool {
    EXPORTING.get().copied().unwrap_or(false)
}

fn span_ids(span: &tracing::Span) -> Option<(String, String, u8)> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    ids.is_valid().then(|| {
        (
            ids.trace_id().to_string(),
            ids.span_id().to_string(),
            ids.trace_flags().to_u8(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exporter_settings_are_checked() {
        // (variables, accepted)
        let table: [(&[(&str, &str)], bool); 13] = [
            (&[], true),
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")], true),
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/JSON")], true),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
                ],
                false,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ],
                true,
            ),
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], true),
            (&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/xml")], false),
            (&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")], true),
            (&[("OTEL_TRACES_SAMPLER", "sometimes")], false),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ],
                true,
            ),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
                ],
                false,
            ),
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "half"),
                ],
                false,
            ),
            // The argument of a sampler that takes none is not read.
            (
                &[
                    ("OTEL_TRACES_SAMPLER", "always_on"),
                    ("OTEL_TRACES_SAMPLER_ARG", "half"),
                ],
                true,
            ),
        ];
        for (vars, accepted) in table {
            let var = |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let checked = check_environment(&var);
            assert_eq!(checked.is_ok(), accepted, "{vars:?}: {checked:?}");
        }
    }

    #[test]
    fn the_protocol_is_protobuf_unless_the_environment_says_json() {
        // (variables, protocol)
        let table: [(&[(&str, &str)], Protocol); 5] = [
            (&[], Protocol::HttpBinary),
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], Protocol::Grpc),
            (
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                Protocol::HttpJson,
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")],
                Protocol::HttpJson,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ],
                Protocol::HttpBinary,
            ),
        ];
        for (vars, expected) in table {
            let var = |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let protocol = check_environment(&var).expect("accepted");
            assert_eq!(protocol, expected, "{vars:?}");
        }
    }
}
