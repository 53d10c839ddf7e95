//! `max_concurrent`: how many answers one named backend gives at once, across every account of
//! the process. An answer over the limit waits for a turn (its typing notice showing) instead
//! of piling onto a backend that is already saturated.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use futures_util::{StreamExt, stream};
use tokio::sync::Semaphore;

use crate::TextStream;

/// The turns of one backend.
#[derive(Debug, Clone)]
pub struct ConcurrencyGate {
    turns: Arc<Semaphore>,
    max: u32,
}

impl ConcurrencyGate {
    /// The process-wide gate of backend `name` with `max` turns (the same for every caller
    /// with the same name and limit; a changed limit, after a reload, gets a new gate).
    pub fn of(name: &str, max: u32) -> Self {
        static GATES: OnceLock<Mutex<HashMap<String, ConcurrencyGate>>> = OnceLock::new();
        let mut gates = GATES
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let gate = gates
            .entry(name.to_owned())
            .or_insert_with(|| Self::new(max));
        if gate.max != max {
            *gate = Self::new(max);
        }
        gate.clone()
    }

    fn new(max: u32) -> Self {
        let permits = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        Self {
            turns: Arc::new(Semaphore::new(permits)),
            max,
        }
    }

    /// Answers running now.
    pub fn busy(&self) -> usize {
        usize::try_from(self.max)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.turns.available_permits())
    }

    /// The stream `start` makes, started once a turn is free; the turn is held until the
    /// stream is dropped.
    pub fn gated(&self, start: impl FnOnce() -> TextStream + Send + 'static) -> TextStream {
        let turns = self.turns.clone();
        let waited = stream::once(async move {
            let turn = turns.acquire_owned().await.ok();
            (turn, start())
        });
        Box::pin(waited.flat_map(|(turn, inner)| {
            inner.map(move |item| {
                let _held = &turn;
                item
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn slow(text: &'static str) -> TextStream {
        Box::pin(stream::once(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(text.to_owned())
        }))
    }

    #[tokio::test]
    async fn no_more_than_max_answers_run_at_once() {
        let gate = ConcurrencyGate::of("test-backend-a", 2);
        let peak = Arc::new(Mutex::new(0usize));
        let mut running = Vec::new();
        for _ in 0..6 {
            let (gate, peak) = (gate.clone(), peak.clone());
            let watcher = gate.clone();
            running.push(tokio::spawn(async move {
                let mut s = gate.gated(move || {
                    let mut p = peak.lock().unwrap_or_else(PoisonError::into_inner);
                    *p = (*p).max(watcher.busy());
                    slow("x")
                });
                s.next().await
            }));
        }
        for task in running {
            assert!(matches!(task.await, Ok(Some(Ok(_)))));
        }
        assert_eq!(*peak.lock().unwrap_or_else(PoisonError::into_inner), 2);
        assert_eq!(gate.busy(), 0, "every turn is given back");
        // The same name and limit is the same gate; a new limit makes a new one.
        assert_eq!(ConcurrencyGate::of("test-backend-a", 2).busy(), 0);
        assert_eq!(ConcurrencyGate::of("test-backend-a", 5).max, 5);
    }
}
