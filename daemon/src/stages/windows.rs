//! Stamping windows: a sampled stream is stamped a tenth of each second, not throughout.
//!
//! A stream's cost is its packets': even a packet its sampling passes over costs a header
//! parse and a flow lookup at each point, and every skb the node frees passes the
//! `consume_skb` hook. On two vCPUs this took a stream to ~0.9 of its untraced throughput
//! (`cargo xtask bench probes`), where one followed packet in 16 gives far more samples than
//! a breakdown needs. So while every traced run on a node samples, stamping is on only in
//! windows, [`OPEN`] of every [`PERIOD`] on the wall clock (the same moments on every node,
//! whose clocks agree to well within a window, so the wire stage still pairs the two nodes'
//! stamps). Between windows the datapath is an untraced one's: the uplinks' classifiers and
//! the skb hooks are detached, and the pods' counters only count. A run that follows every
//! packet (`tcp-rr` and the like) keeps stamping throughout, and so do the sampled runs
//! beside it.
//!
//! The kernel's BPF statistics (see `super::stats`) are on during the same windows.

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Condvar, Mutex, Weak},
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use super::{Tracer, lock, stats};

/// How long each window is open.
pub const OPEN: Duration = Duration::from_millis(100);
/// A window opens at the start of each period of the wall clock.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Whether a window is open at `at` (wall-clock time since the Unix epoch), and how long
/// until it opens or closes.
pub fn phase(at: Duration) -> (bool, Duration) {
    let into = at.as_nanos() % PERIOD.as_nanos();
    // Less than a period: fits.
    let into = Duration::from_nanos(into as u64);
    if into < OPEN {
        (true, OPEN - into)
    } else {
        (false, PERIOD - into)
    }
}

/// Keeps a tracer's stamping and the kernel's statistics to the windows until dropped.
#[derive(Debug)]
pub struct Windows {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// Why the kernel's statistics cannot be turned on, if they cannot.
    pub stats_unavailable: Option<String>,
}

impl Windows {
    /// Starts the thread that opens and closes `tracer`'s windows.
    pub fn start(tracer: Weak<Tracer>) -> std::io::Result<Self> {
        // A first try says whether the statistics can be on at all.
        let stats_unavailable = stats::enable().err();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let with_stats = stats_unavailable.is_none();
        let thread = std::thread::Builder::new()
            .name("sonde-windows".to_owned())
            .spawn(move || keep(&tracer, &flag, with_stats))?;
        Ok(Self {
            stop,
            thread: Some(thread),
            stats_unavailable,
        })
    }
}

impl Drop for Windows {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *lock(stopped) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens and closes the windows at their edges until told to stop.
fn keep(tracer: &Weak<Tracer>, stop: &(Mutex<bool>, Condvar), mut with_stats: bool) {
    let mut statistics: Option<OwnedFd> = None;
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let (open, left) = phase(now);
        let Some(tracer) = tracer.upgrade() else {
            return;
        };
        lock(&tracer.hooks).set_window(open);
        drop(tracer);
        if !open {
            statistics = None;
        } else if with_stats && statistics.is_none() {
            match stats::enable() {
                Ok(fd) => statistics = Some(fd),
                Err(reason) => {
                    // Once, not at every window: the runs go on without program times.
                    tracing::warn!("turning the BPF statistics on failed: {reason}");
                    with_stats = false;
                }
            }
        }
        if wait(stop, left) {
            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_open_for_a_tenth_of_each_second_of_the_wall_clock() {
        let at = |ms: u64| phase(Duration::from_millis(1_700_000_000_000 + ms));
        assert_eq!(at(0), (true, OPEN));
        assert_eq!(at(40), (true, Duration::from_millis(60)));
        assert_eq!(at(100), (false, Duration::from_millis(900)));
        assert_eq!(at(999), (false, Duration::from_millis(1)));
        assert_eq!(at(1000), (true, OPEN));
        // Over any stretch of whole periods, exactly a tenth is open, whatever its start.
        for start in [0, 37, 100, 555] {
            let open = (start..start + 3000).filter(|ms| at(*ms).0).count();
            assert_eq!(open, 300, "from {start} ms");
        }
    }
}
