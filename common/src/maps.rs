//! Names of the BPF maps that userspace opens by name.
//!
//! Prefixed `SONDE_` so they are recognisable in `bpftool map` next to a CNI's own maps; the
//! kernel keeps 15 characters of a name, so each stays unique within that length.

/// Per-CPU hash `IfaceKey -> PacketCount` filled by the TC counter programs.
pub const IFACE_COUNTERS: &str = "SONDE_IF_COUNT";
