//! What every generator measures the same way: the run's time window, per-thread results and
//! their merge, CPU time, TCP_INFO, memory.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::timeline::{Current, Happened, Timeline};

/// Highest latency the histograms hold: one hour, in nanoseconds.
pub(super) const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
/// Errors kept per side: the first few tell the story.
const MAX_ERRORS: usize = 5;

/// Set to stop a run's threads; they check it at least every [`POLL`].
pub type Stop = Arc<AtomicBool>;

/// How often blocked generator calls wake up to look at the stop flag.
pub const POLL: Duration = Duration::from_millis(100);

/// Live counters the progress stream samples, and the side's timeline its threads fill.
#[derive(Debug, Default)]
pub struct Counters {
    /// Payload bytes moved (both ways).
    pub bytes: AtomicU64,
    /// Messages completed.
    pub messages: AtomicU64,
    /// The measured part by interval.
    pub timeline: Arc<Timeline>,
}

impl Counters {
    /// Counters of a side whose timeline has `every`-long intervals.
    pub fn with_interval(every: Duration) -> Self {
        Self {
            timeline: Arc::new(Timeline::every(every)),
            ..Self::default()
        }
    }

    /// Adds one completed message of `bytes` bytes.
    pub fn add(&self, bytes: u64, messages: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.messages.fetch_add(messages, Ordering::Relaxed);
    }
}

/// The run's clock: warm-up from `start`, then the measured part, then the end.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When the warm-up began.
    pub start: Instant,
    /// When the measured part begins.
    pub measure_from: Instant,
    /// When it ends.
    pub end: Instant,
}

impl Window {
    /// A window starting now.
    pub fn starting_at(start: Instant, warmup: Duration, duration: Duration) -> Self {
        Self {
            start,
            measure_from: start + warmup,
            end: start + warmup + duration,
        }
    }

    /// Whether `at` is inside the measured part.
    pub fn measuring(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.end
    }
}

/// What one thread (one connection or flow) measured.
#[derive(Debug)]
pub struct ThreadResult {
    /// Measured window length (the longest over threads is the side's).
    pub measured: Duration,
    /// Payload bytes written in the window.
    pub bytes_sent: u64,
    /// Payload bytes read in the window.
    pub bytes_received: u64,
    /// Messages completed in the window.
    pub messages: u64,
    /// Latencies in nanoseconds.
    pub latency: Histogram<u64>,
    /// CPU time of the thread over its work.
    pub cpu: CpuTime,
    /// TCP facts of its connection(s).
    pub tcp: TcpFacts,
    /// UDP facts of its flow.
    pub udp: UdpFacts,
    /// Connections opened.
    pub connections: u64,
    /// Errors met.
    pub errors: Vec<String>,
    /// How payload moved ("sendfile", "udp-gso", ...); empty if it did not.
    pub io_path: Vec<&'static str>,
    /// DNS answers by response code.
    pub dns_rcodes: std::collections::BTreeMap<String, u64>,
    /// The thread's CPU time when its measured part began.
    cpu_from: Option<CpuTime>,
    /// The interval it is in, on the side's timeline (client sides).
    timeline: Option<Current>,
}

impl ThreadResult {
    /// An empty result.
    pub fn new() -> Self {
        Self {
            measured: Duration::ZERO,
            bytes_sent: 0,
            bytes_received: 0,
            messages: 0,
            latency: new_histogram(),
            cpu: CpuTime::default(),
            tcp: TcpFacts::default(),
            udp: UdpFacts::default(),
            connections: 0,
            errors: Vec::new(),
            io_path: Vec::new(),
            dns_rcodes: std::collections::BTreeMap::new(),
            cpu_from: None,
            timeline: None,
        }
    }

    /// Follows the side's timeline over `window`'s measured part: what [`Self::counted`],
    /// [`Self::record_at`] and [`Self::failed_at`] count goes to its intervals too.
    pub fn follow(&mut self, counters: &Counters, window: &Window) {
        self.timeline = Some(Current::new(
            Arc::clone(&counters.timeline),
            window.measure_from,
            window.end.saturating_duration_since(window.measure_from),
        ));
    }

    /// Counts `messages` completed at `at` (in the measured part), with their bytes.
    pub fn counted(&mut self, at: Instant, sent: u64, received: u64, messages: u64) {
        self.bytes_sent += sent;
        self.bytes_received += received;
        self.messages += messages;
        if let Some(timeline) = &mut self.timeline {
            timeline.note(
                at,
                Happened::Moved {
                    bytes: sent + received,
                    messages,
                },
            );
        }
    }

    /// Records the latency of a transaction intended at `at`.
    pub fn record_at(&mut self, at: Instant, latency: Duration) {
        self.record(latency);
        if let Some(timeline) = &mut self.timeline {
            timeline.note(at, Happened::Latency(latency));
        }
    }

    /// Counts a response that never came (a UDP timeout) on the timeline's errors: expected on
    /// a lossy path, so no words among the side's errors.
    pub fn missed_at(&mut self, at: Instant) {
        if let Some(timeline) = &mut self.timeline {
            timeline.note(at, Happened::Error);
        }
    }

    /// Counts a failure at `at` on the timeline (`connect`: a connection that could not be
    /// opened) and keeps its words among the side's first errors.
    pub fn failed_at(&mut self, at: Instant, connect: bool, text: impl Into<String>) {
        self.error(text);
        if let Some(timeline) = &mut self.timeline {
            let happened = if connect {
                Happened::FailedConnect
            } else {
                Happened::Error
            };
            timeline.note(at, happened);
        }
    }

    /// Starts the CPU clock the first time `measuring` is true, so that `cpu` covers the
    /// measured part only (a warm-up's CPU would inflate CPU per byte).
    #[inline]
    pub fn cpu_starts_if(&mut self, measuring: bool) {
        if measuring && self.cpu_from.is_none() {
            self.cpu_from = Some(CpuTime::thread_now());
        }
    }

    /// Whether the CPU clock has started (the measured part has begun for this thread).
    pub fn cpu_running(&self) -> bool {
        self.cpu_from.is_some()
    }

    /// Stops the CPU clock: `cpu` is the thread's CPU time since it started (zero if it never
    /// did).
    pub fn stop_cpu(&mut self) {
        if let Some(from) = self.cpu_from.take() {
            let used = CpuTime::thread_now().since(from);
            self.cpu.user_ns += used.user_ns;
            self.cpu.system_ns += used.system_ns;
        }
    }

    /// Keeps an error, if there is room.
    pub fn error(&mut self, text: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(text.into());
        }
    }

    /// Notes a way payload moved (kept once).
    pub fn io(&mut self, path: &'static str) {
        if !self.io_path.contains(&path) {
            self.io_path.push(path);
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(MAX_LATENCY_NS);
        self.latency.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }
}

impl Default for ThreadResult {
    fn default() -> Self {
        Self::new()
    }
}

/// Joins generator threads; a thread that panicked becomes a result carrying that error.
pub fn join_all(
    threads: impl IntoIterator<Item = std::thread::JoinHandle<ThreadResult>>,
    what: &str,
) -> Vec<ThreadResult> {
    threads
        .into_iter()
        .map(|thread| {
            thread.join().unwrap_or_else(|_| {
                let mut result = ThreadResult::new();
                result.error(format!("{what} thread panicked"));
                result
            })
        })
        .collect()
}

/// A histogram able to hold 1 ns to 1 h at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
}

#[cold]
fn unreachable_histogram() -> Histogram<u64> {
    // new(3) only fails for more than 5 significant digits.
    panic!("hdrhistogram refused 3 significant digits")
}

/// CPU time in nanoseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    /// In user mode.
    pub user_ns: u64,
    /// In the kernel on the thread's behalf.
    pub system_ns: u64,
}

impl CpuTime {
    /// The calling thread's CPU time so far.
    pub fn thread_now() -> Self {
        use nix::sys::resource::{UsageWho, getrusage};
        match getrusage(UsageWho::RUSAGE_THREAD) {
            Ok(usage) => {
                let ns = |tv: nix::sys::time::TimeVal| {
                    u64::try_from(tv.tv_sec()).unwrap_or(0) * 1_000_000_000
                        + u64::try_from(tv.tv_usec()).unwrap_or(0) * 1000
                };
                Self {
                    user_ns: ns(usage.user_time()),
                    system_ns: ns(usage.system_time()),
                }
            }
            Err(_) => Self::default(),
        }
    }

    /// CPU time since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            user_ns: self.user_ns.saturating_sub(earlier.user_ns),
            system_ns: self.system_ns.saturating_sub(earlier.system_ns),
        }
    }
}

/// From TCP_INFO.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpFacts {
    /// Segments retransmitted over the connection's life.
    pub retransmits: u64,
    /// Smoothed RTT, microseconds (0 when unknown).
    pub rtt_us: u64,
    /// RTT variance, microseconds.
    pub rttvar_us: u64,
    /// Connections the RTT figures were read from (for averaging).
    pub samples: u64,
}

impl TcpFacts {
    /// Reads TCP_INFO of a connected TCP socket.
    pub fn of(socket: &impl AsRawFd) -> Self {
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len =
            libc::socklen_t::try_from(size_of::<libc::tcp_info>()).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `info` is a writable tcp_info of `len` bytes; the kernel writes at most `len`
        // bytes and updates `len`; a zeroed tcp_info is a valid value of the type.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Self::default();
        }
        // SAFETY: zero-initialised above and possibly filled by the kernel: initialised either way.
        let info = unsafe { info.assume_init() };
        Self {
            retransmits: u64::from(info.tcpi_total_retrans),
            rtt_us: u64::from(info.tcpi_rtt),
            rttvar_us: u64::from(info.tcpi_rttvar),
            samples: 1,
        }
    }

    /// Sums retransmits, keeps RTT figures to average.
    pub fn add(&mut self, other: Self) {
        self.retransmits += other.retransmits;
        self.rtt_us += other.rtt_us;
        self.rttvar_us += other.rttvar_us;
        self.samples += other.samples;
    }
}

/// UDP flow statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpFacts {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Received after a higher sequence number.
    pub reordered: u64,
    /// Received twice.
    pub duplicates: u64,
    /// RFC 3550 jitter, nanoseconds.
    pub jitter_ns: u64,
    /// RR responses that did not come back in time.
    pub timeouts: u64,
}

/// A whole side's result: the threads' results merged, plus the node's view.
#[derive(Debug)]
pub struct SideResult {
    /// The merged thread results (`measured` is the longest window).
    pub totals: ThreadResult,
    /// Node CPU utilisation over the window, 0 to 1.
    pub node_cpu_busy: f64,
    /// The daemon's RSS at the end.
    pub daemon_rss_bytes: u64,
    /// The local IP the side used.
    pub local_ip: String,
    /// The MTU of its route to the target, bytes (client sides; 0 when unknown).
    pub mtu: u32,
    /// The measured part by interval (client sides).
    pub timeline: Vec<super::timeline::Interval>,
    /// When the measured part started, ms since the epoch (client sides; 0 otherwise).
    pub timeline_start_unix_ms: u64,
}

/// Merges thread results into one.
pub fn merge(results: impl IntoIterator<Item = ThreadResult>) -> ThreadResult {
    let mut total = ThreadResult::new();
    let mut tcp = TcpFacts::default();
    let mut jitter_sum = 0_u64;
    let mut jitter_flows = 0_u64;
    for result in results {
        total.measured = total.measured.max(result.measured);
        total.bytes_sent += result.bytes_sent;
        total.bytes_received += result.bytes_received;
        total.messages += result.messages;
        let _ = total.latency.add(&result.latency);
        total.cpu.user_ns += result.cpu.user_ns;
        total.cpu.system_ns += result.cpu.system_ns;
        tcp.add(result.tcp);
        total.udp.sent += result.udp.sent;
        total.udp.received += result.udp.received;
        total.udp.reordered += result.udp.reordered;
        total.udp.duplicates += result.udp.duplicates;
        total.udp.timeouts += result.udp.timeouts;
        if result.udp.received > 1 {
            jitter_sum += result.udp.jitter_ns;
            jitter_flows += 1;
        }
        total.connections += result.connections;
        for path in result.io_path {
            total.io(path);
        }
        for (rcode, count) in result.dns_rcodes {
            *total.dns_rcodes.entry(rcode).or_default() += count;
        }
        for error in result.errors {
            total.error(error);
        }
    }
    total.tcp = TcpFacts {
        retransmits: tcp.retransmits,
        rtt_us: tcp.rtt_us.checked_div(tcp.samples).unwrap_or(0),
        rttvar_us: tcp.rttvar_us.checked_div(tcp.samples).unwrap_or(0),
        samples: tcp.samples,
    };
    total.udp.jitter_ns = jitter_sum.checked_div(jitter_flows).unwrap_or(0);
    total
}

/// Aggregate CPU jiffies from /proc/stat: (busy, total).
pub fn node_cpu_jiffies() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return (0, 0);
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Busy share of all CPUs between two [`node_cpu_jiffies`] readings.
pub fn node_cpu_busy(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total > 0.0 { busy / total } else { 0.0 }
}

/// This process's resident memory, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC in nanoseconds, as written into sonde's UDP payloads.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| {
            u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_sums_counts_and_averages_rtt() {
        let mut a = ThreadResult::new();
        a.bytes_sent = 100;
        a.messages = 2;
        a.record(Duration::from_micros(10));
        a.tcp = TcpFacts {
            retransmits: 1,
            rtt_us: 100,
            rttvar_us: 10,
            samples: 1,
        };
        a.measured = Duration::from_secs(1);
        let mut b = ThreadResult::new();
        b.bytes_sent = 50;
        b.messages = 1;
        b.record(Duration::from_micros(30));
        b.tcp = TcpFacts {
            retransmits: 2,
            rtt_us: 300,
            rttvar_us: 30,
            samples: 1,
        };
        b.measured = Duration::from_secs(2);
        let total = merge([a, b]);
        assert_eq!(total.bytes_sent, 150);
        assert_eq!(total.messages, 3);
        assert_eq!(total.latency.len(), 2);
        assert_eq!(total.tcp.retransmits, 3);
        assert_eq!(total.tcp.rtt_us, 200);
        assert_eq!(total.measured, Duration::from_secs(2));
    }

    #[test]
    fn errors_are_capped() {
        let mut result = ThreadResult::new();
        for i in 0..20 {
            result.error(format!("e{i}"));
        }
        assert_eq!(result.errors.len(), MAX_ERRORS);
        assert_eq!(result.errors[0], "e0");
    }

    #[test]
    fn cpu_busy_is_a_share() {
        assert_eq!(node_cpu_busy((10, 100), (60, 200)), 0.5);
        assert_eq!(node_cpu_busy((10, 100), (10, 100)), 0.0);
    }
}
