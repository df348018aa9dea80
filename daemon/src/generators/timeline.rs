//! A client side's measured part cut into intervals: what it moved, completed and failed in
//! each, and its latency percentiles there. This is what shows a stall, a rollout step or a
//! conntrack knee inside a run, where the run's totals average it away.
//!
//! Every thread fills the bucket of the interval it is in ([`Current`]) and hands it to the
//! side's [`Timeline`] when it moves on or ends: one lock per thread per interval, never one
//! per message.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::measure::MAX_LATENCY_NS;

/// Most intervals in a run (the daemon refuses a run that would have more): a side holds one
/// histogram of ~14 KiB per interval that saw a transaction.
pub const MAX_INTERVALS: u64 = 3600;

/// The shortest interval a run may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// One interval's counts.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Payload bytes moved (sent plus received).
    pub bytes: u64,
    /// Messages completed.
    pub messages: u64,
    /// Failures other than connects (a reset, a refused request, a timeout).
    pub errors: u64,
    /// Connections that could not be opened.
    pub failed_connects: u64,
    /// Latencies recorded, ns (absent until the first).
    latency: Option<Histogram<u32>>,
}

impl Bucket {
    fn is_empty(&self) -> bool {
        self.bytes == 0
            && self.messages == 0
            && self.errors == 0
            && self.failed_connects == 0
            && self.latency.as_ref().is_none_or(|h| h.is_empty())
    }

    fn add(&mut self, other: &Self) {
        self.bytes += other.bytes;
        self.messages += other.messages;
        self.errors += other.errors;
        self.failed_connects += other.failed_connects;
        if let Some(theirs) = other.latency.as_ref().filter(|h| !h.is_empty()) {
            match &mut self.latency {
                Some(mine) => {
                    let _ = mine.add(theirs);
                }
                None => self.latency = Some(theirs.clone()),
            }
        }
    }

    fn reset(&mut self) {
        self.bytes = 0;
        self.messages = 0;
        self.errors = 0;
        self.failed_connects = 0;
        if let Some(latency) = &mut self.latency {
            latency.reset();
        }
    }

    fn record(&mut self, ns: u64) {
        let latency = self.latency.get_or_insert_with(interval_histogram);
        latency.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }
}

/// Two significant digits from 1 µs: an interval's p50 and p99 within 1%, in a tenth of the
/// memory of the run's own histogram.
fn interval_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1000, MAX_LATENCY_NS, 2)
        .or_else(|_| Histogram::new(2))
        .unwrap_or_else(|_| unreachable!("hdrhistogram takes 2 significant digits"))
}

/// One interval as the side reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// Its start, from the start of the measured part.
    pub start: Duration,
    /// Its length (the last one may be shorter).
    pub length: Duration,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Messages completed.
    pub messages: u64,
    /// Failures other than connects.
    pub errors: u64,
    /// Connections that could not be opened.
    pub failed_connects: u64,
    /// Latencies recorded.
    pub latency_count: u64,
    /// Their median, ns (0 without any).
    pub latency_p50_ns: u64,
    /// Their 99th percentile, ns.
    pub latency_p99_ns: u64,
}

/// A side's timeline, shared by its threads.
#[derive(Debug)]
pub struct Timeline {
    every: Duration,
    /// The measured part, set by the first thread that knows it (all share one window).
    window: OnceLock<(Instant, Duration)>,
    /// Its start on the wall clock, ms since the epoch (to place events on the timeline).
    start_unix_ms: OnceLock<u64>,
    buckets: Mutex<Vec<Bucket>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::every(Duration::from_secs(1))
    }
}

impl Timeline {
    /// A timeline of `every`-long intervals.
    pub fn every(every: Duration) -> Self {
        Self {
            every: every.max(MIN_INTERVAL),
            window: OnceLock::new(),
            start_unix_ms: OnceLock::new(),
            buckets: Mutex::new(Vec::new()),
        }
    }

    /// The interval `at` falls in, if inside the measured part.
    fn index(&self, from: Instant, length: Duration, at: Instant) -> Option<usize> {
        let since = at.checked_duration_since(from)?;
        if since >= length {
            return None;
        }
        let index = since.as_nanos() / self.every.as_nanos().max(1);
        usize::try_from(index)
            .ok()
            .filter(|i| (*i as u64) < MAX_INTERVALS)
    }

    fn hand_over(&self, index: usize, bucket: &Bucket) {
        if bucket.is_empty() {
            return;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if buckets.len() <= index {
            buckets.resize_with(index + 1, Bucket::default);
        }
        buckets[index].add(bucket);
    }

    /// When the measured part started on the wall clock, ms since the epoch (0 before a thread
    /// followed the timeline).
    pub fn start_unix_ms(&self) -> u64 {
        self.start_unix_ms.get().copied().unwrap_or(0)
    }

    /// Every interval of the measured part, empty ones included, once the threads are done.
    pub fn intervals(&self) -> Vec<Interval> {
        let Some(&(_, length)) = self.window.get() else {
            return Vec::new();
        };
        let Ok(buckets) = self.buckets.lock() else {
            return Vec::new();
        };
        let count = length
            .as_nanos()
            .div_ceil(self.every.as_nanos().max(1))
            .min(u128::from(MAX_INTERVALS)) as usize;
        (0..count)
            .map(|i| {
                let start = self.every * i as u32;
                let empty = Bucket::default();
                let bucket = buckets.get(i).unwrap_or(&empty);
                let latency = bucket.latency.as_ref().filter(|h| !h.is_empty());
                Interval {
                    start,
                    length: self.every.min(length.saturating_sub(start)),
                    bytes: bucket.bytes,
                    messages: bucket.messages,
                    errors: bucket.errors,
                    failed_connects: bucket.failed_connects,
                    latency_count: latency.map_or(0, |h| h.len()),
                    latency_p50_ns: latency.map_or(0, |h| h.value_at_quantile(0.5)),
                    latency_p99_ns: latency.map_or(0, |h| h.value_at_quantile(0.99)),
                }
            })
            .collect()
    }
}

/// What a thread gathers of the interval it is in; handed over when it moves on, and when
/// dropped.
#[derive(Debug)]
pub struct Current {
    timeline: std::sync::Arc<Timeline>,
    from: Instant,
    length: Duration,
    index: usize,
    bucket: Bucket,
}

/// What happened at an instant, for [`Current::note`].
#[derive(Debug, Clone, Copy)]
pub enum Happened {
    /// Messages completed with their bytes.
    Moved {
        /// Payload bytes, sent plus received.
        bytes: u64,
        /// Messages.
        messages: u64,
    },
    /// A transaction's latency.
    Latency(Duration),
    /// A failure that was not a connect.
    Error,
    /// A connection that could not be opened.
    FailedConnect,
}

impl Current {
    /// Follows `timeline` over the measured part from `from`, `length` long.
    pub fn new(timeline: std::sync::Arc<Timeline>, from: Instant, length: Duration) -> Self {
        let &(from, length) = timeline.window.get_or_init(|| (from, length));
        timeline.start_unix_ms.get_or_init(|| {
            let now = std::time::SystemTime::now();
            let wall = match from.checked_duration_since(Instant::now()) {
                Some(ahead) => now + ahead,
                None => now - Instant::now().saturating_duration_since(from),
            };
            wall.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                })
        });
        Self {
            timeline,
            from,
            length,
            index: 0,
            bucket: Bucket::default(),
        }
    }

    /// Counts what happened at `at`, in the interval it falls in (nothing outside the
    /// measured part).
    pub fn note(&mut self, at: Instant, happened: Happened) {
        let Some(index) = self.timeline.index(self.from, self.length, at) else {
            return;
        };
        if index != self.index {
            self.timeline.hand_over(self.index, &self.bucket);
            self.bucket.reset();
            self.index = index;
        }
        match happened {
            Happened::Moved { bytes, messages } => {
                self.bucket.bytes += bytes;
                self.bucket.messages += messages;
            }
            Happened::Latency(latency) => self
                .bucket
                .record(u64::try_from(latency.as_nanos()).unwrap_or(MAX_LATENCY_NS)),
            Happened::Error => self.bucket.errors += 1,
            Happened::FailedConnect => self.bucket.failed_connects += 1,
        }
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        self.timeline.hand_over(self.index, &self.bucket);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn threads_fill_intervals_that_sum_to_what_they_counted() {
        let timeline = Arc::new(Timeline::every(Duration::from_millis(100)));
        let from = Instant::now();
        let length = Duration::from_millis(350);
        std::thread::scope(|scope| {
            for thread in 0..3_u64 {
                let timeline = Arc::clone(&timeline);
                scope.spawn(move || {
                    let mut current = Current::new(timeline, from, length);
                    for ms in (0..400).step_by(10) {
                        let at = from + Duration::from_millis(ms);
                        current.note(
                            at,
                            Happened::Moved {
                                bytes: 10,
                                messages: 1,
                            },
                        );
                        current.note(at, Happened::Latency(Duration::from_micros(100 + thread)));
                    }
                    // Before the window: not counted.
                    current.note(from - Duration::from_millis(1), Happened::Error);
                    if thread == 0 {
                        current.note(from + Duration::from_millis(210), Happened::Error);
                    }
                });
            }
        });
        let intervals = timeline.intervals();
        assert_eq!(intervals.len(), 4);
        assert_eq!(intervals[3].length, Duration::from_millis(50));
        assert_eq!(intervals[1].start, Duration::from_millis(100));
        // 10 ms apart, three threads: 30 messages per full interval, 15 in the last half.
        let messages: Vec<u64> = intervals.iter().map(|i| i.messages).collect();
        assert_eq!(messages, [30, 30, 30, 15]);
        assert_eq!(intervals.iter().map(|i| i.bytes).sum::<u64>(), 105 * 10);
        assert_eq!(intervals[2].errors, 1);
        assert_eq!(intervals[0].latency_count, 30);
        let p50 = intervals[0].latency_p50_ns;
        assert!((99_000..=103_000).contains(&p50), "{p50}");
    }

    #[test]
    fn an_interval_without_traffic_is_reported_empty() {
        let timeline = Arc::new(Timeline::every(Duration::from_secs(1)));
        let from = Instant::now();
        {
            let mut current = Current::new(Arc::clone(&timeline), from, Duration::from_secs(3));
            current.note(
                from,
                Happened::Moved {
                    bytes: 1,
                    messages: 1,
                },
            );
            current.note(from + Duration::from_millis(2500), Happened::FailedConnect);
        }
        let intervals = timeline.intervals();
        assert_eq!(intervals.len(), 3);
        assert_eq!(intervals[1].messages, 0);
        assert_eq!(intervals[1].latency_p99_ns, 0);
        assert_eq!(intervals[2].failed_connects, 1);
    }
}
