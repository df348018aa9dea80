//! Per-stage timestamps of a run's own packets (see `sonde_common::stages` for the design).
//!
//! Every program here fails open: whatever it finds, the packet goes on unchanged. A packet that
//! is not part of a traced run costs a header parse and one or two array reads.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TcContext, TracePointContext},
};
use sonde_common::stages::{
    BATCH_EVENTS, Batch, CONF_BATCH_EVENTS, CONF_DROP_REASON_OFFSET, CONF_HELD_BACK, CONF_WINDOW,
    EVENTS_BYTES, Event, FlowInfo, FlowKey, FlowKey4, LOST_EVENTS, MAX_FLOWS, PORT_FLOW_SLOTS,
    PortFlow, direction, event_kind, ipv4_of, point, port_flow_slot, runs, sampled, side,
};

#[map(name = "SONDE_FLOWS")]
static FLOWS: HashMap<FlowKey, FlowInfo> = HashMap::with_max_entries(MAX_FLOWS * 4, 0);

/// The IPv4 flows, by a key a third the size (see `sonde_common::stages::FlowKey4`).
#[map(name = "SONDE_FLOWS4")]
static FLOWS4: HashMap<FlowKey4, FlowInfo> = HashMap::with_max_entries(MAX_FLOWS * 4, 0);

/// The one IPv4 flow of each server port that has one (`sonde_common::stages::PortFlow`).
#[map(name = "SONDE_PORT_FLOW")]
static PORT_FLOWS: Array<PortFlow> = Array::with_max_entries(PORT_FLOW_SLOTS, 0);

#[map(name = "SONDE_PORTS")]
static SERVER_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map(name = "SONDE_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Each CPU's events on their way to `EVENTS` (see `sonde_common::stages::Batch`).
#[map(name = "SONDE_BATCHES")]
static BATCHES: PerCpuArray<Batch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SONDE_STAGE_CNT")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The last send on each (flow, direction), waiting for the next data segment.
#[map(name = "SONDE_SEND_TS")]
static SEND_TS: Array<Sent> = Array::with_max_entries(MAX_FLOWS * 2, 0);

/// A send's time and the stamping window it was made in: a send whose segment went out after
/// its window closed is not handed to a segment of a later window.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Sent {
    ts_ns: u64,
    window: u32,
    pad: u32,
}

/// Followed packets in flight, by skb address, from the first point that stamped them until
/// the kernel frees them: a drop (`skb:kfree_skb`) is attributed by it, and a packet delivered
/// to a pod is stamped again when the application reads it.
///
/// An array indexed by the address's slot, not a hash map: the skb tracepoints see every skb
/// the node frees or reads, where a hash lookup cost hundreds of ns on a busy node (cache and
/// TLB misses), and an LRU insertion at each followed packet's first point cost ~130 ns more
/// than a lookup (`sonded probe-cost`). A slot is an address computation and a compare. skbs
/// are 256-byte slab objects, so the slots map 16 MiB of them one to one; two followed skbs in
/// flight at once in one slot (16 MiB apart) cost the older one its later stamps: a missing
/// sample, never a wrong one, since every slot names its skb.
#[map(name = "SONDE_SKBS")]
static IN_FLIGHT: Array<InFlight> = Array::with_max_entries(SKB_SLOTS, 0);

/// Slots in `IN_FLIGHT` (a power of two).
const SKB_SLOTS: u32 = 1 << 16;

/// One slot of `IN_FLIGHT`: the skb it holds (0: none) and what is known of its packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    skb: u64,
    mark: Mark,
}

/// The slot of an skb address.
#[inline(always)]
fn skb_slot(skb: u64) -> u32 {
    ((skb >> 8) as u32) & (SKB_SLOTS - 1)
}

/// The stamping window now open (see `CONF_WINDOW`).
#[inline(always)]
fn window() -> u32 {
    CONF.get(CONF_WINDOW).copied().unwrap_or(0)
}

/// Holds `mark` for `skb` in its slot, in the window now open. The address is written last
/// (after zero), so a reader that finds it the same before and after reading the mark has read
/// a whole one.
///
/// A stamp the slot still holds back for another packet (its skb was freed where no hook saw
/// it, or two skbs share the slot) goes out first, on its own: late, never lost. The same
/// packet at the same point again (the cost measurement runs one skb many times) only
/// replaces it.
#[inline(always)]
fn hold(skb: u64, mut mark: Mark) {
    let Some(slot) = IN_FLIGHT.get_ptr_mut(skb_slot(skb)) else {
        return;
    };
    mark.window = window() as u16;
    // SAFETY: a valid slot of the array; volatile keeps the stores in this order.
    unsafe {
        let old_skb = read_volatile(&raw const (*slot).skb);
        if old_skb != 0 && read_volatile(&raw const (*slot).mark.pending) != 0 {
            let again = old_skb == skb
                && read_volatile(&raw const (*slot).mark.id) == mark.id
                && read_volatile(&raw const (*slot).mark.point) == mark.point;
            if !again {
                emit_held(&read_volatile(&raw const (*slot).mark));
            }
        }
        write_volatile(&raw mut (*slot).skb, 0);
        write_volatile(&raw mut (*slot).mark, mark);
        write_volatile(&raw mut (*slot).skb, skb);
    }
}

/// The slot holding `skb`, and its mark, if `skb` is followed: held in this window, since a
/// slot left from an earlier one may name an skb freed while the hooks were detached.
#[inline(always)]
fn held(skb: u64) -> Option<(*mut InFlight, Mark)> {
    let slot = IN_FLIGHT.get_ptr_mut(skb_slot(skb))?;
    // SAFETY: a valid slot of the array; see `hold` for the order.
    let mark = unsafe {
        if read_volatile(&raw const (*slot).skb) != skb {
            return None;
        }
        let mark = read_volatile(&raw const (*slot).mark);
        if read_volatile(&raw const (*slot).skb) != skb {
            return None;
        }
        mark
    };
    (mark.window == window() as u16).then_some((slot, mark))
}

/// Lets `skb`'s slot go (its packet was read, dropped or freed).
#[inline(always)]
fn release(slot: *mut InFlight, skb: u64) {
    // SAFETY: `slot` came from `held`. Another skb may have taken the slot since (a
    // collision): it is then left alone.
    unsafe {
        if read_volatile(&raw const (*slot).skb) == skb {
            write_volatile(&raw mut (*slot).skb, 0);
        }
    }
}

/// A per-CPU word through which a program reads its skb's address as a number (see
/// `address_of`).
#[map(name = "SONDE_SCRATCH")]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// How often each stage program ran on each CPU (`sonde_common::maps::PROGRAM_RUNS`; the
/// daemon sizes it for the machine's CPUs). Memory-mappable, so page-aligned: each CPU's
/// slots fill lines of their own.
#[map(name = "SONDE_RUNS")]
static RUNS: Array<u64> = Array::with_max_entries(runs::SLOTS * runs::DEFAULT_CPUS, BPF_F_MMAPABLE);

/// Counts one run of the program in `slot` (`sonde_common::stages::runs`): an add to this
/// CPU's counter, where the kernel's statistics cost two clock reads a run. The CPU number
/// is a per-CPU variable the verifier reads inline.
#[inline(always)]
pub fn ran(slot: u32) {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if let Some(count) = RUNS.get_ptr_mut(runs::index(cpu, slot)) {
        // SAFETY: this CPU's counter; an interrupting program could lose one increment.
        unsafe { *count += 1 };
    }
}

/// What the daemon learnt of this kernel's tracepoints (`sonde_common::maps::TRACEPOINT_CONF`).
#[map(name = "SONDE_TP_CONF")]
static CONF: Array<u32> = Array::with_max_entries(4, 0);

/// Connections of traced flows in SYN_SENT, by socket address.
#[map(name = "SONDE_CONNECTS")]
static CONNECTING: LruHashMap<u64, Mark> = LruHashMap::with_max_entries(4096, 0);

/// A packet or connection remembered between two hooks.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Mark {
    ts_ns: u64,
    flow: u32,
    id: u32,
    client_port: u16,
    direction: u8,
    /// The last point that stamped the packet.
    point: u8,
    /// The stamping window it was held in (see `held`), its low bits.
    window: u16,
    /// The packet's addresses, folded (see `Packet::peers`): tells two flows' packets of
    /// one id and client port apart.
    peers: u16,
    /// The socket send's distance back from `ts_ns`, for a stamp held back (0: none).
    since_send: u32,
    /// 1 while the stamp at `point` is held back for the packet's next point on this node
    /// (see `Event::earlier`): not yet in the ring buffer.
    pending: u8,
    pad: u8,
    pad2: u16,
}

impl Mark {
    /// The flow, direction and connection of the packet it holds.
    #[inline(always)]
    fn who(&self) -> Who {
        Who {
            flow: self.flow,
            direction: self.direction,
            client_port: self.client_port,
        }
    }
}

/// Whether a packet's first stamp on a node at `at` waits for its next point on the node to
/// go out with it: leaving a pod (next: the uplink, or the veth of a pod on the node) and
/// reaching a node (next: the pod's veth, or the read of a host-network server).
#[inline(always)]
fn holds_back(at: u8) -> bool {
    at == point::POD_OUT || at == point::NODE_IN
}

/// Sends a stamp held back in a slot on its own (its packet went where no later point of
/// this node saw it).
#[inline(always)]
fn emit_held(mark: &Mark) {
    emit(
        &mark.who(),
        event_kind::STAMP,
        mark.point,
        mark.ts_ns,
        mark.id,
        mark.since_send,
        NO_EARLIER,
    );
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// The SYN bit of the TCP flags byte.
const TCP_FLAG_SYN: u8 = 0x02;
/// sonde's UDP data datagrams start with this magic; the sequence number follows at 8..16.
const UDP_DATA_MAGIC: [u8; 4] = *b"SNDD";
/// A DNS message's fixed header: ID, flags and four counts.
const DNS_HEADER: usize = 12;

/// `bpf_ringbuf_output` flags and `bpf_ringbuf_query` selector (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;

/// A packet's or a socket's two addresses (source or local first), each as its family
/// lays it out: an IPv4 flow's key is built from four bytes each, never from sixteen.
#[derive(Clone, Copy)]
enum Addresses {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

impl Addresses {
    /// A socket tracepoint's IPv6 fields, which hold an IPv4 socket's addresses mapped.
    #[inline(always)]
    fn of_socket(local: &[u8; 16], remote: &[u8; 16]) -> Self {
        match (ipv4_of(local), ipv4_of(remote)) {
            (Some(local), Some(remote)) => Self::V4(local, remote),
            _ => Self::V6(*local, *remote),
        }
    }

    /// The last four bytes of both addresses (all of an IPv4 address) folded into 16 bits,
    /// the same both ways.
    #[inline(always)]
    fn folded(&self) -> u16 {
        let both = match self {
            Self::V4(src, dst) => u32::from_ne_bytes(*src) ^ u32::from_ne_bytes(*dst),
            Self::V6(src, dst) => {
                let last = |a: &[u8; 16]| u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
                last(src) ^ last(dst)
            }
        };
        (both ^ (both >> 16)) as u16
    }
}

/// A parsed packet: just what identifies it.
struct Packet {
    addresses: Addresses,
    sport: u16,
    dport: u16,
    /// The port map's entries of `dport` and `sport` (see `port_entry`), read by the parse.
    entries: (u8, u8),
    protocol: u8,
    /// TCP sequence number, or sonde's UDP sequence number.
    id: u32,
    /// A TCP SYN (connection set-up, no data): remembered for drops, never stamped.
    syn: bool,
}

impl Packet {
    /// Its addresses folded (see `Addresses::folded`): tells two flows' packets of one id
    /// and client port apart.
    #[inline(always)]
    fn peers(&self) -> u16 {
        self.addresses.folded()
    }
}

/// Stamps `ctx`'s packet at `at` if it belongs to a traced flow, and remembers it by skb
/// address until the kernel frees it (for drops, and for the application's read).
#[inline(always)]
pub fn stamp(ctx: &TcContext, at: u8) {
    if CONF.get(CONF_HELD_BACK).copied().unwrap_or(0) != 0 {
        // Attached ahead of a window that has not opened yet (or just closed).
        return;
    }
    let Some(packet) = parse(ctx) else {
        return;
    };
    // A packet's second point on a node (the uplink on the way out, the pod's veth on the
    // way in) finds it where its first point held it, by its skb (the context pointer is the
    // kernel's `struct sk_buff *`, the address the skb tracepoints report): flow and
    // direction come from there, without the flow lookup.
    let second = if at == point::NODE_OUT || at == point::POD_IN {
        address_of(ctx.skb.skb).and_then(|skb| held_as(skb, &packet).map(|held| (skb, held)))
    } else {
        None
    };
    let (who, followed, skb, earlier) = match second {
        // Held: followed at its first point.
        Some((skb, (slot, who, mark))) => (who, true, Some(skb), Some((slot, mark))),
        None => {
            let Some((info, dir)) = lookup(
                &packet.addresses,
                (packet.sport, packet.dport),
                (packet.entries.0 != 0, packet.entries.1 != 0),
                packet.protocol,
            ) else {
                return;
            };
            let who = Who {
                flow: info.flow,
                direction: dir,
                client_port: if dir == direction::TO_SERVER {
                    packet.sport
                } else {
                    packet.dport
                },
            };
            // The address only now: a packet of no traced flow needs none.
            let skb = address_of(ctx.skb.skb);
            (who, sampled(packet.id, info.sample_shift), skb, None)
        }
    };
    let slot = earlier.map(|(slot, _)| slot);
    if packet.syn {
        // Not a stage sample: only where it was last, so that a SYN the path drops (a full
        // conntrack table) is reported with the kernel's reason like any data segment.
        remember(skb, slot, &who, &packet, at, 0, None);
        return;
    }
    let mut sent_ns = 0;
    if let Some(sent) = SEND_TS.get_ptr_mut(who.flow * 2 + u32::from(who.direction)) {
        // SAFETY: a valid array slot; a racing writer can at worst hand this packet a
        // neighbouring send's time, never an invalid value. The send time is taken by this
        // segment even when it is not followed: it belongs to it, never to a later one.
        unsafe {
            let taken = read_volatile(&raw const (*sent).ts_ns);
            if taken != 0 {
                write_volatile(&raw mut (*sent).ts_ns, 0);
                if read_volatile(&raw const (*sent).window) == window() {
                    sent_ns = taken;
                }
            }
        }
    }
    if !followed {
        return;
    }
    // Read only now: a clock read is among the costliest things a probe does (a virtual
    // machine's clock especially), and a packet not followed needs none.
    let now = unsafe { bpf_ktime_get_ns() };
    // The socket send this segment carries rides in the same record (one ring-buffer write
    // per point, not two), as its distance back from this point.
    let since_send = if sent_ns != 0 && sent_ns <= now {
        (now - sent_ns).min(u64::from(u32::MAX)) as u32
    } else {
        0
    };
    if skb.is_some() && slot.is_none() && holds_back(at) {
        // Its record waits for the packet's next point on this node (see `Event::earlier`).
        remember(skb, None, &who, &packet, at, now, Some(since_send));
        return;
    }
    match earlier {
        // The first point's stamp, held back, goes out in this record.
        Some((_, mark)) if mark.pending != 0 => emit(
            &who,
            event_kind::STAMP,
            at,
            now,
            packet.id,
            mark.since_send,
            (
                mark.point,
                now.saturating_sub(mark.ts_ns).min(u64::from(u32::MAX)) as u32,
            ),
        ),
        _ => emit(
            &who,
            event_kind::STAMP,
            at,
            now,
            packet.id,
            since_send,
            NO_EARLIER,
        ),
    }
    remember(skb, slot, &who, &packet, at, now, None);
}

/// `skb`'s slot and the flow it holds `packet` for, if a point of this node held it: the
/// packet's id, client port and addresses must agree, since an skb freed unseen leaves its
/// slot behind for a later skb at its address.
#[inline(always)]
fn held_as(skb: u64, packet: &Packet) -> Option<(*mut InFlight, Who, Mark)> {
    let (slot, mark) = held(skb)?;
    let client_port = if mark.direction == direction::TO_SERVER {
        packet.sport
    } else {
        packet.dport
    };
    let same = mark.id == packet.id && mark.client_port == client_port;
    (same && mark.peers == packet.peers()).then_some((slot, mark.who(), mark))
}

/// Records `skb` as `who`'s packet `id`, last seen at `at`, until the kernel frees it: in
/// `slot` when the packet's first point on this node holds it there (its point moves on in
/// place, its held-back stamp gone out with this point's record), else in a slot of its own.
/// `held_back`: the stamp at `at` is not sent yet (with its send's distance back).
#[inline(always)]
fn remember(
    skb: Option<u64>,
    slot: Option<*mut InFlight>,
    who: &Who,
    packet: &Packet,
    at: u8,
    ts_ns: u64,
    held_back: Option<u32>,
) {
    let Some(skb) = skb else {
        return;
    };
    if let Some(slot) = slot {
        // SAFETY: a valid slot from `held`; a reader sees the old point or the new one, both
        // places this packet has been.
        unsafe {
            write_volatile(&raw mut (*slot).mark.pending, 0);
            write_volatile(&raw mut (*slot).mark.point, at);
            write_volatile(&raw mut (*slot).mark.ts_ns, ts_ns);
        }
        return;
    }
    hold(
        skb,
        Mark {
            ts_ns,
            flow: who.flow,
            id: packet.id,
            client_port: who.client_port,
            direction: who.direction,
            point: at,
            window: 0,
            peers: packet.peers(),
            since_send: held_back.unwrap_or(0),
            pending: u8::from(held_back.is_some()),
            pad: 0,
            pad2: 0,
        },
    );
}

/// A kernel pointer's address as a plain number, to compute its slot in `IN_FLIGHT`.
///
/// The verifier allows no arithmetic on a context or BTF pointer, but a privileged program
/// (CAP_PERFMON, which the daemon has) may store one in a map: read back from there it is a
/// number. Cheaper than a helper call. The word is this CPU's, and its old value is put back:
/// a program that interrupts this one between the write and the read (an interrupt runs to
/// its end before this one goes on) leaves the word as it found it.
#[inline(always)]
fn address_of<T>(pointer: *const T) -> Option<u64> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's word of a per-CPU array.
    unsafe {
        let old = read_volatile(scratch);
        write_volatile(scratch, pointer as u64);
        let address = read_volatile(scratch);
        write_volatile(scratch, old);
        Some(address)
    }
}

/// Longest a delivered packet may wait for its read and still be taken for the one its slot
/// names. Some skbs are freed without a tracepoint (a UDP datagram copied with its checksum
/// checked, then freed as stateless), so their slots are not let go; a later skb at the same
/// address, read by an application, would be taken for the old packet and give the receiver
/// stack a time in seconds. A real packet waits at most what a socket buffer holds: tens of
/// milliseconds at the rates sonde generates.
const MAX_READ_WAIT_NS: u64 = 1_000_000_000;

/// Stamps the application's read of a delivered packet (`skb_copy_datagram_iovec`).
#[inline(always)]
pub fn socket_read(skb: u64) {
    let Some((slot, mark)) = held(skb) else {
        return;
    };
    // Only a packet this node delivered: its last point was the pod's veth (or the uplink,
    // for the host network).
    if mark.point != point::POD_IN && mark.point != point::NODE_IN {
        if mark.pending != 0 {
            // Left its pod and was read on this node, past no other point.
            release(slot, skb);
            emit_held(&mark);
        }
        return;
    }
    release(slot, skb);
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(mark.ts_ns) > MAX_READ_WAIT_NS {
        // A slot left behind by an skb freed unseen: not this packet (its own stamp, if
        // held back, is still its own).
        if mark.pending != 0 {
            emit_held(&mark);
        }
        return;
    }
    // A host-network server's read: the uplink's stamp, held back, rides along (with the
    // send it carries, which is another node's: none).
    let (earlier, since_send) = if mark.pending != 0 {
        ((mark.point, (now - mark.ts_ns) as u32), mark.since_send)
    } else {
        (NO_EARLIER, 0)
    };
    emit(
        &mark.who(),
        event_kind::STAMP,
        point::SOCKET_READ,
        now,
        mark.id,
        since_send,
        earlier,
    );
}

/// A followed packet was dropped (`kfree_skb`): reports it with the kernel's reason, which
/// `reason` reads when the skb is followed.
#[inline(always)]
pub fn dropped(skb: u64, reason: impl FnOnce() -> Option<u32>) {
    let Some((slot, mark)) = held(skb) else {
        return;
    };
    release(slot, skb);
    if mark.pending != 0 {
        emit_held(&mark);
    }
    let Some(reason) = reason() else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    emit(
        &mark.who(),
        event_kind::DROP,
        mark.point,
        now,
        mark.id,
        reason,
        NO_EARLIER,
    );
}

/// The drop reason in the classic `skb:kfree_skb` tracepoint's record, at the offset the
/// daemon read from its format (it moved between kernels); `None` when unknown.
#[inline(always)]
pub fn drop_reason(ctx: &TracePointContext) -> Option<u32> {
    let offset = CONF.get(CONF_DROP_REASON_OFFSET).copied().unwrap_or(0);
    if offset == 0 || offset > 64 {
        return None;
    }
    // SAFETY: the daemon read this offset of `reason` from the tracepoint's format.
    unsafe { ctx.read_at::<u32>(offset as usize) }.ok()
}

/// A followed packet was freed normally (`consume_skb`): forgets it, so that its address,
/// soon reused, is not taken for it, and sends a stamp it held back (a packet that left the
/// node past no later point, as through a tunnel whose outer packet is not parsed).
#[inline(always)]
pub fn consumed(skb: u64) {
    // Every skb the kernel frees passes here: a slot's address and a compare.
    if let Some((slot, mark)) = held(skb) {
        release(slot, skb);
        if mark.pending != 0 {
            emit_held(&mark);
        }
    }
}

/// The `skbaddr` of a classic skb tracepoint's record (offset 8 in `skb:kfree_skb`,
/// `consume_skb` and `skb_copy_datagram_iovec` alike).
#[inline(always)]
pub fn skb_address(ctx: &TracePointContext) -> Option<u64> {
    // SAFETY: every tracepoint this is called from has `skbaddr` at offset 8 (see formats).
    unsafe { ctx.read_at::<u64>(8) }.ok()
}

/// The skb pointer a BTF tracepoint passes as its first argument, as a number.
#[inline(always)]
pub fn skb_argument(ctx: &BtfTracePointContext) -> Option<u64> {
    let skb: *const u8 = ctx.arg(0);
    address_of(skb)
}

/// The leading fields of the kernel's `struct sock_common`, stable since IPv4 sockets began.
#[repr(C)]
struct SockCommonHead {
    daddr: u32,
    rcv_saddr: u32,
    hash: u32,
    dport_be: u16,
    num: u16,
}

/// Notes when a traced socket is handed data (`tcp_sendmsg_locked`, BTF tracepoint); the next
/// data segment of its flow and direction that a TC point sees carries this time.
#[inline(always)]
pub fn socket_send(ctx: &BtfTracePointContext) {
    let sk: *const SockCommonHead = ctx.arg(0);
    // SAFETY: the tracepoint's first argument is a `struct sock *`, a pointer the verifier
    // types from the kernel's BTF: it checks each load against the struct's members (these
    // four are `sock_common`'s first) and guards it against a fault, so direct loads serve
    // where `bpf_probe_read_kernel` would cost a helper call and a copy.
    let (num, dport) = unsafe {
        (
            read_volatile(&raw const (*sk).num),
            u16::from_be(read_volatile(&raw const (*sk).dport_be)),
        )
    };
    if CONF.get(CONF_HELD_BACK).copied().unwrap_or(0) != 0 {
        // Between two stamping windows: the segment would not be stamped.
        return;
    }
    // Only a socket whose side is on this node: in the lab every daemon sees every node's
    // sockets, and another node's leave here, before the flow lookup.
    let Some(entry) = local_port_entry(num, dport) else {
        return;
    };
    // A sampled stream's sends are not stamped: a stream's send time is its socket buffer's
    // queueing rather than the stack's work, and a send per packet is too many to stamp.
    if entry & sonde_common::maps::PORT_SHIFT_MASK != 1 {
        return;
    }
    // SAFETY: as above.
    let (daddr, saddr) = unsafe {
        (
            read_volatile(&raw const (*sk).daddr),
            read_volatile(&raw const (*sk).rcv_saddr),
        )
    };
    let addresses = Addresses::V4(saddr.to_ne_bytes(), daddr.to_ne_bytes());
    let served = (is_server_port(dport), is_server_port(num));
    let Some((info, dir)) = lookup(&addresses, (num, dport), served, IPPROTO_TCP) else {
        return;
    };
    if !sends_here(&info, dir) {
        return;
    }
    let Some(sent) = SEND_TS.get_ptr_mut(info.flow * 2 + u32::from(dir)) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a valid array slot; the window before the time, so that a reader finding the
    // time finds its window (a racing one may pair them wrong: at worst a neighbouring
    // send's time is taken or one is missed, as in `stamp`).
    unsafe {
        write_volatile(&raw mut (*sent).window, window());
        write_volatile(&raw mut (*sent).ts_ns, now);
    }
}

/// The port entry under which a socket from local port `local` to remote port `remote` may
/// belong to a traced flow whose side it is on this node: the remote port's when it is a
/// traced server port with a client here, else the local port's when it is one with a server
/// here. `None` for every other socket, another node's in the lab among them.
#[inline(always)]
fn local_port_entry(local: u16, remote: u16) -> Option<u8> {
    let to = port_entry(remote);
    if to & sonde_common::maps::PORT_CLIENT_HERE != 0 {
        return Some(to);
    }
    let from = port_entry(local);
    (from & sonde_common::maps::PORT_SERVER_HERE != 0).then_some(from)
}

/// Connect latency of traced flows (`sock:inet_sock_set_state`): SYN_SENT to ESTABLISHED.
#[inline(always)]
pub fn connect_state(ctx: &TracePointContext) {
    // SAFETY: offsets from the tracepoint's format: skaddr 8, oldstate 16, newstate 20,
    // sport 24, dport 26, protocol 30, saddr_v6 40, daddr_v6 56.
    let read = || unsafe {
        Some((
            ctx.read_at::<u64>(8).ok()?,
            ctx.read_at::<i32>(16).ok()?,
            ctx.read_at::<i32>(20).ok()?,
        ))
    };
    let Some((sk, old, new)) = read() else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if new == TCP_SYN_SENT {
        let Some((local, remote, sport, dport)) = (unsafe { addresses(ctx, 24, 40) }) else {
            return;
        };
        // A connection of this node's clients only (see `local_port_entry`).
        if port_entry(dport) & sonde_common::maps::PORT_CLIENT_HERE == 0 {
            return;
        }
        let addresses = Addresses::of_socket(&local, &remote);
        let served = (is_server_port(dport), is_server_port(sport));
        let Some((info, dir)) = lookup(&addresses, (sport, dport), served, IPPROTO_TCP) else {
            return;
        };
        if dir == direction::TO_SERVER && info.sides & side::CLIENT != 0 {
            let mark = Mark {
                ts_ns: now,
                flow: info.flow,
                id: 0,
                client_port: 0,
                direction: dir,
                point: 0,
                window: 0,
                peers: 0,
                since_send: 0,
                pending: 0,
                pad: 0,
                pad2: 0,
            };
            let _ = CONNECTING.insert(sk, mark, 0);
        }
    } else if old == TCP_SYN_SENT {
        // SAFETY: plain data copied out before the entry is removed.
        let Some(mark) = (unsafe { CONNECTING.get(sk) }).copied() else {
            return;
        };
        let _ = CONNECTING.remove(sk);
        if new == TCP_ESTABLISHED {
            // The local port is bound only after SYN_SENT is set: read it now.
            // SAFETY: offset 24 is `sport` in this tracepoint's format.
            let client_port = unsafe { ctx.read_at::<u16>(24) }.unwrap_or(0);
            let who = Who {
                flow: mark.flow,
                direction: mark.direction,
                client_port,
            };
            let took = now.saturating_sub(mark.ts_ns).min(u64::from(u32::MAX)) as u32;
            emit(&who, event_kind::CONNECT, 0, now, 0, took, NO_EARLIER);
        }
    }
}

/// Retransmissions of traced flows (`tcp:tcp_retransmit_skb`), counted by the sending side.
#[inline(always)]
pub fn retransmit(ctx: &TracePointContext) {
    // SAFETY: offsets from the tracepoint's format: sport 28, dport 30, saddr_v6 42.
    let Some((local, remote, sport, dport)) = (unsafe { addresses(ctx, 28, 42) }) else {
        return;
    };
    if local_port_entry(sport, dport).is_none() {
        return;
    }
    let addresses = Addresses::of_socket(&local, &remote);
    let served = (is_server_port(dport), is_server_port(sport));
    let Some((info, dir)) = lookup(&addresses, (sport, dport), served, IPPROTO_TCP) else {
        return;
    };
    if sends_here(&info, dir) {
        let who = Who {
            flow: info.flow,
            direction: dir,
            client_port: if dir == direction::TO_SERVER {
                sport
            } else {
                dport
            },
        };
        let now = unsafe { bpf_ktime_get_ns() };
        emit(&who, event_kind::RETRANSMIT, 0, now, 0, 0, NO_EARLIER);
    }
}

/// Reads (local address, remote address, local port, remote port) from a socket tracepoint
/// whose ports are at `ports` (host order) and IPv6 (or IPv4-mapped) addresses at `addrs`.
///
/// # Safety
/// The offsets must match the tracepoint's format.
#[inline(always)]
unsafe fn addresses(
    ctx: &TracePointContext,
    ports: usize,
    addrs: usize,
) -> Option<([u8; 16], [u8; 16], u16, u16)> {
    unsafe {
        Some((
            ctx.read_at::<[u8; 16]>(addrs).ok()?,
            ctx.read_at::<[u8; 16]>(addrs + 16).ok()?,
            ctx.read_at::<u16>(ports).ok()?,
            ctx.read_at::<u16>(ports + 2).ok()?,
        ))
    }
}

/// Whether the side that sends in `dir` lives on this node.
#[inline(always)]
fn sends_here(info: &FlowInfo, dir: u8) -> bool {
    let sender = if dir == direction::TO_SERVER {
        side::CLIENT
    } else {
        side::SERVER
    };
    info.sides & sender != 0
}

/// Whether some traced flow has its server on `port`.
#[inline(always)]
fn is_server_port(port: u16) -> bool {
    port_entry(port) != 0
}

/// The port map's entry for `port`: 0 when no traced flow has its server there, else the
/// densest sample shift of those flows plus one. (A plain integer: an `Option` here made the
/// compiler spill an undefined register, which the verifier rejects.)
#[inline(always)]
fn port_entry(port: u16) -> u8 {
    SERVER_PORTS.get(u32::from(port)).copied().unwrap_or(0)
}

/// Finds the traced flow of a packet from `src:sport` to `dst:dport`, and its direction;
/// `served`: whether `dport`, `sport` are traced server ports (see `is_server_port`).
#[inline(always)]
fn lookup(
    addresses: &Addresses,
    (sport, dport): (u16, u16),
    served: (bool, bool),
    protocol: u8,
) -> Option<(FlowInfo, u8)> {
    if served.0
        && let Some(info) = find(addresses, true, dport, protocol)
    {
        return Some((info, direction::TO_SERVER));
    }
    if served.1
        && let Some(info) = find(addresses, false, sport, protocol)
    {
        return Some((info, direction::TO_CLIENT));
    }
    None
}

/// The flow to `server_port` between `addresses`, the client's first when `client_first`,
/// if traced.
#[inline(always)]
fn find(
    addresses: &Addresses,
    client_first: bool,
    server_port: u16,
    protocol: u8,
) -> Option<FlowInfo> {
    // SAFETY (both): the value is plain data, copied out at once.
    match addresses {
        Addresses::V4(src, dst) => {
            let (client, server) = client_then_server(src, dst, client_first);
            let key = FlowKey4 {
                client,
                server,
                server_port,
                protocol,
                pad: 0,
            };
            if let Some(entry) = PORT_FLOWS.get(port_flow_slot(server_port)) {
                // A copy: the daemon may be rewriting it (the check catches a torn one).
                // SAFETY: a valid array element, read as plain data.
                let entry = unsafe { read_volatile(entry) };
                if entry.names(&key) {
                    return Some(entry.info);
                }
            }
            unsafe { FLOWS4.get(key) }.copied()
        }
        Addresses::V6(src, dst) => {
            let (client, server) = client_then_server(src, dst, client_first);
            let key = FlowKey {
                client,
                server,
                server_port,
                protocol,
                pad: 0,
            };
            unsafe { FLOWS.get(key) }.copied()
        }
    }
}

/// A packet's source and destination as client and server: in that order when
/// `client_first`, else the other way.
#[inline(always)]
fn client_then_server<T: Copy>(src: &T, dst: &T, client_first: bool) -> (T, T) {
    if client_first {
        (*src, *dst)
    } else {
        (*dst, *src)
    }
}

/// The packet's flow, direction and connection, as every event names them.
struct Who {
    flow: u32,
    direction: u8,
    client_port: u16,
}

/// A record's earlier point and its distance back (`Event::earlier`), for a record with none.
const NO_EARLIER: (u8, u32) = (point::SOCKET_SEND, 0);

/// Gathers one event in this CPU's batch; a full batch goes to the ring buffer. `earlier`:
/// the packet's earlier point on this node that the record carries (see `Event::earlier`).
#[inline(always)]
fn emit(who: &Who, kind: u8, at: u8, ts_ns: u64, id: u32, value: u32, earlier: (u8, u32)) {
    let event = Event {
        ts_ns,
        flow: who.flow,
        id,
        earlier_ns: earlier.1,
        value,
        kind,
        point: at,
        direction: who.direction,
        earlier: earlier.0,
        client_port: who.client_port,
        pad2: 0,
    };
    let Some(batch) = BATCHES.get_ptr_mut(0) else {
        write_one(&event);
        return;
    };
    if CONF.get(CONF_BATCH_EVENTS).copied() != Some(1) {
        write_one(&event);
        return;
    }
    // SAFETY: this CPU's batch. Only a program on this CPU touches it, and one that
    // interrupts this one (a tracepoint in an interrupt, the daemon's flush) finds it busy
    // and leaves it alone: volatile keeps `busy` around the writes in program order, which
    // is all a single CPU needs.
    unsafe {
        if read_volatile(&raw const (*batch).busy) != 0 {
            write_one(&event);
            return;
        }
        write_volatile(&raw mut (*batch).busy, 1);
        let count = read_volatile(&raw const (*batch).count) as usize;
        // Always below BATCH_EVENTS (a full batch is written out at once); the check is
        // for the verifier.
        if count < BATCH_EVENTS {
            write_volatile(&raw mut (*batch).events[count], event);
            // The record carries the count: it is written before the batch goes out.
            write_volatile(&raw mut (*batch).count, count as u32 + 1);
            if count + 1 == BATCH_EVENTS {
                write_batch(batch, BATCH_EVENTS as u32);
                write_volatile(&raw mut (*batch).count, 0);
            }
        } else {
            write_one(&event);
            write_volatile(&raw mut (*batch).count, 0);
        }
        write_volatile(&raw mut (*batch).busy, 0);
    }
}

/// Writes this CPU's gathered events to the ring buffer now (run on each CPU by the daemon
/// before it reads the buffer). Returns 0 when the batch was busy (this interrupted a program
/// filling it: try again), 1 otherwise.
#[inline(always)]
pub fn flush() -> u32 {
    let Some(batch) = BATCHES.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `emit`.
    unsafe {
        if read_volatile(&raw const (*batch).busy) != 0 {
            return 0;
        }
        let count = read_volatile(&raw const (*batch).count);
        if count != 0 {
            // Held busy while it goes out: run on the daemon's own CPU, this can be
            // interrupted by a packet's softirq.
            write_volatile(&raw mut (*batch).busy, 1);
            write_batch(batch, count);
            write_volatile(&raw mut (*batch).count, 0);
            write_volatile(&raw mut (*batch).busy, 0);
        }
    }
    1
}

/// Writes `batch` (`count` events) to the ring buffer as one record.
///
/// # Safety
/// `batch` must be this CPU's, held busy or found idle by the caller.
#[inline(always)]
unsafe fn write_batch(batch: *mut Batch, count: u32) {
    // SAFETY: the caller holds the batch.
    if EVENTS
        .output::<Batch>(unsafe { &*batch }, wakeup())
        .is_err()
    {
        lost(u64::from(count));
    }
}

/// Writes one event to the ring buffer as a record of its own.
#[inline(always)]
fn write_one(event: &Event) {
    if EVENTS.output::<Event>(event, wakeup()).is_err() {
        lost(1);
    }
}

/// The ring-buffer flags of a write. Waking the reader on every write costs an interrupt each
/// (a VM exit on virtual machines): it polls on a timer instead, and is woken only when the
/// buffer fills up.
#[inline(always)]
fn wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > u64::from(EVENTS_BYTES / 4) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Counts events a full ring buffer refused; userspace reports the count with the run.
#[inline(always)]
fn lost(events: u64) {
    if let Some(lost) = COUNTERS.get_ptr_mut(LOST_EVENTS) {
        // SAFETY: a per-CPU slot; a program that interrupts this one could lose an increment
        // of a count that only says "some were lost".
        unsafe { *lost += events };
    }
}

/// A copy of the `N` bytes at `offset` in the packet, if it holds them.
///
/// One bounds check and one read per header: the verifier follows a check only on the pointer
/// it was made with, so every header is fetched whole. Bytes beyond the linear data (a UDP GSO
/// batch holds only its headers there, not its first datagram's) are copied out with
/// `bpf_skb_load_bytes`, which fails for bytes beyond the packet.
#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    let ptr = ctx.data() + offset;
    if ptr + N > ctx.data_end() {
        return ctx.load::<[u8; N]>(offset).ok();
    }
    // SAFETY: the bounds were checked just above; packet data may be unaligned.
    Some(unsafe { (ptr as *const [u8; N]).read_unaligned() })
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Where a packet's transport header is, and what it carries.
struct Layout {
    /// Offset of the IP header.
    l3: usize,
    ipv6: bool,
    protocol: u8,
    /// Offset of the transport header, and its length with the payload.
    l4: usize,
    l4_len: usize,
}

/// Finds the transport header behind Ethernet (up to two VLAN tags), IPv4 (with options) or
/// IPv6 (with up to four extension headers). `None` for anything else, non-first fragments and
/// headers beyond the linear data: such packets are simply not stamped. Reads only the bytes
/// it needs, so that a packet of no traced flow costs little.
#[inline(always)]
fn layout(ctx: &TcContext) -> Option<Layout> {
    let eth = bytes::<2>(ctx, 12)?;
    let mut ethertype = u16::from_be_bytes(eth);
    let mut l3 = ETH_HLEN;
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16::from_be_bytes(bytes::<2>(ctx, l3 + 2)?);
            l3 += 4;
        }
    }
    let layout = match ethertype {
        ETH_P_IP => {
            let ip = bytes::<10>(ctx, l3)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            // A non-first fragment has no transport header.
            if ip[0] >> 4 != 4 || ihl < 20 || be16(&ip, 6) & 0x1fff != 0 {
                return None;
            }
            Layout {
                l3,
                ipv6: false,
                protocol: ip[9],
                l4: l3 + ihl,
                l4_len: usize::from(be16(&ip, 2)).checked_sub(ihl)?,
            }
        }
        ETH_P_IPV6 => {
            let ip = bytes::<8>(ctx, l3)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let mut remaining = usize::from(be16(&ip, 4));
            let mut next = ip[6];
            let mut l4 = l3 + 40;
            for _ in 0..4 {
                if !matches!(next, 0 | 43 | 44 | 60) {
                    break;
                }
                let ext = bytes::<4>(ctx, l4)?;
                let len = if next == 44 {
                    // Fragment: only the first fragment carries the transport header.
                    if be16(&ext, 2) & 0xfff8 != 0 {
                        return None;
                    }
                    8
                } else {
                    // Hop-by-hop, routing, destination options: length in 8-byte units.
                    (usize::from(ext[1]) + 1) * 8
                };
                next = ext[0];
                l4 += len;
                remaining = remaining.checked_sub(len)?;
            }
            Layout {
                l3,
                ipv6: true,
                protocol: next,
                l4,
                l4_len: remaining,
            }
        }
        _ => return None,
    };
    // Bounded, so that the verifier can follow packet offsets built from it.
    if layout.l4 > 512 {
        return None;
    }
    Some(layout)
}

/// Parses the packet if it may belong to a traced flow: one of its ports is a traced server
/// port (the packet of no run stops here), and it is a TCP segment with data or a datagram of
/// sonde's UDP generator.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let layout = layout(ctx)?;
    if layout.protocol != IPPROTO_TCP && layout.protocol != IPPROTO_UDP {
        return None;
    }
    let ports = bytes::<4>(ctx, layout.l4)?;
    let (sport, dport) = (be16(&ports, 0), be16(&ports, 2));
    let (to_port, from_port) = (port_entry(dport), port_entry(sport));
    let sample_shift = match (
        to_port & sonde_common::maps::PORT_SHIFT_MASK,
        from_port & sonde_common::maps::PORT_SHIFT_MASK,
    ) {
        (0, 0) => return None,
        (0, entry) | (entry, 0) => entry - 1,
        (a, b) => a.min(b) - 1,
    };
    let dns = (to_port | from_port) & sonde_common::maps::PORT_DNS_IDS != 0;
    let mut syn = false;
    let id = if layout.protocol == IPPROTO_TCP {
        let tcp = bytes::<14>(ctx, layout.l4)?;
        let header = usize::from(tcp[12] >> 4) * 4;
        let payload = layout.l4_len.checked_sub(header)?;
        syn = tcp[13] & TCP_FLAG_SYN != 0;
        if header < 20 || (payload == 0 && !syn) {
            return None;
        }
        be32(&tcp, 4)
    } else {
        // The UDP header and the start of sonde's data header: magic, flags, sequence; or,
        // on a `dns` run's port, a DNS header, whose message ID tells the queries apart.
        let udp = bytes::<24>(ctx, layout.l4)?;
        let payload = usize::from(be16(&udp, 4)).checked_sub(8)?;
        if payload >= 16 && udp[8..12] == UDP_DATA_MAGIC {
            be32(&udp, 20)
        } else if dns && payload >= DNS_HEADER {
            u32::from(be16(&udp, 8))
        } else {
            return None;
        }
    };
    // A packet of a sampled stream that is not in the sample stops here, before the flow
    // lookup: the port's sampling is the densest of its flows', so none of them follows it.
    // SYNs are few and every one matters (a dropped one stalls a connection): never sampled.
    if !syn && !sampled(id, sample_shift) {
        return None;
    }
    let addresses = if layout.ipv6 {
        let addrs = bytes::<32>(ctx, layout.l3 + 8)?;
        let mut src = [0_u8; 16];
        let mut dst = [0_u8; 16];
        src.copy_from_slice(&addrs[..16]);
        dst.copy_from_slice(&addrs[16..]);
        Addresses::V6(src, dst)
    } else {
        let addrs = bytes::<8>(ctx, layout.l3 + 12)?;
        Addresses::V4(
            [addrs[0], addrs[1], addrs[2], addrs[3]],
            [addrs[4], addrs[5], addrs[6], addrs[7]],
        )
    };
    Some(Packet {
        addresses,
        sport,
        dport,
        entries: (to_port, from_port),
        protocol: layout.protocol,
        id,
        syn,
    })
}
