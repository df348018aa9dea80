//! The kernel's BPF run-time statistics, on for a tenth of the time while runs are traced.
//!
//! On, they cost every run of every BPF program two clock reads: about 75 ns a run on this
//! machine's VM (`sonded probe-cost` with them on), several times what a stage classifier
//! costs for a packet of no run. The time per run is an average over thousands of runs a
//! second, so a sample of the run gives it as well: the statistics are on for
//! [`ON`] out of every [`PERIOD`], from the moment tracing starts, and the programs count
//! their own runs ([`sonde_common::maps::PROGRAM_RUNS`]) for the whole run.

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use super::lock;
use crate::error::chain;

/// How long the statistics are on in each period.
pub const ON: Duration = Duration::from_millis(100);
/// The sampling period.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Turns the statistics on and off until dropped.
#[derive(Debug)]
pub struct StatsSampler {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl StatsSampler {
    /// Turns the statistics on now (the first window) and starts the sampling thread.
    pub fn start() -> Result<Self, String> {
        let first = enable()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sonde-bpf-stats".to_owned())
            .spawn(move || sample(first, &flag))
            .map_err(|err| format!("starting the statistics thread: {err}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StatsSampler {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *lock(stopped) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Turns the statistics on until the returned fd is closed.
fn enable() -> Result<OwnedFd, String> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|err| chain(&err))
}

/// Holds `first` for one window, then alternates until told to stop.
fn sample(first: OwnedFd, stop: &(Mutex<bool>, Condvar)) {
    let mut window = Some(first);
    loop {
        if wait(stop, ON) {
            return;
        }
        drop(window.take());
        if wait(stop, PERIOD.saturating_sub(ON)) {
            return;
        }
        match enable() {
            Ok(fd) => window = Some(fd),
            Err(reason) => {
                tracing::warn!("turning the BPF statistics on failed: {reason}");
                return;
            }
        }
    }
}

/// Waits `time` or until stopped; whether it was stopped.
fn wait((stopped, wake): &(Mutex<bool>, Condvar), time: Duration) -> bool {
    let guard = lock(stopped);
    let (guard, _) = wake
        .wait_timeout_while(guard, time, |stopped| !*stopped)
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *guard
}
