//! `cargo xtask test`: the one test command, every tier in order, stopping at the first failure.
//!
//! 1. `cargo fmt --check`
//! 2. clippy `-D warnings` on the host crates, then on the eBPF crate for the BPF target
//! 3. unit and in-process tests (`cargo test`: unprivileged)
//! 4. every fuzz target for a short while (`cargo xtask fuzz --seconds 10`)
//! 5. privileged integration tests (root: real eBPF, network namespaces), which create and
//!    remove their own namespaces

use std::time::Instant;

use anyhow::bail;

use crate::{
    setup,
    shell::{self, step},
};

/// Flags of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the privileged integration tests (for a quick check without root).
    #[arg(long)]
    pub unprivileged: bool,
}

/// Runs every tier.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = shell::workspace_root();
    std::env::set_current_dir(&root)?;
    if !args.unprivileged && !shell::is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run as \
             root (`sudo -E cargo xtask test`), or pass --unprivileged to skip them"
        );
    }
    if !setup::is_complete() {
        if !shell::is_root() {
            bail!("this machine is not set up: run `sudo -E cargo xtask setup` first");
        }
        step("setup is incomplete: running `cargo xtask setup` first");
        setup::run()?;
    }

    // Every sondectl a test starts records its result: in a store of the tests' own, not in
    // the user's (`cargo xtask test` may run on a workstation).
    let store = root.join("target/sonde-test-results.db");
    for stale in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{stale}", store.display()));
    }
    // SAFETY: set once, before any thread of this process starts.
    unsafe { std::env::set_var("SONDE_STORE", &store) };

    step("format");
    shell::run("cargo", &["fmt", "--all", "--", "--check"])?;
    step("clippy (host crates)");
    shell::run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("clippy (eBPF crate, BPF target)");
    shell::run(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "--package",
            "sonde-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    step("build (binaries the integration tests run)");
    shell::run("cargo", &["build", "--bins"])?;
    step("unit and in-process tests");
    let mut totals = shell::run_tests(&["test", "--workspace"])?;
    step("fuzz targets, 10 s each");
    crate::fuzz::run(&crate::fuzz::Args {
        seconds: 10,
        only: Vec::new(),
    })?;
    std::env::set_current_dir(&root)?;
    if args.unprivileged {
        step("privileged integration tests: skipped (--unprivileged)");
    } else {
        step("privileged integration tests");
        let privileged =
            // `bench_` tests are measurements for `cargo xtask bench`, not tests.
            shell::run_tests(&[
                "test",
                "--package",
                "sonde-integration",
                "--",
                "--ignored",
                "--skip",
                "bench_",
            ])?;
        totals.passed += privileged.passed;
        totals.failed += privileged.failed;
    }
    step(&format!(
        "all tests passed in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    // The plain closing line CI reads, whatever the runner printed last.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}
