//! `cargo xtask`: what cargo cannot do alone.
//!
//! - `setup`: install what building, testing and running sonde need on a fresh Debian machine.
//! - `test`: the one test command (format, lints, unit tests, privileged integration tests).
//! - `demo`: the main job a newcomer runs: a lab, working.
//! - `bench`: sonde against the reference tools (iperf3, qperf), with ratios.
//! - `fuzz`: every cargo-fuzz target, each for a while from its seeds.
//!
//! Kept to `anyhow` and `clap` so it builds before setup has run.

mod bench;
mod demo;
mod fuzz;
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
    /// Set up, build, bring up a lab and show it working.
    Demo,
    /// Fuzz every decoder of bytes from the network or from users (cargo-fuzz, nightly).
    Fuzz(fuzz::Args),
    /// Benchmarks against the reference tools, side by side, with ratios.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        suite: bench::Suite,
        /// Only the comparisons whose name contains one of these words (generators), as
        /// `--only http,tcp-rr`.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

fn main() -> ExitCode {
    let result = match Task::parse() {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(&args),
        Task::Demo => demo::run(),
        Task::Bench { suite, only } => bench::run(suite, &only),
        Task::Fuzz(args) => fuzz::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
