//! Bodies of the capability probes: each does the least a program of its type can do.
//!
//! They exist to be loaded and attached once at daemon start; a successful load proves the
//! kernel accepts the program type, a successful attach proves the hook exists.

use aya_ebpf::programs::{
    BtfTracePointContext, FEntryContext, ProbeContext, SockOpsContext, TracePointContext,
};

/// Tracepoint programs return 0 (the value is ignored by the kernel).
#[inline(always)]
pub fn touch_tracepoint(_ctx: &TracePointContext) -> u32 {
    0
}

/// BTF tracepoint programs must return 0.
#[inline(always)]
pub fn touch_btf_tracepoint(_ctx: &BtfTracePointContext) -> i32 {
    0
}

/// sock_ops programs return 1 to let the socket operation proceed unchanged.
#[inline(always)]
pub fn touch_sock_ops(_ctx: &SockOpsContext) -> u32 {
    1
}

/// fentry programs must return 0.
#[inline(always)]
pub fn touch_fentry(_ctx: &FEntryContext) -> i32 {
    0
}

/// kprobe return values are ignored unless override is enabled; 0 is the neutral value.
#[inline(always)]
pub fn touch_kprobe(_ctx: &ProbeContext) -> u32 {
    0
}
