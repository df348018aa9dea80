//! Per-stage timestamps of a run's own packets: the flows a run registers, the points on the
//! path where the kernel programs stamp its packets, and the events they send to userspace.
//!
//! # How a packet is recognised at every point
//! A run registers its flows by server endpoint: `(client IP, server IP, server port, protocol)`.
//! A packet belongs to the run when its addresses and one of its ports match a registered flow;
//! which port matched gives its direction (client to server, or back).
//!
//! The same packet is identified at successive points by `(flow, direction, id)`, where `id` is
//! the TCP sequence number of a data segment, or the sequence number sonde's UDP generators put
//! in every datagram (the low 32 bits). Both survive NAT, bridges, veths and the wire, so the
//! key is the same on both nodes of a cross-node run. Segments without payload (pure ACKs) carry
//! no id of their own and are not stamped.
//!
//! The socket points have no packet in hand: the send point is the run socket's last
//! `tcp_sendmsg_locked` (its time is handed to the next data segment of that flow and direction
//! that a TC point sees), and the read point is `skb_copy_datagram_iovec` for an skb that a
//! delivering TC point (host side of the pod's veth, towards the pod) remembered by address.

/// Where on the path a packet was stamped, in path order.
///
/// Kept as `u8` constants (not an enum) so that any byte read from a ring buffer is valid.
pub mod point {
    /// The sending application handed the data to its TCP socket (`tcp_sendmsg_locked`).
    pub const SOCKET_SEND: u8 = 0;
    /// The packet left the sender's pod: TC ingress on the host side of the pod's veth.
    pub const POD_OUT: u8 = 1;
    /// The packet left the sender's node: TC egress on the node's uplink.
    pub const NODE_OUT: u8 = 2;
    /// The packet reached the receiver's node: TC ingress on the node's uplink.
    pub const NODE_IN: u8 = 3;
    /// The packet entered the receiver's pod: TC egress on the host side of the pod's veth.
    pub const POD_IN: u8 = 4;
    /// The receiving application read it (`skb_copy_datagram_iovec`).
    pub const SOCKET_READ: u8 = 5;
    /// How many points there are.
    pub const COUNT: usize = 6;
}

/// Each stage program's slot in the run counters ([`crate::maps::PROGRAM_RUNS`]).
pub mod runs {
    /// `sonde_pod_out`.
    pub const POD_OUT: u32 = 0;
    /// `sonde_pod_in`.
    pub const POD_IN: u32 = 1;
    /// `sonde_node_out`.
    pub const NODE_OUT: u32 = 2;
    /// `sonde_node_in`.
    pub const NODE_IN: u32 = 3;
    /// `sonde_sock_send`.
    pub const SEND: u32 = 4;
    /// `sonde_read` and `sonde_read_tp` (one of them is loaded).
    pub const READ: u32 = 5;
    /// `sonde_drop` and `sonde_drop_tp`.
    pub const DROP: u32 = 6;
    /// `sonde_free` and `sonde_free_tp`.
    pub const FREE: u32 = 7;
    /// `sonde_connect`.
    pub const CONNECT: u32 = 8;
    /// `sonde_retransmit`.
    pub const RETRANSMIT: u32 = 9;
    /// `sonde_pod_out_counted`.
    pub const POD_OUT_COUNTED: u32 = 10;
    /// `sonde_pod_in_counted`.
    pub const POD_IN_COUNTED: u32 = 11;
    /// Slots per CPU: 128 bytes, two cache lines of their own (the map is page-aligned), so
    /// that no two CPUs write one line.
    pub const SLOTS: u32 = 16;
    /// CPUs the map holds unless the daemon sizes it for the machine at load.
    pub const DEFAULT_CPUS: u32 = 64;

    /// The entry of `slot` on `cpu`. A plain array indexed by CPU, not a per-CPU array: a
    /// per-CPU entry is reached through a table of pointers in the map, one more cache line
    /// on every run of every program, and on the real path the programs' own lines are cold
    /// (a profile of a traced stream put two thirds of a classifier's time on its first
    /// three lines: code, that table, the counter).
    pub const fn index(cpu: u32, slot: u32) -> u32 {
        cpu * SLOTS + slot
    }

    /// The slot of a stage program, by name.
    pub fn slot(program: &str) -> Option<u32> {
        Some(match program {
            "sonde_pod_out" => POD_OUT,
            "sonde_pod_in" => POD_IN,
            "sonde_node_out" => NODE_OUT,
            "sonde_node_in" => NODE_IN,
            "sonde_sock_send" => SEND,
            "sonde_read" | "sonde_read_tp" => READ,
            "sonde_drop" | "sonde_drop_tp" => DROP,
            "sonde_free" | "sonde_free_tp" => FREE,
            "sonde_connect" => CONNECT,
            "sonde_retransmit" => RETRANSMIT,
            "sonde_pod_out_counted" => POD_OUT_COUNTED,
            "sonde_pod_in_counted" => POD_IN_COUNTED,
            _ => return None,
        })
    }
}

/// Which way a packet goes within its flow.
pub mod direction {
    /// From the client to the server (requests, forward streams).
    pub const TO_SERVER: u8 = 0;
    /// From the server to the client (responses, reverse streams).
    pub const TO_CLIENT: u8 = 1;
}

/// Which sides of a flow live on the node that registered it (bits of [`FlowInfo::sides`]).
///
/// Socket hooks are global tracepoints: in the lab, where every node shares one kernel, a daemon
/// must only stamp the socket points of the sides it holds.
pub mod side {
    /// The client side is on this node: it sends towards the server and reads responses.
    pub const CLIENT: u8 = 1;
    /// The server side is on this node.
    pub const SERVER: u8 = 2;
}

/// What an [`Event`] reports.
pub mod event_kind {
    /// A packet passed a point (and an earlier one, when [`super::Event::earlier`] names
    /// it); `value`, when not 0, is how long before the record's first point the sending
    /// socket was handed the data this segment carries (the [`super::point::SOCKET_SEND`]
    /// stamp, sent with the first point's record rather than as one of its own).
    pub const STAMP: u8 = 0;
    /// A connection of the flow was established; `value` is the connect time in ns
    /// (SYN_SENT to ESTABLISHED, saturating at `u32::MAX`).
    pub const CONNECT: u8 = 1;
    /// The kernel retransmitted a segment of the flow; `id` is the segment's sequence number.
    pub const RETRANSMIT: u8 = 2;
    /// The kernel dropped a followed packet (`skb:kfree_skb`); `value` is its drop reason
    /// (`enum skb_drop_reason`), `point` the last point the packet was stamped at.
    pub const DROP: u8 = 3;
}

/// Index in the tracepoint configuration array ([`crate::maps::TRACEPOINT_CONF`]) of the
/// offset of `reason` in `skb:kfree_skb`'s record (it moved between kernels); 0: unknown, drops
/// are not followed.
pub const CONF_DROP_REASON_OFFSET: u32 = 0;

/// Index in the tracepoint configuration array of the switch that lets the programs gather
/// events in per-CPU batches ([`Batch`]): 1 once the daemon knows it can flush them, else
/// every event is written to the ring buffer directly.
pub const CONF_BATCH_EVENTS: u32 = 1;

/// Index in the tracepoint configuration array of the stamping window's number. A sampled
/// stream is stamped in windows (the skb hooks are detached between them, so a followed skb
/// freed meanwhile leaves its slot behind): a slot holds the window it was filled in, and one
/// from an earlier window is never taken for the skb now at its address. The daemon moves the
/// number on before each window opens; it stays put while stamping is continuous.
pub const CONF_WINDOW: u32 = 2;

/// Index in the tracepoint configuration array of the switch that holds stamping back
/// (nonzero): the classifiers then stamp nothing, as if detached. A window's hooks are
/// attached ahead of its opening (an attachment can take a good part of a window on a busy
/// node) and it opens at its moment on the wall clock when the daemon clears the switch, a
/// map write, so that every node stamps from the same moment.
pub const CONF_HELD_BACK: u32 = 3;

/// Key of the flow map: a run's flow as seen from its server endpoint.
///
/// IPv4 addresses are IPv4-mapped (`::ffff:a.b.c.d`); an IPv4 flow's key goes to the IPv4
/// map as a [`FlowKey4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The client's address, network byte order.
    pub client: [u8; 16],
    /// The server's address as the packet carries it (a pod IP, or a Service's ClusterIP before
    /// DNAT), network byte order.
    pub server: [u8; 16],
    /// The server's port, host byte order.
    pub server_port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// Zero.
    pub pad: u8,
}

impl FlowKey {
    /// The IPv4 map's key for this flow, when both addresses are IPv4(-mapped).
    pub fn v4(&self) -> Option<FlowKey4> {
        Some(FlowKey4 {
            client: ipv4_of(&self.client)?,
            server: ipv4_of(&self.server)?,
            server_port: self.server_port,
            protocol: self.protocol,
            pad: 0,
        })
    }
}

/// The IPv4 address an IPv4-mapped IPv6 address holds. Compared a word at a time, not as a
/// slice (which may become a `memcmp` call, which BPF lacks), so that the kernel programs use
/// it on socket tracepoints' address fields too.
#[inline(always)]
pub fn ipv4_of(mapped: &[u8; 16]) -> Option<[u8; 4]> {
    let word = |at: usize| {
        u32::from_ne_bytes([mapped[at], mapped[at + 1], mapped[at + 2], mapped[at + 3]])
    };
    let prefix = word(0) == 0 && word(4) == 0 && word(8) == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    prefix.then_some([mapped[12], mapped[13], mapped[14], mapped[15]])
}

/// Key of the IPv4 flow map: [`FlowKey`] of an IPv4 flow, a third of its size. Every packet
/// a classifier follows pays a hash of its key and a compare: 12 bytes cost less than 36.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// The client's address, network byte order.
    pub client: [u8; 4],
    /// The server's address as the packet carries it, network byte order.
    pub server: [u8; 4],
    /// The server's port, host byte order.
    pub server_port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// Zero.
    pub pad: u8,
}

/// Value of the flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowInfo {
    /// The daemon's number for this flow (below [`MAX_FLOWS`]); several keys of one run (a
    /// ClusterIP and the pod IP behind it) share a number.
    pub flow: u32,
    /// Bits of [`side`]: which ends of the flow this node holds.
    pub sides: u8,
    /// Packets are followed 1 in 2^`sample_shift` (see [`sampled`]): streams send too many
    /// for every one to be stamped without slowing them down.
    pub sample_shift: u8,
    /// Zero.
    pub pad: [u8; 2],
}

/// Slots of the port-flow table ([`PortFlow`]), a power of two: a port's slot is its low bits.
pub const PORT_FLOW_SLOTS: u32 = 4096;

/// The one IPv4 flow of a server port, where the port has exactly one: a classifier's first
/// point finds a followed packet's flow here, by an array read and a few compares, where the
/// flow map costs a hash of its key and a compare (~25 ns of a followed packet's ~95). Any
/// other port's packets, and any entry that does not check, go to the flow map.
///
/// The daemon rewrites an entry while the programs may read it, with no lock between them:
/// `check`, a hash of every other field, makes an entry read half old and half new fail and
/// fall back to the flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortFlow {
    /// The flow's key.
    pub key: FlowKey4,
    /// The flow map's value for it.
    pub info: FlowInfo,
    /// [`PortFlow::checksum`] of the fields above; anything else: no flow here.
    pub check: u32,
}

impl PortFlow {
    /// The entry for the flow `key`, with its check.
    pub fn new(key: FlowKey4, info: FlowInfo) -> Self {
        let mut entry = Self {
            key,
            info,
            check: 0,
        };
        entry.check = entry.checksum();
        entry
    }

    /// A hash of every field but `check`, never equal to the `check` of an all-zero entry.
    #[inline(always)]
    pub fn checksum(&self) -> u32 {
        let (key, info) = (&self.key, &self.info);
        let words = [
            u32::from_ne_bytes(key.client),
            u32::from_ne_bytes(key.server),
            u32::from(key.server_port)
                | (u32::from(key.protocol) << 16)
                | (u32::from(key.pad) << 24),
            info.flow,
            u32::from_ne_bytes([info.sides, info.sample_shift, info.pad[0], info.pad[1]]),
        ];
        // Each word times its own odd constant, the products folded together: the multiplies
        // are independent of one another (a handful of cycles in all, where a chained hash
        // costs several ns of a followed packet), and a multiply by an odd constant maps
        // distinct words to distinct products, so an entry whose words are not all of one
        // write checks only by a coincidence of 64-bit products.
        const FACTORS: [u64; 5] = [
            0x9e37_79b9_7f4a_7c15,
            0xc2b2_ae3d_27d4_eb4f,
            0x1656_67b1_9e37_79f9,
            0xd6e8_feb8_6659_fd93,
            0xff51_afd7_ed55_8ccd,
        ];
        let hash = words
            .iter()
            .zip(FACTORS)
            .fold(0_u64, |hash, (word, factor)| {
                hash ^ u64::from(*word).wrapping_mul(factor)
            });
        // An all-zero entry (a slot never written) must not check.
        ((hash ^ (hash >> 32)) as u32) | 1
    }

    /// Whether the entry is whole and names the flow `key`.
    #[inline(always)]
    pub fn names(&self, key: &FlowKey4) -> bool {
        self.key == *key && self.check == self.checksum()
    }
}

/// The port-flow table's slot of a server port.
#[inline(always)]
pub fn port_flow_slot(server_port: u16) -> u32 {
    u32::from(server_port) & (PORT_FLOW_SLOTS - 1)
}

/// Whether the packet `id` of a flow sampled 1 in 2^`shift` is followed. A hash of the id
/// alone, so every hook on every node picks the same packets.
#[inline(always)]
pub fn sampled(id: u32, shift: u8) -> bool {
    shift == 0 || id.wrapping_mul(0x9e37_79b1) >> (32 - u32::from(shift.min(16))) == 0
}

/// The most a flow may be thinned: 1 packet in 2^10.
pub const MAX_SAMPLE_SHIFT: u8 = 10;

/// One record in the events ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it happened.
    pub ts_ns: u64,
    /// The flow's number ([`FlowInfo::flow`]).
    pub flow: u32,
    /// The packet's id within its flow and direction (see the module docs).
    pub id: u32,
    /// For a stamp that carries its packet's earlier point on this node too (see
    /// [`Event::earlier`]): how long before `ts_ns` the packet passed it.
    pub earlier_ns: u32,
    /// Kind-specific value (see [`event_kind`]).
    pub value: u32,
    /// One of [`event_kind`].
    pub kind: u8,
    /// One of [`point`] (for stamps).
    pub point: u8,
    /// One of [`direction`].
    pub direction: u8,
    /// For a stamp: the packet's earlier point on this node that the record carries as well,
    /// or 0 ([`point::SOCKET_SEND`], which is carried in `value` instead) for none. A
    /// packet's first point on a node (leaving its pod, reaching the node) keeps its time in
    /// the kernel until its next point there: one record for both, one ring-buffer write a
    /// packet a node, where a record a point cost ~10 ns of each first point.
    pub earlier: u8,
    /// The client's port of the packet's connection or UDP flow (host order): with the
    /// direction and id, the key that names the same packet on every node.
    pub client_port: u16,
    /// Zero.
    pub pad2: u16,
}

/// Events a CPU gathers before it writes them to the ring buffer, as one record.
///
/// A ring-buffer write takes the buffer's lock and two atomic operations on cache lines that
/// every CPU writes: about 50 ns a record here, a third of what a followed packet cost, and
/// more when the two ends of a request/response run on two CPUs. A batch pays it once for
/// this many events.
pub const BATCH_EVENTS: usize = 16;

/// One CPU's gathered events (a per-CPU map value), and the ring-buffer record they leave in.
///
/// The daemon empties every CPU's batch before it reads the ring buffer (a flush program run
/// on each CPU), so no event waits in a batch longer than one read of the buffer. A record of
/// exactly `size_of::<Event>()` bytes is one event written directly: by a program that found
/// its CPU's batch in use (it interrupted another that was filling it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Events in `events`, from the first.
    pub count: u32,
    /// Non-zero while a program fills the batch: a program that interrupts it on the same CPU
    /// writes its event directly instead.
    pub busy: u32,
    /// The events.
    pub events: [Event; BATCH_EVENTS],
}

/// Flows a daemon can follow at once (flow numbers are below this).
pub const MAX_FLOWS: u32 = 4096;

/// Index of the lost-events counter in the per-CPU counter array.
pub const LOST_EVENTS: u32 = 0;

/// Size of the events ring buffer, in bytes (a power of two, a multiple of the page size).
/// Userspace maps it (twice over), so it counts in the idle daemon's RSS: 1 MiB holds about
/// 150 ms of a fast tcp-rr's events (32 bytes each), and the programs wake the reader when
/// it is a quarter full.
pub const EVENTS_BYTES: u32 = 1 << 20;

const _: () = assert!(size_of::<FlowKey>() == 36);
const _: () = assert!(size_of::<FlowInfo>() == 8);
const _: () = assert!(size_of::<PortFlow>() == 24);
const _: () = assert!(size_of::<Event>() == 32);
const _: () = assert!(size_of::<Batch>() == 8 + 32 * BATCH_EVENTS);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are `#[repr(C)]` with explicit padding and only integer fields, so every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above: `repr(C)`, integers only, no padding.
    unsafe impl aya::Pod for super::FlowKey4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortFlow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Batch {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn sampling_keeps_about_one_in_two_to_the_shift_and_everything_at_zero() {
        // TCP sequence numbers of full-sized segments: the ids a stream's packets carry.
        let ids: Vec<u32> = (0..65_536_u32).map(|i| i.wrapping_mul(1448)).collect();
        assert!(ids.iter().all(|id| sampled(*id, 0)));
        for shift in [1_u8, 4, 6, 10] {
            let kept = ids.iter().filter(|id| sampled(**id, shift)).count() as f64;
            let expected = ids.len() as f64 / f64::from(1_u32 << shift);
            assert!(
                (kept - expected).abs() <= expected * 0.1,
                "shift {shift}: kept {kept}, expected {expected}"
            );
        }
    }

    #[test]
    fn only_an_ipv4_mapped_address_gives_its_ipv4_address() {
        let mapped = |v4: [u8; 4]| {
            let mut a = [0_u8; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&v4);
            a
        };
        assert_eq!(ipv4_of(&mapped([10, 244, 1, 11])), Some([10, 244, 1, 11]));
        // Any other prefix byte makes it an IPv6 address.
        for at in 0..12 {
            let mut a = mapped([10, 244, 1, 11]);
            a[at] ^= 0x01;
            assert_eq!(ipv4_of(&a), None, "byte {at}");
        }
        assert_eq!(ipv4_of(&[0; 16]), None);
    }

    #[test]
    fn a_port_flow_names_only_its_flow_and_a_torn_or_empty_entry_names_none() {
        let key = |client: u8, port: u16| FlowKey4 {
            client: [10, 244, 1, client],
            server: [10, 244, 2, 11],
            server_port: port,
            protocol: 6,
            pad: 0,
        };
        let info = |flow: u32| FlowInfo {
            flow,
            sides: side::CLIENT,
            sample_shift: 0,
            pad: [0; 2],
        };
        let entry = PortFlow::new(key(11, 5201), info(3));
        assert!(entry.names(&key(11, 5201)));
        assert_eq!(entry.info, info(3));
        // Another client, port or protocol: not this flow.
        assert!(!entry.names(&key(12, 5201)));
        assert!(!entry.names(&key(11, 5202)));
        assert!(!entry.names(&FlowKey4 {
            protocol: 17,
            ..key(11, 5201)
        }));
        // A slot never written names nothing, not even an all-zero packet.
        assert!(!PortFlow::default().names(&FlowKey4::default()));
        // Half of one entry and half of another, as a read racing a rewrite may see them.
        let other = PortFlow::new(key(12, 5201), info(4));
        let torn = PortFlow {
            info: other.info,
            check: other.check,
            ..entry
        };
        assert!(!torn.names(&key(11, 5201)));
        let torn = PortFlow {
            key: other.key,
            ..entry
        };
        assert!(!torn.names(&key(12, 5201)));
    }
}
