//! Test harness for mxfleet's end-to-end tests: every part is real except the LLM.
//!
//! - [`Synapse`]: a real Synapse on loopback (shared by the suite, or private for tests that
//!   kill it), with registration and the admin API;
//! - [`Human`]: a matrix-sdk client playing the human side;
//! - [`FleetProcess`]: the `mxfleet` binary as a child process;
//! - [`FakeOpenAi`]: an OpenAI-compatible streaming server;
//! - [`CountingProxy`]: a recording proxy in front of Synapse;
//! - [`Scenario`]: bots, humans, backends and the fleet, set up in one expression.

// matrix-sdk's futures are deep; proving `Send` for a spawned sync needs more than 128.
#![recursion_limit = "256"]

mod collector;
mod fleet;
mod human;
mod openai;
mod proxy;
mod scenario;
pub mod soak;
mod synapse;
mod webhook;

use std::path::PathBuf;

pub use collector::{Export, FakeCollector, ReceivedSpan};
pub use fleet::{FleetProcess, binary};

pub use human::{Human, Reaction, Seen, SeenPoll};
pub use matrix_sdk::ruma::OwnedRoomId;
pub use matrix_sdk::ruma::events::room::member::MembershipState;
pub use openai::{FakeOpenAi, SeenRequest};
pub use proxy::{CountingProxy, Fault};
pub use scenario::{ADMIN_TOKEN, Bot, BotSpec, Running, Scenario};
pub use synapse::{StoredMessage, Synapse, wait_until_up};
pub use webhook::FakeWebhook;

/// A random lower-case name with `prefix`.
pub fn random_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A finished command's standard output then standard error, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A free TCP port on loopback.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Serves `app` on a free loopback port until the returned task is aborted.
pub(crate) async fn serve_on_loopback(
    app: axum::Router,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `text` percent-encoded for a URL's query string.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A podman image, removed when dropped (the image of the binary under test).
#[derive(Debug)]
pub struct PodmanImage(pub String);

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}
