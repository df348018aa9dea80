//! `sondectl conntrack ramp`: tcp-crr at rising rates until a conntrack table on the path shows
//! pressure, then the knee.
//!
//! Each step is an ordinary tcp-crr run (untraced) at a fixed rate for `--step`; its result
//! carries every node's conntrack delta (failed inserts, drops, early drops, entries). The ramp
//! stops at the first step where a stop condition holds, at `--ceiling`, or after
//! `--max-steps`, so it is always bounded. It changes no setting, so there is nothing to
//! restore; the TIME_WAIT entries it leaves expire on the kernel's own timeout.

use std::{sync::Arc, time::Duration};

use anyhow::bail;
use serde::Serialize;

use crate::{
    cli::{PlacementArgs, RunKindArg, parse_duration},
    cmd::run as runs,
    endpoint::EndpointRef,
    engine::{self, Session},
    output::OutputFormat,
    run::{
        breakdown::DropReport,
        execute::{Ends, Plan},
        report::{ConntrackReport, RunReport, nanos},
    },
};

/// What stops a conntrack ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RampStop {
    /// A conntrack insert failed (clash) on a node of the path.
    InsertFailed,
    /// The kernel dropped a packet for lack of a conntrack entry (table full).
    Drop,
    /// The kernel evicted an unassured entry to make room (table full).
    EarlyDrop,
    /// Connections failed (refused, reset, timed out, no local port).
    Errors,
    /// Fewer than 90% of the offered connections were made: the path or the generator
    /// saturated.
    Saturated,
    /// No stop condition: only --ceiling ends the ramp.
    None,
}

/// Flags of `sondectl conntrack ramp`.
#[derive(Debug, clap::Args)]
pub struct ConntrackRampArgs {
    /// Where the connections start: pod/NAME, node/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub from: EndpointRef,

    /// Where they go: pod/NAME, node/NAME, service/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub to: EndpointRef,

    /// The cluster and the placement the ends must have (as for `run`).
    #[command(flatten)]
    pub placement: PlacementArgs,

    /// The first step's rate, connections per second.
    #[arg(long, default_value_t = 250.0, allow_negative_numbers = true)]
    pub start_rate: f64,

    /// Each step's rate is the previous one's times this (more than 1).
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub factor: f64,

    /// How long each step lasts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub step: Duration,

    /// The highest rate to try, connections per second.
    #[arg(long, allow_negative_numbers = true)]
    pub ceiling: Option<f64>,

    /// What stops the ramp (comma-separated; `none` leaves only --ceiling).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "insert-failed,drop,early-drop,errors"
    )]
    pub stop_on: Vec<RampStop>,

    /// At most this many steps, whatever else happens.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_steps: u32,

    /// Client threads making connections.
    #[arg(long, default_value_t = 2)]
    pub parallel: u32,

    /// Attach the stage probes to each step, so that the packets the kernel drops are named
    /// with their reason and where they were (costs some of the rate).
    #[arg(long)]
    pub trace: bool,

    /// The lab whose pods, nodes and Services endpoints name.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// Output: a table of steps and the knee, or one JSON document.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// One step of the ramp.
#[derive(Debug, Serialize)]
pub struct Step {
    /// Connections a second asked for.
    pub offered_per_s: f64,
    /// Connections a second made.
    pub achieved_per_s: f64,
    /// 99th percentile connection+transaction time, ns.
    pub p99_ns: Option<u64>,
    /// Errors the run reported (first ones).
    pub errors: Vec<String>,
    /// Each node's table over the step.
    pub conntrack: Vec<ConntrackReport>,
    /// The step's own packets the kernel dropped, with its reason and where (`--trace` only).
    pub kernel_drops: Vec<DropReport>,
}

/// Where the ramp stopped, and why.
#[derive(Debug, Serialize)]
pub struct Knee {
    /// The 1-based step it stopped at.
    pub step: usize,
    /// Its offered and achieved rates.
    pub offered_per_s: f64,
    /// Connections a second made in that step.
    pub achieved_per_s: f64,
    /// What hit first (see `RampStop`), or `ceiling` / `max-steps` when nothing did.
    pub limit: String,
    /// The node whose table hit it, when it was a table.
    pub node: Option<String>,
    /// That table's occupancy at the end of the step (0 to 1).
    pub occupancy: Option<f64>,
    /// In words.
    pub summary: String,
}

/// What `sondectl conntrack ramp -o json` prints.
#[derive(Debug, Serialize)]
pub struct RampReport {
    /// The endpoints.
    pub from: String,
    /// Where the connections went.
    pub to: String,
    /// Seconds per step.
    pub step_seconds: f64,
    /// The steps run.
    pub steps: Vec<Step>,
    /// Where it stopped.
    pub knee: Option<Knee>,
    /// Per node, summed over the steps: what the ramp made the kernel count.
    pub totals: Vec<ConntrackReport>,
    /// Settings changed (none: the ramp only makes connections).
    pub changed: Vec<String>,
}

/// Checks the flags: a ramp must be bounded and its rates positive.
pub fn validate(args: &ConntrackRampArgs) -> anyhow::Result<()> {
    let positive = |value: f64| value.is_finite() && value > 0.0;
    if !positive(args.start_rate) {
        bail!(
            "--start-rate must be a positive number of connections per second; got {}",
            args.start_rate
        );
    }
    if !(args.factor.is_finite() && args.factor > 1.0) {
        bail!(
            "--factor must be more than 1 (each step faster than the last); got {}",
            args.factor
        );
    }
    if let Some(ceiling) = args.ceiling
        && !(positive(ceiling) && ceiling >= args.start_rate)
    {
        bail!(
            "--ceiling must be a rate of at least --start-rate ({}); got {ceiling}",
            args.start_rate
        );
    }
    let stops = stop_conditions(&args.stop_on);
    if stops.is_empty() && args.ceiling.is_none() {
        bail!(
            "a ramp needs a stop condition (--stop-on insert-failed,drop,early-drop,errors,saturated) \
             or a ceiling (--ceiling RATE): it never runs unbounded"
        );
    }
    if args.stop_on.contains(&RampStop::None) && args.stop_on.len() > 1 {
        bail!("--stop-on none cannot be combined with other stop conditions");
    }
    if args.step < Duration::from_millis(500) || args.step > Duration::from_secs(300) {
        bail!("--step must be 500ms to 300s");
    }
    Ok(())
}

fn stop_conditions(stops: &[RampStop]) -> Vec<RampStop> {
    stops
        .iter()
        .copied()
        .filter(|stop| *stop != RampStop::None)
        .collect()
}

/// Runs `sondectl conntrack ramp`.
pub async fn run(args: ConntrackRampArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let stops = stop_conditions(&args.stop_on);
    let mut report = RampReport {
        from: args.from.to_string(),
        to: args.to.to_string(),
        step_seconds: args.step.as_secs_f64(),
        steps: Vec::new(),
        knee: None,
        totals: Vec::new(),
        changed: Vec::new(),
    };
    let ends = runs::resolve_ends(&args.from, &args.to, &args.placement, &args.lab).await?;
    let base = step_plan(&args, ends)?;
    // One session for every step: one connection per daemon, Ctrl-C stops the step running.
    let session = Arc::new(Session::new(args.timeout));
    let ctrl_c = engine::cancel_on_ctrl_c(&session);
    let mut rate = args.start_rate;
    let mut failure = None;
    for index in 1..=args.max_steps as usize {
        if args
            .ceiling
            .is_some_and(|ceiling| rate > ceiling * (1.0 + 1e-9))
        {
            report.knee = Some(unhit(&report, "ceiling"));
            break;
        }
        eprintln!(
            "step {index}: tcp-crr at {rate:.0} connections/s for {:?}",
            args.step
        );
        let mut plan = base.clone();
        plan.rate = rate;
        let run = session.run(&plan).await;
        if session.is_cancelled() {
            failure = Some(format!("step {index} at {rate:.0}/s: cancelled (Ctrl-C)"));
            break;
        }
        let step = step_of(rate, &run);
        let hit = first_hit(&stops, &step);
        report.steps.push(step);
        if let Some((limit, node, occupancy, summary)) = hit {
            let step = &report.steps[index - 1];
            report.knee = Some(Knee {
                step: index,
                offered_per_s: step.offered_per_s,
                achieved_per_s: step.achieved_per_s,
                limit,
                node,
                occupancy,
                summary,
            });
            break;
        }
        rate *= args.factor;
    }
    if report.knee.is_none() && failure.is_none() {
        report.knee = Some(unhit(&report, "max-steps"));
    }
    ctrl_c.abort();
    report.totals = totals(&report.steps);
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Table => print!("{}", table(&report)),
    }
    match failure {
        Some(failure) => bail!("{failure}"),
        None => Ok(()),
    }
}

/// The plan every step shares (its rate set per step): 1-byte tcp-crr for `--step`, no
/// warm-up, traced only with `--trace`.
fn step_plan(args: &ConntrackRampArgs, ends: Ends) -> anyhow::Result<Plan> {
    let mut plan = Plan::between(RunKindArg(&sonde_proto::kinds::TCP_CRR), ends, args.timeout)?;
    plan.duration = args.step;
    plan.warmup = Duration::ZERO;
    plan.parallel = args.parallel;
    plan.sizes = vec![(1, Some(1))];
    plan.trace = args.trace;
    Ok(plan)
}

fn step_of(rate: f64, run: &RunReport) -> Step {
    let measurement = run.measurements.first();
    let mut errors: Vec<String> = run.errors.clone();
    if let Some(m) = measurement {
        errors.extend(m.errors.iter().cloned());
    }
    Step {
        offered_per_s: rate,
        achieved_per_s: measurement
            .and_then(|m| m.messages_per_second)
            .unwrap_or(0.0),
        p99_ns: measurement.and_then(|m| m.latency.as_ref().map(|l| l.p99_ns)),
        errors,
        conntrack: measurement.map_or_else(Vec::new, |m| {
            m.conntrack.iter().map(ConntrackReport::clone).collect()
        }),
        kernel_drops: measurement
            .and_then(|m| m.kernel.as_ref())
            .map_or_else(Vec::new, |kernel| kernel.drops.clone()),
    }
}

/// The first stop condition that holds in `step`, in the order failed insert, drop, early
/// drop, errors, saturation: `(limit, node, occupancy, summary)`.
fn first_hit(
    stops: &[RampStop],
    step: &Step,
) -> Option<(String, Option<String>, Option<f64>, String)> {
    let occupancy = |table: &ConntrackReport| {
        (table.max > 0).then(|| table.entries_end as f64 / table.max as f64)
    };
    let tables =
        |pick: fn(&ConntrackReport) -> u64| step.conntrack.iter().find(|table| pick(table) > 0);
    for stop in stops {
        let found = match stop {
            RampStop::InsertFailed => tables(|t| t.insert_failed).map(|t| {
                (t, format!("{} conntrack inserts failed on {}", t.insert_failed, t.node))
            }),
            RampStop::Drop => tables(|t| t.drop).map(|t| {
                (t, format!("{} packets dropped on {}: its conntrack table was full", t.drop, t.node))
            }),
            RampStop::EarlyDrop => tables(|t| t.early_drop).map(|t| {
                (
                    t,
                    format!(
                        "{}'s conntrack table was full ({} of {} entries): the kernel evicted {} unassured entries to admit new ones",
                        t.node, t.entries_end, t.max, t.early_drop
                    ),
                )
            }),
            RampStop::Errors => {
                if let Some(first) = step.errors.first() {
                    return Some((
                        "errors".to_owned(),
                        None,
                        None,
                        format!("connections failed ({} errors; first: {first})", step.errors.len()),
                    ));
                }
                None
            }
            RampStop::Saturated => {
                if step.achieved_per_s < 0.9 * step.offered_per_s {
                    return Some((
                        "saturated".to_owned(),
                        None,
                        None,
                        format!(
                            "only {:.0} of {:.0} connections/s were made: the path or the generator saturated before conntrack did",
                            step.achieved_per_s, step.offered_per_s
                        ),
                    ));
                }
                None
            }
            RampStop::None => None,
        };
        if let Some((table, mut summary)) = found {
            let own: Vec<String> = step
                .kernel_drops
                .iter()
                .filter(|drop| drop.node == table.node)
                .map(|drop| format!("{} {} after {}", drop.count, drop.reason, drop.after))
                .collect();
            if !own.is_empty() {
                summary.push_str(&format!("; the run's own packets: {}", own.join(", ")));
            }
            let name = serde_json::to_value(stop)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            return Some((name, Some(table.node.clone()), occupancy(table), summary));
        }
    }
    None
}

/// The knee when no condition held: the last step run.
fn unhit(report: &RampReport, limit: &str) -> Knee {
    let last = report.steps.last();
    Knee {
        step: report.steps.len(),
        offered_per_s: last.map_or(0.0, |s| s.offered_per_s),
        achieved_per_s: last.map_or(0.0, |s| s.achieved_per_s),
        limit: limit.to_owned(),
        node: None,
        occupancy: None,
        summary: format!("no stop condition held up to the {limit}"),
    }
}

/// Per node, the steps' deltas summed (entries: first start, last end).
fn totals(steps: &[Step]) -> Vec<ConntrackReport> {
    let mut totals: Vec<ConntrackReport> = Vec::new();
    for table in steps.iter().flat_map(|step| &step.conntrack) {
        match totals.iter_mut().find(|total| total.node == table.node) {
            Some(total) => {
                total.entries_end = table.entries_end;
                total.max = table.max;
                total.created += table.created;
                total.destroyed += table.destroyed;
                total.insert_failed += table.insert_failed;
                total.drop += table.drop;
                total.early_drop += table.early_drop;
                total.events_lost |= table.events_lost;
            }
            None => totals.push(table.clone()),
        }
    }
    totals
}

fn table(report: &RampReport) -> String {
    let mut table = crate::output::table(&[
        "STEP",
        "OFFERED/s",
        "MADE/s",
        "P99",
        "NODE",
        "ENTRIES",
        "FULL",
        "NEW",
        "FAILED",
        "DROPS",
        "EVICTED",
        "ERRORS",
    ]);
    for (index, step) in report.steps.iter().enumerate() {
        // Every row names its step, so that each line reads on its own.
        for node in &step.conntrack {
            table.add_row(vec![
                (index + 1).to_string(),
                format!("{:.0}", step.offered_per_s),
                format!("{:.0}", step.achieved_per_s),
                step.p99_ns.map_or("-".to_owned(), nanos),
                node.node.clone(),
                node.entries_end.to_string(),
                if node.max > 0 {
                    format!("{:.1}%", 100.0 * node.entries_end as f64 / node.max as f64)
                } else {
                    "-".to_owned()
                },
                node.created.to_string(),
                node.insert_failed.to_string(),
                node.drop.to_string(),
                node.early_drop.to_string(),
                step.errors.len().to_string(),
            ]);
        }
    }
    let mut text = format!(
        "conntrack ramp {} -> {} (tcp-crr, {:.1}s a step)\n\n{}\n\n",
        report.from,
        report.to,
        report.step_seconds,
        crate::output::trim_lines(&table)
    );
    if let Some(knee) = &report.knee {
        text.push_str(&format!(
            "knee: step {} at {:.0} connections/s offered ({:.0} made): {} [{}]\n",
            knee.step, knee.offered_per_s, knee.achieved_per_s, knee.summary, knee.limit
        ));
    }
    text.push_str("changed: nothing (the ramp only makes connections; its TIME_WAIT entries expire on their own)\n");
    text
}
