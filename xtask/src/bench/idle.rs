//! The CPUs' idle state, held the same for both tools of a latency comparison.
//!
//! On this VM an idle vCPU halts, and waking it costs an exit to the hypervisor (about 30 us):
//! a ping-pong benchmark measures those wake-ups as much as the tools, and which tool's thread
//! lands on a halted vCPU is luck. Writing 0 to `/dev/cpu_dma_latency` (PM QoS) asks cpuidle
//! for no exit latency at all, so idle vCPUs poll instead of halting, for as long as the file
//! stays open: the kernel drops the request when it is closed, also when the process dies.

use std::{fs::File, io::Write as _};

use anyhow::Context as _;

/// While alive, idle CPUs poll (PM QoS CPU latency 0).
pub struct IdlePolling {
    _request: File,
}

impl IdlePolling {
    /// Asks for polling idle CPUs until dropped.
    pub fn hold() -> anyhow::Result<Self> {
        let mut request = File::options()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .context("opening /dev/cpu_dma_latency")?;
        request
            .write_all(&0_i32.to_ne_bytes())
            .context("writing the CPU latency request")?;
        Ok(Self { _request: request })
    }
}
