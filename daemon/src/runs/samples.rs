//! The node's conntrack table read when a run's side starts and when it ends, so that its
//! result carries what the table did meanwhile (entries made, inserts failed, drops).

use std::sync::{Arc, Mutex};

use super::pending::Pending;
use crate::conntrack::{Sample, Watcher};

/// Prepared server sides whose start sample is kept at most.
pub const MAX_PENDING_SAMPLES: usize = 4096;

/// The table at a side's start and end.
#[derive(Debug, Clone)]
pub struct Span {
    /// When the side started.
    pub start: Sample,
    /// When it ended.
    pub end: Sample,
}

/// Reads the node's table around runs; does nothing when it cannot be read.
#[derive(Debug)]
pub struct ConntrackSamples {
    watcher: Option<Arc<Watcher>>,
    /// The table when each prepared server side started, until it is finished.
    at_prepare: Mutex<Pending<Sample>>,
}

impl ConntrackSamples {
    /// Samples through `watcher`, or never when the node's table cannot be watched.
    pub fn new(watcher: Option<Arc<Watcher>>) -> Self {
        Self {
            watcher,
            at_prepare: Mutex::new(Pending::new(MAX_PENDING_SAMPLES)),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending<Sample>> {
        self.at_prepare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the table without the census, on a blocking thread; `None` when it cannot be
    /// read (said in the log).
    pub async fn sample(&self) -> Option<Sample> {
        let watcher = Arc::clone(self.watcher.as_ref()?);
        match tokio::task::spawn_blocking(move || watcher.sample(false)).await {
            Ok(Ok(sample)) => Some(sample),
            Ok(Err(err)) => {
                tracing::warn!(%err, "conntrack: reading the table failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Keeps the table as `run_id`'s server side starts. Sides whose lease ran out are never
    /// finished: past a bound the oldest are forgotten, one at a time.
    pub async fn server_prepared(&self, run_id: String) {
        if let Some(start) = self.sample().await {
            self.pending().insert(run_id, start);
        }
    }

    /// The table from `run_id`'s server side's start to now.
    pub async fn server_finished(&self, run_id: &str) -> Option<Span> {
        let start = self.pending().take(run_id)?;
        let end = self.sample().await?;
        Some(Span { start, end })
    }

    /// Drops what was kept for `run_id` (cancelled).
    pub fn forget(&self, run_id: &str) {
        self.pending().take(run_id);
    }
}
