//! `sondectl lab down`: remove everything a lab made, whether it is whole, half-built, or its
//! daemons were killed. It finds the lab by its namespaces' name prefix, so it works without
//! the inventory too, and it touches nothing else.

use std::time::{Duration, Instant};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    inventory::{STATE_ROOT, netns_prefix},
    sys,
};
use crate::error::refuse;

/// What `down` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Processes stopped (daemons, and anything else running in the lab's namespaces).
    pub processes: usize,
    /// Namespaces deleted (with every link, bridge, qdisc and nft table in them).
    pub namespaces: usize,
    /// Whether a state directory was removed.
    pub state_dir: bool,
}

/// Removes the lab `name`.
pub fn down(name: &str) -> crate::Result<Removed> {
    if !sys::is_root() {
        refuse!("removing a lab deletes network namespaces: it needs root");
    }
    let namespaces = sys::netns_with_prefix(&netns_prefix(name));
    let inodes: Vec<u64> = namespaces
        .iter()
        .filter_map(|ns| sys::netns_inode(ns))
        .collect();
    // Processes first: a namespace with a process in it outlives `ip netns del`.
    let processes = sys::processes_in(&inodes);
    stop(&processes);
    let mut failures = Vec::new();
    for netns in &namespaces {
        if let Err(err) = sys::run("ip", &["netns", "del", netns]) {
            failures.push(crate::error::chain(&err));
        }
    }
    let state_dir = std::path::Path::new(STATE_ROOT).join(name);
    let had_state = state_dir.exists();
    if had_state && let Err(err) = std::fs::remove_dir_all(&state_dir) {
        failures.push(format!("removing {}: {err}", state_dir.display()));
    }
    if !failures.is_empty() {
        refuse!(
            "lab {name:?} was not fully removed: {}",
            failures.join("; ")
        );
    }
    Ok(Removed {
        processes: processes.len(),
        namespaces: namespaces.len(),
        state_dir: had_state,
    })
}

/// SIGTERM, a grace period for the daemons to detach their probes, then SIGKILL.
fn stop(pids: &[u32]) {
    let pids: Vec<Pid> = pids
        .iter()
        .filter_map(|&pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect();
    for &pid in &pids {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for its parent: either way it holds no namespace any more.
    let alive = |pid: &Pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state != 'Z')
        })
    };
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids.iter().filter(|pid| alive(pid)) {
        let _ = kill(*pid, Signal::SIGKILL);
    }
}
