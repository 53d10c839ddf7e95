//! Logs and traces for mxfleet.
//!
//! Logs go to stderr, human-readable or JSON, filtered by `RUST_LOG` or the configured level,
//! through a writer thread with a bounded buffer of `log.buffer_lines`: the runtime threads
//! only queue a line, so a stalled log consumer (a full pipe, a stuck journald) costs dropped
//! lines — counted by [`dropped_log_lines`] — and never stalls an account.
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans are
//! also exported over OTLP/HTTP (protobuf) by a batch processor on its own thread, so an
//! unreachable collector costs a bounded queue and never blocks message handling.

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
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource(instance))
                .build(),
        )
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .with_filter(EnvFilter::new(
                "info,matrix_sdk=warn,matrix_sdk_base=warn,matrix_sdk_crypto=warn",
            ))
    });
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
