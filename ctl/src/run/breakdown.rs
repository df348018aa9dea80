//! The kernel breakdown of a run: the stages each node's probes measured, plus the wire stage,
//! joined here from both nodes' uplink stamps across their clocks.
//!
//! Stages on one node use one clock and are exact. The wire stage crosses two clocks: it is
//! corrected by the measured offset and always carries that offset's error bar.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Serialize;
use sonde_proto::v1::{self as pb, PathPoint};

use super::{clock::ClockOffset, report::decode_histogram};

/// Per-stage kernel latency of one measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    /// How the two nodes' clocks were related.
    pub clock: ClockOffset,
    /// Client to server, then server to client (when packets went that way).
    pub directions: Vec<DirectionBreakdown>,
    /// Sum of the mean stage times over both directions, ns: the kernel's share of one
    /// transaction (request and response), comparable with `application_mean_ns`.
    pub kernel_mean_ns: f64,
    /// The application's own mean latency per transaction (RR kinds), ns.
    pub application_mean_ns: Option<f64>,
    /// TCP connect time (SYN_SENT to ESTABLISHED), ns.
    pub connect: Option<Summary>,
    /// TCP segments retransmitted (by both sides).
    pub retransmits: u64,
    /// The run's packets the kernel dropped, by node, reason and the last point they passed.
    pub drops: Vec<DropReport>,
    /// Kernel events taken in, and lost (a full ring buffer): non-zero loss means a sample.
    pub events: u64,
    /// Events lost.
    pub events_lost: u64,
    /// What the probes cost, per node and program.
    pub programs: Vec<ProgramReport>,
    /// Hooks in use, per node.
    pub hooks: Vec<String>,
    /// What could not be traced.
    pub notes: Vec<String>,
}

/// The stages of one direction.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionBreakdown {
    /// "client-to-server" or "server-to-client".
    pub direction: &'static str,
    /// In path order.
    pub stages: Vec<StageReport>,
}

/// One stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// "sender stack", "sender node", "wire", "receiver node", "receiver stack", or
    /// "node" (pod to pod on one node), or "FROM -> TO" when points in between are missing.
    pub name: String,
    /// Point it starts at.
    pub from: &'static str,
    /// Point it ends at.
    pub to: &'static str,
    /// The node whose clock measured it (both, for the wire).
    pub node: String,
    /// Latency.
    pub latency: Summary,
    /// Error bar of every figure, ns: the clock offset's uncertainty (0 on one clock).
    pub error_ns: u64,
}

/// A latency distribution, ns (signed: a wire stage corrected by an offset estimate can come
/// out below zero within its error bar).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Samples.
    pub samples: u64,
    /// Mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: i64,
    /// 90th percentile.
    pub p90_ns: i64,
    /// 99th percentile.
    pub p99_ns: i64,
    /// Largest.
    pub max_ns: i64,
}

/// Drops of one reason, after one point, seen by one node's probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropReport {
    /// The node whose daemon saw them.
    pub node: String,
    /// The kernel's drop reason ("NETFILTER_DROP", "SOCKET_RCVBUFF", ...).
    pub reason: String,
    /// The last point the packets passed before the drop.
    pub after: &'static str,
    /// Packets dropped.
    pub count: u64,
}

/// What one program cost on one node during the run.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramReport {
    /// The node.
    pub node: String,
    /// The program.
    pub name: String,
    /// Times it ran.
    pub invocations: u64,
    /// Runs the kernel's BPF statistics timed (they are on for part of the run: on, they
    /// cost every run two clock reads).
    pub timed_invocations: u64,
    /// Mean time per timed run, ns; `None` when no run was timed.
    pub ns_per_invocation: Option<f64>,
}

/// One side's trace and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct SideTrace<'a> {
    /// The node (or daemon) name.
    pub node: &'a str,
    /// What its probes saw.
    pub trace: &'a pb::TraceResult,
}

/// Builds the breakdown from the client side's trace and the server sides' (from other
/// daemons than the client's: one daemon holding both sides reports everything once).
pub fn build(
    client: SideTrace<'_>,
    servers: &[SideTrace<'_>],
    clock: ClockOffset,
    application_mean_ns: Option<f64>,
) -> Breakdown {
    let sides: Vec<SideTrace<'_>> = std::iter::once(client)
        .chain(servers.iter().copied())
        .collect();
    let mut directions = Vec::new();
    for (direction, label) in [(0_u32, "client-to-server"), (1, "server-to-client")] {
        let mut stages: Vec<(i32, StageReport)> = Vec::new();
        for side in &sides {
            for stage in side
                .trace
                .stages
                .iter()
                .filter(|s| s.direction == direction)
            {
                let Some(histogram) = decode_histogram(&stage.histogram) else {
                    continue;
                };
                let summary = Summary::of_histogram(&histogram, stage.sum_ns);
                stages.push((
                    stage.from,
                    StageReport {
                        name: stage_name(stage.from, stage.to),
                        from: point_name(stage.from),
                        to: point_name(stage.to),
                        node: side.node.to_owned(),
                        latency: summary,
                        error_ns: 0,
                    },
                ));
            }
        }
        // The wire: the sender's NODE_OUT joined with the receiver's NODE_IN.
        let (senders, receivers): (Vec<_>, Vec<_>) = if direction == 0 {
            (vec![client], servers.to_vec())
        } else {
            (servers.to_vec(), vec![client])
        };
        if let Some(wire) = wire(&senders, &receivers, direction, &clock, client.node) {
            stages.push((PathPoint::NodeOut as i32, wire));
        }
        if stages.is_empty() {
            continue;
        }
        stages.sort_by_key(|(from, stage)| (*from, stage.node.clone()));
        directions.push(DirectionBreakdown {
            direction: label,
            stages: stages.into_iter().map(|(_, stage)| stage).collect(),
        });
    }
    let kernel_mean_ns = directions
        .iter()
        .flat_map(|d| &d.stages)
        .map(|s| s.latency.mean_ns)
        .sum();
    let connect = sides
        .iter()
        .filter_map(|side| decode_histogram(&side.trace.connect_histogram))
        .reduce(|mut all, more| {
            let _ = all.add(&more);
            all
        })
        .map(|histogram| {
            let sum = (histogram.mean() * histogram.len() as f64) as u64;
            Summary::of_histogram(&histogram, sum)
        });
    let mut hooks = Vec::new();
    let mut notes = Vec::new();
    let mut programs = Vec::new();
    for side in &sides {
        hooks.extend(
            side.trace
                .hooks
                .iter()
                .map(|h| format!("{}: {h}", side.node)),
        );
        for note in &side.trace.notes {
            let note = format!("{}: {note}", side.node);
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        programs.extend(
            side.trace.programs.iter().map(|p| ProgramReport {
                node: side.node.to_owned(),
                name: p.name.clone(),
                invocations: p.invocations,
                timed_invocations: p.timed_invocations,
                ns_per_invocation: (p.timed_invocations > 0)
                    .then(|| p.run_time_ns as f64 / p.timed_invocations as f64),
            }),
        );
    }
    Breakdown {
        clock,
        directions,
        kernel_mean_ns,
        application_mean_ns,
        connect,
        retransmits: sides.iter().map(|s| s.trace.retransmits).sum(),
        drops: drops(&sides),
        events: sides.iter().map(|s| s.trace.events).sum(),
        events_lost: sides.iter().map(|s| s.trace.events_lost).max().unwrap_or(0),
        programs,
        hooks,
        notes,
    }
}

/// Every side's drops, each packet counted once: daemons sharing a kernel (the lab's nodes)
/// both see a drop of a packet that passed both, and the one that saw it last tells where.
fn drops(sides: &[SideTrace<'_>]) -> Vec<DropReport> {
    // Per packet key: where it was last seen dropped, by whom, and how many times (a segment
    // resent and dropped again has the same key).
    let mut last_seen: HashMap<u64, (i32, &str, &str, u64)> = HashMap::new();
    let mut counts: HashMap<(String, String, i32), u64> = HashMap::new();
    for side in sides {
        let mut mine: HashMap<u64, (i32, &str, &str, u64)> = HashMap::new();
        for drops in &side.trace.drops {
            for key in &drops.keys {
                let seen =
                    mine.entry(*key)
                        .or_insert((drops.point, side.node, drops.reason.as_str(), 0));
                seen.3 += 1;
            }
            // Beyond the keys a daemon keeps, drops are counted as reported.
            let unkeyed = drops.count.saturating_sub(drops.keys.len() as u64);
            if unkeyed > 0 {
                *counts
                    .entry((side.node.to_owned(), drops.reason.clone(), drops.point))
                    .or_default() += unkeyed;
            }
        }
        for (key, seen) in mine {
            last_seen
                .entry(key)
                .and_modify(|known| {
                    if seen.0 > known.0 {
                        *known = (seen.0, seen.1, seen.2, known.3.max(seen.3));
                    } else {
                        known.3 = known.3.max(seen.3);
                    }
                })
                .or_insert(seen);
        }
    }
    for (point, node, reason, times) in last_seen.into_values() {
        *counts
            .entry((node.to_owned(), reason.to_owned(), point))
            .or_default() += times;
    }
    let mut reports: Vec<DropReport> = counts
        .into_iter()
        .map(|((node, reason, point), count)| DropReport {
            node,
            reason,
            after: point_name(point),
            count,
        })
        .collect();
    reports.sort_by(|a, b| (&a.node, a.after, &a.reason).cmp(&(&b.node, b.after, &b.reason)));
    reports
}

/// The longest a packet may take on the wire; beyond it two stamps of one name are two
/// packets (the daemons' own limit for a stage on one node).
const MAX_WIRE_NS: i64 = 1_000_000_000;

/// The wire stage of `direction`: stamps at the senders' uplinks joined with the receivers'.
///
/// A name (client port and TCP sequence number) comes back every 4 GiB a flow sends, every
/// 1.7 s at 20 Gbit/s: each sent stamp is joined with the arrival of its name nearest in time.
fn wire(
    senders: &[SideTrace<'_>],
    receivers: &[SideTrace<'_>],
    direction: u32,
    clock: &ClockOffset,
    client_node: &str,
) -> Option<StageReport> {
    // Each stamp in the client's clock: the servers' are shifted by the offset.
    let stamps = |sides: &[SideTrace<'_>], point: PathPoint| -> Vec<(u64, i64)> {
        sides
            .iter()
            .flat_map(|side| {
                let shift = if side.node == client_node {
                    0
                } else {
                    clock.offset_ns
                };
                side.trace
                    .uplink_stamps
                    .iter()
                    .filter(move |s| s.direction == direction && s.point == point as i32)
                    .flat_map(move |s| {
                        s.keys
                            .iter()
                            .zip(&s.ts_ns)
                            .map(move |(key, ts)| (*key, *ts as i64 - shift))
                    })
            })
            .collect()
    };
    let mut arrived: HashMap<u64, Vec<i64>> = HashMap::new();
    for (key, ts) in stamps(receivers, PathPoint::NodeIn) {
        arrived.entry(key).or_default().push(ts);
    }
    for times in arrived.values_mut() {
        times.sort_unstable();
    }
    let mut samples: Vec<i64> = stamps(senders, PathPoint::NodeOut)
        .into_iter()
        .filter_map(|(key, sent)| {
            let took = nearest(arrived.get(&key)?, sent)? - sent;
            (took.abs() <= MAX_WIRE_NS).then_some(took)
        })
        .collect();
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let nodes: Vec<&str> = senders.iter().chain(receivers).map(|s| s.node).collect();
    Some(StageReport {
        name: "wire".to_owned(),
        from: point_name(PathPoint::NodeOut as i32),
        to: point_name(PathPoint::NodeIn as i32),
        node: nodes.join("+"),
        latency: Summary::of_sorted(&samples),
        error_ns: clock.error_ns,
    })
}

/// The time in `sorted` nearest to `at`.
fn nearest(sorted: &[i64], at: i64) -> Option<i64> {
    let after = sorted.partition_point(|&ts| ts < at);
    let later = sorted.get(after).copied();
    let earlier = after.checked_sub(1).and_then(|i| sorted.get(i)).copied();
    match (earlier, later) {
        (Some(e), Some(l)) => Some(if at - e <= l - at { e } else { l }),
        (e, l) => e.or(l),
    }
}

impl Summary {
    fn of_histogram(histogram: &Histogram<u64>, sum_ns: u64) -> Self {
        let at = |q: f64| histogram.value_at_quantile(q) as i64;
        Self {
            samples: histogram.len(),
            mean_ns: sum_ns as f64 / histogram.len().max(1) as f64,
            p50_ns: at(0.5),
            p90_ns: at(0.9),
            p99_ns: at(0.99),
            max_ns: histogram.max() as i64,
        }
    }

    fn of_sorted(samples: &[i64]) -> Self {
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            samples: samples.len() as u64,
            mean_ns: samples.iter().map(|s| *s as f64).sum::<f64>() / samples.len() as f64,
            p50_ns: at(0.5),
            p90_ns: at(0.9),
            p99_ns: at(0.99),
            max_ns: samples[samples.len() - 1],
        }
    }
}

/// A point's name as reports spell it.
pub fn point_name(point: i32) -> &'static str {
    match PathPoint::try_from(point) {
        Ok(PathPoint::SocketSend) => "socket_send",
        Ok(PathPoint::PodOut) => "pod_out",
        Ok(PathPoint::NodeOut) => "node_out",
        Ok(PathPoint::NodeIn) => "node_in",
        Ok(PathPoint::PodIn) => "pod_in",
        Ok(PathPoint::SocketRead) => "socket_read",
        Err(_) => "unknown",
    }
}

/// A stage's name from its two points.
fn stage_name(from: i32, to: i32) -> String {
    use PathPoint::*;
    let pair = (PathPoint::try_from(from), PathPoint::try_from(to));
    match pair {
        (Ok(SocketSend), Ok(PodOut)) => "sender stack".to_owned(),
        (Ok(PodOut), Ok(NodeOut)) => "sender node".to_owned(),
        (Ok(NodeOut), Ok(NodeIn)) => "wire".to_owned(),
        (Ok(NodeIn), Ok(PodIn)) => "receiver node".to_owned(),
        (Ok(PodIn), Ok(SocketRead)) => "receiver stack".to_owned(),
        (Ok(PodOut), Ok(PodIn)) => "node".to_owned(),
        _ => format!("{} -> {}", point_name(from), point_name(to)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace_with_uplink(direction: u32, point: PathPoint, keys: &[(u64, u64)]) -> pb::TraceResult {
        pb::TraceResult {
            uplink_stamps: vec![pb::PointStamps {
                direction,
                point: point as i32,
                keys: keys.iter().map(|k| k.0).collect(),
                ts_ns: keys.iter().map(|k| k.1).collect(),
            }],
            ..pb::TraceResult::default()
        }
    }

    /// The breakdown of a client that sent `sent` and a server that got `arrived` (both
    /// `(key, ts)`, client to server).
    fn across(sent: &[(u64, u64)], arrived: &[(u64, u64)], clock: ClockOffset) -> Breakdown {
        let client = trace_with_uplink(0, PathPoint::NodeOut, sent);
        let server = trace_with_uplink(0, PathPoint::NodeIn, arrived);
        build(
            SideTrace {
                node: "a",
                trace: &client,
            },
            &[SideTrace {
                node: "b",
                trace: &server,
            }],
            clock,
            None,
        )
    }

    #[test]
    fn the_wire_is_joined_by_key_and_corrected_by_the_offset_with_its_error() {
        // The server's clock runs 1 ms ahead of the client's.
        let clock = ClockOffset {
            offset_ns: 1_000_000,
            error_ns: 40_000,
            method: "ntp-style",
        };
        let breakdown = across(
            &[(1, 10_000), (2, 20_000), (3, 30_000)],
            &[(1, 1_015_000), (2, 1_025_000), (9, 1_099_000)],
            clock,
        );
        let wire = &breakdown.directions[0].stages[0];
        assert_eq!(wire.name, "wire");
        assert_eq!((wire.latency.samples, wire.latency.p50_ns), (2, 5_000));
        assert_eq!(wire.error_ns, 40_000);
        assert_eq!(breakdown.kernel_mean_ns, 5_000.0);
    }

    #[test]
    fn a_name_that_comes_back_is_joined_with_its_arrival_nearest_in_time() {
        // One sequence number sent three times, 1.7 s apart (a 20 Gbit/s flow wrapping), in
        // both clocks the same; the arrivals listed out of order, and one with no send.
        let wrap = 1_700_000_000;
        let breakdown = across(
            &[(5, 1_000), (5, wrap + 1_000), (5, 2 * wrap + 1_000)],
            &[
                (5, 2 * wrap + 4_000),
                (5, 3_000),
                (5, wrap + 3_500),
                (5, 3 * wrap + 1_000),
            ],
            ClockOffset::SAME_KERNEL,
        );
        let wire = &breakdown.directions[0].stages[0].latency;
        assert_eq!(wire.samples, 3);
        assert_eq!((wire.p50_ns, wire.max_ns), (2_500, 3_000));
        assert_eq!(nearest(&[], 5), None);
        assert_eq!(nearest(&[10, 20], 14), Some(10));
        assert_eq!(nearest(&[10, 20], 16), Some(20));
    }

    #[test]
    fn stage_names_follow_the_points() {
        assert_eq!(stage_name(0, 1), "sender stack");
        assert_eq!(stage_name(1, 4), "node");
        assert_eq!(stage_name(1, 3), "pod_out -> node_in");
    }
}
