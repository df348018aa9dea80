//! `sondectl trace --from A --to B`: where the time goes on a path, and nothing else.
//!
//! A light request/response flow (one connection, 1000 requests/s of 64 bytes by default) runs
//! between the endpoints with the stage probes attached, so that the path is measured without
//! being loaded; only its kernel breakdown is printed.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    cli::{PlacementArgs, RunKindArg, parse_duration},
    cmd::run as runs,
    endpoint::{EndpointRef, PathKind},
    output::OutputFormat,
    run::{breakdown::Breakdown, execute::Plan, report, sizes::human},
    scenario::spec::Class,
};

/// Flags of `sondectl trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Where the probe flow's client runs: pod/NAME, node/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub from: EndpointRef,

    /// Where its server runs: pod/NAME, node/NAME, service/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub to: EndpointRef,

    /// The cluster and the placement the ends must have (as for `run`).
    #[command(flatten)]
    pub placement: PlacementArgs,

    /// The probe flow's protocol.
    #[arg(long, value_enum, default_value_t = TraceProtocol::Tcp)]
    pub protocol: TraceProtocol,

    /// How long to trace.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Requests per second: light by default, so that the path is measured, not loaded.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Request and response size.
    #[arg(long, default_value = "64", value_parser = crate::run::sizes::parse_size)]
    pub size: u64,

    /// Estimate the clock offset NTP-style even between nodes that share a kernel.
    #[arg(long, hide = true)]
    pub estimate_clock: bool,

    /// The lab whose pods, nodes and Services endpoints name.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// Output format: the breakdown as a table, or as JSON (the run result's `kernel`).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The protocol of `sondectl trace`'s probe flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceProtocol {
    /// TCP request/response on one connection.
    Tcp,
    /// UDP request/response.
    Udp,
}

/// What `sondectl trace -o json` prints.
#[derive(Debug, Serialize)]
struct TraceReport<'a> {
    from: &'a str,
    to: &'a str,
    path: PathKind,
    kind: &'a str,
    rate: f64,
    size_bytes: u64,
    duration_seconds: f64,
    /// The breakdown, as in a run result's `kernel`.
    kernel: &'a Breakdown,
}

/// Runs `sondectl trace`.
pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of requests per second (the flow stays light)");
    }
    let kind = match args.protocol {
        TraceProtocol::Tcp => RunKindArg(&sonde_proto::kinds::TCP_RR),
        TraceProtocol::Udp => RunKindArg(&sonde_proto::kinds::UDP_RR),
    };
    let ends = runs::resolve_ends(&args.from, &args.to, &args.placement, &args.lab).await?;
    let mut plan = Plan::between(kind, ends, args.timeout)?;
    plan.duration = args.duration;
    plan.warmup = Duration::from_millis(500);
    plan.rate = args.rate;
    plan.sizes = vec![(args.size, Some(args.size))];
    plan.estimate_clock = args.estimate_clock;
    // A light flow: it may run beside anyone's measurement, as pScheduler's background class.
    plan.class = Class::Background;
    let result = runs::measure(&plan, crate::engine::session::DEFAULT_MAX_WAIT).await;
    let measurement = result
        .measurements
        .first()
        .context("the probe flow made no measurement")?;
    let Some(kernel) = &measurement.kernel else {
        runs::check_complete(&result)?;
        bail!(
            "no kernel breakdown came back: {}",
            measurement
                .errors
                .first()
                .map_or("the daemons could not trace this path", String::as_str)
        );
    };
    match args.output {
        OutputFormat::Json => {
            let trace = TraceReport {
                from: &result.from.endpoint,
                to: &result.to.endpoint,
                path: result.path,
                kind: &result.kind,
                rate: result.spec.rate,
                size_bytes: measurement.size_bytes,
                duration_seconds: result.spec.duration_seconds,
                kernel,
            };
            println!("{}", serde_json::to_string_pretty(&trace)?);
        }
        OutputFormat::Table => {
            println!(
                "trace {} -> {} ({}, {}: {} requests/s of {} for {:.0}s)\n",
                result.from.endpoint,
                result.to.endpoint,
                serde_json::to_value(result.path)?.as_str().unwrap_or("?"),
                result.kind,
                result.spec.rate,
                human(measurement.size_bytes),
                result.spec.duration_seconds,
            );
            print!(
                "{}",
                report::kernel_table(measurement, kernel, report::breakdown_unit(&result.kind))
            );
        }
    }
    runs::check_complete(&result)
}
