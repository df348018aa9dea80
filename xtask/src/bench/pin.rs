//! Every thread of the lab's daemons on one CPU, while held.
//!
//! On two vCPUs a stream's sender and receiver each have a CPU, and which work lands where
//! varies from run to run: single runs of the same build spread by 20% or more, and a few
//! percent of probe cost disappears in that. On one CPU every byte's whole cost (both
//! generators, the kernel's path, the probes) is paid in turn on that CPU, so the throughput
//! ratio reads the probes' share of the CPU per byte. Threads the daemons start later inherit
//! the placement.

use std::process::Command;

use anyhow::{Context as _, bail};

/// While alive, the daemons run on the last CPU only; dropping it gives them every CPU back.
pub struct OneCpu {
    pids: Vec<u32>,
    all: String,
}

impl OneCpu {
    /// Moves every thread of `pids` to the last CPU.
    pub fn hold(pids: &[u32]) -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism()
            .context("counting CPUs")?
            .get();
        let held = Self {
            pids: pids.to_vec(),
            all: format!("0-{}", cpus - 1),
        };
        let last = (cpus - 1).to_string();
        for pid in pids {
            taskset(&last, *pid)?;
        }
        Ok(held)
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        for pid in &self.pids {
            if let Err(err) = taskset(&self.all, *pid) {
                eprintln!("    giving daemon {pid} every CPU back failed: {err:#}");
            }
        }
    }
}

/// `taskset -a -cp CPUS PID`: every thread of the process.
fn taskset(cpus: &str, pid: u32) -> anyhow::Result<()> {
    let output = Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .output()
        .context("running taskset")?;
    if !output.status.success() {
        bail!(
            "taskset -a -cp {cpus} {pid}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
