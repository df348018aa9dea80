//! `sonded`: parse the configuration, set up logging and signals, then [`Daemon::start`] and
//! serve until SIGTERM or SIGINT; or one of the one-off commands.

use std::{io::IsTerminal as _, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use sonde_daemon::{
    config::{Command, Config},
    daemon::{Daemon, Stopped},
    delay_line, mounts,
    stages::{Tracer, cost},
};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    sonde_daemon::memory::configure_allocator();
    let config = Config::parse();
    if let Some(Command::Sleep) = config.command {
        // Before anything else: an endpoint pod has no privileges, no tracefs, no logging.
        return match sleep_until_stopped() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("sonded sleep: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Before any thread exists: a private mount namespace can only be made single-threaded.
    match mounts::ensure_tracefs() {
        Ok(mounts::Tracefs::Present(path)) => tracing::debug!(path, "tracefs present"),
        Ok(mounts::Tracefs::MountedPrivately) => {
            tracing::info!(
                path = mounts::TRACEFS,
                "tracefs mounted in sonded's own mount namespace"
            )
        }
        Err(reason) => {
            tracing::warn!(%reason, "tracefs unavailable: classic tracepoints will be missing")
        }
    }
    let one_off = match config.command.clone() {
        Some(Command::ProbeCost { rounds, json }) => Some(("probe-cost", probe_cost(rounds, json))),
        Some(Command::DelayLine {
            from_port,
            to_port,
            to_mac,
            delay_us,
            seconds,
        }) => {
            let spec = delay_line::DelaySpec {
                from_port,
                to_port,
                to_mac,
                delay: Duration::from_micros(delay_us),
                duration: Duration::from_secs(seconds),
            };
            Some(("delay-line", run_delay_line(&spec)))
        }
        Some(Command::Sleep) | None => None,
    };
    if let Some((name, outcome)) = one_off {
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("sonded {name}: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sonded: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Signals first: a SIGTERM during the (slow-ish) eBPF load must still stop us cleanly.
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let daemon = Daemon::start(&config).await?;
        let shutdown = async {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
                _ = sigint.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
            }
        };
        match daemon.serve(shutdown).await? {
            Stopped::Unloaded => {
                tracing::info!("stopped; eBPF programs unloaded and links released")
            }
            Stopped::ProgramsStillHeld => {
                tracing::warn!("stopped; the eBPF programs are still held, and go with the process")
            }
        }
        anyhow::Ok(())
    })
}

/// `sonded probe-cost`: loads the probes as the daemon does and measures each stage classifier.
fn probe_cost(rounds: u32, json: bool) -> anyhow::Result<()> {
    let btf = aya::Btf::from_sys_fs().ok();
    let object = sonde_daemon::object::EbpfObject::load_with_btf(btf.as_ref())?;
    let tracer = Tracer::new(Arc::new(std::sync::Mutex::new(object)), btf.as_ref())?;
    let costs = cost::measure(&tracer, rounds)?;
    if costs.traced_events == 0 || costs.unsampled_events > 0 {
        anyhow::bail!(
            "the crafted packets did not take the paths measured: {} events from traced \
             packets (want some), {} from unsampled ones (want none)",
            costs.traced_events,
            costs.unsampled_events
        );
    }
    if json {
        let probes: Vec<_> = costs
            .probes
            .iter()
            .map(|cost| {
                serde_json::json!({
                    "program": cost.program,
                    "foreign_ns": cost.foreign_ns,
                    "traced_ns": cost.traced_ns,
                    "unsampled_ns": cost.unsampled_ns,
                })
            })
            .collect();
        let all = serde_json::json!({ "floor_ns": costs.floor_ns, "probes": probes });
        println!("{all}");
    } else {
        println!(
            "ns per packet, BPF_PROG_TEST_RUN; an empty classifier costs {:.1} ns here",
            costs.floor_ns
        );
        println!(
            "{:<16} {:>10} {:>10} {:>10}   (above the floor: foreign, traced, unsampled)",
            "probe", "foreign", "traced", "unsampled"
        );
        for cost in &costs.probes {
            let above = |ns: f64| ns - costs.floor_ns;
            println!(
                "{:<16} {:>10.1} {:>10.1} {:>10.1}   ({:.1}, {:.1}, {:.1})",
                cost.program,
                cost.foreign_ns,
                cost.traced_ns,
                cost.unsampled_ns,
                above(cost.foreign_ns),
                above(cost.traced_ns),
                above(cost.unsampled_ns),
            );
        }
    }
    Ok(())
}

/// `sonded delay-line`: prints `{"ready":true}` once frames are being delayed, and what it
/// carried when its time is up.
fn run_delay_line(spec: &delay_line::DelaySpec) -> anyhow::Result<()> {
    let carried = delay_line::run(spec, || {
        println!("{}", serde_json::json!({ "ready": true }));
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })?;
    println!(
        "{}",
        serde_json::json!({ "frames": carried.frames, "mean_late_us": carried.mean_late_us })
    );
    Ok(())
}

/// Waits for SIGTERM or SIGINT, doing nothing: one thread, no runtime, a few hundred KiB.
fn sleep_until_stopped() -> nix::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    signals.wait().map(|_| ())
}
