//! sonde's kernel programs.
//!
//! Entry points live here and only here; each delegates to a module and **fails open**: a
//! measurement probe returns "continue" whatever happens, so it can never drop traffic.
//!
//! # Layout
//! - [`tc_counter`]: per-interface packet counters (TC classifiers, attached as TCX links).
//! - [`capability`]: minimal programs the daemon loads and attaches once at start to learn which
//!   hook types this kernel allows (tracepoint, tp_btf, sock_ops, fentry, kprobe).
// Built for the BPF target by daemon/build.rs. A host build (`cargo build --workspace`) gets an
// ordinary binary that only says so, so that workspace-wide commands keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod capability;
mod tc_counter;

use aya_ebpf::{
    bindings::tcx_action_base::TCX_NEXT,
    macros::{btf_tracepoint, classifier, fentry, kprobe, sock_ops, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, SockOpsContext, TcContext,
        TracePointContext,
    },
};
use sonde_common::counters::direction;

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
