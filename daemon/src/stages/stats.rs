//! The kernel's BPF run-time statistics, on for a tenth of the time while runs are traced.
//!
//! On, they cost every run of every BPF program two clock reads: about 75 ns a run on this
//! machine's VM (`sonded probe-cost` with them on), several times what a stage classifier
//! costs for a packet of no run. The time per run is an average over thousands of runs a
//! second, so a sample of the run gives it as well: the statistics are on during the stamping
//! windows (`super::windows`), a tenth of each second, and the programs count their own runs
//! ([`sonde_common::maps::PROGRAM_RUNS`]) for the whole run. A sampled stream's programs run
//! only in those windows, so its times cover every run they make.

use std::os::fd::OwnedFd;

use crate::error::chain;

/// Turns the statistics on until the returned fd is closed.
pub fn enable() -> Result<OwnedFd, String> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|err| chain(&err))
}
