//! Messages to the library's types and back, and the library's errors as statuses: every
//! request is converted and checked here, so the service calls the library with its own
//! types only.

use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use sonde_common::stages::MAX_SAMPLE_SHIFT;
use sonde_proto::v1 as pb;
use tonic::Status;

use crate::{
    Error,
    facts::NodeFacts,
    generators::measure::SideResult,
    reservations,
    runs::{
        RunError,
        spec::{InvalidSpec, RunSpec},
    },
    stages::{MAX_TRACED_FLOWS, TraceReport, TraceSpec, TracedFlow, Ways},
};

impl From<InvalidSpec> for Status {
    fn from(err: InvalidSpec) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

impl From<RunError> for Status {
    fn from(err: RunError) -> Self {
        let message = crate::error::chain(&err);
        match err {
            RunError::Invalid(_) => Status::invalid_argument(message),
            RunError::Exists { .. } => Status::already_exists(message),
            RunError::NotFound { .. } => Status::not_found(message),
            RunError::TargetNotAllowed { .. } => Status::permission_denied(message),
            RunError::Prepare {
                source: Error::Bind { .. } | Error::Netns { .. },
            } => Status::failed_precondition(message),
            RunError::Trace {
                source: Error::NoSuchInterface { .. },
            } => Status::invalid_argument(message),
            RunError::Trace {
                source: Error::TooManyFlows { .. },
            } => Status::resource_exhausted(message),
            RunError::NoTracing => Status::failed_precondition(message),
            RunError::Reserved(reservations::Refusal::TooMany) => {
                Status::resource_exhausted(message)
            }
            RunError::Reserved(_) => Status::failed_precondition(message),
            RunError::Limit(
                crate::runs::limits::Refusal::TooMany { .. }
                | crate::runs::limits::Refusal::Spent(_),
            ) => Status::resource_exhausted(message),
            RunError::Limit(crate::runs::limits::Refusal::TooLong { .. }) => {
                Status::failed_precondition(message)
            }
            RunError::Prepare { .. } | RunError::Trace { .. } | RunError::Worker { .. } => {
                Status::internal(message)
            }
        }
    }
}

/// A request's trace part, checked; `server_port` 0 in a flow means `default_port` (the
/// port a server side was just given).
pub(super) fn trace_spec_of(
    request: &pb::TraceRequest,
    default_port: u16,
) -> Result<TraceSpec, InvalidSpec> {
    let invalid = |field: &'static str, reason: String| InvalidSpec { field, reason };
    if request.flows.is_empty() || request.flows.len() > MAX_TRACED_FLOWS {
        return Err(invalid(
            "trace.flows",
            format!(
                "must hold 1 to {MAX_TRACED_FLOWS} flows, got {}",
                request.flows.len()
            ),
        ));
    }
    let ip = |field: &'static str, text: &str| {
        text.parse::<std::net::IpAddr>()
            .map_err(|_| invalid(field, format!("{text:?} is not an IP address")))
    };
    let flows = request
        .flows
        .iter()
        .map(|flow| {
            let port = match flow.server_port {
                0 => default_port,
                port => u16::try_from(port).map_err(|_| {
                    invalid("trace.flows.server_port", format!("{port} is not a port"))
                })?,
            };
            let protocol = match flow.protocol.as_str() {
                "tcp" => 6,
                "udp" => 17,
                other => {
                    return Err(invalid(
                        "trace.flows.protocol",
                        format!("must be \"tcp\" or \"udp\", got {other:?}"),
                    ));
                }
            };
            if port == 0 {
                return Err(invalid(
                    "trace.flows.server_port",
                    "must be 1 to 65535 (0 only in PrepareServer)".to_owned(),
                ));
            }
            Ok(TracedFlow {
                client: ip("trace.flows.client_ip", &flow.client_ip)?,
                server: ip("trace.flows.server_ip", &flow.server_ip)?,
                server_port: port,
                protocol,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let iface = |field: &'static str, name: &str| -> Result<Option<String>, _> {
        match name {
            "" => Ok(None),
            name if name.len() < 16 && !name.contains(['/', ' ', '\0']) => {
                Ok(Some(name.to_owned()))
            }
            name => Err(invalid(field, format!("{name:?} is not an interface name"))),
        }
    };
    let sample_shift = match request.sample_one_in {
        0 | 1 => 0,
        n if n.is_power_of_two() && n <= 1 << MAX_SAMPLE_SHIFT => n.trailing_zeros() as u8,
        n => {
            return Err(invalid(
                "trace.sample_one_in",
                format!(
                    "must be a power of two from 1 to {}, got {n}",
                    1 << MAX_SAMPLE_SHIFT
                ),
            ));
        }
    };
    let ways = match pb::TracedWays::try_from(request.ways) {
        Ok(pb::TracedWays::Both) => Ways::Both,
        Ok(pb::TracedWays::ToServer) => Ways::ToServer,
        Ok(pb::TracedWays::ToClient) => Ways::ToClient,
        Err(_) => {
            return Err(invalid(
                "trace.ways",
                format!("{} is not a TracedWays value", request.ways),
            ));
        }
    };
    Ok(TraceSpec {
        flows,
        sample_shift,
        ways,
        dns_ids: false,
        windowed: request.windowed,
        pod_interface: iface("trace.pod_interface", &request.pod_interface)?,
        uplink_interface: iface("trace.uplink_interface", &request.uplink_interface)?,
    })
}

pub(super) fn spec_of(spec: Option<&pb::RunSpec>) -> Result<RunSpec, Status> {
    let spec = spec.ok_or_else(|| Status::invalid_argument("spec: missing"))?;
    Ok(RunSpec::try_from(spec)?)
}

/// A reservation's holder, checked.
pub(super) fn holder_of(holder: Option<&pb::Holder>) -> Result<reservations::Holder, Status> {
    let holder = holder.ok_or_else(|| Status::invalid_argument("holder: missing"))?;
    let session_ok = !holder.session.is_empty()
        && holder.session.len() <= 64
        && holder
            .session
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
    if !session_ok {
        return Err(Status::invalid_argument(format!(
            "holder.session: {:?} must be 1 to 64 characters of [A-Za-z0-9._:-]",
            holder.session
        )));
    }
    if holder.user.len() > 128 || holder.scenario.len() > 64 {
        return Err(Status::invalid_argument(
            "holder: user at most 128 bytes, scenario at most 64",
        ));
    }
    Ok(reservations::Holder {
        session: holder.session.clone(),
        user: holder.user.clone(),
        scenario: holder.scenario.clone(),
    })
}

pub(super) fn holder_message(holder: reservations::Holder) -> pb::Holder {
    pb::Holder {
        session: holder.session,
        user: holder.user,
        scenario: holder.scenario,
    }
}

/// A reservation's class, checked.
pub(super) fn class_of(class: i32) -> Result<reservations::Class, Status> {
    match pb::ReservationClass::try_from(class) {
        Ok(pb::ReservationClass::Exclusive) => Ok(reservations::Class::Exclusive),
        Ok(pb::ReservationClass::Normal) => Ok(reservations::Class::Normal),
        Ok(pb::ReservationClass::Background) => Ok(reservations::Class::Background),
        _ => Err(Status::invalid_argument(
            "class: must be EXCLUSIVE, NORMAL or BACKGROUND",
        )),
    }
}

pub(super) fn class_message(class: reservations::Class) -> pb::ReservationClass {
    match class {
        reservations::Class::Exclusive => pb::ReservationClass::Exclusive,
        reservations::Class::Normal => pb::ReservationClass::Normal,
        reservations::Class::Background => pb::ReservationClass::Background,
    }
}

/// A histogram as HdrHistogram's V2 deflate encoding (empty when it holds nothing).
pub(super) fn serialize(histogram: &hdrhistogram::Histogram<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if !histogram.is_empty() {
        let _ = V2DeflateSerializer::new().serialize(histogram, &mut bytes);
    }
    bytes
}

/// A side's result as a message.
pub(super) fn side_result(side: SideResult, trace: Option<TraceReport>) -> pb::SideResult {
    let totals = side.totals;
    let histogram = serialize(&totals.latency);
    pb::SideResult {
        measured_ns: u64::try_from(totals.measured.as_nanos()).unwrap_or(u64::MAX),
        bytes_sent: totals.bytes_sent,
        bytes_received: totals.bytes_received,
        messages: totals.messages,
        latency_histogram: histogram,
        cpu_user_ns: totals.cpu.user_ns,
        cpu_system_ns: totals.cpu.system_ns,
        node_cpu_busy: side.node_cpu_busy,
        daemon_rss_bytes: side.daemon_rss_bytes,
        tcp_retransmits: totals.tcp.retransmits,
        tcp_rtt_us: totals.tcp.rtt_us,
        tcp_rttvar_us: totals.tcp.rttvar_us,
        udp_sent: totals.udp.sent,
        udp_received: totals.udp.received,
        udp_reordered: totals.udp.reordered,
        udp_duplicates: totals.udp.duplicates,
        udp_jitter_ns: totals.udp.jitter_ns,
        udp_timeouts: totals.udp.timeouts,
        connections: totals.connections,
        io_path: totals.io_path.join("+"),
        errors: totals.errors,
        local_ip: side.local_ip,
        mtu: side.mtu,
        trace: trace.map(trace_result),
        conntrack: None,
        dns_rcodes: totals.dns_rcodes.into_iter().collect(),
        timeline: side.timeline.iter().map(interval).collect(),
        timeline_start_unix_ms: side.timeline_start_unix_ms,
    }
}

fn interval(interval: &crate::generators::timeline::Interval) -> pb::Interval {
    let ms =
        |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    pb::Interval {
        start_ms: ms(interval.start),
        length_ms: ms(interval.length),
        bytes: interval.bytes,
        messages: interval.messages,
        errors: interval.errors,
        failed_connects: interval.failed_connects,
        latency_count: interval.latency_count,
        latency_p50_ns: interval.latency_p50_ns,
        latency_p99_ns: interval.latency_p99_ns,
    }
}

/// A trace report as a message.
pub(super) fn trace_result(report: TraceReport) -> pb::TraceResult {
    let collected = report.collected;
    pb::TraceResult {
        stages: collected
            .stages
            .iter()
            .map(|stage| pb::StageLatency {
                direction: u32::from(stage.direction),
                from: i32::from(stage.from),
                to: i32::from(stage.to),
                histogram: serialize(&stage.latency),
                count: stage.latency.len(),
                sum_ns: stage.sum_ns,
            })
            .collect(),
        uplink_stamps: collected
            .uplink
            .into_iter()
            .map(|stamps| pb::PointStamps {
                direction: u32::from(stamps.direction),
                point: i32::from(stamps.point),
                keys: stamps.keys,
                ts_ns: stamps.ts_ns,
            })
            .collect(),
        connect_histogram: collected
            .connect
            .as_ref()
            .map(serialize)
            .unwrap_or_default(),
        retransmits: collected.retransmits,
        packets: collected.packets,
        packets_over_cap: collected.packets_over_cap,
        events: collected.events,
        events_lost: report.events_lost,
        programs: report
            .programs
            .into_iter()
            .map(|cost| pb::ProgramCost {
                name: cost.name.to_owned(),
                invocations: cost.invocations,
                run_time_ns: cost.run_time_ns,
                timed_invocations: cost.timed_invocations,
            })
            .collect(),
        hooks: report.hooks,
        notes: report.notes,
        boot_id: report.boot_id,
        drops: report
            .drops
            .into_iter()
            .map(|drops| pb::DropCount {
                reason: drops.reason,
                point: i32::from(drops.point),
                count: drops.count,
                keys: drops.keys,
            })
            .collect(),
    }
}

impl From<NodeFacts> for pb::NodeFacts {
    fn from(facts: NodeFacts) -> Self {
        Self {
            pod_interfaces: facts
                .pod_interfaces
                .into_iter()
                .map(|(pod, counts)| pb::PodInterface {
                    host_interface: pod.host_interface,
                    host_ifindex: pod.host_ifindex,
                    netns: pod.netns.display().to_string(),
                    ips: pod.ips.iter().map(ToString::to_string).collect(),
                    packets_from_pod: counts.ingress.packets,
                    packets_to_pod: counts.egress.packets,
                    pod: pod.pod.unwrap_or_default(),
                })
                .collect(),
            node_name: facts.node_name,
            kernel_release: facts.kernel_release,
            daemon_version: facts.daemon_version,
            started_at_unix_ns: facts.started_at_unix_ns,
            pid: facts.pid,
            capabilities: facts
                .capabilities
                .into_iter()
                .map(|capability| pb::Capability {
                    name: capability.name.to_owned(),
                    available: capability.available,
                    detail: capability.detail,
                })
                .collect(),
            programs: facts
                .programs
                .into_iter()
                .map(|program| pb::LoadedProgram {
                    name: program.name,
                    program_type: program.program_type,
                    kernel_id: program.kernel_id,
                })
                .collect(),
        }
    }
}
