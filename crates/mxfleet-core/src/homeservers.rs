//! Watching homeservers through an outage: one prober per homeserver, shared by every account
//! on it, asks `/_matrix/client/versions` twice a second while some account waits, and wakes
//! them all the moment it answers. An account in an outage therefore retries within a second
//! of its homeserver's return, without a thousand accounts probing one server.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use mxfleet_matrix::{
    matrix_sdk::reqwest,
    probe::{homeserver_answers, probe_client},
};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span};
use url::Url;

/// How often a down homeserver is asked whether it is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The fleet's homeservers, as seen through outages.
#[derive(Clone)]
pub(crate) struct Homeservers {
    http: reqwest::Client,
    /// Per homeserver: the count of returns seen by its prober (while one runs).
    probers: Arc<Mutex<HashMap<Url, watch::Receiver<u64>>>>,
}

impl Homeservers {
    /// No homeserver watched yet.
    pub(crate) fn new() -> Self {
        Self {
            http: probe_client(),
            probers: Arc::default(),
        }
    }

    /// Whether `homeserver` answers now.
    pub(crate) async fn answers(&self, homeserver: &Url) -> bool {
        homeserver_answers(&self.http, homeserver).await
    }

    /// Resolves once `homeserver` answers again (probing it, with every other account waiting
    /// for it, until it does).
    pub(crate) fn back_up(&self, homeserver: &Url) -> impl Future<Output = ()> + Send + 'static {
        let mut returns = self.watch(homeserver);
        async move {
            // The prober stops when nobody waits; a closed channel ends the wait too.
            let _ = returns.changed().await;
        }
    }

    /// A receiver of `homeserver`'s returns, starting its prober if none runs.
    fn watch(&self, homeserver: &Url) -> watch::Receiver<u64> {
        let mut probers = self
            .probers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(returns) = probers.get(homeserver).filter(|r| r.has_changed().is_ok()) {
            let mut returns = returns.clone();
            returns.mark_unchanged();
            return returns;
        }
        let (tx, rx) = watch::channel(0u64);
        probers.insert(homeserver.clone(), rx.clone());
        let (http, url, registry) = (self.http.clone(), homeserver.clone(), self.clone());
        let span = info_span!(parent: None, "probe", homeserver = %homeserver);
        tokio::spawn(async move { registry.probe(http, url, tx).await }.instrument(span));
        rx
    }

    /// Probes `homeserver` until it answers (then tells the waiters) or nobody waits.
    async fn probe(&self, http: reqwest::Client, homeserver: Url, returns: watch::Sender<u64>) {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            // The registry holds one receiver; anyone else is a waiter.
            if returns.receiver_count() <= 1 {
                break;
            }
            if homeserver_answers(&http, &homeserver).await {
                info!("the homeserver answers again: waking its accounts");
                returns.send_modify(|n| *n = n.wrapping_add(1));
                break;
            }
        }
        self.probers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&homeserver);
    }
}

impl Default for Homeservers {
    fn default() -> Self {
        Self::new()
    }
}
