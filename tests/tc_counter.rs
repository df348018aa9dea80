//! The TC packet counter on a real veth between two network namespaces: the count read back
//! from the per-CPU map must be exactly the packets sent, in the right direction, with the
//! exact byte count; detaching must stop the counting.
//!
//! The link is made silent first (IPv6 off before it comes up, static neighbours instead of
//! ARP), so every packet on it is one the test sent.

use std::net::{SocketAddr, UdpSocket};

use sonde_daemon::{netns, object::EbpfObject, tc_counter};
use sonde_integration::{Netns, require_root};

const A_ADDR: &str = "10.231.0.1";
const B_ADDR: &str = "10.231.0.2";
const A_MAC: &str = "02:5d:00:00:00:01";
const B_MAC: &str = "02:5d:00:00:00:02";
const PORT: u16 = 9999;
const PAYLOAD: usize = 64;
/// Ethernet (14) + IPv4 (20) + UDP (8) headers around each payload, as TC sees the frame.
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

/// Two namespaces joined by a silent veth pair `va` (in `a`) and `vb` (in `b`).
struct Pair {
    a: Netns,
    b: Netns,
}

impl Pair {
    fn new() -> Self {
        let a = Netns::new("a");
        let b = Netns::new("b");
        a.ip(&[
            "link", "add", "va", "address", A_MAC, "type", "veth", "peer", "name", "vb", "address",
            B_MAC, "netns", &b.name,
        ]);
        for (ns, dev, addr, peer_addr, peer_mac) in [
            (&a, "va", A_ADDR, B_ADDR, B_MAC),
            (&b, "vb", B_ADDR, A_ADDR, A_MAC),
        ] {
            ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&[
                "neigh",
                "replace",
                peer_addr,
                "lladdr",
                peer_mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        Self { a, b }
    }
}

/// A UDP socket bound inside `ns` (the socket keeps its namespace after the thread ends).
fn udp_socket_in(ns: &Netns, addr: &str, port: u16) -> UdpSocket {
    let bind: SocketAddr = format!("{addr}:{port}").parse().expect("socket address");
    netns::run_in(&ns.path(), || UdpSocket::bind(bind))
        .expect("enter namespace")
        .expect("bind UDP socket")
}

/// Sends `count` datagrams from `from` to `to` and waits until all have arrived.
fn send_and_receive(from: &UdpSocket, to: &UdpSocket, count: usize) {
    let target = to.local_addr().expect("receiver address");
    to.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .expect("read timeout");
    let payload = [0x5d_u8; PAYLOAD];
    let mut buf = [0_u8; 2 * PAYLOAD];
    for _ in 0..count {
        from.send_to(&payload, target).expect("send");
        let (len, _) = to.recv_from(&mut buf).expect("datagram arrives");
        assert_eq!(len, PAYLOAD);
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn counts_exactly_the_packets_sent_on_a_veth() {
    require_root();
    let pair = Pair::new();
    let mut object = EbpfObject::load().expect("load sonde's eBPF object");
    let attachment = netns::run_in(&pair.b.path(), || tc_counter::attach(&mut object, "vb"))
        .expect("enter namespace b")
        .expect("attach the counter to vb");

    let in_a = udp_socket_in(&pair.a, A_ADDR, PORT);
    let in_b = udp_socket_in(&pair.b, B_ADDR, PORT);

    // a -> b: arrives on vb (ingress).
    send_and_receive(&in_a, &in_b, 100);
    let counts = tc_counter::read(&object, attachment.ifindex).expect("read counts");
    assert_eq!(counts.ingress.packets, 100, "{counts:?}");
    assert_eq!(counts.ingress.bytes, 100 * FRAME, "{counts:?}");
    assert_eq!(counts.egress.packets, 0, "{counts:?}");

    // b -> a: leaves through vb (egress).
    send_and_receive(&in_b, &in_a, 37);
    let counts = tc_counter::read(&object, attachment.ifindex).expect("read counts");
    assert_eq!(counts.ingress.packets, 100, "{counts:?}");
    assert_eq!(counts.egress.packets, 37, "{counts:?}");
    assert_eq!(counts.egress.bytes, 37 * FRAME, "{counts:?}");

    // Detached: traffic goes on, counts stay.
    drop(attachment);
    send_and_receive(&in_a, &in_b, 10);
    let ifindex = netns::run_in(&pair.b.path(), || nix::net::if_::if_nametoindex("vb"))
        .expect("enter namespace b")
        .expect("vb exists");
    let after = tc_counter::read(&object, ifindex).expect("read counts");
    assert_eq!(
        after, counts,
        "counting continued after the links were dropped"
    );
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn attaching_to_a_missing_interface_is_a_clear_error() {
    require_root();
    let ns = Netns::new("missing");
    let mut object = EbpfObject::load().expect("load sonde's eBPF object");
    let err = netns::run_in(&ns.path(), || tc_counter::attach(&mut object, "nope0"))
        .expect("enter namespace")
        .expect_err("no such interface");
    assert_eq!(
        err.to_string(),
        "no interface named \"nope0\" in this network namespace"
    );
}
