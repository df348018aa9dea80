//! The result of `sondectl run`: one JSON document (schema: `docs/schema/run-result.v1.json`),
//! from which the table and the CSV are rendered.
//!
//! Units are in the field names: `_bytes`, `_ns`, `_us`, `_bits_per_second`, `_seconds`.

use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer as _, V2DeflateSerializer},
};
use serde::Serialize;
use sonde_proto::v1 as pb;
use std::time::Duration;

use super::sizes::human;
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
    pub kernel: Option<super::breakdown::Breakdown>,
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
    /// How it moved payload ("sendfile", "splice", "udp-gso", "recvmmsg", "write", ...).
    pub io_path: String,
    /// Errors it met.
    pub errors: Vec<String>,
}

impl SideReport {
    fn from_pb(side: &pb::SideResult) -> Self {
        Self {
            measured_seconds: side.measured_ns as f64 / 1e9,
            bytes_sent: side.bytes_sent,
            bytes_received: side.bytes_received,
            messages: side.messages,
            daemon_rss_bytes: side.daemon_rss_bytes,
            local_ip: side.local_ip.clone(),
            io_path: side.io_path.clone(),
            errors: side.errors.clone(),
        }
    }
}

/// Merges the results of several server sides (every pod behind a Service) into one.
pub fn merge_sides(sides: &[pb::SideResult]) -> Option<pb::SideResult> {
    let mut merged = sides.first()?.clone();
    let mut histogram = decode_histogram(&merged.latency_histogram);
    for side in &sides[1..] {
        merged.measured_ns = merged.measured_ns.max(side.measured_ns);
        merged.bytes_sent += side.bytes_sent;
        merged.bytes_received += side.bytes_received;
        merged.messages += side.messages;
        merged.cpu_user_ns += side.cpu_user_ns;
        merged.cpu_system_ns += side.cpu_system_ns;
        merged.node_cpu_busy = merged.node_cpu_busy.max(side.node_cpu_busy);
        merged.tcp_retransmits += side.tcp_retransmits;
        merged.udp_received += side.udp_received;
        merged.udp_reordered += side.udp_reordered;
        merged.udp_duplicates += side.udp_duplicates;
        merged.udp_jitter_ns = merged.udp_jitter_ns.max(side.udp_jitter_ns);
        merged.connections += side.connections;
        merged.errors.extend(side.errors.iter().cloned());
        if let (Some(total), Some(more)) =
            (&mut histogram, decode_histogram(&side.latency_histogram))
        {
            let _ = total.add(&more);
        }
    }
    if let Some(histogram) = histogram {
        let mut bytes = Vec::new();
        if V2DeflateSerializer::new()
            .serialize(&histogram, &mut bytes)
            .is_ok()
        {
            merged.latency_histogram = bytes;
        }
    }
    Some(merged)
}

/// A histogram from HdrHistogram's V2 (deflate) encoding; `None` when empty or undecodable.
pub(super) fn decode_histogram(bytes: &[u8]) -> Option<Histogram<u64>> {
    if bytes.is_empty() {
        return None;
    }
    Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .ok()
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

/// Builds a measurement from the two sides' results (either may be missing after a failure)
/// and, for a client side that failed, what its live progress said.
pub fn measurement(
    sample: &Sample,
    client: Option<&pb::SideResult>,
    server: Option<&pb::SideResult>,
    live: &LiveCounts,
    errors: Vec<String>,
) -> Measurement {
    let Sample {
        shape,
        transport,
        size,
        response_size,
        repetition,
        server_side,
    } = *sample;
    // A figure needs the sides it is read from: none (null, `-`) when one of them failed.
    let seconds = |side: &pb::SideResult| side.measured_ns as f64 / 1e9;
    let rate = |amount: f64, secs: f64| if secs > 0.0 { amount / secs } else { 0.0 };
    let received_bits = |side: Option<&pb::SideResult>| {
        side.map(|s| rate(s.bytes_received as f64 * 8.0, seconds(s)))
    };
    let messages =
        |side: Option<&pb::SideResult>| side.map(|s| rate(s.messages as f64, seconds(s)));
    let (throughput, messages_per_second) = match shape {
        Shape::StreamForward => (received_bits(server), messages(client)),
        Shape::StreamReverse => (received_bits(client), messages(server)),
        Shape::StreamBoth => (
            received_bits(server)
                .zip(received_bits(client))
                .map(|(there, back)| there + back),
            messages(client),
        ),
        Shape::RequestResponse => (
            client.map(|c| rate((c.bytes_sent + c.bytes_received) as f64 * 8.0, seconds(c))),
            messages(client),
        ),
        // Datagrams received per second of the sender's measured window.
        Shape::Datagrams => {
            let both = server.zip(client);
            (
                both.map(|(s, c)| rate(s.bytes_received as f64 * 8.0, seconds(c))),
                both.map(|(s, c)| rate(s.udp_received as f64, seconds(c))),
            )
        }
    };
    let latency = client
        .and_then(|c| decode_histogram(&c.latency_histogram))
        .filter(|h| !h.is_empty())
        .map(|h| {
            let mut bytes = Vec::new();
            let _ = V2DeflateSerializer::new().serialize(&h, &mut bytes);
            Latency {
                count: h.len(),
                mean_ns: h.mean(),
                p50_ns: h.value_at_quantile(0.50),
                p90_ns: h.value_at_quantile(0.90),
                p99_ns: h.value_at_quantile(0.99),
                p999_ns: h.value_at_quantile(0.999),
                max_ns: h.max(),
                min_ns: h.min(),
                histogram: base64::engine::general_purpose::STANDARD.encode(bytes),
            }
        });
    let tcp = (transport == Transport::Tcp).then(|| TcpReport {
        retransmits: client.map_or(0, |c| c.tcp_retransmits)
            + server.map_or(0, |s| s.tcp_retransmits),
        rtt_us: client.map_or(0, |c| c.tcp_rtt_us),
        rttvar_us: client.map_or(0, |c| c.tcp_rttvar_us),
        connections: client.map_or(0, |c| c.connections),
    });
    let udp = (transport == Transport::Udp).then(|| {
        let sent = client.map_or(0, |c| c.udp_sent);
        let received = match shape {
            Shape::Datagrams => server.map_or(0, |s| s.udp_received),
            _ => client.map_or(0, |c| c.udp_received),
        };
        let lost = sent.saturating_sub(received);
        UdpReport {
            sent,
            received,
            lost,
            loss_ratio: if sent > 0 {
                lost as f64 / sent as f64
            } else {
                0.0
            },
            reordered: server.map_or(0, |s| s.udp_reordered),
            duplicates: server.map_or(0, |s| s.udp_duplicates),
            jitter_ns: server.map_or(0, |s| s.udp_jitter_ns),
            rcodes: client
                .map(|c| c.dns_rcodes.clone().into_iter().collect())
                .unwrap_or_default(),
        }
    });
    let cpu_seconds = |side: Option<&pb::SideResult>| {
        side.map_or(0.0, |s| (s.cpu_user_ns + s.cpu_system_ns) as f64 / 1e9)
    };
    let moved = client.map_or(0, |c| c.bytes_sent + c.bytes_received) as f64;
    let cpu = CpuReport {
        client_seconds: cpu_seconds(client),
        server_seconds: cpu_seconds(server),
        seconds_per_gigabyte: (moved > 0.0)
            .then(|| (cpu_seconds(client) + cpu_seconds(server)) / (moved / 1e9)),
        client_node_busy: client.map_or(0.0, |c| c.node_cpu_busy),
        server_node_busy: server.map_or(0.0, |s| s.node_cpu_busy),
    };
    let mut errors = errors;
    for (side, name) in [(client, "client"), (server, "server")] {
        if let Some(side) = side {
            errors.extend(side.errors.iter().map(|e| format!("{name}: {e}")));
        }
    }
    Measurement {
        size_bytes: size,
        response_size_bytes: response_size,
        repetition,
        throughput_bits_per_second: throughput,
        messages_per_second,
        latency,
        tcp,
        udp,
        cpu,
        client: client.map(SideReport::from_pb),
        server: server.map(SideReport::from_pb),
        kernel: None,
        conntrack: Vec::new(),
        complete: client.is_some() && (server.is_some() || !server_side) && errors.is_empty(),
        errors,
        until_failure: client.is_none().then(|| live.until_failure()).flatten(),
    }
}

/// Bits per second for people.
pub fn bits(bps: f64) -> String {
    match bps {
        b if b >= 1e9 => format!("{:.2} Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.2} Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.2} kbit/s", b / 1e3),
        b => format!("{b:.0} bit/s"),
    }
}

/// Nanoseconds for people.
pub fn nanos(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}us", n as f64 / 1e3),
        n => format!("{n}ns"),
    }
}

/// The table: one row per measurement.
pub fn table(report: &RunReport) -> String {
    let mut table = crate::output::table(&[
        "SIZE",
        "REP",
        "THROUGHPUT",
        "MSG/S",
        "P50",
        "P90",
        "P99",
        "P99.9",
        "MAX",
        "LOSS",
        "RETRANS",
        "CPU C/S",
    ]);
    for m in &report.measurements {
        let latency = |pick: fn(&Latency) -> u64| {
            m.latency
                .as_ref()
                .map(|l| nanos(pick(l)))
                .unwrap_or_else(|| "-".to_owned())
        };
        let size = match m.response_size_bytes {
            Some(response) if response != m.size_bytes => {
                format!("{}/{}", human(m.size_bytes), human(response))
            }
            _ => human(m.size_bytes),
        };
        let cpu = |side: Option<&SideReport>, seconds: f64| {
            side.map_or_else(|| "-".to_owned(), |_| format!("{seconds:.2}"))
        };
        let figure = |value: Option<f64>, show: fn(f64) -> String| {
            value.map_or_else(|| "-".to_owned(), show)
        };
        table.add_row([
            size,
            m.repetition.to_string(),
            figure(m.throughput_bits_per_second, bits),
            figure(m.messages_per_second, |v| format!("{v:.0}")),
            latency(|l| l.p50_ns),
            latency(|l| l.p90_ns),
            latency(|l| l.p99_ns),
            latency(|l| l.p999_ns),
            latency(|l| l.max_ns),
            m.udp
                .as_ref()
                .map(|u| format!("{:.3}%", u.loss_ratio * 100.0))
                .unwrap_or_else(|| "-".to_owned()),
            m.tcp
                .as_ref()
                .filter(|_| m.client.is_some() || m.server.is_some())
                .map(|t| t.retransmits.to_string())
                .unwrap_or_else(|| "-".to_owned()),
            format!(
                "{}/{}s",
                cpu(m.client.as_ref(), m.cpu.client_seconds),
                cpu(m.server.as_ref(), m.cpu.server_seconds)
            ),
        ]);
    }
    let mut text = format!(
        "{} {} -> {} ({:?} path, {} x {:.1}s, warm-up {:.1}s, parallel {})\n\n{}\n",
        report.kind,
        report.from.endpoint,
        report.to.endpoint,
        report.path,
        report.spec.repetitions,
        report.spec.duration_seconds,
        report.spec.warmup_seconds,
        report.spec.parallel,
        crate::output::trim_lines(&table)
    );
    for m in &report.measurements {
        if let Some(kernel) = &m.kernel {
            text.push('\n');
            text.push_str(&kernel_table(m, kernel, breakdown_unit(&report.kind)));
        }
    }
    // One line per node and measurement, only when a table moved or was pressed.
    for m in &report.measurements {
        for table in &m.conntrack {
            if table.created == 0 && !table.pressed() {
                continue;
            }
            text.push_str(&format!(
                "conntrack {} (size {}): {} -> {} of {} entries, {} new, {} failed inserts, {} drops, {} early drops{}\n",
                table.node,
                human(m.size_bytes),
                table.entries_start,
                table.entries_end,
                table.max,
                table.created,
                table.insert_failed,
                table.drop,
                table.early_drop,
                if table.events_lost { " (events lost: new is low)" } else { "" },
            ));
        }
    }
    // DNS answers by response code, and the queries lost.
    for m in &report.measurements {
        if let Some(udp) = m
            .udp
            .as_ref()
            .filter(|u| !u.rcodes.is_empty() || u.lost > 0)
            && report.kind == sonde_proto::kinds::DNS.name
        {
            let rcodes: Vec<String> = udp
                .rcodes
                .iter()
                .map(|(rcode, count)| format!("{rcode} {count}"))
                .collect();
            text.push_str(&format!(
                "dns #{}: {} queries, answers {}, {} lost (no answer within 1 s)\n",
                m.repetition,
                udp.sent,
                if rcodes.is_empty() {
                    "none".to_owned()
                } else {
                    rcodes.join(", ")
                },
                udp.lost,
            ));
        }
    }
    for m in &report.measurements {
        if let Some(until) = &m.until_failure {
            text.push_str(&format!(
                "{} #{} until it failed: the client reported {}, {:.0} msg/s over {:.1}s measured (its live progress; not a complete measurement)\n",
                human(m.size_bytes),
                m.repetition,
                bits(until.bits_per_second),
                until.messages_per_second,
                until.measured_seconds,
            ));
        }
    }
    for error in &report.errors {
        text.push_str(&format!("error: {error}\n"));
    }
    text
}

/// What a kind's kernel breakdown sums up: one transaction's packets for request/response
/// kinds, one packet's stages for streams (the kind's rule; a packet for a name not known).
pub fn breakdown_unit(kind: &str) -> &'static str {
    sonde_proto::kinds::KindRules::by_name(kind).map_or("packet", |rules| rules.breakdown_unit())
}

/// The kernel breakdown of one measurement, under the figures; `per` names what its sum of
/// stage means is per ("transaction" for request/response kinds, "packet" for streams).
pub fn kernel_table(m: &Measurement, kernel: &super::breakdown::Breakdown, per: &str) -> String {
    let signed = |ns: i64| {
        if ns < 0 {
            format!("-{}", nanos(ns.unsigned_abs()))
        } else {
            nanos(ns as u64)
        }
    };
    let mut table = crate::output::table(&[
        "DIRECTION",
        "STAGE",
        "NODE",
        "SAMPLES",
        "MEAN",
        "P50",
        "P90",
        "P99",
        "MAX",
        "ERROR",
    ]);
    for direction in &kernel.directions {
        for stage in &direction.stages {
            let l = &stage.latency;
            table.add_row([
                direction.direction.to_owned(),
                stage.name.clone(),
                stage.node.clone(),
                l.samples.to_string(),
                signed(l.mean_ns as i64),
                signed(l.p50_ns),
                signed(l.p90_ns),
                signed(l.p99_ns),
                signed(l.max_ns),
                if stage.name == "wire" {
                    format!("±{}", nanos(stage.error_ns))
                } else {
                    "-".to_owned()
                },
            ]);
        }
    }
    let mut text = format!(
        "kernel breakdown, {} #{} (clock: {}, offset {} ±{})\n{}\n",
        human(m.size_bytes),
        m.repetition,
        kernel.clock.method,
        signed(kernel.clock.offset_ns),
        nanos(kernel.clock.error_ns),
        crate::output::trim_lines(&table)
    );
    text.push_str(&format!(
        "kernel stages, mean per {per} (both ways): {}",
        nanos(kernel.kernel_mean_ns as u64)
    ));
    if let Some(app) = kernel.application_mean_ns {
        text.push_str(&format!(
            "; application latency, mean: {}",
            nanos(app as u64)
        ));
    }
    text.push('\n');
    if let Some(connect) = &kernel.connect {
        text.push_str(&format!(
            "TCP connect (SYN_SENT to ESTABLISHED): {} samples, p50 {}, p99 {}\n",
            connect.samples,
            signed(connect.p50_ns),
            signed(connect.p99_ns)
        ));
    }
    text.push_str(&format!(
        "retransmits {}; kernel events {} (lost {})\n",
        kernel.retransmits, kernel.events, kernel.events_lost
    ));
    for drop in &kernel.drops {
        text.push_str(&format!(
            "dropped: {} {} after {} ({})\n",
            drop.count, drop.reason, drop.after, drop.node
        ));
    }
    let costs: Vec<String> = kernel
        .programs
        .iter()
        .map(|p| {
            let each = p
                .ns_per_invocation
                .map_or_else(|| "?".to_owned(), |ns| format!("{ns:.0}"));
            format!(
                "{}:{} {}x{each}ns",
                p.node,
                p.name.trim_start_matches("sonde_"),
                p.invocations,
            )
        })
        .collect();
    if !costs.is_empty() {
        text.push_str(&format!("probe cost: {}\n", costs.join(", ")));
    }
    for note in &kernel.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text
}

/// CSV: a header and one row per measurement, raw numbers in the JSON's units.
pub fn csv(report: &RunReport) -> anyhow::Result<String> {
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "kind",
        "from",
        "to",
        "path",
        "size_bytes",
        "response_size_bytes",
        "repetition",
        "throughput_bits_per_second",
        "messages_per_second",
        "p50_ns",
        "p90_ns",
        "p99_ns",
        "p999_ns",
        "max_ns",
        "udp_sent",
        "udp_received",
        "udp_lost",
        "udp_jitter_ns",
        "tcp_retransmits",
        "tcp_rtt_us",
        "client_cpu_seconds",
        "server_cpu_seconds",
        "complete",
        "errors",
    ])?;
    let path = serde_json::to_value(report.path)?;
    for m in &report.measurements {
        let latency = |pick: fn(&Latency) -> u64| {
            m.latency
                .as_ref()
                .map(|l| pick(l).to_string())
                .unwrap_or_default()
        };
        let udp = |pick: fn(&UdpReport) -> u64| {
            m.udp
                .as_ref()
                .map(|u| pick(u).to_string())
                .unwrap_or_default()
        };
        let tcp = |pick: fn(&TcpReport) -> u64| {
            m.tcp
                .as_ref()
                .map(|t| pick(t).to_string())
                .unwrap_or_default()
        };
        writer.write_record([
            report.kind.clone(),
            report.from.endpoint.clone(),
            report.to.endpoint.clone(),
            path.as_str().unwrap_or_default().to_owned(),
            m.size_bytes.to_string(),
            m.response_size_bytes
                .map(|r| r.to_string())
                .unwrap_or_default(),
            m.repetition.to_string(),
            m.throughput_bits_per_second
                .map(|v| format!("{v:.0}"))
                .unwrap_or_default(),
            m.messages_per_second
                .map(|v| format!("{v:.1}"))
                .unwrap_or_default(),
            latency(|l| l.p50_ns),
            latency(|l| l.p90_ns),
            latency(|l| l.p99_ns),
            latency(|l| l.p999_ns),
            latency(|l| l.max_ns),
            udp(|u| u.sent),
            udp(|u| u.received),
            udp(|u| u.lost),
            udp(|u| u.jitter_ns),
            tcp(|t| t.retransmits),
            tcp(|t| t.rtt_us),
            format!("{:.6}", m.cpu.client_seconds),
            format!("{:.6}", m.cpu.server_seconds),
            m.complete.to_string(),
            m.errors.join("; "),
        ])?;
    }
    Ok(String::from_utf8(writer.into_inner()?)?)
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(elapsed_ms: u64, bytes: u64, messages: u64) -> pb::Progress {
        pb::Progress {
            elapsed_ms,
            warmup: false,
            bytes,
            messages,
            interval_ms: 500,
        }
    }

    #[test]
    fn live_counts_keep_only_intervals_after_the_warm_up() {
        let mut live = LiveCounts::default();
        assert_eq!(live.until_failure(), None, "nothing measured yet");
        let warmup = Duration::from_millis(1000);
        // 0.5-1.0 s is warm-up; 0.7-1.2 s straddles its end; 1.2-1.7 s and 1.7-2.2 s count.
        live.add(&progress(1000, 1_000_000, 10), warmup);
        live.add(
            &pb::Progress {
                interval_ms: 500,
                ..progress(1200, 7, 7)
            },
            warmup,
        );
        assert_eq!(live.until_failure(), None, "warm-up only");
        live.add(&progress(1700, 250_000_000, 100), warmup);
        live.add(&progress(2200, 250_000_000, 300), warmup);
        let until = live.until_failure().expect("a second measured");
        assert_eq!(until.measured_seconds, 1.0);
        assert_eq!(until.bytes, 500_000_000);
        assert_eq!(until.messages, 400);
        assert_eq!(until.bits_per_second, 4e9);
        assert_eq!(until.messages_per_second, 400.0);
    }

    fn report(
        client: Option<&pb::SideResult>,
        server: Option<&pb::SideResult>,
        live: LiveCounts,
    ) -> RunReport {
        let sample = Sample {
            shape: Shape::StreamForward,
            transport: Transport::Tcp,
            size: 131_072,
            response_size: None,
            repetition: 1,
            server_side: true,
        };
        let m = measurement(
            &sample,
            client,
            server,
            &live,
            vec!["client side: gone".to_owned()],
        );
        let end = |name: &str| EndReport {
            endpoint: name.to_owned(),
            places: Vec::new(),
            ip: None,
            kernels: Vec::new(),
        };
        RunReport {
            schema: SCHEMA,
            sonde_version: "test",
            started_at_unix_seconds: 0,
            kind: "tcp-stream".to_owned(),
            from: end("pod/pod1"),
            to: end("pod/pod3"),
            path: PathKind::PodIp,
            spec: SpecReport {
                duration_seconds: 6.0,
                warmup_seconds: 0.0,
                parallel: 1,
                rate: 0.0,
                direction: "forward".to_owned(),
                plain_io: false,
                repetitions: 1,
                sizes_bytes: vec![131_072],
                dns_name: None,
                dns_types: Vec::new(),
            },
            measurements: vec![m],
            complete: false,
            errors: Vec::new(),
            waited_seconds: 0.0,
            waits: Vec::new(),
        }
    }

    /// The cells of the table's one measurement row.
    fn row_cells(text: &str) -> Vec<&str> {
        text.lines()
            .find(|line| line.starts_with("128KiB"))
            .expect("the measurement's row")
            .split_whitespace()
            .collect()
    }

    #[test]
    fn a_failed_side_shows_no_figure_but_what_its_progress_said() {
        let mut live = LiveCounts::default();
        live.add(&progress(500, 1_250_000_000, 9_000), Duration::ZERO);
        let text = table(&report(None, None, live));
        let cells = row_cells(&text);
        assert_eq!(cells[2..4], ["-", "-"], "{text}");
        assert_eq!(cells[cells.len() - 2..], ["-", "-/-s"], "{text}");
        assert!(
            text.contains(
                "128KiB #1 until it failed: the client reported 20.00 Gbit/s, 18000 msg/s over 0.5s measured"
            ),
            "{text}"
        );
        let json = serde_json::to_value(report(None, None, live)).expect("JSON");
        let m = &json["measurements"][0];
        assert_eq!(m["until_failure"]["bytes"], 1_250_000_000);
        assert!(m["throughput_bits_per_second"].is_null(), "{m}");
        assert!(m["messages_per_second"].is_null(), "{m}");
    }

    #[test]
    fn a_side_that_measured_nothing_gives_a_zero_though_the_other_failed() {
        // The server side received nothing before the client failed: that zero is a figure.
        let server = pb::SideResult {
            measured_ns: 1_000_000_000,
            ..Default::default()
        };
        let text = table(&report(None, Some(&server), LiveCounts::default()));
        let cells = row_cells(&text);
        assert_eq!(cells[2..5], ["0", "bit/s", "-"], "{text}");
    }

    #[test]
    fn a_side_that_finished_keeps_its_figures_and_no_progress_line() {
        let client = pb::SideResult {
            measured_ns: 1_000_000_000,
            messages: 5,
            ..Default::default()
        };
        // Progress came in too, but the side's own result is the figure.
        let mut live = LiveCounts::default();
        live.add(&progress(500, 1_000, 5), Duration::ZERO);
        let text = table(&report(Some(&client), None, live));
        // No server result: its throughput is not a figure, the client's message rate is.
        let cells = row_cells(&text);
        assert_eq!(cells[2..4], ["-", "5"], "{text}");
        assert_eq!(cells[cells.len() - 2..], ["0", "0.00/-s"], "{text}");
        assert!(!text.contains("until it failed"), "{text}");
    }
}
