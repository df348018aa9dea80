//! The lab's delay line (see `sonde_common::delay`): redirect the frames an interface is told
//! to send elsewhere. Frames it is not told about go on unchanged.

use aya_ebpf::{
    bindings::tcx_action_base::TCX_NEXT, helpers::bpf_redirect, macros::map, maps::HashMap,
    programs::TcContext,
};
use sonde_common::delay::Redirect;

#[map(name = "SONDE_REDIRECT")]
static REDIRECTS: HashMap<u32, Redirect> = HashMap::with_max_entries(16, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The verdict for `ctx`'s frame: a redirect, or `TCX_NEXT`.
#[inline(always)]
pub fn redirect(ctx: &TcContext) -> i32 {
    // SAFETY: a scalar field of `__sk_buff`, readable by TC programs.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: plain data copied out at once.
    let Some(rule) = (unsafe { REDIRECTS.get(ifindex) }).copied() else {
        return TCX_NEXT;
    };
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return TCX_NEXT;
    }
    // SAFETY: the bounds were checked just above.
    let header = unsafe { (start as *const [u8; 14]).read_unaligned() };
    let ethertype = u16::from_be_bytes([header[12], header[13]]);
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return TCX_NEXT;
    }
    if rule.match_mac == 1 && header[..6] != rule.mac {
        return TCX_NEXT;
    }
    // SAFETY: a helper call with plain integers; it returns the TC verdict.
    unsafe { bpf_redirect(rule.to_ifindex, 0) as i32 }
}
