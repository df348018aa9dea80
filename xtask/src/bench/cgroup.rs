//! CPU time by cgroup, so that each tool's cost is read the same way and includes everything
//! its processes do (every thread, both sides), not what the tool says of itself: a
//! `cpuacct` group under cgroup v1, or a group with `cpu.stat` under cgroup v2.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A CPU-accounting cgroup made for the benchmark, removed (its processes moved back to the
/// root) when dropped.
#[derive(Debug)]
pub struct CpuGroup {
    dir: PathBuf,
    root: PathBuf,
    v2: bool,
}

impl CpuGroup {
    /// Makes the group `name` (replacing a leftover of an earlier run).
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let unified = Path::new("/sys/fs/cgroup");
        let (root, v2) = if unified.join("cgroup.controllers").is_file() {
            (unified.to_path_buf(), true)
        } else {
            (unified.join("cpuacct"), false)
        };
        let group = Self {
            dir: root.join(name),
            root,
            v2,
        };
        if group.dir.exists() {
            group.release();
        }
        std::fs::create_dir(&group.dir)
            .with_context(|| format!("making cgroup {}", group.dir.display()))?;
        Ok(group)
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.procs(), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }

    /// The file a process writes its PID to, to join the group.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// CPU time the group's processes used so far, in seconds.
    pub fn seconds(&self) -> anyhow::Result<f64> {
        if self.v2 {
            let stat = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
            let usec: f64 = stat
                .lines()
                .find_map(|line| line.strip_prefix("usage_usec "))
                .context("cpu.stat has no usage_usec")?
                .trim()
                .parse()?;
            Ok(usec / 1e6)
        } else {
            let ns: f64 = std::fs::read_to_string(self.dir.join("cpuacct.usage"))?
                .trim()
                .parse()?;
            Ok(ns / 1e9)
        }
    }

    /// Moves what is left back to the root and removes the group.
    fn release(&self) {
        if let Ok(procs) = std::fs::read_to_string(self.procs()) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        self.release();
    }
}
