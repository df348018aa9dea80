//! `cargo xtask demo`: sonde's main job for a newcomer, on this machine alone.
//!
//! Sets the machine up, builds, brings up a lab (2 nodes x 2 pods of network namespaces, a
//! ClusterIP Service, a bandwidth-limited pod, a sonded per node), shows what the daemons found
//! on this kernel and traffic crossing the lab, then removes the lab.

use anyhow::bail;

use crate::{
    setup,
    shell::{self, step},
};

/// The demo's lab name: distinct from the default "lab" a user may have up.
const LAB: &str = "demo";

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    let root = shell::workspace_root();
    std::env::set_current_dir(&root)?;
    if !shell::is_root() {
        bail!("the lab creates network namespaces and loads eBPF: run `sudo -E cargo xtask demo`");
    }
    if !setup::is_complete() {
        setup::run()?;
    }
    step("build sonded and sondectl");
    shell::run("cargo", &["build", "--bins"])?;
    let sondectl = root.join("target/debug/sondectl");
    let sondectl = sondectl.to_string_lossy();

    step("bring up a lab: 2 nodes x 2 pods, Service web (ClusterIP), pod4 limited to 100 Mbit/s");
    shell::run(
        &sondectl,
        &[
            "lab",
            "up",
            "--name",
            LAB,
            "--service",
            "web=80:5201@pod3",
            "--bandwidth",
            "pod4=100M",
        ],
    )?;
    let shown = show();
    step("remove the lab");
    let removed = shell::run(&sondectl, &["lab", "down", "--name", LAB]);
    shown?;
    removed
}

fn show() -> anyhow::Result<()> {
    let sondectl = shell::workspace_root().join("target/debug/sondectl");
    let sondectl = sondectl.to_string_lossy();
    step("the lab's daemons and what this kernel lets them measure");
    shell::run(&sondectl, &["nodes", "--lab", LAB])?;
    step("tcp-rr pod1 (node1) -> pod3 (node2), with the kernel breakdown of its own packets");
    shell::run(
        &sondectl,
        &[
            "run",
            "tcp-rr",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod3",
            "--duration",
            "3s",
            "--lab",
            LAB,
        ],
    )?;
    step("tcp-stream pod4 (node2, 100 Mbit/s egress limit) -> Service web (ClusterIP, DNAT)");
    shell::run(
        &sondectl,
        &[
            "run",
            "tcp-stream",
            "--from",
            "pod/pod4",
            "--to",
            "service/web",
            "--duration",
            "3s",
            "--lab",
            LAB,
        ],
    )
}
