//! Types shared by sonde's kernel programs (`sonde-ebpf`) and its userspace (`sonde-daemon`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, padded explicitly and size-asserted, because the
//! kernel and userspace read the same bytes out of BPF maps: a layout drift must fail the build,
//! not corrupt a measurement.
//!
//! # Layout
//! - [`counters`]: per-interface packet counters filled by the TC classifiers.
//! - [`delay`]: the lab's delay line (frames redirected through a userspace relay).
//! - [`maps`]: names of the maps userspace looks up, in one place for both sides.
//! - [`stages`]: flows, path points and events of the per-stage latency probes.
#![no_std]

pub mod counters;
pub mod delay;
pub mod maps;
pub mod stages;
