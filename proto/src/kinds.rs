//! Every rule of a run kind, written once, in one table both sides read: sondectl's names,
//! defaults and report shapes, sonded's size limits and generator choice, and the
//! scheduler's reservation class. A new kind is one row here (and its generator module).

use crate::v1::{ReservationClass, RunKind};

/// Largest TCP message (request, response, write): 16 MiB, the top of a payload sweep.
pub const MAX_TCP_MESSAGE: u64 = 16 << 20;
/// Largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: u64 = 65_507;
/// Smallest UDP stream datagram: the sequence and timestamp header must fit.
pub const MIN_UDP_STREAM_PAYLOAD: u64 = 32;
/// Smallest UDP RR request or response: the sequence header must fit.
pub const MIN_UDP_RR_PAYLOAD: u64 = 16;

/// How a kind's messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP connections.
    Tcp,
    /// UDP datagrams.
    Udp,
    /// Inside one pod: a Unix socket or files, no network.
    Local,
}

/// What a kind's figures are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Bytes moved one way: throughput (and loss for datagrams).
    Stream,
    /// Transactions (a request and its response): latency and rate.
    RequestResponse,
}

/// The rules of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindRules {
    /// The kind in sonde.v1.
    pub kind: RunKind,
    /// The name users type and reports show (`tcp-rr`).
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// How its messages travel.
    pub transport: Transport,
    /// What its figures are.
    pub pattern: Pattern,
    /// Whether it speaks HTTP/1.1.
    pub http: bool,
    /// Whether every transaction opens a new connection (the `-crr` kinds).
    pub connect_per_transaction: bool,
    /// Whether both ends must be one pod (the intra-pod baselines).
    pub intra_pod: bool,
    /// Whether its data can flow server to client, or both ways (`--direction`).
    pub reversible: bool,
    /// Message size when none is given.
    pub default_size: u64,
    /// Smallest and largest request (stream: write or datagram) in bytes.
    pub request_size: (u64, u64),
    /// Smallest and largest response in bytes (request/response kinds).
    pub response_size: (u64, u64),
    /// One in how many of its packets the kernel breakdown follows: streams send far more
    /// packets than request/response kinds and stamping each would slow them down
    /// (`cargo xtask bench probes`); every request and response is followed.
    pub trace_sampling: u32,
    /// How a run loads a node, for reservations (pScheduler's classes): request/response on
    /// persistent connections is normal; streams, connection storms and the intra-pod
    /// baselines (which load the node's CPU) are exclusive.
    pub reservation: ReservationClass,
}

const TCP: (u64, u64) = (1, MAX_TCP_MESSAGE);

/// `tcp-rr` (the other rows vary it).
pub const TCP_RR: KindRules = KindRules {
    kind: RunKind::TcpRr,
    name: "tcp-rr",
    about: "TCP request/response on persistent connections.",
    transport: Transport::Tcp,
    pattern: Pattern::RequestResponse,
    http: false,
    connect_per_transaction: false,
    intra_pod: false,
    reversible: false,
    // netperf's default.
    default_size: 1,
    request_size: TCP,
    response_size: TCP,
    trace_sampling: 1,
    reservation: ReservationClass::Normal,
};

/// `tcp-stream`.
pub const TCP_STREAM: KindRules = KindRules {
    kind: RunKind::TcpStream,
    name: "tcp-stream",
    about: "Bulk TCP throughput.",
    pattern: Pattern::Stream,
    reversible: true,
    // iperf3's writes.
    default_size: 128 * 1024,
    trace_sampling: 16,
    reservation: ReservationClass::Exclusive,
    ..TCP_RR
};

/// `tcp-crr`.
pub const TCP_CRR: KindRules = KindRules {
    kind: RunKind::TcpCrr,
    name: "tcp-crr",
    about: "A new TCP connection per request/response.",
    connect_per_transaction: true,
    reservation: ReservationClass::Exclusive,
    ..TCP_RR
};

/// `udp-stream`.
pub const UDP_STREAM: KindRules = KindRules {
    kind: RunKind::UdpStream,
    name: "udp-stream",
    about: "UDP datagrams: throughput, loss, reordering, jitter.",
    transport: Transport::Udp,
    pattern: Pattern::Stream,
    // A datagram that fits any MTU.
    default_size: 1200,
    request_size: (MIN_UDP_STREAM_PAYLOAD, MAX_UDP_PAYLOAD),
    trace_sampling: 64,
    reservation: ReservationClass::Exclusive,
    ..TCP_RR
};

/// `udp-rr`.
pub const UDP_RR: KindRules = KindRules {
    kind: RunKind::UdpRr,
    name: "udp-rr",
    about: "UDP request/response, timeouts counted as loss.",
    transport: Transport::Udp,
    default_size: 64,
    request_size: (MIN_UDP_RR_PAYLOAD, MAX_UDP_PAYLOAD),
    response_size: (MIN_UDP_RR_PAYLOAD, MAX_UDP_PAYLOAD),
    ..TCP_RR
};

/// `unix-stream`.
pub const UNIX_STREAM: KindRules = KindRules {
    kind: RunKind::UnixStream,
    name: "unix-stream",
    about: "Intra-pod baseline: bulk transfer over a Unix socket (--from and --to the same pod).",
    transport: Transport::Local,
    pattern: Pattern::Stream,
    intra_pod: true,
    default_size: 128 * 1024,
    reservation: ReservationClass::Exclusive,
    ..TCP_RR
};

/// `unix-rr`.
pub const UNIX_RR: KindRules = KindRules {
    kind: RunKind::UnixRr,
    name: "unix-rr",
    about: "Intra-pod baseline: request/response over a Unix socket.",
    transport: Transport::Local,
    intra_pod: true,
    reservation: ReservationClass::Exclusive,
    ..TCP_RR
};

/// `fs-rr`.
pub const FS_RR: KindRules = KindRules {
    kind: RunKind::FsRr,
    name: "fs-rr",
    about: "Intra-pod baseline: request/response through files in a shared directory (inotify).",
    transport: Transport::Local,
    intra_pod: true,
    reservation: ReservationClass::Exclusive,
    ..TCP_RR
};

/// `http`.
pub const HTTP: KindRules = KindRules {
    kind: RunKind::Http,
    name: "http",
    about: "HTTP/1.1 GETs on keep-alive connections (the response body is --size bytes).",
    http: true,
    ..TCP_RR
};

/// `http-crr`.
pub const HTTP_CRR: KindRules = KindRules {
    kind: RunKind::HttpCrr,
    name: "http-crr",
    about: "HTTP/1.1 GETs, a new connection per request.",
    http: true,
    connect_per_transaction: true,
    reservation: ReservationClass::Exclusive,
    ..TCP_RR
};

/// `dns`.
pub const DNS: KindRules = KindRules {
    kind: RunKind::Dns,
    name: "dns",
    about: "DNS queries over UDP (A, AAAA, SRV), each waiting for its answer: latency, loss, response codes (--to a pod, a Service, or dns/ADDRESS for a DNS server that is not sonde's).",
    transport: Transport::Udp,
    // A query's and an answer's size follow from the name and the records: not chosen.
    default_size: 64,
    request_size: (1, MAX_UDP_PAYLOAD),
    response_size: (1, MAX_UDP_PAYLOAD),
    ..TCP_RR
};

/// The most queries a second a `dns` run may send to a DNS server that is not sonde's: a
/// measurement, not a load test of someone's resolver.
pub const MAX_EXTERNAL_DNS_RATE: f64 = 1000.0;

/// Every kind, in the order `--help` lists them.
pub static KINDS: [KindRules; 11] = [
    TCP_STREAM,
    TCP_RR,
    TCP_CRR,
    UDP_STREAM,
    UDP_RR,
    UNIX_STREAM,
    UNIX_RR,
    FS_RR,
    HTTP,
    HTTP_CRR,
    DNS,
];

impl KindRules {
    /// Whether it measures transactions.
    pub fn is_request_response(&self) -> bool {
        self.pattern == Pattern::RequestResponse
    }

    /// What its kernel breakdown sums up: one transaction's packets for request/response
    /// kinds, one packet's stages for streams.
    pub fn breakdown_unit(&self) -> &'static str {
        match self.pattern {
            Pattern::RequestResponse => "transaction",
            Pattern::Stream => "packet",
        }
    }

    /// The kind whose name is `name`.
    pub fn by_name(name: &str) -> Option<&'static Self> {
        KINDS.iter().find(|rules| rules.name == name)
    }
}

impl RunKind {
    /// The kind's rules; `None` for `Unspecified`.
    pub fn rules(self) -> Option<&'static KindRules> {
        KINDS.iter().find(|rules| rules.kind == self)
    }

    /// The name users type and reports show (`tcp-rr`).
    pub fn name(self) -> &'static str {
        self.rules().map_or("unspecified", |rules| rules.name)
    }

    /// How a run of the kind loads a node, for reservations.
    pub fn reservation_class(self) -> ReservationClass {
        self.rules()
            .map_or(ReservationClass::Exclusive, |rules| rules.reservation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_the_api_has_one_row() {
        for value in 1..=i32::MAX {
            let Ok(kind) = RunKind::try_from(value) else {
                break;
            };
            let rows = KINDS.iter().filter(|rules| rules.kind == kind).count();
            assert_eq!(rows, 1, "{kind:?}");
        }
        assert!(RunKind::Unspecified.rules().is_none());
    }

    #[test]
    fn names_are_unique_and_found() {
        for rules in &KINDS {
            assert_eq!(KindRules::by_name(rules.name), Some(rules));
            assert!(rules.default_size >= rules.request_size.0);
            assert!(rules.default_size <= rules.request_size.1);
        }
    }
}
