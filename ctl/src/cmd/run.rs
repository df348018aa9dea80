//! `sondectl run KIND --from A --to B`.

use std::{io::IsTerminal as _, sync::Arc};

use anyhow::{Context as _, bail};

use crate::{
    cli::{PlacementArgs, RunArgs, RunOutput},
    endpoint,
    engine::{self, Session},
    lab::Inventory,
    run::{
        execute::{Ends, Plan},
        report::{self, RunReport},
    },
};

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
    from: &endpoint::EndpointRef,
    to: &endpoint::EndpointRef,
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
    let external = matches!(args.to, endpoint::EndpointRef::Dns(_));
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
    plan.parallel = args.parallel;
    plan.rate = args.rate;
    plan.plain_io = args.plain_io;
    plan.repetitions = args.repetitions;
    plan.progress = args.output == RunOutput::Table && std::io::stderr().is_terminal();
    plan.trace = !args.no_trace;
    plan.estimate_clock = args.estimate_clock;
    Ok(plan)
}

/// Runs `plan` on a session of its own, which Ctrl-C cancels: the report keeps what was
/// measured until then. A measurement waits at most `max_wait` for nodes others hold.
pub async fn measure(plan: &Plan, max_wait: std::time::Duration) -> RunReport {
    let session = Arc::new(Session::new(plan.timeout).with_max_wait(max_wait));
    let ctrl_c = engine::cancel_on_ctrl_c(&session);
    let report = session.run(plan).await;
    ctrl_c.abort();
    report
}
