//! Names of the BPF maps that userspace opens by name.
//!
//! Prefixed `SONDE_` so they are recognisable in `bpftool map` next to a CNI's own maps; the
//! kernel keeps 15 characters of a name, so each stays unique within that length.

/// Per-CPU hash `IfaceKey -> PacketCount` filled by the TC counter programs.
pub const IFACE_COUNTERS: &str = "SONDE_IF_COUNT";
/// Hash `FlowKey -> FlowInfo`: the IPv6 flows of the runs being traced.
pub const FLOWS: &str = "SONDE_FLOWS";
/// Hash `FlowKey4 -> FlowInfo`: their IPv4 flows.
pub const FLOWS4: &str = "SONDE_FLOWS4";
/// Array of `PortFlow` (`stages::PORT_FLOW_SLOTS`): the one IPv4 flow of a server port with
/// one, read before `FLOWS4`.
pub const PORT_FLOWS: &str = "SONDE_PORT_FLOW";
/// Array of `u8` indexed by port: 0 when no traced flow has that server port, else the densest
/// sample shift of those flows plus one. The programs check it before the flow map, so
/// foreign packets (and a sampled stream's packets outside the sample) leave after an array
/// read.
pub const SERVER_PORTS: &str = "SONDE_PORTS";
/// A [`SERVER_PORTS`] entry's bit saying that the port's UDP flows carry DNS messages (a `dns`
/// run): a datagram's packet id is its DNS message ID, not sonde's UDP header's sequence.
pub const PORT_DNS_IDS: u8 = 0x80;
/// A [`SERVER_PORTS`] entry's bit saying that some traced flow of the port has its client on
/// this node. Socket tracepoints are global: in the lab every daemon's programs see every
/// node's sockets, and this lets one leave another node's sockets after an array read, before
/// the flow lookup.
pub const PORT_CLIENT_HERE: u8 = 0x40;
/// A [`SERVER_PORTS`] entry's bit saying that some traced flow of the port has its server on
/// this node (see [`PORT_CLIENT_HERE`]).
pub const PORT_SERVER_HERE: u8 = 0x20;
/// The low bits of a [`SERVER_PORTS`] entry: 0 for no traced flow, else the densest sample
/// shift of the port's flows plus one (at most `stages::MAX_SAMPLE_SHIFT + 1`).
pub const PORT_SHIFT_MASK: u8 = 0x1f;
/// Ring buffer of `Event`s.
pub const EVENTS: &str = "SONDE_EVENTS";
/// Per-CPU array of `u64` counters of the stage programs (index `stages::LOST_EVENTS`: events
/// the full ring buffer refused).
pub const STAGE_COUNTERS: &str = "SONDE_STAGE_CNT";
/// Hash `u32 -> Redirect` of the lab's delay line: frames arriving on an interface (by ifindex)
/// are sent out of another.
pub const REDIRECTS: &str = "SONDE_REDIRECT";
/// Array of `u32` the daemon fills at start with what the programs cannot know at build time
/// (tracepoint field offsets of this kernel).
pub const TRACEPOINT_CONF: &str = "SONDE_TP_CONF";
/// Array of `u64`: how often each stage program ran on each CPU (index:
/// `stages::runs::index`). The kernel's own BPF statistics count runs only while they are on,
/// and they are on only part of a run (see the daemon's `stages::hooks`).
pub const PROGRAM_RUNS: &str = "SONDE_RUNS";
