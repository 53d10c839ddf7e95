//! A stand-in OpenTelemetry collector: accepts OTLP trace exports over HTTP
//! ([`FakeCollector::start`]) or gRPC ([`FakeCollector::start_grpc`], tonic), keeps the
//! protobuf bodies with their headers, and decodes them with the OTLP definitions
//! (`opentelemetry-proto`).

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, extract::State, routing::post};

/// The fake collector; stops when dropped.
#[derive(Debug)]
pub struct FakeCollector {
    /// The endpoint to put in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    exports: Arc<Mutex<Vec<Export>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCollector {
    /// Starts listening on a free loopback port.
    pub async fn start() -> anyhow::Result<FakeCollector> {
        let exports = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(exports.clone());
        let (addr, task) = crate::serve_on_loopback(app).await?;
        let endpoint = format!("http://{addr}");
        Ok(FakeCollector {
            endpoint,
            exports,
            task,
        })
    }

    /// Starts an OTLP/gRPC collector (the `TraceService`) on a free loopback port.
    pub async fn start_grpc() -> anyhow::Result<FakeCollector> {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let exports = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let service = TraceServiceServer::new(GrpcCollector {
            exports: exports.clone(),
        });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(FakeCollector {
            endpoint: format!("http://{addr}"),
            exports,
            task,
        })
    }

    /// Every export body received (protobuf `ExportTraceServiceRequest`s).
    pub fn exports(&self) -> Vec<Vec<u8>> {
        self.received().into_iter().map(|e| e.body).collect()
    }

    /// Every export received, with its request headers.
    pub fn received(&self) -> Vec<Export> {
        self.exports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every span received with its resource's attributes, decoded from the protobuf; a body
    /// that does not decode is an error.
    pub fn spans(&self) -> anyhow::Result<Vec<ReceivedSpan>> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        let mut spans = Vec::new();
        for body in self.exports() {
            let request = ExportTraceServiceRequest::decode(body.as_slice())?;
            for resource_spans in request.resource_spans {
                let resource = resource_spans
                    .resource
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    spans.push(ReceivedSpan {
                        name: span.name.clone(),
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                        trace_id: span.trace_id.clone(),
                        span_id: span.span_id.clone(),
                        parent_span_id: span.parent_span_id.clone(),
                    });
                }
            }
        }
        Ok(spans)
    }

    /// Whether any export contains `needle` (span names and attribute values are plain bytes in
    /// the protobuf encoding).
    pub fn saw(&self, needle: &str) -> bool {
        self.exports()
            .iter()
            .any(|body| body.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }
}

/// One export request as the collector received it.
#[derive(Debug, Clone)]
pub struct Export {
    /// Its headers (names lower-case), values as text.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
}

/// A span as the collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Its name.
    pub name: String,
    /// Its attributes, values as text.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Its resource's attributes (`service.name`, …), values as text.
    pub resource: std::collections::BTreeMap<String, String>,
    /// Its trace id (16 bytes).
    pub trace_id: Vec<u8>,
    /// Its span id (8 bytes).
    pub span_id: Vec<u8>,
    /// Its parent's span id (empty for a root).
    pub parent_span_id: Vec<u8>,
}

/// OTLP key-values as text.
fn attributes(
    pairs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> std::collections::BTreeMap<String, String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    pairs
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(exports): State<Arc<Mutex<Vec<Export>>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> &'static str {
    let headers = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    exports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Export {
            headers,
            body: body.to_vec(),
        });
    ""
}

/// The gRPC side: each export is kept as its protobuf encoding, its metadata as headers.
struct GrpcCollector {
    exports: Arc<Mutex<Vec<Export>>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for GrpcCollector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        use prost::Message as _;
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let body = request.into_inner().encode_to_vec();
        self.exports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Export { headers, body });
        Ok(tonic::Response::new(Default::default()))
    }
}
