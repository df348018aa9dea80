//! Per-interface packet counters written by the TC classifiers (TCX links).

/// Which way a packet crossed an interface, as seen by the interface's TC hook.
///
/// Kept as a `u32` in map keys (not an enum) so that any bit pattern read from a map is valid.
pub mod direction {
    /// The packet arrived on the interface (TC ingress).
    pub const INGRESS: u32 = 0;
    /// The packet left through the interface (TC egress).
    pub const EGRESS: u32 = 1;
}

/// Key of the per-interface counter map: one entry per (interface, direction) that saw traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    /// Interface index in the network namespace the program is attached in.
    pub ifindex: u32,
    /// One of [`direction`]'s constants.
    pub direction: u32,
}

/// Packets and bytes counted on one (interface, direction), per CPU (summed in userspace).
///
/// Per-CPU because the BPF target has no compare-and-swap: each CPU owns its slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    /// Packets seen by the hook.
    pub packets: u64,
    /// Bytes seen by the hook (`skb->len`: the L2 frame without FCS).
    pub bytes: u64,
}

const _: () = assert!(size_of::<IfaceKey>() == 8);
const _: () = assert!(size_of::<PacketCount>() == 16);

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are `#[repr(C)]` with no padding and only integer fields, so every bit pattern
    // is a valid value.
    unsafe impl aya::Pod for super::IfaceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketCount {}
}
