//! `cargo xtask bench scenario`: on a lab of 12 nodes, a mesh of 8 of them (56 ordered pairs
//! of 1 s `tcp-rr`), run one measurement at a time (`--serial`, as fleet tools without a
//! scheduler do) and in tournament rounds, interleaved; prints each wall time, their ratio,
//! and the median latency of each way, so that what the speed costs in distortion is in the
//! same table. Then the monitor's own cost: its peak RSS and CPU over two rounds of all 12
//! nodes (K = 2), and the daemons' CPU and RSS at rest before and after.

use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::shell::{self, step};

/// The lab this benchmark builds and removes.
const LAB: &str = "benchsc";
/// Each way runs this many times, alternating.
const RUNS: usize = 2;

const SCENARIO: &str = "name: bench-mesh
nodes: {count: 8}
topology: mesh
placement: [cross-node]
paths: [pod-ip]
tests:
  - kind: tcp-rr
    duration: 1s
    warmup: 0s
    trace: false
";

/// What the monitor measures: every node of the lab, rr with its kernel breakdown.
const MONITORED: &str = "name: bench-monitor
nodes: all
topology: mesh
placement: [cross-node]
paths: [pod-ip]
tests:
  - kind: tcp-rr
    duration: 1s
    warmup: 0s
";

/// Nodes of the lab (the mesh takes 8 of them, the monitor all).
const NODES: usize = 12;

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
    step(&format!("lab: {NODES} nodes in 2 zones, a pod each"));
    shell::run(
        sondectl,
        &[
            "lab",
            "up",
            "--name",
            LAB,
            "--nodes",
            &NODES.to_string(),
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
        let monitored = std::env::temp_dir().join("sonde-bench-monitor.yaml");
        std::fs::write(&monitored, MONITORED)?;
        monitor_cost(sondectl, &monitored.to_string_lossy())
    })();
    step("remove the lab");
    let _ = shell::run(sondectl, &["lab", "down", "--name", LAB]);
    result
}

/// CPU seconds (user + system) a process has used, from /proc (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// A `/proc/PID/status` size field (`VmRSS`, `VmHWM`), KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

/// The daemons' summed CPU over `window`, as a share of one core, and their RSS, MiB.
fn daemons_at_rest(pids: &[u32], window: std::time::Duration) -> (f64, Vec<f64>) {
    let before: f64 = pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum();
    std::thread::sleep(window);
    let after: f64 = pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum();
    let rss = pids
        .iter()
        .filter_map(|&pid| status_kib(pid, "VmRSS"))
        .map(|kib| kib as f64 / 1024.0)
        .collect();
    (
        (after - before) / window.as_secs_f64() / pids.len().max(1) as f64,
        rss,
    )
}

/// The monitor's own cost over two rounds, and the daemons' at rest around it.
fn monitor_cost(sondectl: &str, file: &str) -> anyhow::Result<()> {
    step(&format!(
        "the monitor's cost: two rounds of {NODES} nodes, K = 2, 20 s each"
    ));
    let pids = super::daemon_pids_of(LAB)?;
    let window = std::time::Duration::from_secs(10);
    let (idle_before, rss_before) = daemons_at_rest(&pids, window);
    let mut monitor = std::process::Command::new(sondectl)
        .args([
            "monitor",
            "--scenario",
            file,
            "--lab",
            LAB,
            "--peers",
            "2",
            "--every",
            "20s",
            "--rounds",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("sondectl monitor")?;
    let pid = monitor.id();
    let started = Instant::now();
    let (mut peak_kib, mut cpu) = (0, 0.0);
    while monitor.try_wait()?.is_none() {
        peak_kib = peak_kib.max(status_kib(pid, "VmHWM").unwrap_or(0));
        cpu = cpu_seconds(pid).unwrap_or(cpu);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let wall = started.elapsed().as_secs_f64();
    let (idle_after, rss_after) = daemons_at_rest(&pids, window);
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    println!(
        "\nmonitor, 2 rounds of {} traced measurements over {wall:.0} s: peak RSS {:.1} MiB, CPU {cpu:.2} s ({:.2}% of a core)",
        NODES * 2,
        peak_kib as f64 / 1024.0,
        cpu / wall * 100.0
    );
    println!(
        "daemons at rest, {} s each side: CPU {:.3}% of a core per daemon before, {:.3}% after; RSS {:.1} MiB before, {:.1} MiB after (mean of {})",
        window.as_secs(),
        idle_before * 100.0,
        idle_after * 100.0,
        mean(&rss_before),
        mean(&rss_after),
        pids.len()
    );
    Ok(())
}
