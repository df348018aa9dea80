//! `cargo xtask`: what cargo cannot do alone.
//!
//! - `setup`: install what building, testing and running sonde need on a fresh Debian machine.
//! - `test`: the one test command (format, lints, unit tests, privileged integration tests).
//! - `demo`: the main job a newcomer runs: start a daemon and show what it found.
//!
//! Kept to `anyhow` and `clap` so it builds before setup has run.

mod demo;
mod setup;
mod shell;
mod test;

use std::process::ExitCode;

use clap::Parser as _;

/// sonde's project tasks.
#[derive(Debug, clap::Parser)]
#[command(name = "cargo xtask")]
enum Task {
    /// Install system packages, the nightly rust-src and bpf-linker (idempotent; needs root).
    Setup,
    /// Run every test tier: fmt, clippy (host and eBPF), unit and privileged integration tests.
    Test(test::Args),
    /// Set up, build, start sonded on loopback and show what it found on this kernel.
    Demo,
}

fn main() -> ExitCode {
    let result = match Task::parse() {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(&args),
        Task::Demo => demo::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
