//! Per-interface packet counting at the TC hooks.

use aya_ebpf::{macros::map, maps::PerCpuHashMap, programs::TcContext};
use sonde_common::counters::{IfaceKey, PacketCount};

/// Interfaces (times two directions) the counter can track at once; a node with more pods than
/// this stops counting new interfaces (and never drops their traffic).
const MAX_IFACES: u32 = 4096;

#[map(name = "SONDE_IF_COUNT")]
static SONDE_IF_COUNT: PerCpuHashMap<IfaceKey, PacketCount> =
    PerCpuHashMap::with_max_entries(MAX_IFACES * 2, 0);

/// Adds one packet of `ctx`'s length to its interface's counter for `direction`.
#[inline(always)]
pub fn count(ctx: &TcContext, direction: u32) {
    // SAFETY: `skb` is the context pointer the kernel passed to this program; reading a scalar
    // field of `__sk_buff` is what the verifier allows for TC programs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = IfaceKey { ifindex, direction };
    let len = u64::from(ctx.len());
    match SONDE_IF_COUNT.get_ptr_mut(key) {
        Some(slot) => {
            // SAFETY: a per-CPU slot is touched only by this CPU, and TC programs run with
            // preemption disabled, so nothing else writes it meanwhile.
            unsafe {
                (*slot).packets += 1;
                (*slot).bytes += len;
            }
        }
        None => {
            // A full map means this interface is not counted: fail open, never drop.
            let _ = SONDE_IF_COUNT.insert(
                key,
                PacketCount {
                    packets: 1,
                    bytes: len,
                },
                0,
            );
        }
    }
}
