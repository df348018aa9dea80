//! The one file system sonded needs that a node may not have mounted: tracefs (classic
//! tracepoints are attached through its `events/` directory).
//!
//! When tracefs is missing, sonded mounts it in a **private mount namespace** of its own, so the
//! host's mount table is never changed and nothing is left behind when the daemon exits. Mount
//! propagation from the host stays on (slave), so namespaces the lab or a CNI creates later under
//! `/run/netns` remain visible to the daemon.

use std::path::Path;

use nix::{
    mount::{MsFlags, mount},
    sched::{CloneFlags, unshare},
};

/// Where tracefs lives on current kernels, and where aya looks for it first.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older setups mount it (through debugfs); aya looks there second.
const TRACEFS_LEGACY: &str = "/sys/kernel/debug/tracing";

/// What [`ensure_tracefs`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracefs {
    /// Already mounted at this path by the host.
    Present(&'static str),
    /// Mounted by sonded at [`TRACEFS`] in its private mount namespace.
    MountedPrivately,
}

/// Makes tracefs available to the calling thread and the threads it starts afterwards (a new
/// mount namespace is the calling thread's alone): `sonded` calls it before its async runtime
/// starts.
pub fn ensure_tracefs() -> Result<Tracefs, String> {
    for path in [TRACEFS, TRACEFS_LEGACY] {
        if is_populated(Path::new(path)) {
            return Ok(Tracefs::Present(path));
        }
    }
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|errno| format!("creating a private mount namespace: {errno}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|errno| format!("making mounts private (slave): {errno}"))?;
    mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|errno| format!("mounting tracefs on {TRACEFS}: {errno}"))?;
    Ok(Tracefs::MountedPrivately)
}

/// aya's own test: the directory exists and has entries.
fn is_populated(path: &Path) -> bool {
    path.read_dir()
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}
