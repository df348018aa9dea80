//! What a stage classifier costs per packet, measured in the kernel: `BPF_PROG_TEST_RUN` runs
//! it on a crafted packet many times and reports the mean. No traffic is sent, and kernel BPF
//! statistics stay off (their own clock reads would be counted in).
//!
//! Three packets per classifier: one of a flow no run traces (what every other packet on the
//! node pays: a header parse and one or two array reads), one of a traced flow (parse,
//! lookups, a ring-buffer record), and one of a sampled flow that its sampling passes over
//! (parse and lookups, no record): what most of a traced stream's packets pay.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use etherparse::PacketBuilder;
use sonde_common::stages::{sampled, side};

use super::{
    TracedFlow, Tracer,
    hooks::{FLOOR_PROGRAM, TC_PROGRAMS},
};
use crate::Result;

/// The costs of every stage classifier, and of a classifier that does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Costs {
    /// Mean ns per run of the empty classifier: the test harness and the call itself, which
    /// every classifier pays.
    pub floor_ns: f64,
    /// The stage classifiers, in path order.
    pub probes: Vec<ProbeCost>,
    /// Events the traced packets gave (every run of every classifier stamps one).
    pub traced_events: u64,
    /// Events the unsampled packets gave: 0, or their cost is not what it says.
    pub unsampled_events: u64,
}

/// One classifier's cost per packet, the floor included.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeCost {
    /// The classifier's name.
    pub program: &'static str,
    /// Mean ns per packet of a flow no run traces.
    pub foreign_ns: f64,
    /// Mean ns per packet of a traced flow.
    pub traced_ns: f64,
    /// Mean ns per packet of a sampled flow, not one of its followed packets.
    pub unsampled_ns: f64,
}

/// Runs per batch of traced packets: each emits an event, and the events reader must keep the
/// ring buffer from filling (which would measure the cheaper lost-event path instead).
const TRACED_BATCH: u32 = 4096;
/// Runs of the foreign packet per round.
const FOREIGN_BATCH: u32 = 100_000;

/// The flow the measurement traces: documentation-range addresses, never on any wire.
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SERVER_PORT: u16 = 5201;
const CLIENT_PORT: u16 = 40000;
/// The sampled flow's server port, and its sampling: 1 packet in 16, as sondectl samples a
/// `tcp-stream`.
const SAMPLED_PORT: u16 = SERVER_PORT + 2;
const SAMPLE_SHIFT: u8 = 4;

/// Measures every stage classifier over `rounds` rounds (each: 100 000 foreign packets,
/// 4096 traced ones and 100 000 unsampled ones) and returns the mean cost of each.
pub fn measure(tracer: &Arc<Tracer>, rounds: u32) -> Result<Costs> {
    let rounds = rounds.max(1);
    let flow = |server_port| TracedFlow {
        client: IpAddr::V4(CLIENT),
        server: IpAddr::V4(SERVER),
        server_port,
        protocol: 6,
    };
    let traced = tcp_segment(CLIENT, SERVER, (CLIENT_PORT, SERVER_PORT), 1, 64);
    // Same addresses, a port no run uses: the common case on a busy node.
    let foreign = tcp_segment(CLIENT, SERVER, (CLIENT_PORT, SERVER_PORT + 1), 1, 64);
    // The first sequence number the sampled flow's sampling passes over.
    let unsampled_seq = (1..).find(|seq| !sampled(*seq, SAMPLE_SHIFT)).unwrap_or(1);
    let unsampled = tcp_segment(
        CLIENT,
        SERVER,
        (CLIENT_PORT, SAMPLED_PORT),
        unsampled_seq,
        64,
    );
    let both = side::CLIENT | side::SERVER;
    let trace = tracer.follow(&[flow(SERVER_PORT)], both, 0)?;
    let thinned = tracer.follow(&[flow(SAMPLED_PORT)], both, SAMPLE_SHIFT)?;
    let mut floor_ns = 0_u64;
    for _ in 0..rounds {
        let run = tracer.test_run(FLOOR_PROGRAM, &foreign, FOREIGN_BATCH)?;
        floor_ns += run.duration.as_nanos() as u64;
    }
    let mut probes = Vec::new();
    for program in TC_PROGRAMS {
        let (mut foreign_ns, mut traced_ns, mut unsampled_ns) = (0_u64, 0_u64, 0_u64);
        for _ in 0..rounds {
            let run = tracer.test_run(program, &foreign, FOREIGN_BATCH)?;
            foreign_ns += run.duration.as_nanos() as u64;
            let run = tracer.test_run(program, &traced, TRACED_BATCH)?;
            traced_ns += run.duration.as_nanos() as u64;
            tracer.drain(super::Drain::Final);
            let run = tracer.test_run(program, &unsampled, FOREIGN_BATCH)?;
            unsampled_ns += run.duration.as_nanos() as u64;
        }
        let mean = |total: u64| total as f64 / f64::from(rounds);
        probes.push(ProbeCost {
            program,
            foreign_ns: mean(foreign_ns),
            traced_ns: mean(traced_ns),
            unsampled_ns: mean(unsampled_ns),
        });
    }
    let unsampled_events = thinned.finish().collected.events;
    let traced_events = trace.finish().collected.events;
    Ok(Costs {
        floor_ns: floor_ns as f64 / f64::from(rounds),
        probes,
        traced_events,
        unsampled_events,
    })
}

/// An Ethernet + IPv4 + TCP data segment (PSH, ACK) between `ports` (client, server) with
/// sequence number `seq`, carrying `payload` zero bytes: what the cost measurement and the
/// tests hand the classifiers (`Tracer::test_run`).
pub fn tcp_segment(
    client: Ipv4Addr,
    server: Ipv4Addr,
    (client_port, server_port): (u16, u16),
    seq: u32,
    payload: usize,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(client.octets(), server.octets(), 64)
        .tcp(client_port, server_port, seq, 65535)
        .psh()
        .ack(1);
    let data = vec![0_u8; payload];
    let mut packet = Vec::with_capacity(builder.size(payload));
    // Writing to a Vec fails only for a payload too large for an IP packet; an empty packet
    // then makes the test run fail with the kernel's EINVAL.
    if builder.write(&mut packet, &data).is_err() {
        packet.clear();
    }
    packet
}
