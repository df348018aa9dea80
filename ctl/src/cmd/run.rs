//! `sondectl run KIND --from A --to B`.

use std::{
    io::IsTerminal as _,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use sonde_proto::v1 as pb;

use crate::{
    cli::{DirectionArg, RunArgs, RunOutput},
    endpoint,
    lab::Inventory,
    run::{
        execute::{self, Agents, InFlight, Plan},
        report::{self, EndReport, RunReport, SpecReport},
    },
};

/// Runs `sondectl run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let output = args.output;
    let report = measure(args).await?;
    match output {
        RunOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        RunOutput::Csv => print!("{}", report::csv(&report)?),
        RunOutput::Table => print!("{}", report::table(&report)),
    }
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

/// Resolves the endpoints, runs every measurement `args` asks for (Ctrl-C stops both sides)
/// and returns the report, complete or not.
pub async fn measure(args: RunArgs) -> anyhow::Result<RunReport> {
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be 0 (as fast as possible) or a positive number of messages per second");
    }
    let (source, destination) = match &args.placement.cluster.kubeconfig {
        Some(_) => {
            let cluster =
                crate::cluster::endpoints::Cluster::connect(&args.placement.cluster).await?;
            (
                cluster.source(&args.from).await?,
                cluster.destination(&args.to).await?,
            )
        }
        None => {
            let lab = Inventory::load(&args.lab).ok();
            (
                endpoint::resolve_source(&args.from, lab.as_ref())?,
                endpoint::resolve_destination(&args.to, lab.as_ref())?,
            )
        }
    };
    if let Some(wanted) = args.placement.wanted() {
        check_placement(wanted, &source, &destination)?;
    }
    let path = endpoint::path_kind(&args.from, &args.to, &source, &destination);
    let (kind, default_size) = (args.kind.proto(), args.kind.default_size());
    if args.kind.is_intra_pod()
        && !(destination.servers.len() == 1 && destination.servers[0] == source)
    {
        bail!(
            "{} is an intra-pod baseline: --from and --to must be the same pod (or node)",
            args.kind.name()
        );
    }
    let rr = args.kind.is_request_response();
    let sizes: Vec<(u64, Option<u64>)> = match &args.sizes {
        Some(sweep) => sweep
            .iter()
            .map(|&size| (size, rr.then_some(size)))
            .collect(),
        None => {
            let size = args.size.unwrap_or(default_size);
            let request = if rr {
                args.request_size.unwrap_or(size)
            } else {
                size
            };
            let response = rr.then(|| args.response_size.unwrap_or(size));
            vec![(request, response)]
        }
    };
    let direction = match args.direction {
        DirectionArg::Forward => pb::Direction::ClientToServer,
        DirectionArg::Reverse => pb::Direction::ServerToClient,
        DirectionArg::Both => pb::Direction::Both,
    };
    let plan = Plan {
        kind,
        duration: args.duration,
        warmup: args.warmup,
        parallel: args.parallel,
        rate: args.rate,
        direction,
        plain_io: args.plain_io,
        sizes,
        repetitions: args.repetitions,
        source,
        destination,
        timeout: args.timeout,
        progress: args.output == RunOutput::Table && std::io::stderr().is_terminal(),
        trace: !args.no_trace,
        estimate_clock: args.estimate_clock,
    };

    let mut agents = Agents::default();
    let to_places: Vec<_> = plan.destination.servers.iter().collect();
    let report_from = EndReport {
        endpoint: args.from.to_string(),
        places: vec![plan.source.clone()],
        ip: plan.source.ip.map(|ip| ip.to_string()),
        kernels: execute::kernels(&[&plan.source], &mut agents, plan.timeout).await,
    };
    let report_to = EndReport {
        endpoint: args.to.to_string(),
        places: plan.destination.servers.clone(),
        ip: Some(plan.destination.ip.to_string()),
        kernels: execute::kernels(&to_places, &mut agents, plan.timeout).await,
    };
    let mut report = RunReport {
        schema: report::SCHEMA,
        sonde_version: env!("CARGO_PKG_VERSION"),
        started_at_unix_seconds: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        kind: args.kind.name().to_owned(),
        from: report_from,
        to: report_to,
        path,
        spec: SpecReport {
            duration_seconds: plan.duration.as_secs_f64(),
            warmup_seconds: plan.warmup.as_secs_f64(),
            parallel: plan.parallel,
            rate: plan.rate,
            direction: format!("{:?}", args.direction).to_lowercase(),
            plain_io: args.plain_io,
            repetitions: plan.repetitions,
            sizes_bytes: plan.sizes.iter().map(|(size, _)| *size).collect(),
        },
        measurements: Vec::new(),
        complete: false,
        errors: Vec::new(),
    };

    let in_flight = Mutex::new(InFlight::default());
    let cancelled = {
        let all = async {
            for size_index in 0..plan.sizes.len() {
                for repetition in 1..=plan.repetitions {
                    let measurement =
                        execute::measure(&plan, &mut agents, size_index, repetition, &in_flight)
                            .await;
                    report.measurements.push(measurement);
                }
            }
        };
        tokio::select! {
            () = all => false,
            _ = tokio::signal::ctrl_c() => true,
        }
    };
    if cancelled {
        let flight = in_flight.lock().map(|f| f.clone()).unwrap_or_default();
        execute::cancel(flight, &mut agents, plan.timeout).await;
        report
            .errors
            .push("cancelled (Ctrl-C): both sides were stopped".to_owned());
    }
    for m in &report.measurements {
        report.errors.extend(m.errors.iter().map(|e| {
            format!(
                "{} #{}: {e}",
                crate::run::sizes::human(m.size_bytes),
                m.repetition
            )
        }));
    }
    let planned = plan.sizes.len() * plan.repetitions as usize;
    report.complete = !cancelled
        && report.measurements.len() == planned
        && report.measurements.iter().all(|m| m.complete);

    Ok(report)
}
