//! Names of the BPF maps that userspace opens by name.
//!
//! Prefixed `SONDE_` so they are recognisable in `bpftool map` next to a CNI's own maps; the
//! kernel keeps 15 characters of a name, so each stays unique within that length.

/// Per-CPU hash `IfaceKey -> PacketCount` filled by the TC counter programs.
pub const IFACE_COUNTERS: &str = "SONDE_IF_COUNT";
/// Hash `FlowKey -> FlowInfo`: the flows of the runs being traced.
pub const FLOWS: &str = "SONDE_FLOWS";
/// Array of `u8` indexed by port: non-zero when some traced flow has that server port. The
/// programs check it before the flow map, so foreign packets leave after an array read.
pub const SERVER_PORTS: &str = "SONDE_PORTS";
/// Ring buffer of `Event`s.
pub const EVENTS: &str = "SONDE_EVENTS";
/// Per-CPU array of `u64` counters of the stage programs (index `stages::LOST_EVENTS`: events
/// the full ring buffer refused).
pub const STAGE_COUNTERS: &str = "SONDE_STAGE_CNT";
