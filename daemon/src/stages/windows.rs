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
//! A window's hooks are attached [`LEAD`] ahead of it, with stamping held back (a TCX
//! attachment waits for an RCU grace period: 7-20 ms on a node busy with a stream, measured
//! here), and the window opens on time by a map write. The thread that keeps the windows runs
//! at a real-time priority where it may: on a node whose CPUs a stream keeps busy, an
//! ordinary thread woke up to 60 ms late, and the two nodes' windows overlapped little.
//!
//! The kernel's BPF statistics (see `super::stats`) are on while a window is open: every
//! stamping run of a sampled stream's programs is timed.

use std::{
    os::fd::OwnedFd,
    sync::{Arc, Condvar, Mutex, Weak, mpsc},
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use super::{Tracer, lock, stats};

/// How long each window is open.
pub const OPEN: Duration = Duration::from_millis(100);
/// A window opens at the start of each period of the wall clock.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long before a window opens its hooks are attached.
pub const LEAD: Duration = Duration::from_millis(50);
/// A window that opens later than this after its moment is counted late.
pub const LATE: Duration = Duration::from_millis(5);

/// Where the windows stand at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between windows: the hooks are detached.
    Closed,
    /// Just before a window: the hooks are attached, stamping is held back.
    Ready,
    /// In a window: stamping.
    Open,
}

/// The phase at `at` (wall-clock time since the Unix epoch), how far into it, and how long
/// until the next one.
pub fn phase(at: Duration) -> (Phase, Duration, Duration) {
    let into = at.as_nanos() % PERIOD.as_nanos();
    // Less than a period: fits.
    let into = Duration::from_nanos(into as u64);
    if into < OPEN {
        (Phase::Open, into, OPEN - into)
    } else if into < PERIOD - LEAD {
        (Phase::Closed, into - OPEN, PERIOD - LEAD - into)
    } else {
        (Phase::Ready, into - (PERIOD - LEAD), PERIOD - into)
    }
}

/// Keeps a tracer's stamping and the kernel's statistics to the windows until dropped.
#[derive(Debug)]
pub struct Windows {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// Why the kernel's statistics cannot be turned on, if they cannot.
    pub stats_unavailable: Option<String>,
    /// Why the windows' thread runs at an ordinary priority (its windows may open late on a
    /// busy node), if it does.
    pub not_prompt: Option<String>,
}

impl Windows {
    /// Starts the thread that opens and closes `tracer`'s windows.
    pub fn start(tracer: Weak<Tracer>) -> std::io::Result<Self> {
        // A first try says whether the statistics can be on at all.
        let stats_unavailable = stats::enable().err();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let with_stats = stats_unavailable.is_none();
        let (priority_tx, priority_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("sonde-windows".to_owned())
            .spawn(move || {
                let _ = priority_tx.send(prompt());
                keep(&tracer, &flag, with_stats);
            })?;
        let not_prompt = match priority_rx.recv() {
            Ok(priority) => priority.err(),
            Err(_) => Some("the windows' thread ended".to_owned()),
        };
        if let Some(reason) = &not_prompt {
            tracing::warn!("stamping windows kept at an ordinary priority: {reason}");
        }
        Ok(Self {
            stop,
            thread: Some(thread),
            stats_unavailable,
            not_prompt,
        })
    }
}

/// Puts the calling thread at the lowest real-time priority, so that it wakes at a window's
/// edge even when a stream keeps every CPU busy. It sleeps all but a few milliseconds a second.
fn prompt() -> Result<(), String> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: a plain system call on the calling thread (pid 0) with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
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
    // The first window may be one a run started in: not late.
    let mut first = true;
    loop {
        let (at, _, _) = phase(wall_clock());
        let Some(tracer) = tracer.upgrade() else {
            return;
        };
        // The statistics go on before stamping starts, and off after it stops.
        if at == Phase::Open && with_stats && statistics.is_none() {
            match stats::enable() {
                Ok(fd) => statistics = Some(fd),
                Err(reason) => {
                    // Once, not at every window: the runs go on without program times.
                    tracing::warn!("turning the BPF statistics on failed: {reason}");
                    with_stats = false;
                }
            }
        }
        let mut hooks = lock(&tracer.hooks);
        hooks.set_window(at);
        // After the change: how late a window opened, and how long until the next edge (at
        // once if the change outlasted its phase: attaching took longer than the lead).
        let (now, into, left) = phase(wall_clock());
        let left = if now == at { left } else { Duration::ZERO };
        if at == Phase::Open && now == Phase::Open && into > LATE && !first {
            tracing::debug!("stamping window opened {} ms late", into.as_millis());
            hooks.window_late();
        }
        drop(hooks);
        drop(tracer);
        first = false;
        if at != Phase::Open {
            statistics = None;
        }
        if wait(stop, left) {
            return;
        }
    }
}

/// The wall-clock time since the Unix epoch.
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
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
        let ms = Duration::from_millis;
        assert_eq!(at(0), (Phase::Open, ms(0), OPEN));
        assert_eq!(at(40), (Phase::Open, ms(40), ms(60)));
        assert_eq!(at(100), (Phase::Closed, ms(0), ms(850)));
        assert_eq!(at(949), (Phase::Closed, ms(849), ms(1)));
        assert_eq!(at(950), (Phase::Ready, ms(0), LEAD));
        assert_eq!(at(999), (Phase::Ready, ms(49), ms(1)));
        assert_eq!(at(1000), (Phase::Open, ms(0), OPEN));
        // Over any stretch of whole periods, exactly a tenth is open, whatever its start, and
        // the hooks are attached the lead longer.
        for start in [0, 37, 100, 555, 960] {
            let count = |phase| {
                (start..start + 3000)
                    .filter(|ms| at(*ms).0 == phase)
                    .count()
            };
            assert_eq!(count(Phase::Open), 300, "from {start} ms");
            assert_eq!(count(Phase::Ready), 150, "from {start} ms");
        }
    }
}
