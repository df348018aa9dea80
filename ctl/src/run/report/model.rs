//! The run-result document's model: what `sondectl run -o json` writes (schema:
//! `docs/schema/run-result.v1.json`). Units are in the field names: `_bytes`, `_ns`, `_us`,
//! `_bits_per_second`, `_seconds`.

use std::time::Duration;

use serde::Serialize;
use sonde_proto::v1 as pb;

use crate::endpoint::{PathKind, Place};

/// The document's schema identifier.
pub const SCHEMA: &str = "sonde.run-result/v1";

/// A whole `sondectl run`.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// sondectl's version.
    pub sonde_version: &'static str,
    /// When the run started, seconds since the Unix epoch.
    pub started_at_unix_seconds: u64,
    /// The generator: tcp-stream, tcp-rr, tcp-crr, udp-stream, udp-rr, unix-stream, unix-rr,
    /// fs-rr.
    pub kind: String,
    /// The client end.
    pub from: EndReport,
    /// The server end.
    pub to: EndReport,
    /// How traffic gets there.
    pub path: PathKind,
    /// The parameters.
    pub spec: SpecReport,
    /// One entry per size and repetition, in order.
    pub measurements: Vec<Measurement>,
    /// Whether every planned measurement completed without an error.
    pub complete: bool,
    /// What went wrong, one line each.
    pub errors: Vec<String>,
    /// Time its measurements waited for nodes held by someone else, s (absent when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub waited_seconds: f64,
    /// Whom they waited for, one line per holder (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waits: Vec<String>,
}

/// One end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct EndReport {
    /// What the user named.
    pub endpoint: String,
    /// Where it ran: daemons, nodes, pods, namespaces, IPs.
    pub places: Vec<Place>,
    /// The address traffic went to (the `to` end: a pod IP, a ClusterIP, a node IP).
    pub ip: Option<String>,
    /// The nodes' kernels, as their daemons report them.
    pub kernels: Vec<String>,
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct SpecReport {
    /// Measured part of each measurement.
    pub duration_seconds: f64,
    /// Discarded warm-up before it.
    pub warmup_seconds: f64,
    /// Connections or flows.
    pub parallel: u32,
    /// Target messages per second (0: as fast as possible).
    pub rate: f64,
    /// Stream direction: forward, reverse, both.
    pub direction: String,
    /// Whether payload moved with one plain syscall per message.
    pub plain_io: bool,
    /// Repetitions of each size.
    pub repetitions: u32,
    /// The sizes, in bytes.
    pub sizes_bytes: Vec<u64>,
    /// dns: the name asked (absent: the run's own, which sonde's responder answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// dns: the record types asked, in turn.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_types: Vec<String>,
}

/// One measurement: a size, a repetition.
#[derive(Debug, Serialize)]
pub struct Measurement {
    /// Request (RR) or message/datagram size, bytes.
    pub size_bytes: u64,
    /// Response size for RR kinds.
    pub response_size_bytes: Option<u64>,
    /// 1-based repetition.
    pub repetition: u32,
    /// Goodput at the receiver(s), bits per second (payload only); none when a side it is
    /// measured at failed (see `complete`, `errors` and `until_failure`).
    pub throughput_bits_per_second: Option<f64>,
    /// Transactions (RR), writes (TCP stream) or datagrams received (UDP stream) per second;
    /// none when a side it is measured at failed.
    pub messages_per_second: Option<f64>,
    /// Latency of transactions (RR kinds), from the intended send time in rate mode.
    pub latency: Option<Latency>,
    /// TCP facts (TCP kinds).
    pub tcp: Option<TcpReport>,
    /// UDP facts (UDP kinds).
    pub udp: Option<UdpReport>,
    /// CPU use.
    pub cpu: CpuReport,
    /// The client side as measured.
    pub client: Option<SideReport>,
    /// The server side(s), merged.
    pub server: Option<SideReport>,
    /// Per-stage kernel latency of the run's own packets, when traced.
    pub kernel: Option<crate::run::breakdown::Breakdown>,
    /// What each node's conntrack table went through during the measurement (warm-up
    /// included), when its daemon can read it.
    pub conntrack: Vec<ConntrackReport>,
    /// Whether both sides completed without errors.
    pub complete: bool,
    /// What went wrong in this measurement.
    pub errors: Vec<String>,
    /// When the client side failed half-way: what it reported live until then, so that a
    /// broken measurement still says what it moved.
    pub until_failure: Option<UntilFailure>,
    /// The measured part interval by interval, as the client saw it, with what happened
    /// meanwhile (absent from daemons without timelines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
}

/// A measurement's measured part, interval by interval (the client side's counts: they sum
/// to the client's totals).
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// When the first interval began, ms since the epoch (the client node's clock).
    pub started_at_unix_ms: u64,
    /// Every interval, in order, empty ones included.
    pub intervals: Vec<Interval>,
    /// What happened during the measurement (a rollout step, an endpoint change), in order.
    pub events: Vec<TimelineEvent>,
}

/// One interval of a timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Its start from the start of the measured part, s.
    pub start_seconds: f64,
    /// Its length, s (the last may be shorter).
    pub length_seconds: f64,
    /// Payload bytes the client moved (sent plus received).
    pub bytes: u64,
    /// Messages it completed (transactions, writes, datagrams).
    pub messages: u64,
    /// `bytes` over the interval, bit/s.
    pub bits_per_second: f64,
    /// `messages` over the interval.
    pub messages_per_second: f64,
    /// Failures other than connects (a reset, an error answer, a response that never came).
    pub errors: u64,
    /// Connections that could not be opened.
    pub failed_connects: u64,
    /// Median latency of the transactions intended in it, ns (request/response kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_ns: Option<u64>,
    /// Their 99th percentile, ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ns: Option<u64>,
}

/// Something that happened during a measurement, placed on its timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    /// When, s from the start of the measured part (negative: during the warm-up).
    pub at_seconds: f64,
    /// Where it came from: `lab-rollout`, `endpoint-slice`.
    pub source: String,
    /// What happened.
    pub what: String,
}

/// What a client side reported in its live progress over the measured part of a measurement
/// (warm-up left out), until it failed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UntilFailure {
    /// Measured time the progress covered.
    pub measured_seconds: f64,
    /// Payload bytes the client moved (sent plus received).
    pub bytes: u64,
    /// Messages completed (transactions, writes, datagrams).
    pub messages: u64,
    /// `bytes` over `measured_seconds`, in bits per second.
    pub bits_per_second: f64,
    /// `messages` over `measured_seconds`.
    pub messages_per_second: f64,
}

/// The counts of a client side's live progress over the measured part, kept while it runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveCounts {
    measured_ms: u64,
    bytes: u64,
    messages: u64,
}

impl LiveCounts {
    /// Counts one progress message, when its interval lies wholly after the warm-up.
    pub fn add(&mut self, progress: &pb::Progress, warmup: Duration) {
        let warmup_ms = u64::try_from(warmup.as_millis()).unwrap_or(u64::MAX);
        if progress.elapsed_ms.saturating_sub(progress.interval_ms) < warmup_ms {
            return;
        }
        self.measured_ms += progress.interval_ms;
        self.bytes += progress.bytes;
        self.messages += progress.messages;
    }

    /// What the progress said, if it covered any measured time.
    pub fn until_failure(&self) -> Option<UntilFailure> {
        let seconds = self.measured_ms as f64 / 1e3;
        (self.measured_ms > 0).then(|| UntilFailure {
            measured_seconds: seconds,
            bytes: self.bytes,
            messages: self.messages,
            bits_per_second: self.bytes as f64 * 8.0 / seconds,
            messages_per_second: self.messages as f64 / seconds,
        })
    }
}

/// Latency summary and the histogram it came from.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Transactions recorded.
    pub count: u64,
    /// Mean, ns.
    pub mean_ns: f64,
    /// Percentiles, ns.
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Largest, ns.
    pub max_ns: u64,
    /// Smallest, ns.
    pub min_ns: u64,
    /// The full HdrHistogram (ns), V2 deflate encoding in base64: merge runs with any
    /// HdrHistogram library.
    pub histogram: String,
}

/// TCP facts.
#[derive(Debug, Serialize)]
pub struct TcpReport {
    /// Segments retransmitted (both sides).
    pub retransmits: u64,
    /// Smoothed RTT seen by the client, microseconds.
    pub rtt_us: u64,
    /// Its variance, microseconds.
    pub rttvar_us: u64,
    /// Connections opened by the client.
    pub connections: u64,
}

/// UDP facts.
#[derive(Debug, Serialize)]
pub struct UdpReport {
    /// Datagrams the client sent in the measured part.
    pub sent: u64,
    /// Of those, received by the server (stream) or answered (RR).
    pub received: u64,
    /// Not received (stream) or not answered in time (RR).
    pub lost: u64,
    /// `lost / sent`.
    pub loss_ratio: f64,
    /// Received out of order.
    pub reordered: u64,
    /// Received twice.
    pub duplicates: u64,
    /// RFC 3550 inter-arrival jitter, ns (stream).
    pub jitter_ns: u64,
    /// DNS answers by response code (`dns`): NoError, NXDomain, ServFail, Refused, ...
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rcodes: std::collections::BTreeMap<String, u64>,
}

/// CPU use of the generators and of their nodes.
#[derive(Debug, Serialize)]
pub struct CpuReport {
    /// Client generator threads, user + system, seconds.
    pub client_seconds: f64,
    /// Server generator threads, seconds.
    pub server_seconds: f64,
    /// Client and server seconds per GB moved (lower is better).
    pub seconds_per_gigabyte: Option<f64>,
    /// The client node's CPU utilisation during the measurement (0 to 1).
    pub client_node_busy: f64,
    /// The server node's.
    pub server_node_busy: f64,
}

/// One node's conntrack table over a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackReport {
    /// The node (the namespace whose table this is).
    pub node: String,
    /// Entries at the start and the end.
    pub entries_start: u64,
    /// Entries at the end.
    pub entries_end: u64,
    /// The table's maximum.
    pub max: u64,
    /// New entries (ctnetlink events).
    pub created: u64,
    /// Entries removed.
    pub destroyed: u64,
    /// Inserts that failed.
    pub insert_failed: u64,
    /// Packets dropped for lack of an entry.
    pub drop: u64,
    /// Unassured entries evicted to make room.
    pub early_drop: u64,
    /// Events were lost: `created` and `destroyed` are low.
    pub events_lost: bool,
}

impl ConntrackReport {
    /// The report of `node`'s delta.
    pub fn new(node: String, delta: &pb::ConntrackDelta) -> Self {
        Self {
            node,
            entries_start: delta.entries_start,
            entries_end: delta.entries_end,
            max: delta.max,
            created: delta.created,
            destroyed: delta.destroyed,
            insert_failed: delta.insert_failed,
            drop: delta.drop,
            early_drop: delta.early_drop,
            events_lost: delta.events_lost,
        }
    }

    /// Whether the table was under pressure: failed inserts, drops or evictions.
    pub fn pressed(&self) -> bool {
        self.insert_failed + self.drop + self.early_drop > 0
    }
}

/// One side's raw figures.
#[derive(Debug, Serialize)]
pub struct SideReport {
    /// Measured window, seconds.
    pub measured_seconds: f64,
    /// Payload bytes written.
    pub bytes_sent: u64,
    /// Payload bytes read.
    pub bytes_received: u64,
    /// Messages completed.
    pub messages: u64,
    /// The daemon's resident memory at the end, bytes.
    pub daemon_rss_bytes: u64,
    /// The local IP used.
    pub local_ip: String,
    /// The MTU of its route to the other end, bytes (client sides; absent when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// How it moved payload ("sendfile", "splice", "udp-gso", "recvmmsg", "write", ...).
    pub io_path: String,
    /// Errors it met.
    pub errors: Vec<String>,
}

impl SideReport {
    pub(super) fn from_pb(side: &pb::SideResult) -> Self {
        Self {
            measured_seconds: side.measured_ns as f64 / 1e9,
            bytes_sent: side.bytes_sent,
            bytes_received: side.bytes_received,
            messages: side.messages,
            daemon_rss_bytes: side.daemon_rss_bytes,
            local_ip: side.local_ip.clone(),
            mtu: (side.mtu > 0).then_some(side.mtu),
            io_path: side.io_path.clone(),
            errors: side.errors.clone(),
        }
    }
}

/// What the kind and direction say about where goodput is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Bulk client to server.
    StreamForward,
    /// Bulk server to client.
    StreamReverse,
    /// Bulk both ways.
    StreamBoth,
    /// Request/response (TCP RR, CRR, UDP RR).
    RequestResponse,
    /// UDP datagrams client to server.
    Datagrams,
}

/// What carries a kind's payload, which decides the facts reported with it (TCP:
/// retransmits and RTT; UDP: loss, reordering, jitter; local: neither).
pub use sonde_proto::kinds::Transport;

/// What a measurement was: the shape of its kind, its size, its repetition.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Where goodput is measured.
    pub shape: Shape,
    /// What carries the payload.
    pub transport: Transport,
    /// Request or message size.
    pub size: u64,
    /// RR response size.
    pub response_size: Option<u64>,
    /// 1-based repetition.
    pub repetition: u32,
    /// Whether a sonde server side reports too (not for a DNS server that is not sonde's).
    pub server_side: bool,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}
