//! A stand-in OpenTelemetry collector: accepts OTLP/HTTP trace exports and keeps the bodies.

use std::sync::{Arc, Mutex};

use axum::{Router, body::Bytes, extract::State, routing::post};

/// The fake collector; stops when dropped.
#[derive(Debug)]
pub struct FakeCollector {
    /// The endpoint to put in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    exports: Arc<Mutex<Vec<Vec<u8>>>>,
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

    /// Every export body received (protobuf `ExportTraceServiceRequest`s).
    pub fn exports(&self) -> Vec<Vec<u8>> {
        self.exports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether any export contains `needle` (span names and attribute values are plain bytes in
    /// the protobuf encoding).
    pub fn saw(&self, needle: &str) -> bool {
        self.exports()
            .iter()
            .any(|body| body.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(exports): State<Arc<Mutex<Vec<Vec<u8>>>>>, body: Bytes) -> &'static str {
    exports
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(body.to_vec());
    ""
}
