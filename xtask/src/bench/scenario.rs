//! `cargo xtask bench scenario`: a mesh of 8 lab nodes (56 ordered pairs of 1 s `tcp-rr`),
//! run one measurement at a time (`--serial`, as fleet tools without a scheduler do) and in
//! tournament rounds, interleaved; prints each wall time, their ratio, and the median latency
//! of each way, so that what the speed costs in distortion is in the same table.

use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::shell::{self, step};

/// The lab this benchmark builds and removes.
const LAB: &str = "benchsc";
/// Each way runs this many times, alternating.
const RUNS: usize = 2;

const SCENARIO: &str = "name: bench-mesh
nodes: all
topology: mesh
placement: [cross-node]
paths: [pod-ip]
tests:
  - kind: tcp-rr
    duration: 1s
    warmup: 0s
    trace: false
";

/// One run of the scenario: (wall seconds, median of the measurements' p50 in µs, count).
fn once(sondectl: &str, file: &str, serial: bool) -> anyhow::Result<(f64, f64, usize)> {
    let mut args = vec!["scenario", "run", file, "--lab", LAB, "-o", "json"];
    if serial {
        args.push("--serial");
    }
    let started = Instant::now();
    let output = std::process::Command::new(sondectl)
        .args(&args)
        .output()
        .context("sondectl scenario run")?;
    let wall = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "scenario run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let set: Value = serde_json::from_slice(&output.stdout).context("run-set JSON")?;
    let mut p50s: Vec<f64> = set["measurements"]
        .as_array()
        .context("measurements")?
        .iter()
        .filter_map(|m| m["headline"]["p50_ns"].as_f64())
        .collect();
    p50s.sort_by(f64::total_cmp);
    let median = p50s.get(p50s.len() / 2).copied().unwrap_or_default() / 1000.0;
    Ok((wall, median, p50s.len()))
}

/// Runs the comparison.
pub fn run(sondectl: &str) -> anyhow::Result<()> {
    let _ = std::process::Command::new(sondectl)
        .args(["lab", "down", "--name", LAB])
        .output();
    step("lab: 8 nodes in 2 zones, a pod each");
    shell::run(
        sondectl,
        &[
            "lab",
            "up",
            "--name",
            LAB,
            "--nodes",
            "8",
            "--zones",
            "2",
            "--pods-per-node",
            "1",
        ],
    )?;
    let file = std::env::temp_dir().join("sonde-bench-mesh.yaml");
    std::fs::write(&file, SCENARIO)?;
    let file = file.to_string_lossy().into_owned();
    let result = (|| -> anyhow::Result<()> {
        let (mut serial, mut rounds) = (Vec::new(), Vec::new());
        for run in 1..=RUNS {
            step(&format!(
                "run {run} of {RUNS}: one at a time, then in rounds"
            ));
            serial.push(once(sondectl, &file, true)?);
            rounds.push(once(sondectl, &file, false)?);
        }
        println!("\n| way | measurements | wall time (s) | median p50 latency (µs) |");
        println!("|---|---|---|---|");
        for (name, runs) in [("one at a time (--serial)", &serial), ("rounds", &rounds)] {
            for (wall, p50, count) in runs {
                println!("| {name} | {count} | {wall:.1} | {p50:.1} |");
            }
        }
        let median = |runs: &[(f64, f64, usize)]| {
            let mut walls: Vec<f64> = runs.iter().map(|r| r.0).collect();
            walls.sort_by(f64::total_cmp);
            (walls[(walls.len() - 1) / 2] + walls[walls.len() / 2]) / 2.0
        };
        let (serial_wall, rounds_wall) = (median(&serial), median(&rounds));
        println!(
            "\nmesh of 8 nodes (56 pairs): serial {serial_wall:.1} s, scheduled {rounds_wall:.1} s: \
             {:.2}x faster (the tournament bound is 14 rounds for 56 pairs: 4x)",
            serial_wall / rounds_wall
        );
        Ok(())
    })();
    step("remove the lab");
    let _ = shell::run(sondectl, &["lab", "down", "--name", LAB]);
    result
}
