//! A measurement derived from the daemons' results: the two sides merged, the figures read
//! where each is measured (goodput at the receiver, latency at the client, ...).

use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer as _, V2DeflateSerializer},
};
use sonde_proto::v1 as pb;

use super::model::*;

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
pub fn decode_histogram(bytes: &[u8]) -> Option<Histogram<u64>> {
    if bytes.is_empty() {
        return None;
    }
    Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .ok()
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
        timeline: client.and_then(timeline),
    }
}

/// The client side's timeline, in the document's units.
fn timeline(client: &pb::SideResult) -> Option<Timeline> {
    if client.timeline.is_empty() {
        return None;
    }
    let intervals = client
        .timeline
        .iter()
        .map(|interval| {
            let seconds = interval.length_ms as f64 / 1e3;
            let per_second = |count: u64| {
                if seconds > 0.0 {
                    count as f64 / seconds
                } else {
                    0.0
                }
            };
            let latency = |ns: u64| (interval.latency_count > 0).then_some(ns);
            Interval {
                start_seconds: interval.start_ms as f64 / 1e3,
                length_seconds: seconds,
                bytes: interval.bytes,
                messages: interval.messages,
                bits_per_second: per_second(interval.bytes) * 8.0,
                messages_per_second: per_second(interval.messages),
                errors: interval.errors,
                failed_connects: interval.failed_connects,
                latency_p50_ns: latency(interval.latency_p50_ns),
                latency_p99_ns: latency(interval.latency_p99_ns),
            }
        })
        .collect();
    Some(Timeline {
        started_at_unix_ms: client.timeline_start_unix_ms,
        intervals,
        events: Vec::new(),
    })
}
