//! What a stage classifier costs per packet, measured in the kernel: `BPF_PROG_TEST_RUN` runs
//! it on a crafted packet many times and reports the mean. No traffic is sent, and kernel BPF
//! statistics stay off (their own clock reads would be counted in).
//!
//! Two packets per classifier: one of a flow no run traces (what every other packet on the
//! node pays: a header parse and one or two array reads) and one of a traced flow (parse,
//! lookups, a ring-buffer record).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use etherparse::PacketBuilder;
use sonde_common::stages::side;

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

/// Measures every stage classifier over `rounds` rounds (each: 100 000 foreign packets and
/// 4096 traced ones) and returns the mean cost of each.
pub fn measure(tracer: &Arc<Tracer>, rounds: u32) -> Result<Costs> {
    let rounds = rounds.max(1);
    let flow = TracedFlow {
        client: IpAddr::V4(CLIENT),
        server: IpAddr::V4(SERVER),
        server_port: SERVER_PORT,
        protocol: 6,
    };
    let traced = tcp_segment(CLIENT, SERVER, CLIENT_PORT, SERVER_PORT, 64);
    // Same addresses, a port no run uses: the common case on a busy node.
    let foreign = tcp_segment(CLIENT, SERVER, CLIENT_PORT, SERVER_PORT + 1, 64);
    let trace = tracer.follow(&[flow], side::CLIENT | side::SERVER)?;
    let mut floor_ns = 0_u64;
    for _ in 0..rounds {
        let run = tracer.test_run(FLOOR_PROGRAM, &foreign, FOREIGN_BATCH)?;
        floor_ns += run.duration.as_nanos() as u64;
    }
    let mut probes = Vec::new();
    for program in TC_PROGRAMS {
        let (mut foreign_ns, mut traced_ns) = (0_u64, 0_u64);
        for _ in 0..rounds {
            let run = tracer.test_run(program, &foreign, FOREIGN_BATCH)?;
            foreign_ns += run.duration.as_nanos() as u64;
            let run = tracer.test_run(program, &traced, TRACED_BATCH)?;
            traced_ns += run.duration.as_nanos() as u64;
            tracer.drain(super::Drain::Final);
        }
        probes.push(ProbeCost {
            program,
            foreign_ns: foreign_ns as f64 / f64::from(rounds),
            traced_ns: traced_ns as f64 / f64::from(rounds),
        });
    }
    drop(trace);
    Ok(Costs {
        floor_ns: floor_ns as f64 / f64::from(rounds),
        probes,
    })
}

/// An Ethernet + IPv4 + TCP data segment (PSH, ACK) carrying `payload` zero bytes.
fn tcp_segment(
    client: Ipv4Addr,
    server: Ipv4Addr,
    client_port: u16,
    server_port: u16,
    payload: usize,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(client.octets(), server.octets(), 64)
        .tcp(client_port, server_port, 1, 65535)
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
