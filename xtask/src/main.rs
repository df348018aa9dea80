//! `cargo xtask`: what cargo cannot do alone.
//!
//! - `setup`: install what building, testing and running sonde need on a fresh Debian machine.
//! - `test`: the one test command (format, lints, unit tests, privileged integration tests).
//! - `demo`: the main job a newcomer runs: a lab, working.
//! - `bench`: sonde against the reference tools (iperf3, qperf), with ratios.
//! - `fuzz`: every cargo-fuzz target, each for a while from its seeds.
//! - `image`: sonded's OCI image, offline (buildah, from scratch).
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
    /// Build sonded's OCI image offline (buildah, from scratch, the release binaries and the
    /// libraries they load) into local containers storage.
    Image {
        /// The image's name.
        #[arg(long, default_value = "localhost/sonde/sonded:0.1.0")]
        tag: String,
    },
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

/// `cargo xtask image`: the release binaries, then `deploy/image.sh`.
fn image(tag: &str) -> anyhow::Result<()> {
    let root = shell::workspace_root();
    std::env::set_current_dir(&root)?;
    shell::step("release build");
    shell::run("cargo", &["build", "--release", "--bins"])?;
    shell::step(&format!("image {tag} (buildah, from scratch)"));
    shell::run("deploy/image.sh", &["release", tag])
}

fn main() -> ExitCode {
    let result = match Task::parse() {
        Task::Setup => setup::run(),
        Task::Test(args) => test::run(&args),
        Task::Demo => demo::run(),
        Task::Bench { suite, only } => bench::run(suite, &only),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Image { tag } => image(&tag),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
