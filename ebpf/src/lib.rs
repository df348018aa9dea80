//! Library target of the eBPF crate, empty on purpose: it lets `sonde-daemon` declare a
//! build-dependency on this crate so that cargo rebuilds the daemon when the programs change.
#![no_std]
