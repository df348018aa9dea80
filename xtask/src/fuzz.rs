//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/` (a decoder of bytes from the network
//! or from users), each for a while from its committed seeds, with what it did.
//!
//! The targets are built once (nightly, AddressSanitizer, the dev profile: a quarter of the
//! release build's time on two cores), then each runs alone on one core. New inputs go to
//! `target/fuzz-corpus/TARGET`, crashes to `target/fuzz-artifacts/TARGET/`; a crash fails the
//! command naming its file. A crash that was fixed joins the target's seeds, so that every
//! later run replays it first.

use std::{path::Path, time::Instant};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    shell::{self, step},
};

/// Flags of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Flags of every cargo-fuzz call: the crate, and the build (one build serves every run).
const BUILD: &[&str] = &["--fuzz-dir", "fuzz", "--dev", "--codegen-units", "16"];

/// What one target did.
struct Outcome {
    target: String,
    runs: u64,
    seconds: f64,
    new_units: u64,
    corpus: usize,
    peak_rss_mb: u64,
}

/// Builds and runs the targets.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = shell::workspace_root();
    std::env::set_current_dir(&root)?;
    if !setup::has_cargo_fuzz() {
        bail!("cargo-fuzz is not installed: run `cargo xtask setup`");
    }
    let listed = shell::output("cargo", &["+nightly", "fuzz", "list", "--fuzz-dir", "fuzz"])
        .context("listing the fuzz targets (cargo fuzz list)")?;
    let targets: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|target| args.only.is_empty() || args.only.iter().any(|only| only == target))
        .collect();
    if targets.is_empty() {
        bail!("no fuzz target matches --only {}", args.only.join(","));
    }
    step("fuzz targets: building (nightly, AddressSanitizer)");
    let mut build = vec!["+nightly", "fuzz", "build"];
    build.extend_from_slice(BUILD);
    shell::run("cargo", &build)?;
    let mut outcomes = Vec::new();
    for target in &targets {
        step(&format!("fuzz {target}: {} s", args.seconds));
        outcomes.push(fuzz(&root, target, args.seconds)?);
    }
    println!(
        "\n{:<16} {:>12} {:>10} {:>8} {:>10} {:>8} {:>8}",
        "target", "executions", "exec/s", "s", "new units", "corpus", "RSS MB"
    );
    let (mut runs, mut seconds) = (0, 0.0);
    for outcome in &outcomes {
        println!(
            "{:<16} {:>12} {:>10.0} {:>8.1} {:>10} {:>8} {:>8}",
            outcome.target,
            outcome.runs,
            outcome.runs as f64 / outcome.seconds.max(0.001),
            outcome.seconds,
            outcome.new_units,
            outcome.corpus,
            outcome.peak_rss_mb
        );
        runs += outcome.runs;
        seconds += outcome.seconds;
    }
    println!(
        "{} targets, {runs} executions in {seconds:.0} s of one core, 0 crashes",
        outcomes.len()
    );
    Ok(())
}

/// Runs `target` for `seconds` from its seeds and its corpus so far.
fn fuzz(root: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let corpus = root.join("target/fuzz-corpus").join(target);
    let artifacts = root.join("target/fuzz-artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = root.join("fuzz/seeds").join(target);
    let time = format!("-max_total_time={seconds}");
    let prefix = format!("-artifact_prefix={}/", artifacts.display());
    let mut command = std::process::Command::new("cargo");
    command
        .args(["+nightly", "fuzz", "run"])
        .args(BUILD)
        .arg(target);
    command.arg(&corpus);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    command.args([
        "--",
        &time,
        &prefix,
        "-max_len=65536",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]);
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let crash = std::fs::read_dir(&artifacts)
            .ok()
            .and_then(|mut files| files.next())
            .and_then(Result::ok)
            .map(|file| file.path().display().to_string())
            .unwrap_or_else(|| "no artifact written".to_owned());
        // What went wrong (a panic's message, the sanitizer's verdict), not the stack.
        let lines: Vec<&str> = log.lines().collect();
        let why: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| {
                line.contains("panicked at") || line.contains("ERROR:") || line.contains("SUMMARY:")
            })
            .flat_map(|(at, _)| lines[at..(at + 2).min(lines.len())].iter().copied())
            .collect();
        bail!(
            "fuzz target {target} failed ({}); input: {crash} (replay: {} {crash})\n{}",
            output.status,
            root.join("target/x86_64-unknown-linux-gnu/debug")
                .join(target)
                .display(),
            why.join("\n")
        );
    }
    let stat = |name: &str| {
        log.lines()
            .find_map(|line| line.strip_prefix(&format!("stat::{name}:")))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let corpus_size = std::fs::read_dir(&corpus).map_or(0, Iterator::count);
    Ok(Outcome {
        target: target.to_owned(),
        runs: stat("number_of_executed_units"),
        seconds: elapsed,
        new_units: stat("new_units_added"),
        corpus: corpus_size,
        peak_rss_mb: stat("peak_rss_mb"),
    })
}
