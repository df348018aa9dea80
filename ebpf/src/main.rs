//! sonde's kernel programs.
//!
//! Entry points live here and only here; each delegates to a module and **fails open**: a
//! measurement probe returns "continue" whatever happens, so it can never drop traffic.
//!
//! # Layout
//! - [`tc_counter`]: per-interface packet counters (TC classifiers, attached as TCX links).
//! - [`stages`]: per-stage timestamps, connect times and retransmits of the runs' own flows
//!   (TC classifiers on pod veths and node uplinks, socket tracepoints).
//! - [`delay`]: the lab's delay line, a redirect through a userspace relay.
//! - [`capability`]: minimal programs the daemon loads and attaches once at start to learn which
//!   hook types this kernel allows (tracepoint, tp_btf, sock_ops, fentry, kprobe).
// Built for the BPF target by daemon/build.rs. A host build (`cargo build --workspace`) gets an
// ordinary binary that only says so, so that workspace-wide commands keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod capability;
mod delay;
mod stages;
mod tc_counter;

use aya_ebpf::{
    bindings::tcx_action_base::TCX_NEXT,
    macros::{btf_tracepoint, classifier, fentry, kprobe, sock_ops, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, SockOpsContext, TcContext,
        TracePointContext,
    },
};
use sonde_common::{
    counters::direction,
    stages::{point, runs},
};

/// Counts packets arriving on the interface it is attached to.
#[classifier]
pub fn sonde_tc_ingress(ctx: TcContext) -> i32 {
    tc_counter::count(&ctx, direction::INGRESS);
    TCX_NEXT
}

/// Counts packets leaving through the interface it is attached to.
#[classifier]
pub fn sonde_tc_egress(ctx: TcContext) -> i32 {
    tc_counter::count(&ctx, direction::EGRESS);
    TCX_NEXT
}

/// Does nothing: the floor a classifier costs, against which the probes' costs are read.
#[classifier]
pub fn sonde_tc_nop(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

/// The lab's delay line: sends the frames it is told to through the relay's TAP devices.
#[classifier]
pub fn sonde_redirect(ctx: TcContext) -> i32 {
    delay::redirect(&ctx)
}

/// Stamps a run's packets leaving their pod (TC ingress, host side of the pod's veth).
#[classifier]
pub fn sonde_pod_out(ctx: TcContext) -> i32 {
    stages::ran(runs::POD_OUT);
    stages::stamp(&ctx, point::POD_OUT);
    TCX_NEXT
}

/// Stamps a run's packets leaving the node (TC egress on the uplink).
#[classifier]
pub fn sonde_node_out(ctx: TcContext) -> i32 {
    stages::ran(runs::NODE_OUT);
    stages::stamp(&ctx, point::NODE_OUT);
    TCX_NEXT
}

/// Stamps a run's packets reaching the node (TC ingress on the uplink).
#[classifier]
pub fn sonde_node_in(ctx: TcContext) -> i32 {
    stages::ran(runs::NODE_IN);
    stages::stamp(&ctx, point::NODE_IN);
    TCX_NEXT
}

/// Stamps a run's packets entering their pod (TC egress, host side of the pod's veth), and
/// remembers them until the application reads them.
#[classifier]
pub fn sonde_pod_in(ctx: TcContext) -> i32 {
    stages::ran(runs::POD_IN);
    stages::stamp(&ctx, point::POD_IN);
    TCX_NEXT
}

/// [`sonde_tc_ingress`] and [`sonde_pod_out`] in one program: while a run is traced through a
/// pod whose veth has the packet counter, the counter's link runs this instead (an atomic link
/// update), so that each packet pays one program call on that hook, not two.
#[classifier]
pub fn sonde_pod_out_counted(ctx: TcContext) -> i32 {
    tc_counter::count(&ctx, direction::INGRESS);
    stages::ran(runs::POD_OUT_COUNTED);
    stages::stamp(&ctx, point::POD_OUT);
    TCX_NEXT
}

/// [`sonde_tc_egress`] and [`sonde_pod_in`] in one program (see [`sonde_pod_out_counted`]).
#[classifier]
pub fn sonde_pod_in_counted(ctx: TcContext) -> i32 {
    tc_counter::count(&ctx, direction::EGRESS);
    stages::ran(runs::POD_IN_COUNTED);
    stages::stamp(&ctx, point::POD_IN);
    TCX_NEXT
}

/// The application read a packet (`skb_copy_datagram_iovec`). BTF tracepoints (tp_btf) run
/// the program straight from the tracepoint with its arguments; the classic tracepoint
/// variants (`_tp`), for kernels without BTF, first fill the tracepoint's record, which costs
/// more on hooks that see every skb of the node.
#[btf_tracepoint(function = "skb_copy_datagram_iovec")]
pub fn sonde_read(ctx: BtfTracePointContext) -> i32 {
    stages::ran(runs::READ);
    if let Some(skb) = stages::skb_argument(&ctx) {
        stages::socket_read(skb);
    }
    0
}

/// [`sonde_read`] from the classic tracepoint (`skb:skb_copy_datagram_iovec`).
#[tracepoint]
pub fn sonde_read_tp(ctx: TracePointContext) -> u32 {
    stages::ran(runs::READ);
    if let Some(skb) = stages::skb_address(&ctx) {
        stages::socket_read(skb);
    }
    0
}

/// The application handed data to a TCP socket.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn sonde_sock_send(ctx: BtfTracePointContext) -> i32 {
    stages::ran(runs::SEND);
    stages::socket_send(&ctx);
    0
}

/// Writes this CPU's gathered events to the ring buffer: the daemon runs it on every CPU
/// (`BPF_PROG_TEST_RUN`, never attached) before it reads the buffer. Returns 0 when it found
/// the batch in use (try again), 1 otherwise. Written out rather than with `#[raw_tracepoint]`,
/// whose expansion drops the function's return value.
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp")]
pub fn sonde_flush(_ctx: *mut core::ffi::c_void) -> u32 {
    stages::flush()
}

/// Drops of the runs' packets, with the kernel's reason (`kfree_skb`: skb, location, reason
/// since Linux 5.17; on older kernels this does not load and the classic variant is used).
#[btf_tracepoint(function = "kfree_skb")]
pub fn sonde_drop(ctx: BtfTracePointContext) -> i32 {
    stages::ran(runs::DROP);
    if let Some(skb) = stages::skb_argument(&ctx) {
        // Argument 2 of `kfree_skb` is its `enum skb_drop_reason`.
        stages::dropped(skb, || Some(ctx.arg::<u64>(2) as u32));
    }
    0
}

/// [`sonde_drop`] from the classic tracepoint (`skb:kfree_skb`).
#[tracepoint]
pub fn sonde_drop_tp(ctx: TracePointContext) -> u32 {
    stages::ran(runs::DROP);
    if let Some(skb) = stages::skb_address(&ctx) {
        stages::dropped(skb, || stages::drop_reason(&ctx));
    }
    0
}

/// The runs' packets freed normally (`consume_skb`).
#[btf_tracepoint(function = "consume_skb")]
pub fn sonde_free(ctx: BtfTracePointContext) -> i32 {
    stages::ran(runs::FREE);
    if let Some(skb) = stages::skb_argument(&ctx) {
        stages::consumed(skb);
    }
    0
}

/// [`sonde_free`] from the classic tracepoint (`skb:consume_skb`).
#[tracepoint]
pub fn sonde_free_tp(ctx: TracePointContext) -> u32 {
    stages::ran(runs::FREE);
    if let Some(skb) = stages::skb_address(&ctx) {
        stages::consumed(skb);
    }
    0
}

/// Connect times of the runs' TCP connections (`sock:inet_sock_set_state`).
#[tracepoint]
pub fn sonde_connect(ctx: TracePointContext) -> u32 {
    stages::ran(runs::CONNECT);
    stages::connect_state(&ctx);
    0
}

/// Retransmissions on the runs' TCP connections (`tcp:tcp_retransmit_skb`).
#[tracepoint]
pub fn sonde_retransmit(ctx: TracePointContext) -> u32 {
    stages::ran(runs::RETRANSMIT);
    stages::retransmit(&ctx);
    0
}

/// Capability probe for classic tracepoints (`sock:inet_sock_set_state`).
#[tracepoint]
pub fn sonde_cap_tp(ctx: TracePointContext) -> u32 {
    capability::touch_tracepoint(&ctx)
}

/// Capability probe for BTF-enabled tracepoints.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sonde_cap_tp_btf(ctx: BtfTracePointContext) -> i32 {
    capability::touch_btf_tracepoint(&ctx)
}

/// Capability probe for sock_ops programs (cgroup v2); allows every operation.
#[sock_ops]
pub fn sonde_cap_sockops(ctx: SockOpsContext) -> u32 {
    capability::touch_sock_ops(&ctx)
}

/// Capability probe for fentry (needs the kernel's ftrace trampolines).
#[fentry(function = "tcp_rcv_established")]
pub fn sonde_cap_fentry(ctx: FEntryContext) -> i32 {
    capability::touch_fentry(&ctx)
}

/// Capability probe for kprobes (needs `CONFIG_KPROBES`).
#[kprobe]
pub fn sonde_cap_kprobe(ctx: ProbeContext) -> u32 {
    capability::touch_kprobe(&ctx)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sonde-ebpf is kernel code: daemon/build.rs builds it for bpfel-unknown-none");
    std::process::exit(2);
}

/// The kernel refuses GPL-only helpers to programs without a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
