//! `lab conntrack-fill`: cheap conntrack entries in one node's table, at a steady rate.
//!
//! A thread enters the node's namespace and sends one-byte UDP datagrams from the node's bridge
//! address to one of its pods, each to another (source port, destination port) pair, so that
//! each makes a new unreplied UDP entry in the node's table and in no other (the pod's own
//! namespace tracks nothing). The pod answers closed ports with ICMP errors, which the node
//! tracks as related to the entry, not as new ones. Destination ports stay below the ephemeral
//! range, so no server of a run can receive a filler datagram.
//!
//! Those entries are unassured: a full table evicts them to admit new connections
//! (`early_drop`). With `--assured`, each flow also gets a reply and a later datagram, which
//! makes it assured (see [`assured`]): a table full of those drops new connections instead.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

use super::{Inventory, sys};
use crate::error::{Context as _, refuse};

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
    /// Whether the flows were made assured.
    pub assured: bool,
}

/// Checks a fill's bounds before anything is looked up.
pub fn check(rate: f64, flows: u64) -> crate::Result<()> {
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
        refuse!(
            "--rate must be a positive number of flows per second, at most {MAX_RATE}; got {rate}"
        );
    }
    if flows == 0 || flows > MAX_FLOWS {
        refuse!("--flows must be 1 to {MAX_FLOWS}; got {flows}");
    }
    Ok(())
}

/// Sends `flows` new flows at `rate` a second through `node`'s table; `assured` makes each
/// flow an assured one (see [`assured`]).
pub fn fill(
    inventory: &Inventory,
    node: &str,
    rate: f64,
    flows: u64,
    assured: bool,
) -> crate::Result<Filled> {
    check(rate, flows)?;
    let Some(node) = inventory.node(node) else {
        refuse!(
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
    let started = Instant::now();
    let (sent, errors) = if assured {
        self::assured(&node.netns, &pod.netns, node.gateway, pod.ip, rate, flows)?
    } else {
        let sockets = flows.div_ceil(PORTS_PER_SOCKET);
        let source = node.gateway;
        let sockets = in_netns(&node.netns, move || {
            (0..sockets)
                .map(|_| UdpSocket::bind(SocketAddrV4::new(source, 0)))
                .collect::<Result<Vec<_>, _>>()
        })?
        .context("binding the filler's sockets on the node's bridge address")?;
        paced(rate, flows, |index| {
            let socket = &sockets[(index / PORTS_PER_SOCKET) as usize];
            let port = PORTS.start() + (index % PORTS_PER_SOCKET) as u16;
            socket.send_to(&[0], SocketAddrV4::new(pod.ip, port))
        })
    };
    Ok(Filled {
        flows: sent,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        pod: pod.name.clone(),
        assured,
    })
}

/// Destination ports a socket of the unassured fill sends to.
const PORTS_PER_SOCKET: u64 = (*PORTS.end() - *PORTS.start()) as u64 + 1;

/// Assured flows: the kernel protects assured entries from early eviction, so a table full of
/// them drops new connections (`nf_conntrack: table full, dropping packet`). A UDP entry is
/// assured once it has seen a reply and is still used two seconds after it was made; so `n`
/// sockets on the node and `n` in the pod (n² ≥ flows pairs) send a datagram each way per pair,
/// and the node's side sends again once two seconds have passed: three datagrams a flow.
fn assured(
    node_netns: &str,
    pod_netns: &str,
    node_ip: Ipv4Addr,
    pod_ip: Ipv4Addr,
    rate: f64,
    flows: u64,
) -> crate::Result<(u64, u64)> {
    let side = flows.isqrt() + u64::from(flows.isqrt().pow(2) < flows);
    raise_open_files(2 * side + 64)?;
    let bind = |ip: Ipv4Addr| {
        move || {
            (0..side)
                .map(|_| UdpSocket::bind(SocketAddrV4::new(ip, 0)))
                .collect::<Result<Vec<_>, _>>()
        }
    };
    let nodes = in_netns(node_netns, bind(node_ip))?.context("binding the node's sockets")?;
    let pods = in_netns(pod_netns, bind(pod_ip))?.context("binding the pod's sockets")?;
    let address = |socket: &UdpSocket| match socket.local_addr() {
        Ok(std::net::SocketAddr::V4(address)) => Ok(address),
        other => Err(crate::Error::Refused(format!(
            "a filler socket has no IPv4 address: {other:?}"
        ))),
    };
    let node_addresses = nodes
        .iter()
        .map(address)
        .collect::<crate::Result<Vec<_>>>()?;
    let pod_addresses = pods
        .iter()
        .map(address)
        .collect::<crate::Result<Vec<_>>>()?;
    let pair = |index: u64| ((index / side) as usize, (index % side) as usize);
    let first = Instant::now();
    let (sent, errors) = paced(rate, flows, |index| {
        let (n, p) = pair(index);
        nodes[n].send_to(&[0], pod_addresses[p])
    });
    let (_, reply_errors) = paced(rate, flows, |index| {
        let (n, p) = pair(index);
        pods[p].send_to(&[0], node_addresses[n])
    });
    // Every entry is older than two seconds before it is used again.
    if let Some(wait) = Duration::from_millis(2200).checked_sub(first.elapsed()) {
        std::thread::sleep(wait);
    }
    let (_, again_errors) = paced(rate, flows, |index| {
        let (n, p) = pair(index);
        nodes[n].send_to(&[0], pod_addresses[p])
    });
    Ok((sent, errors + reply_errors + again_errors))
}

/// Lifts the soft limit on open files to `needed` (within the hard limit).
fn raise_open_files(needed: u64) -> crate::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-file limit")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        refuse!("the filler needs {needed} open files; the hard limit is {hard}");
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).context("raising the open-file limit")
}

/// Runs `work` on a thread inside the namespace `netns` (under /run/netns); what it makes
/// (sockets) stays in that namespace whichever thread uses it later.
fn in_netns<T: Send>(netns: &str, work: impl FnOnce() -> T + Send) -> crate::Result<T> {
    let file = File::open(Path::new(sys::NETNS_DIR).join(netns))
        .with_context(|| format!("opening namespace {netns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> crate::Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering namespace {netns}"))?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Calls `send` for indexes 0..count at `rate` a second (in 1 ms slices): (sent, errors).
fn paced(rate: f64, count: u64, mut send: impl FnMut(u64) -> std::io::Result<usize>) -> (u64, u64) {
    let started = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while sent + errors < count {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(count);
        while sent + errors < due {
            match send(sent + errors) {
                Ok(_) => sent += 1,
                // A previous datagram's ICMP error surfaces on the next send: not this one's.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(_) => errors += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (sent, errors)
}
