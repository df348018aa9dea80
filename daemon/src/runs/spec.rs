//! A run's parameters, checked against sonde's documented limits before anything starts.
//!
//! Every request is validated by the daemon that receives it (not only by sondectl): a daemon
//! runs on every node and must not be talked into an endless or enormous load.

use std::time::Duration;

use sonde_proto::v1 as pb;

use sonde_proto::kinds::{KindRules, Transport};
pub use sonde_proto::kinds::{
    MAX_TCP_MESSAGE, MAX_UDP_PAYLOAD, MIN_UDP_RR_PAYLOAD, MIN_UDP_STREAM_PAYLOAD,
};

/// Longest measured part: one hour.
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// Longest warm-up: ten minutes.
pub const MAX_WARMUP_MS: u64 = 600_000;
/// Most connections or flows in one run.
pub const MAX_PARALLEL: u32 = 256;
/// Highest target rate, messages per second.
pub const MAX_RATE: f64 = 10_000_000.0;

/// What a generator does: a kind of sonde.v1, whose rules are [`RunSpec::rules`].
pub use sonde_proto::v1::RunKind as Kind;

/// Which way a stream run's data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Forward,
    /// Server to client.
    Reverse,
    /// Both, on separate connections.
    Both,
}

/// A validated run spec.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// The generator.
    pub kind: Kind,
    /// Its kind's rules (transport, sizes, ...), from sonde's one table of kinds.
    pub rules: &'static KindRules,
    /// The measured part.
    pub duration: Duration,
    /// The discarded part before it.
    pub warmup: Duration,
    /// Connections or flows.
    pub parallel: u32,
    /// Bytes per request / write / datagram.
    pub request_size: usize,
    /// Bytes per response (RR kinds).
    pub response_size: usize,
    /// Messages per second across all connections; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Stream kinds: which way.
    pub direction: Direction,
    /// One plain syscall per message: no sendfile, splice, GSO or batching.
    pub plain_io: bool,
    /// DNS: the name asked for; `None` for the name sonde's responder answers for the run.
    pub dns_name: Option<String>,
    /// DNS: the record types asked for, in turn.
    pub dns_types: Vec<DnsType>,
    /// Length of the client side's timeline intervals.
    pub interval: Duration,
}

/// A DNS record type a `dns` run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsType {
    /// An IPv4 address.
    A,
    /// An IPv6 address.
    Aaaa,
    /// A service's host and port.
    Srv,
}

impl DnsType {
    /// Its name in sonde.v1 and in DNS (`AAAA`).
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
            Self::Srv => "SRV",
        }
    }
}

/// Longest DNS name (RFC 1035: 255 octets on the wire, 253 characters written).
pub const MAX_DNS_NAME: usize = 253;

/// A request field outside its limits; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    /// The field, as named in sonde.v1.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field,
        reason: reason.into(),
    }
}

/// The timeline's interval a spec asks for (see `RunSpec.interval_ms`).
fn timeline_interval(spec: &pb::RunSpec) -> Result<Duration, InvalidSpec> {
    use crate::generators::timeline::{MAX_INTERVALS, MIN_INTERVAL};
    let interval = match spec.interval_ms {
        0 => Duration::from_secs(1),
        ms => Duration::from_millis(ms),
    };
    if interval < MIN_INTERVAL {
        return Err(invalid(
            "spec.interval_ms",
            format!(
                "must be 0 (1 s) or at least {} (got {})",
                MIN_INTERVAL.as_millis(),
                spec.interval_ms
            ),
        ));
    }
    let intervals = spec.duration_ms.div_ceil(interval.as_millis() as u64);
    if intervals > MAX_INTERVALS {
        return Err(invalid(
            "spec.interval_ms",
            format!(
                "{} ms over a {} ms run is {intervals} intervals, at most {MAX_INTERVALS}: use \
                 at least {} ms",
                interval.as_millis(),
                spec.duration_ms,
                spec.duration_ms.div_ceil(MAX_INTERVALS)
            ),
        ));
    }
    Ok(interval)
}

impl TryFrom<&pb::RunSpec> for RunSpec {
    type Error = InvalidSpec;

    fn try_from(spec: &pb::RunSpec) -> Result<Self, Self::Error> {
        let rules = pb::RunKind::try_from(spec.kind)
            .ok()
            .and_then(pb::RunKind::rules)
            .ok_or_else(|| invalid("spec.kind", "must be one of the RunKind values"))?;
        let kind = rules.kind;
        if !(1..=MAX_DURATION_MS).contains(&spec.duration_ms) {
            return Err(invalid(
                "spec.duration_ms",
                format!(
                    "must be from 1 to {MAX_DURATION_MS} (got {})",
                    spec.duration_ms
                ),
            ));
        }
        if spec.warmup_ms > MAX_WARMUP_MS {
            return Err(invalid(
                "spec.warmup_ms",
                format!("must be at most {MAX_WARMUP_MS} (got {})", spec.warmup_ms),
            ));
        }
        if !(1..=MAX_PARALLEL).contains(&spec.parallel) {
            return Err(invalid(
                "spec.parallel",
                format!("must be from 1 to {MAX_PARALLEL} (got {})", spec.parallel),
            ));
        }
        let (min_request, max_request) = rules.request_size;
        if !(min_request..=max_request).contains(&spec.request_size) {
            return Err(invalid(
                "spec.request_size",
                format!(
                    "must be from {min_request} to {max_request} bytes for this kind (got {})",
                    spec.request_size
                ),
            ));
        }
        if rules.is_request_response() {
            let (min_response, max_response) = rules.response_size;
            if !(min_response..=max_response).contains(&spec.response_size) {
                return Err(invalid(
                    "spec.response_size",
                    format!(
                        "must be from {min_response} to {max_response} bytes for this kind (got {})",
                        spec.response_size
                    ),
                ));
            }
        }
        if !(spec.rate.is_finite() && (0.0..=MAX_RATE).contains(&spec.rate)) {
            return Err(invalid(
                "spec.rate",
                format!(
                    "must be from 0 (as fast as possible) to {MAX_RATE} (got {})",
                    spec.rate
                ),
            ));
        }
        let direction = match pb::Direction::try_from(spec.direction) {
            Ok(pb::Direction::ClientToServer) => Direction::Forward,
            Ok(pb::Direction::ServerToClient) => Direction::Reverse,
            Ok(pb::Direction::Both) => Direction::Both,
            Err(_) => {
                return Err(invalid(
                    "spec.direction",
                    "must be one of the Direction values",
                ));
            }
        };
        if direction != Direction::Forward && !rules.reversible {
            return Err(invalid(
                "spec.direction",
                format!("{} runs cannot be reversed or bidirectional", rules.name),
            ));
        }
        let (dns_name, dns_types) = dns_query(spec, kind)?;
        let interval = timeline_interval(spec)?;
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        Ok(Self {
            kind,
            rules,
            duration: Duration::from_millis(spec.duration_ms),
            warmup: Duration::from_millis(spec.warmup_ms),
            parallel: spec.parallel,
            request_size: size(spec.request_size),
            response_size: size(spec.response_size.max(1)),
            rate: (spec.rate > 0.0).then_some(spec.rate),
            direction,
            plain_io: spec.plain_io,
            dns_name,
            interval,
            dns_types,
        })
    }
}

/// The name and record types of a `dns` run (none for other kinds).
fn dns_query(
    spec: &pb::RunSpec,
    kind: Kind,
) -> Result<(Option<String>, Vec<DnsType>), InvalidSpec> {
    if kind != Kind::Dns {
        if !spec.dns_name.is_empty() || !spec.dns_types.is_empty() {
            return Err(invalid(
                "spec.dns_name",
                "only dns runs ask for a name and record types",
            ));
        }
        return Ok((None, Vec::new()));
    }
    let name = spec.dns_name.trim();
    let name = if name.is_empty() {
        None
    } else {
        let valid = name.len() <= MAX_DNS_NAME
            && name.trim_end_matches('.').split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid {
            return Err(invalid(
                "spec.dns_name",
                format!(
                    "{name:?} is not a DNS name (labels of 1 to 63 letters, digits, '-' or '_', at most {MAX_DNS_NAME} characters)"
                ),
            ));
        }
        Some(name.to_owned())
    };
    let mut types = Vec::new();
    for text in &spec.dns_types {
        let found = [DnsType::A, DnsType::Aaaa, DnsType::Srv]
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                invalid(
                    "spec.dns_types",
                    format!("{text:?} is not one of A, AAAA, SRV"),
                )
            })?;
        types.push(found);
    }
    if types.is_empty() {
        types.push(DnsType::A);
    }
    Ok((name, types))
}

impl RunSpec {
    /// Whether the kind speaks TCP.
    pub fn is_tcp(&self) -> bool {
        self.rules.transport == Transport::Tcp
    }

    /// Whether the kind speaks HTTP.
    pub fn is_http(&self) -> bool {
        self.rules.http
    }

    /// Whether both sides live on one node with no network between them (a path, not an
    /// address, joins them).
    pub fn is_intra_pod(&self) -> bool {
        self.rules.intra_pod
    }

    /// Warm-up plus measured part.
    pub fn total(&self) -> Duration {
        self.warmup + self.duration
    }
}

/// Checks a run ID: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn check_run_id(run_id: &str) -> Result<(), InvalidSpec> {
    let ok = (1..=64).contains(&run_id.len())
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "run_id",
            "must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr() -> pb::RunSpec {
        pb::RunSpec {
            kind: pb::RunKind::TcpRr as i32,
            duration_ms: 1000,
            warmup_ms: 100,
            parallel: 2,
            request_size: 64,
            response_size: 128,
            rate: 0.0,
            direction: pb::Direction::ClientToServer as i32,
            plain_io: false,
            ..pb::RunSpec::default()
        }
    }

    #[test]
    fn a_valid_spec_converts() {
        let spec = RunSpec::try_from(&rr()).expect("valid");
        assert_eq!(spec.kind, Kind::TcpRr);
        assert_eq!(spec.total(), Duration::from_millis(1100));
        assert_eq!((spec.request_size, spec.response_size), (64, 128));
        assert_eq!(spec.rate, None);
        assert_eq!(spec.interval, Duration::from_secs(1), "0 asks for 1 s");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = fn(&mut pb::RunSpec);
        let cases: [(Change, &str); 11] = [
            (|s| s.interval_ms = 99, "spec.interval_ms"),
            (
                |s| {
                    s.duration_ms = 3_600_000;
                    s.interval_ms = 100;
                },
                "spec.interval_ms",
            ),
            (|s| s.kind = 0, "spec.kind"),
            (|s| s.duration_ms = 0, "spec.duration_ms"),
            (|s| s.warmup_ms = MAX_WARMUP_MS + 1, "spec.warmup_ms"),
            (|s| s.parallel = 0, "spec.parallel"),
            (|s| s.request_size = 0, "spec.request_size"),
            (
                |s| s.response_size = MAX_TCP_MESSAGE + 1,
                "spec.response_size",
            ),
            (|s| s.rate = -1.0, "spec.rate"),
            (|s| s.rate = f64::NAN, "spec.rate"),
            (
                |s| s.direction = pb::Direction::Both as i32,
                "spec.direction",
            ),
        ];
        for (change, field) in cases {
            let mut spec = rr();
            change(&mut spec);
            let err = RunSpec::try_from(&spec).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn udp_stream_needs_room_for_its_header() {
        let mut spec = rr();
        spec.kind = pb::RunKind::UdpStream as i32;
        spec.request_size = 16;
        assert_eq!(
            RunSpec::try_from(&spec).expect_err("too small").field,
            "spec.request_size"
        );
    }

    #[test]
    fn run_ids_are_checked() {
        assert!(check_run_id("r-1.a_b").is_ok());
        assert!(check_run_id("").is_err());
        assert!(check_run_id("a/b").is_err());
        assert!(check_run_id(&"x".repeat(65)).is_err());
    }
}
