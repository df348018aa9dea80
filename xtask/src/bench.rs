//! `cargo xtask bench generators`: sonde's generators against the reference tools (iperf3,
//! qperf, wrk), on the same lab path (pod1 on node1 to pod3 on node2), in one run.
//!
//! Each comparison runs sonde and the reference tool in turn, `PAIRS` times interleaved, each
//! run dropping its first second (sonde's warm-up, iperf3's `-O 1`), and reports medians,
//! ranges and the ratio of the medians (above 1.0: sonde is faster), and for throughput the CPU
//! per GB each tool used, read from a cgroup per tool (see `cgroup`). Release builds only.
//!
//! sonde moves stream payload with sendfile/splice and UDP with GSO by default; the
//! `--plain-io` rows compare like for like (one syscall per message, as iperf3 does). sonde
//! runs with `--no-trace`: the reference tools trace nothing, and what sonde's probes cost
//! is `bench probes`' figure.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::shell::{self, step};

/// Interleaved pairs per comparison.
const PAIRS: usize = 6;
/// Measured seconds per run (after the dropped first second).
const SECONDS: u64 = 4;
/// The lab the benchmark builds and removes.
const LAB: &str = "bench";

mod cgroup;
mod idle;
mod pin;
mod probes;
mod scenario;

use cgroup::CpuGroup;

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// tcp-stream vs iperf3 (1 and 4 streams), udp-stream 64 B vs iperf3, http vs wrk, tcp-rr
    /// vs qperf (with idle CPUs halting, and polling).
    Generators,
    /// The stage probes: ns per packet in the kernel (BPF_PROG_TEST_RUN), and tcp-stream
    /// traced vs not.
    Probes,
    /// A scenario's mesh of 8 lab nodes, one measurement at a time against tournament rounds.
    Scenario,
    /// A release sonded at rest in a lab node, with and without the Kubernetes pod watch
    /// (against the fake API server): RSS and CPU over a minute.
    Idle,
}

/// One figure from one run, and, for throughput runs, its CPU per GB by cgroup.
#[derive(Debug, Clone, Copy)]
struct Sample {
    value: f64,
    cpu_seconds_per_gb: Option<f64>,
}

/// Runs the benchmark.
pub fn run(suite: Suite, only: &[String]) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("the benchmark builds a lab: run it as root");
    }
    let root = shell::workspace_root();
    std::env::set_current_dir(&root)?;
    step("release build");
    shell::run("cargo", &["build", "--release", "--bins"])?;
    let sondectl = root
        .join("target/release/sondectl")
        .to_string_lossy()
        .into_owned();
    match suite {
        Suite::Scenario => scenario::run(&sondectl),
        Suite::Idle => {
            // The fake API server lives with the integration tests: the measurement is one of
            // them, skipped by `cargo xtask test`, built in release here.
            step("idle sonded, with and without the pod watch (60 s)");
            shell::run(
                "cargo",
                &[
                    "test",
                    "--release",
                    "--package",
                    "sonde-integration",
                    "--test",
                    "kubernetes",
                    "bench_idle",
                    "--",
                    "--ignored",
                    "--nocapture",
                ],
            )
        }
        Suite::Generators | Suite::Probes => {
            let _ = Command::new(&sondectl)
                .args(["lab", "down", "--name", LAB])
                .output();
            if suite == Suite::Probes {
                probes::kernel_costs(&root)?;
            }
            step("lab: 2 nodes x 2 pods; the path is pod1 (node1) -> pod3 (node2)");
            shell::run(&sondectl, &["lab", "up", "--name", LAB])?;
            let result = if suite == Suite::Generators {
                compare_all(&sondectl, only)
            } else {
                probes::traced_throughput(&sondectl)
            };
            step("remove the lab");
            let _ = shell::run(&sondectl, &["lab", "down", "--name", LAB]);
            result
        }
    }
}

fn compare_all(sondectl: &str, only: &[String]) -> anyhow::Result<()> {
    println!("    sonde runs --no-trace (the probes' cost: cargo xtask bench probes)");
    let server_ip = pod_ip(sondectl, "pod3")?;
    let mut iperf_server = in_pod("pod3", "iperf3", &["-s"])
        .spawn()
        .context("iperf3 server")?;
    let mut qperf_server = in_pod("pod3", "qperf", &[])
        .stdout(Stdio::null())
        .spawn()
        .context("qperf server")?;
    std::thread::sleep(Duration::from_millis(500));
    // Each side's CPU by cgroup: the lab's two daemons (sonde's generators are their
    // threads), and the reference tools' servers and clients.
    let sonde_cpu = CpuGroup::create("sonde-bench-sonde")?;
    for pid in daemon_pids()? {
        sonde_cpu.add(pid)?;
    }
    let reference_cpu = CpuGroup::create("sonde-bench-reference")?;
    reference_cpu.add(iperf_server.id())?;
    reference_cpu.add(qperf_server.id())?;
    let secs = (SECONDS + 1).to_string();
    // iperf3's side of every stream comparison: to pod3, the same length, first second dropped.
    let iperf3_args = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["-c".into(), server_ip.clone(), "-t".into(), secs.clone()];
        args.extend(["-O", "1", "-J"].map(String::from));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let mut comparisons: Vec<Comparison> = vec![
        Comparison(
            "tcp-stream, 1 stream (bit/s)",
            "iperf3",
            generator_args("tcp-stream", &[]),
            iperf3_args(&[]),
            Reader::Throughput,
            Idle::Default,
        ),
        Comparison(
            "tcp-stream, 1 stream, --plain-io (bit/s)",
            "iperf3",
            generator_args("tcp-stream", &["--plain-io"]),
            iperf3_args(&[]),
            Reader::Throughput,
            Idle::Default,
        ),
        Comparison(
            "tcp-stream, 4 streams (bit/s)",
            "iperf3",
            generator_args("tcp-stream", &["--parallel", "4"]),
            iperf3_args(&["-P", "4"]),
            Reader::Throughput,
            Idle::Default,
        ),
        Comparison(
            "udp-stream, 64 B datagrams (received/s)",
            "iperf3",
            generator_args("udp-stream", &["--size", "64"]),
            iperf3_args(&["-u", "-l", "64", "-b", "0"]),
            Reader::Datagrams,
            Idle::Default,
        ),
        Comparison(
            "udp-stream, 64 B datagrams, --plain-io (received/s)",
            "iperf3",
            generator_args("udp-stream", &["--size", "64", "--plain-io"]),
            iperf3_args(&["-u", "-l", "64", "-b", "0"]),
            Reader::Datagrams,
            Idle::Default,
        ),
    ];
    // qperf's tcp_lat, in both idle states.
    let qperf_args = vec![
        "-t".into(),
        SECONDS.to_string(),
        server_ip.clone(),
        "tcp_lat".into(),
    ];
    comparisons.extend(
        [
            ("tcp-rr, 1 B (transactions/s)", Idle::Default),
            (
                "tcp-rr, 1 B, idle CPUs polling (transactions/s)",
                Idle::Polling,
            ),
        ]
        .map(|(name, idle)| {
            Comparison(
                name,
                "qperf",
                generator_args("tcp-rr", &["--size", "1"]),
                qperf_args.clone(),
                Reader::Transactions,
                idle,
            )
        }),
    );
    let wanted =
        |name: &str| only.is_empty() || only.iter().any(|word| name.contains(word.as_str()));
    let comparisons: Vec<Comparison> = comparisons
        .into_iter()
        .filter(|Comparison(name, ..)| wanted(name))
        .collect();
    let mut rows = Vec::new();
    let mut failure = None;
    // The http comparison comes last, with its server: `sondectl serve` holds pod3's node in
    // the normal class while it serves, which the exclusive stream runs cannot share.
    let http_name = "http, 10 keep-alive connections (requests/s)";
    let mut http_server = None;
    let phases = [comparisons, Vec::new()];
    for (phase, comparisons) in phases.into_iter().enumerate() {
        let comparisons = if phase == 0 {
            comparisons
        } else if wanted(http_name) {
            // wrk needs a sonde HTTP server it can address: `sondectl serve` holds one open in
            // pod3 (sonde's own client gets a fresh server of the same code in the same pod).
            let mut server = Command::new(sondectl)
                .args([
                    "serve",
                    "http",
                    "--at",
                    "pod/pod3",
                    "--duration",
                    "900s",
                    "--parallel",
                    "10",
                    "--lab",
                    LAB,
                ])
                .stdout(Stdio::piped())
                .spawn()
                .context("sondectl serve")?;
            let ready = server
                .stdout
                .take()
                .and_then(|stdout| std::io::BufRead::lines(std::io::BufReader::new(stdout)).next())
                .and_then(Result::ok)
                .context("sondectl serve printed nothing")?;
            let ready: Value = serde_json::from_str(&ready)?;
            let http_url = format!(
                "http://{}:{}/",
                ready["ip"].as_str().unwrap_or_default(),
                ready["port"]
            );
            let http_header = ready["http_header"].as_str().unwrap_or_default().to_owned();
            let comparison = Comparison(
                http_name,
                "wrk",
                generator_args("http", &["--parallel", "10"]),
                vec![
                    "-t2".into(),
                    "-c10".into(),
                    format!("-d{}s", SECONDS + 1),
                    "-H".into(),
                    http_header,
                    http_url,
                ],
                Reader::Requests,
                Idle::Default,
            );
            http_server = Some(server);
            vec![comparison]
        } else {
            Vec::new()
        };
        for Comparison(name, tool, sonde, reference, reader, idle) in comparisons {
            step(&format!(
                "{name}: sonde vs {tool}, {PAIRS} interleaved pairs"
            ));
            let _polling = match idle {
                Idle::Polling => Some(idle::IdlePolling::hold()?),
                Idle::Default => None,
            };
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for pair in 0..PAIRS {
                match sonde_sample(sondectl, &sonde, reader, &sonde_cpu).and_then(|(s, _)| {
                    let r = reference_sample(tool, &reference, reader, &reference_cpu)?;
                    Ok((s, r))
                }) {
                    Ok((s, r)) => {
                        println!(
                            "    pair {}: sonde {} | {tool} {}",
                            pair + 1,
                            show(s.value, reader),
                            show(r.value, reader)
                        );
                        ours.push(s);
                        theirs.push(r);
                    }
                    Err(err) => {
                        failure.get_or_insert(format!("{name}: {err:#}"));
                        break;
                    }
                }
            }
            rows.push((name, tool, reader, ours, theirs));
        }
    }
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
    let _ = qperf_server.kill();
    let _ = qperf_server.wait();
    if let Some(mut server) = http_server {
        let _ = server.kill();
        let _ = server.wait();
    }

    step("results (median [min - max]; ratio = sonde / reference)");
    for (name, tool, reader, ours, theirs) in &rows {
        if ours.is_empty() {
            continue;
        }
        let (om, olo, ohi) = stats(ours.iter().map(|s| s.value));
        let (tm, tlo, thi) = stats(theirs.iter().map(|s| s.value));
        println!("  {name}");
        println!(
            "    sonde   {} [{} - {}]",
            show(om, *reader),
            show(olo, *reader),
            show(ohi, *reader)
        );
        println!(
            "    {tool:<7} {} [{} - {}]",
            show(tm, *reader),
            show(tlo, *reader),
            show(thi, *reader)
        );
        println!("    ratio   {:.3}", om / tm);
        let cpu = |samples: &[Sample]| {
            let values: Vec<f64> = samples
                .iter()
                .filter_map(|s| s.cpu_seconds_per_gb)
                .collect();
            (!values.is_empty()).then(|| stats(values.into_iter()).0)
        };
        if let (Some(o), Some(t)) = (cpu(ours), cpu(theirs)) {
            println!(
                "    CPU s/GB (cgroup)  sonde {o:.3}  {tool} {t:.3}  ratio {:.3} (below 1.0: \
                 sonde cheaper)",
                o / t
            );
        }
    }
    match failure {
        Some(failure) => bail!("benchmark incomplete: {failure}"),
        None => Ok(()),
    }
}

/// sondectl's arguments for a generator comparison: `--no-trace`, since the reference tools
/// trace nothing; what the probes cost is `bench probes`' figure.
fn generator_args(kind: &str, extra: &[&str]) -> Vec<String> {
    sonde_args(kind, &[extra, &["--no-trace"]].concat())
}

/// sondectl's arguments for a run of `kind` on the benchmark's path, as JSON.
fn sonde_args(kind: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        kind.to_owned(),
        "--from".to_owned(),
        "pod/pod1".to_owned(),
        "--to".to_owned(),
        "pod/pod3".to_owned(),
        "--duration".to_owned(),
        format!("{SECONDS}s"),
        "--warmup".to_owned(),
        "1s".to_owned(),
        "--lab".to_owned(),
        LAB.to_owned(),
        "-o".to_owned(),
        "json".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// A comparison: its name, the reference tool, sondectl's arguments, the tool's arguments, how
/// to read the figure, and the CPUs' idle state both tools run in.
struct Comparison(
    &'static str,
    &'static str,
    Vec<String>,
    Vec<String>,
    Reader,
    Idle,
);

/// What idle CPUs do during a comparison (see `idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Whatever the machine does (here: halt, woken by the hypervisor).
    Default,
    /// Poll: no wake-up cost, for either tool.
    Polling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Throughput,
    Datagrams,
    Transactions,
    Requests,
}

fn show(value: f64, reader: Reader) -> String {
    match reader {
        Reader::Throughput => format!("{:.2} Gbit/s", value / 1e9),
        Reader::Datagrams => format!("{:.0} pkt/s", value),
        Reader::Transactions => format!("{:.0} tx/s", value),
        Reader::Requests => format!("{:.0} req/s", value),
    }
}

fn stats(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

fn in_pod(pod: &str, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &format!("sonde-{LAB}-{pod}"), program])
        .args(args);
    command.stdin(Stdio::null());
    command
}

/// CPU and wall time over one invocation of a tool.
struct Metered<'a> {
    cpu: &'a CpuGroup,
    cpu_at_start: f64,
    started: std::time::Instant,
}

impl<'a> Metered<'a> {
    fn start(cpu: &'a CpuGroup) -> anyhow::Result<Self> {
        Ok(Self {
            cpu,
            cpu_at_start: cpu.seconds()?,
            started: std::time::Instant::now(),
        })
    }

    /// (CPU seconds, wall seconds) since the start.
    fn stop(self) -> anyhow::Result<(f64, f64)> {
        Ok((
            self.cpu.seconds()? - self.cpu_at_start,
            self.started.elapsed().as_secs_f64(),
        ))
    }
}

/// CPU seconds per GB moved, for a whole invocation (setup and the dropped first second
/// included, for both tools alike) whose payload is taken to flow at the measured rate
/// throughout: the same reading for sonde and the reference, so their ratio is fair.
fn per_gigabyte(cpu_seconds: f64, wall_seconds: f64, bits_per_second: f64) -> f64 {
    let gigabytes = bits_per_second / 8.0 * wall_seconds / 1e9;
    if gigabytes > 0.0 {
        cpu_seconds / gigabytes
    } else {
        f64::NAN
    }
}

/// The PIDs of the bench lab's daemons.
fn daemon_pids() -> anyhow::Result<Vec<u32>> {
    daemon_pids_of(LAB)
}

/// The PIDs of lab `lab`'s daemons, from its inventory.
fn daemon_pids_of(lab: &str) -> anyhow::Result<Vec<u32>> {
    let inventory = std::fs::read_to_string(format!("/run/sonde/lab/{lab}/inventory.json"))
        .context("reading the bench lab's inventory")?;
    let inventory: Value = serde_json::from_str(&inventory)?;
    let pids: Vec<u32> = inventory["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| node["daemon_pid"].as_u64())
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect();
    if pids.is_empty() {
        bail!("the bench lab's inventory names no daemon PID");
    }
    Ok(pids)
}

fn pod_ip(sondectl: &str, pod: &str) -> anyhow::Result<String> {
    let inventory = std::fs::read_to_string(format!("/run/sonde/lab/{LAB}/inventory.json"))
        .context("reading the bench lab's inventory")?;
    let _ = sondectl;
    let inventory: Value = serde_json::from_str(&inventory)?;
    inventory["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["name"] == pod))
        .and_then(|p| p["ip"].as_str())
        .map(str::to_owned)
        .context("pod not in the inventory")
}

/// One sondectl run: its figure, and the whole JSON document.
fn sonde_sample(
    sondectl: &str,
    args: &[String],
    reader: Reader,
    cpu: &CpuGroup,
) -> anyhow::Result<(Sample, Value)> {
    let metered = Metered::start(cpu)?;
    let output = Command::new(sondectl)
        .args(args)
        .output()
        .context("sondectl run")?;
    let (cpu_seconds, wall_seconds) = metered.stop()?;
    if !output.status.success() {
        bail!(
            "sondectl run failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let doc: Value = serde_json::from_slice(&output.stdout)?;
    let m = &doc["measurements"][0];
    let value = match reader {
        Reader::Throughput => m["throughput_bits_per_second"].as_f64(),
        Reader::Datagrams | Reader::Transactions | Reader::Requests => {
            m["messages_per_second"].as_f64()
        }
    }
    .context("figure missing from sondectl's JSON")?;
    let cpu_seconds_per_gb = matches!(reader, Reader::Throughput)
        .then(|| per_gigabyte(cpu_seconds, wall_seconds, value));
    Ok((
        Sample {
            value,
            cpu_seconds_per_gb,
        },
        doc,
    ))
}

fn reference_sample(
    tool: &str,
    args: &[String],
    reader: Reader,
    cpu: &CpuGroup,
) -> anyhow::Result<Sample> {
    // The client joins the group before it starts: a shell writes its PID, then becomes it.
    let mut command = Command::new("sh");
    command
        .args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
        .arg(cpu.procs())
        .args(["ip", "netns", "exec", &format!("sonde-{LAB}-pod1"), tool])
        .args(args)
        .stdin(Stdio::null());
    let metered = Metered::start(cpu)?;
    let output = command
        .output()
        .with_context(|| format!("running {tool}"))?;
    let (cpu_seconds, wall_seconds) = metered.stop()?;
    if !output.status.success() {
        bail!(
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    match reader {
        Reader::Throughput => {
            let doc: Value = serde_json::from_str(&text)?;
            let received = &doc["end"]["sum_received"];
            let value = received["bits_per_second"]
                .as_f64()
                .context("iperf3 bits_per_second")?;
            Ok(Sample {
                value,
                cpu_seconds_per_gb: Some(per_gigabyte(cpu_seconds, wall_seconds, value)),
            })
        }
        Reader::Datagrams => {
            let doc: Value = serde_json::from_str(&text)?;
            let sum = &doc["end"]["sum"];
            let packets = sum["packets"].as_f64().context("iperf3 packets")?;
            let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
            let seconds = sum["seconds"].as_f64().context("iperf3 seconds")?;
            Ok(Sample {
                value: (packets - lost) / seconds,
                cpu_seconds_per_gb: None,
            })
        }
        Reader::Requests => {
            // wrk prints "Requests/sec:  42259.05".
            let line = text
                .lines()
                .find(|l| l.starts_with("Requests/sec:"))
                .context("wrk Requests/sec line")?;
            let value: f64 = line.trim_start_matches("Requests/sec:").trim().parse()?;
            Ok(Sample {
                value,
                cpu_seconds_per_gb: None,
            })
        }
        Reader::Transactions => {
            // qperf prints "latency  =  27.3 us": one-way, half a round trip.
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with("latency"))
                .context("qperf latency line")?;
            let value_unit: Vec<&str> = line
                .split('=')
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let number: f64 = value_unit.first().context("qperf value")?.parse()?;
            let one_way_us = match value_unit.get(1).copied() {
                Some("ns") => number / 1000.0,
                Some("ms") => number * 1000.0,
                Some("sec") | Some("s") => number * 1e6,
                _ => number,
            };
            Ok(Sample {
                value: 1e6 / (2.0 * one_way_us),
                cpu_seconds_per_gb: None,
            })
        }
    }
}
