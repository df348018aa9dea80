//! The stage classifiers' packet parser, run by the kernel itself (`BPF_PROG_TEST_RUN`) on
//! crafted packets: IPv4 and IPv6, TCP and UDP, VLAN tags, IP options, extension headers,
//! fragments, truncated packets and random bytes. Every packet must pass (the probe fails open),
//! and exactly the packets of a traced flow must be stamped, with the identity (direction,
//! client port, TCP sequence or sonde's UDP sequence) the packet carries. Every stamp reaches
//! the collector, however many pass through the programs' per-CPU event batches. The programs
//! a pod's packet counter runs while traced (count and stamp) pass the same checks.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, PacketBuilder, VlanId,
};
use sonde_common::stages::{BATCH_EVENTS, direction, point, sampled, side};
use sonde_daemon::{
    object::EbpfObject,
    stages::{TracedFlow, Tracer, collect::Collected, cost},
};
use sonde_integration::require_root;

/// What a TCX classifier returns to let the packet go on (`TCX_NEXT`, -1).
const TCX_NEXT: u32 = u32::MAX;
const PROGRAM: &str = "sonde_node_out";

const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 240, 1, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5d, 0, 0, 0, 0, 0, 1);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5d, 0, 0, 0, 0, 1, 1);
const TCP_PORT: u16 = 5201;
const UDP_PORT: u16 = 5301;
const CLIENT_PORT: u16 = 40001;
const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

/// Writes a built packet carrying `payload` bytes (etherparse's last steps each have their
/// own `write`).
macro_rules! packet {
    ($builder:expr, $payload:expr $(,)?) => {{
        let mut out = Vec::new();
        $builder
            .write(&mut out, &[0x5a_u8].repeat($payload))
            .expect("build a packet");
        out
    }};
}

fn tracer() -> Arc<Tracer> {
    let btf = aya::Btf::from_sys_fs().ok();
    let object = EbpfObject::load_with_btf(btf.as_ref()).expect("load sonde's eBPF object");
    Tracer::new(Arc::new(Mutex::new(object)), btf.as_ref()).expect("start the tracer")
}

fn flows() -> Vec<TracedFlow> {
    let flow = |client: IpAddr, server: IpAddr, server_port, protocol| TracedFlow {
        client,
        server,
        server_port,
        protocol,
    };
    vec![
        flow(CLIENT4.into(), SERVER4.into(), TCP_PORT, 6),
        flow(CLIENT6.into(), SERVER6.into(), TCP_PORT, 6),
        flow(CLIENT4.into(), SERVER4.into(), UDP_PORT, 17),
    ]
}

/// A stamp as the collector keys it: direction, client port, packet id.
type Stamp = (u8, u16, u32);

/// Runs every packet through `program` once, each must go on; returns what the run's collector
/// got.
fn run_through(tracer: &Arc<Tracer>, program: &str, packets: &[Vec<u8>]) -> Collected {
    run_sampled(tracer, program, packets, 0)
}

/// [`run_through`] with the flows followed 1 packet in 2^`sample_shift`.
fn run_sampled(
    tracer: &Arc<Tracer>,
    program: &str,
    packets: &[Vec<u8>],
    sample_shift: u8,
) -> Collected {
    let trace = tracer
        .follow(&flows(), side::CLIENT, sample_shift)
        .expect("register the flows");
    for packet in packets {
        let run = tracer
            .test_run(program, packet, 1)
            .unwrap_or_else(|err| panic!("test run of {} bytes: {err:?}", packet.len()));
        assert_eq!(
            run.return_value, TCX_NEXT,
            "{program} must let every packet go on ({packet:02x?})"
        );
    }
    trace.finish().collected
}

/// Runs every packet through the classifier once; returns the stamps the run's collector got.
fn stamps_of(tracer: &Arc<Tracer>, packets: &[Vec<u8>]) -> BTreeSet<Stamp> {
    uplink_stamps(&run_through(tracer, PROGRAM, packets))
}

/// The stamps a collector got at the uplink's outward point.
fn uplink_stamps(collected: &Collected) -> BTreeSet<Stamp> {
    collected
        .uplink
        .iter()
        .filter(|stamps| stamps.point == point::NODE_OUT)
        .flat_map(|stamps| {
            stamps
                .keys
                .iter()
                .map(move |key| (stamps.direction, (key >> 32) as u16, *key as u32))
        })
        .collect()
}

fn tcp4(seq: u32, payload: usize) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(MACS.0, MACS.1)
        .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
        .tcp(CLIENT_PORT, TCP_PORT, seq, 1024)
        .ack(1);
    packet!(builder, payload)
}

/// sonde's UDP data header: magic, flags, 64-bit sequence, then padding.
fn sonde_udp_payload(seq: u64, len: usize) -> Vec<u8> {
    let mut payload = b"SNDD".to_vec();
    payload.extend([0; 4]);
    payload.extend(seq.to_be_bytes());
    payload.resize(len.max(16), 0);
    payload
}

fn ipv4_header(options: &[u8]) -> Ipv4Header {
    let mut header = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT4.octets(), SERVER4.octets())
        .expect("IPv4 header");
    header.options = options.try_into().expect("IPv4 options");
    header
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn every_stamp_arrives_through_full_and_partial_batches() {
    require_root();
    let tracer = tracer();
    // Many full batches and a partial one: the full ones leave as they fill, the partial one
    // when the trace finishes and flushes every CPU.
    let count = BATCH_EVENTS as u32 * 40 + 7;
    let packets: Vec<Vec<u8>> = (0..count).map(|i| tcp4(5000 + i * 100, 64)).collect();
    let expected: BTreeSet<Stamp> = (0..count)
        .map(|i| (direction::TO_SERVER, CLIENT_PORT, 5000 + i * 100))
        .collect();
    assert_eq!(stamps_of(&tracer, &packets), expected);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn stamps_exactly_the_traced_packets_of_every_shape() {
    require_root();
    let tracer = tracer();
    let mut packets = Vec::new();
    let mut expected = BTreeSet::new();
    let mut id = 1000_u32;
    let mut next = || {
        id += 1;
        id
    };

    // IPv4 TCP data, both directions.
    let seq = next();
    packets.push(tcp4(seq, 100));
    expected.insert((direction::TO_SERVER, CLIENT_PORT, seq));
    let seq = next();
    packets.push(packet!(
        PacketBuilder::ethernet2(MACS.1, MACS.0)
            .ipv4(SERVER4.octets(), CLIENT4.octets(), 64)
            .tcp(TCP_PORT, CLIENT_PORT, seq, 1024)
            .ack(1),
        1448,
    ));
    expected.insert((direction::TO_CLIENT, CLIENT_PORT, seq));

    // A pure ACK carries no data: not stamped.
    packets.push(tcp4(next(), 0));
    // A SYN (and a SYN-ACK) is remembered for drops but carries no data: not stamped.
    packets.push(packet!(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
            .tcp(CLIENT_PORT, TCP_PORT, next(), 1024)
            .syn(),
        0,
    ));
    packets.push(packet!(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .ipv4(SERVER4.octets(), CLIENT4.octets(), 64)
            .tcp(TCP_PORT, CLIENT_PORT, next(), 1024)
            .syn()
            .ack(1),
        0,
    ));

    // IPv4 options (NOPs and an end), 4 and 40 bytes.
    for options in [&[1_u8, 1, 1, 0][..], &[1; 40][..]] {
        let seq = next();
        packets.push(packet!(
            PacketBuilder::ethernet2(MACS.0, MACS.1)
                .ip(IpHeaders::Ipv4(ipv4_header(options), Default::default()))
                .tcp(CLIENT_PORT, TCP_PORT, seq, 1024)
                .ack(1),
            64,
        ));
        expected.insert((direction::TO_SERVER, CLIENT_PORT, seq));
    }

    // One VLAN tag, and two (802.1ad outside 802.1Q).
    let seq = next();
    packets.push(packet!(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .single_vlan(VlanId::try_new(7).expect("vlan id"))
            .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
            .tcp(CLIENT_PORT, TCP_PORT, seq, 1024)
            .ack(1),
        64,
    ));
    expected.insert((direction::TO_SERVER, CLIENT_PORT, seq));
    let seq = next();
    packets.push(packet!(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .double_vlan(
                VlanId::try_new(100).expect("vlan id"),
                VlanId::try_new(7).expect("vlan id"),
            )
            .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
            .tcp(CLIENT_PORT, TCP_PORT, seq, 1024)
            .ack(1),
        64,
    ));
    expected.insert((direction::TO_SERVER, CLIENT_PORT, seq));

    // IPv4 fragments: the first (offset 0, more fragments) carries the TCP header and is
    // stamped; a later one does not and is not.
    for (offset, stamped) in [(0_u16, true), (185, false)] {
        let seq = next();
        let mut header = ipv4_header(&[]);
        header.more_fragments = true;
        header.fragment_offset = IpFragOffset::try_new(offset).expect("offset");
        packets.push(packet!(
            PacketBuilder::ethernet2(MACS.0, MACS.1)
                .ip(IpHeaders::Ipv4(header, Default::default()))
                .tcp(CLIENT_PORT, TCP_PORT, seq, 1024)
                .ack(1),
            64,
        ));
        if stamped {
            expected.insert((direction::TO_SERVER, CLIENT_PORT, seq));
        }
    }

    // IPv6, plain and behind hop-by-hop and destination options.
    let ipv6 = |extensions: Ipv6Extensions| {
        IpHeaders::Ipv6(
            Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: IpNumber::TCP,
                hop_limit: 64,
                source: CLIENT6.octets(),
                destination: SERVER6.octets(),
            },
            extensions,
        )
    };
    let options = || Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0]).ok();
    for extensions in [
        Ipv6Extensions::default(),
        Ipv6Extensions {
            hop_by_hop_options: options(),
            destination_options: options(),
            ..Default::default()
        },
        Ipv6Extensions {
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber::TCP,
                IpFragOffset::ZERO,
                true,
                7,
            )),
            ..Default::default()
        },
    ] {
        let seq = next();
        packets.push(packet!(
            PacketBuilder::ethernet2(MACS.0, MACS.1)
                .ip(ipv6(extensions))
                .tcp(CLIENT_PORT, TCP_PORT, seq, 1024)
                .ack(1),
            64,
        ));
        expected.insert((direction::TO_SERVER, CLIENT_PORT, seq));
    }
    // A later IPv6 fragment: no transport header, not stamped.
    packets.push(packet!(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .ip(ipv6(Ipv6Extensions {
                fragment: Some(Ipv6FragmentHeader::new(
                    IpNumber::TCP,
                    IpFragOffset::try_new(100).expect("offset"),
                    false,
                    7,
                )),
                ..Default::default()
            }))
            .tcp(CLIENT_PORT, TCP_PORT, next(), 1024)
            .ack(1),
        64,
    ));

    // sonde's UDP datagrams are stamped by their sequence number; other UDP is not.
    let seq = u64::from(next()) | (7 << 32);
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(MACS.0, MACS.1)
        .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
        .udp(CLIENT_PORT, UDP_PORT)
        .write(&mut udp, &sonde_udp_payload(seq, 64))
        .expect("UDP packet");
    packets.push(udp);
    expected.insert((direction::TO_SERVER, CLIENT_PORT, seq as u32));
    packets.push(packet!(
        PacketBuilder::ethernet2(MACS.0, MACS.1)
            .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
            .udp(CLIENT_PORT, UDP_PORT),
        64,
    ));

    // Not a traced flow: another server port, another server, another protocol's port.
    for (server, port) in [
        (SERVER4, TCP_PORT + 1),
        (Ipv4Addr::new(10, 240, 1, 2), TCP_PORT),
        (SERVER4, UDP_PORT),
    ] {
        packets.push(packet!(
            PacketBuilder::ethernet2(MACS.0, MACS.1)
                .ipv4(CLIENT4.octets(), server.octets(), 64)
                .tcp(CLIENT_PORT, port, next(), 1024)
                .ack(1),
            64,
        ));
    }
    // Not IP at all (ARP).
    let mut arp = tcp4(next(), 64);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    packets.push(arp);

    assert_eq!(stamps_of(&tracer, &packets), expected);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn truncated_packets_pass_and_are_stamped_only_when_their_headers_are_whole() {
    require_root();
    let tracer = tracer();
    // The kernel's test harness refuses an IPv4 frame shorter than its IP header, so the IP
    // header itself is cut behind a VLAN tag, which the harness does not look into.
    let vlan = |seq| {
        packet!(
            PacketBuilder::ethernet2(MACS.0, MACS.1)
                .single_vlan(VlanId::try_new(7).expect("vlan id"))
                .ipv4(CLIENT4.octets(), SERVER4.octets(), 64)
                .tcp(CLIENT_PORT, TCP_PORT, seq, 1024)
                .ack(1),
            26,
        )
    };
    // The probe reads the TCP header's first 14 bytes (ports, sequence, data offset, flags).
    for (shortest, needed, build) in [
        (
            14 + 20,
            14 + 20 + 14,
            &(|seq| tcp4(seq, 26)) as &dyn Fn(u32) -> Vec<u8>,
        ),
        (14, 18 + 20 + 14, &vlan),
    ] {
        for len in shortest..=needed + 30 {
            let seq = 5000 + len as u32;
            let mut packet = build(seq);
            packet.truncate(len);
            let stamps = stamps_of(&tracer, &[packet]);
            let expected: BTreeSet<Stamp> = if len >= needed {
                [(direction::TO_SERVER, CLIENT_PORT, seq)].into()
            } else {
                BTreeSet::new()
            };
            assert_eq!(stamps, expected, "packet cut to {len} bytes");
        }
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn random_bytes_and_corrupted_headers_always_pass() {
    require_root();
    let tracer = tracer();
    let mut rng = fastrand::Rng::with_seed(0x5d0de);
    let mut packets = noise(&mut rng, 2000);
    // A traced packet with one to four bytes corrupted (lengths, versions, offsets...).
    for _ in 0..2000 {
        let mut packet = tcp4(rng.u32(..), rng.usize(0..200));
        for _ in 0..rng.usize(1..=4) {
            let at = rng.usize(..packet.len());
            packet[at] = rng.u8(..);
        }
        packets.push(packet);
    }
    // Every packet went on (checked inside); stamps, if any, are of the traced client.
    let stamps = stamps_of(&tracer, &packets[..2000]);
    assert!(stamps.is_empty(), "noise was stamped: {stamps:?}");
    let _ = stamps_of(&tracer, &packets[2000..]);
}

/// The programs a pod's packet counter runs while traced count and stamp in one: they let
/// noise pass unstamped, and stamp each traced packet once.
#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn the_counters_stamping_programs_pass_everything_and_stamp_traced_packets() {
    require_root();
    let tracer = tracer();
    let mut rng = fastrand::Rng::with_seed(0xc047);
    let noise = noise(&mut rng, 500);
    let traced: Vec<Vec<u8>> = (0..100).map(|i| tcp4(1000 + i * 1448, 100)).collect();
    for program in ["sonde_pod_out_counted", "sonde_pod_in_counted"] {
        assert_eq!(
            run_through(&tracer, program, &noise).packets,
            0,
            "{program}"
        );
        let stamped = run_through(&tracer, program, &traced).packets;
        if program == "sonde_pod_out_counted" {
            // A first point holds each stamp back for the packet's next point, which these
            // packets never reach: each goes out when a later packet's hold takes its slot,
            // the last ones never (with the skb tracepoints attached they go when freed:
            // tests/hook_variants.rs). Never more than the traced packets.
            assert!(stamped <= 100, "{program}: {stamped}");
        } else {
            assert_eq!(stamped, 100, "{program}");
        }
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_sampled_flow_is_stamped_exactly_at_the_packets_its_sampling_picks() {
    require_root();
    let tracer = tracer();
    // Sequence numbers as a stream's advance: by a segment's length, across a wrap.
    let seqs: Vec<u32> = (0..4000_u32)
        .map(|i| (u32::MAX - 500_000).wrapping_add(i * 1448))
        .collect();
    let packets: Vec<Vec<u8>> = seqs.iter().map(|seq| tcp4(*seq, 64)).collect();
    let shift = 4;
    let expected: BTreeSet<Stamp> = seqs
        .iter()
        .filter(|seq| sampled(**seq, shift))
        .map(|seq| (direction::TO_SERVER, CLIENT_PORT, *seq))
        .collect();
    // About 1 in 16 (250 of 4000), and not all or none by accident.
    assert!(
        (150..350).contains(&expected.len()),
        "{} sampled",
        expected.len()
    );
    let collected = run_sampled(&tracer, PROGRAM, &packets, shift);
    assert_eq!(uplink_stamps(&collected), expected);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn the_cost_measurement_packets_take_the_paths_they_are_named_for() {
    require_root();
    let tracer = tracer();
    let costs = cost::measure(&tracer, 1).expect("measure the probes' costs");
    assert_eq!(costs.probes.len(), 4);
    for probe in &costs.probes {
        for ns in [probe.foreign_ns, probe.traced_ns, probe.unsampled_ns] {
            assert!(ns.is_finite() && ns > 0.0, "{probe:?}");
        }
    }
    // Every traced packet is stamped at every classifier (4096 runs each), but a packet's
    // first point on a node (leaving its pod, reaching the node) holds its stamp back for its
    // next point there, and the same packet through it again replaces it: those two give at
    // most their last packet's stamp each (sent when a later hold takes the slot), the
    // others every one. No unsampled packet is stamped.
    assert!(
        (2 * 4096..=2 * 4096 + 2).contains(&costs.traced_events),
        "{} events",
        costs.traced_events
    );
    assert_eq!(costs.unsampled_events, 0);
}

/// `count` frames of random bytes, some posing as IPv4 or IPv6 with VLAN tags.
fn noise(rng: &mut fastrand::Rng, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            // At least an Ethernet and an IPv6 header: the harness refuses shorter IP frames.
            let len = rng.usize(54..300);
            let mut packet: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            match i % 4 {
                0 => packet[12..14].copy_from_slice(&[0x08, 0x00]),
                1 => packet[12..14].copy_from_slice(&[0x86, 0xdd]),
                2 => {
                    packet[12..14].copy_from_slice(&[0x81, 0x00]);
                    packet[16..18].copy_from_slice(&[0x08, 0x00]);
                }
                _ => {}
            }
            packet
        })
        .collect()
}
