//! `sondectl run KIND --from A --to B`.

use std::{io::IsTerminal as _, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    cli::{DirectionArg, PlacementArgs, RunKindArg, parse_duration, parse_duration_or_zero},
    endpoint::{self, EndpointRef},
    engine::{self, Session},
    lab::Inventory,
    run::{
        execute::{Ends, Plan},
        report::{self, RunReport},
    },
};

/// Output formats of `sondectl run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunOutput {
    /// A table for people.
    Table,
    /// The result document (schema: docs/schema/run-result.v1.json).
    Json,
    /// One CSV row per measurement.
    Csv,
}

/// A payload sweep: the sizes in bytes (an alias so clap takes it as one value).
pub type Sweep = Vec<u64>;

/// Flags of `sondectl run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The generator.
    #[arg(value_enum)]
    pub kind: RunKindArg,

    /// Where the client runs: pod/NAME, node/NAME, or a daemon's HOST:PORT (with
    /// --kubeconfig: pod/NAMESPACE/NAME or node/NAME).
    #[arg(long)]
    pub from: EndpointRef,

    /// Where the server runs: pod/NAME, node/NAME, service/NAME, or a daemon's HOST:PORT (with
    /// --kubeconfig: pod/NAMESPACE/NAME, node/NAME or service/NAMESPACE/NAME).
    #[arg(long)]
    pub to: EndpointRef,

    /// The cluster and the placement the ends must have.
    #[command(flatten)]
    pub placement: PlacementArgs,

    /// Measured part of each measurement (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Warm-up before it, discarded (0 for none).
    #[arg(long, default_value = "1s", value_parser = parse_duration_or_zero)]
    pub warmup: Duration,

    /// The timeline's interval: the measured part is reported interval by interval (100ms and
    /// up; default 1s, longer for runs of more than an hour).
    #[arg(long, value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Repetitions of each size.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repetitions: u32,

    /// Connections (TCP) or flows (UDP) in parallel.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,

    /// Target rate in messages per second across all connections; 0 for as fast as possible.
    #[arg(long, default_value = "0", allow_negative_numbers = true)]
    pub rate: f64,

    /// Message size: per write (stream), per datagram (UDP), request and response (RR).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub size: Option<u64>,

    /// RR request size (overrides --size).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub request_size: Option<u64>,

    /// RR response size (overrides --size).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub response_size: Option<u64>,

    /// A payload sweep instead of one size: sizes and doubling ranges, e.g. 64B..16MiB.
    #[arg(long, value_parser = crate::run::sizes::parse_sweep, conflicts_with = "size")]
    pub sizes: Option<Sweep>,

    /// Stream direction (tcp-stream).
    #[arg(long, value_enum, default_value_t = DirectionArg::Forward)]
    pub direction: DirectionArg,

    /// Move payload with one plain syscall per message (no sendfile, splice, UDP GSO or
    /// batching), as iperf3 does: for like-for-like comparisons and per-packet costs.
    #[arg(long)]
    pub plain_io: bool,

    /// dns: the name to ask (default: the run's own name, which sonde's responder answers;
    /// required with --to dns/ADDRESS).
    #[arg(long)]
    pub dns_name: Option<String>,

    /// dns: the record types to ask, in turn (A, AAAA, SRV; repeated or comma-separated).
    #[arg(long = "dns-type", value_delimiter = ',', default_value = "A")]
    pub dns_types: Vec<String>,

    /// Do not trace the run's packets in the kernel (no per-stage breakdown).
    #[arg(long)]
    pub no_trace: bool,

    /// Trace only in stamping windows (100 ms of every second, every packet in them
    /// followed): the breakdown then moves a request/response run's rate a tenth as much,
    /// from a tenth of its transactions.
    #[arg(long, conflicts_with = "no_trace")]
    pub trace_windows: bool,

    /// Estimate the clock offset between the two nodes NTP-style even when they share a
    /// kernel (as lab nodes do), to see the estimator's error against a known zero.
    #[arg(long, hide = true)]
    pub estimate_clock: bool,

    /// The lab whose pods, nodes and Services endpoints name.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = RunOutput::Table)]
    pub output: RunOutput,

    /// Where the results go besides the output.
    #[command(flatten)]
    pub export: crate::export::ExportArgs,

    /// The results store the run is recorded in.
    #[command(flatten)]
    pub record: crate::cmd::results::RecordArgs,

    /// How long a measurement waits for its nodes when someone else's measurement holds
    /// them (reservations on the daemons), before it gives up naming the holder.
    #[arg(long, default_value = "60s", value_parser = parse_duration_or_zero)]
    pub wait: Duration,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `--interval`: a duration of at least 100 ms.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err(format!(
            "{text:?} is shorter than the 100ms a timeline interval can be"
        ));
    }
    Ok(interval)
}

/// Runs `sondectl run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.export.push_delete {
        let gateway = args.export.push_gateway.as_deref().unwrap_or_default();
        crate::export::push_delete(gateway, crate::export::Group::of("run", &args.export)).await?;
        println!("the runs' group removed from {gateway}");
        return Ok(());
    }
    let output = args.output;
    let report = measure(&plan(&args).await?, args.wait).await;
    match output {
        RunOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        RunOutput::Csv => print!("{}", report::csv(&report)?),
        RunOutput::Table => print!("{}", report::table(&report)),
    }
    args.record.record(serde_json::to_value(&report)?);
    crate::export::send(&args.export, "run", &crate::export::of_report(&report)).await?;
    check_complete(&report)
}

/// An error unless every planned measurement of `report` completed (what was measured has
/// been printed by then).
pub fn check_complete(report: &RunReport) -> anyhow::Result<()> {
    if report.complete {
        return Ok(());
    }
    let planned = report.spec.sizes_bytes.len() * report.spec.repetitions as usize;
    let done = report.measurements.iter().filter(|m| m.complete).count();
    bail!(
        "the run did not complete: {done} of {planned} measurements complete; {}",
        report.errors.first().cloned().unwrap_or_default()
    )
}

/// Refuses a run whose ends are not where the user asked: every server against the client.
fn check_placement(
    wanted: crate::cluster::placement::Placement,
    source: &endpoint::Place,
    destination: &endpoint::Destination,
) -> anyhow::Result<()> {
    use crate::cluster::placement::{End, check_ends};
    let end = |place: &endpoint::Place| -> anyhow::Result<(String, Option<String>)> {
        let node = place.node.clone().with_context(|| {
            format!(
                "placement needs to know the nodes, and {} is a daemon address",
                place.agent
            )
        })?;
        Ok((node, place.zone.clone()))
    };
    let (client_node, client_zone) = end(source)?;
    for server in &destination.servers {
        let (server_node, server_zone) = end(server)?;
        check_ends(
            wanted,
            End {
                node: &client_node,
                zone: client_zone.as_deref(),
            },
            End {
                node: &server_node,
                zone: server_zone.as_deref(),
            },
        )?;
    }
    Ok(())
}

/// The ends of a run, resolved in the lab or the cluster the flags name, with their placement
/// checked.
pub async fn resolve_ends(
    from: &EndpointRef,
    to: &EndpointRef,
    placement: &PlacementArgs,
    lab: &str,
) -> anyhow::Result<Ends> {
    let (source, destination) = if placement.cluster.given() {
        let cluster = crate::cluster::endpoints::Cluster::connect(&placement.cluster).await?;
        (cluster.source(from).await?, cluster.destination(to).await?)
    } else {
        let lab = Inventory::load(lab).ok();
        (
            endpoint::resolve_source(from, lab.as_ref())?,
            endpoint::resolve_destination(to, lab.as_ref())?,
        )
    };
    if let Some(wanted) = placement.wanted() {
        check_placement(wanted, &source, &destination)?;
    }
    let path = endpoint::path_kind(from, to, &source, &destination);
    Ok(Ends {
        from: from.to_string(),
        to: to.to_string(),
        source,
        destination,
        path,
    })
}

/// The plan `sondectl run` asks for: its ends resolved, every size of its sweep.
pub async fn plan(args: &RunArgs) -> anyhow::Result<Plan> {
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be 0 (as fast as possible) or a positive number of messages per second");
    }
    let dns = args.kind.proto() == sonde_proto::v1::RunKind::Dns;
    let external = matches!(args.to, EndpointRef::Dns(_));
    if external && !dns {
        bail!(
            "--to {}: a DNS server that is not sonde's is measured by the dns kind only",
            args.to
        );
    }
    if !dns && args.dns_name.is_some() {
        bail!("--dns-name is for the dns kind");
    }
    let max_rate = sonde_proto::kinds::MAX_EXTERNAL_DNS_RATE;
    if external && args.dns_name.is_none() {
        bail!("--to {}: say which name to ask with --dns-name", args.to);
    }
    if external && !(args.rate > 0.0 && args.rate <= max_rate) {
        bail!(
            "--to {}: a DNS server that is not sonde's is asked at a bounded rate: --rate 1 to {max_rate} queries a second",
            args.to
        );
    }
    let ends = resolve_ends(&args.from, &args.to, &args.placement, &args.lab).await?;
    let mut plan = Plan::between(args.kind, ends, args.timeout)?;
    if dns {
        plan.dns_name = args.dns_name.clone().unwrap_or_default();
        plan.dns_types = args.dns_types.clone();
    }
    let rr = args.kind.is_request_response();
    plan.sizes = match &args.sizes {
        Some(sweep) => sweep
            .iter()
            .map(|&size| (size, rr.then_some(size)))
            .collect(),
        None => {
            let size = args.size.unwrap_or(args.kind.default_size());
            let request = if rr {
                args.request_size.unwrap_or(size)
            } else {
                size
            };
            let response = rr.then(|| args.response_size.unwrap_or(size));
            vec![(request, response)]
        }
    };
    plan.direction = args.direction.proto();
    plan.duration = args.duration;
    plan.warmup = args.warmup;
    plan.interval = args.interval;
    plan.parallel = args.parallel;
    plan.rate = args.rate;
    plan.plain_io = args.plain_io;
    plan.repetitions = args.repetitions;
    plan.progress = args.output == RunOutput::Table && std::io::stderr().is_terminal();
    plan.trace = !args.no_trace;
    plan.trace_windows = args.trace_windows;
    plan.estimate_clock = args.estimate_clock;
    Ok(plan)
}

/// Runs `plan` on a session of its own, which Ctrl-C cancels: the report keeps what was
/// measured until then. A measurement waits at most `max_wait` for nodes others hold.
pub async fn measure(plan: &Plan, max_wait: Duration) -> RunReport {
    let session = Arc::new(Session::new(plan.timeout).with_max_wait(max_wait));
    let ctrl_c = engine::cancel_on_ctrl_c(&session);
    let report = session.run(plan).await;
    ctrl_c.abort();
    report
}
