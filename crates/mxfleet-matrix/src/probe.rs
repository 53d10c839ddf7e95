//! Whether a homeserver answers at all: `GET /_matrix/client/versions`, the cheapest request
//! every homeserver serves without authentication. Tells an outage (the homeserver down or
//! unreachable) from an account's own trouble.

use std::time::Duration;

use matrix_sdk::reqwest;
use url::Url;

/// How long a probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// An HTTP client for probes (no connection kept between probes of a down server).
pub fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .connect_timeout(PROBE_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default()
}

/// Whether `homeserver` answers `/_matrix/client/versions` with a success within
/// [`PROBE_TIMEOUT`].
pub async fn homeserver_answers(http: &reqwest::Client, homeserver: &Url) -> bool {
    let url = format!(
        "{}/_matrix/client/versions",
        homeserver.as_str().trim_end_matches('/')
    );
    match http.get(url).send().await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}
