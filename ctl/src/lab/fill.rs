//! `lab conntrack-fill`: cheap conntrack entries in one node's table, at a steady rate.
//!
//! A thread enters the node's namespace and sends one-byte UDP datagrams from the node's bridge
//! address to one of its pods, each to another (source port, destination port) pair, so that
//! each makes a new unreplied UDP entry in the node's table and in no other (the pod's own
//! namespace tracks nothing). The pod answers closed ports with ICMP errors, which the node
//! tracks as related to the entry, not as new ones. Destination ports stay below the ephemeral
//! range, so no server of a run can receive a filler datagram.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

use super::{Inventory, sys};

/// Destination ports used: below Linux's ephemeral range (32768 and up).
const PORTS: std::ops::RangeInclusive<u16> = 1024..=32_767;
/// Upper bounds: the filler is a lab tool, not a flood.
pub const MAX_RATE: f64 = 200_000.0;
/// At most this many flows in one fill.
pub const MAX_FLOWS: u64 = 2_000_000;

/// What a fill did.
#[derive(Debug, serde::Serialize)]
pub struct Filled {
    /// Datagrams sent (one new flow each).
    pub flows: u64,
    /// Send errors (the datagram made no flow).
    pub errors: u64,
    /// How long it took.
    pub seconds: f64,
    /// The pod the datagrams went to.
    pub pod: String,
}

/// Checks a fill's bounds before anything is looked up.
pub fn check(rate: f64, flows: u64) -> anyhow::Result<()> {
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
        bail!(
            "--rate must be a positive number of flows per second, at most {MAX_RATE}; got {rate}"
        );
    }
    if flows == 0 || flows > MAX_FLOWS {
        bail!("--flows must be 1 to {MAX_FLOWS}; got {flows}");
    }
    Ok(())
}

/// Sends `flows` new flows at `rate` a second through `node`'s table.
pub fn fill(inventory: &Inventory, node: &str, rate: f64, flows: u64) -> anyhow::Result<Filled> {
    check(rate, flows)?;
    let Some(node) = inventory.node(node) else {
        bail!(
            "lab {} has no node {node:?} (it has {})",
            inventory.name,
            inventory
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let pod = inventory
        .pods
        .iter()
        .find(|pod| pod.node == node.name)
        .with_context(|| format!("node {} has no pod to send to", node.name))?;
    let netns = File::open(Path::new(sys::NETNS_DIR).join(&node.netns))
        .with_context(|| format!("opening {}'s namespace", node.name))?;
    let (source, target) = (node.gateway, pod.ip);
    let filled = std::thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<(u64, u64, f64)> {
                setns(&netns, CloneFlags::CLONE_NEWNET).context("entering the node's namespace")?;
                send(source, target, rate, flows)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    Ok(Filled {
        flows: filled.0,
        errors: filled.1,
        seconds: filled.2,
        pod: pod.name.clone(),
    })
}

fn send(
    source: Ipv4Addr,
    target: Ipv4Addr,
    rate: f64,
    flows: u64,
) -> anyhow::Result<(u64, u64, f64)> {
    let ports_per_socket = u64::from(PORTS.end() - PORTS.start()) + 1;
    let sockets = flows.div_ceil(ports_per_socket);
    let sockets: Vec<UdpSocket> = (0..sockets)
        .map(|_| UdpSocket::bind(SocketAddrV4::new(source, 0)))
        .collect::<Result<_, _>>()
        .context("binding the filler's sockets on the node's bridge address")?;
    let started = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while sent + errors < flows {
        // Pace in 1 ms slices: as many as are due by now.
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(flows);
        while sent + errors < due {
            let index = sent + errors;
            let socket = &sockets[(index / ports_per_socket) as usize];
            let port = PORTS.start() + (index % ports_per_socket) as u16;
            match socket.send_to(&[0], SocketAddrV4::new(target, port)) {
                Ok(_) => sent += 1,
                // A previous datagram's ICMP error surfaces on the next send: not this one's.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(_) => errors += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((sent, errors, started.elapsed().as_secs_f64()))
}
