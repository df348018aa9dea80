//! Runs an expanded scenario on a session, round after round, and keeps everything in one
//! run-set document: the scenario, the plan, and every measurement with its results, times,
//! waits and failures. A failed measurement does not stop the set; a cancelled one keeps what
//! was measured; `--resume` takes the complete measurements of an earlier document as they are.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::future::join_all;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{
    expand::{Expansion, Planned, Skipped},
    spec::{Class, PathName, Scenario, Test},
};
use crate::{
    cluster::placement::Placement,
    endpoint::{self, EndpointRef},
    engine::Session,
    lab::Inventory,
    run::{
        execute::{Ends, Plan},
        report::RunReport,
    },
};

/// The run-set document's schema name.
pub const SCHEMA: &str = "sonde.run-set/v1";

/// One scenario run: `docs/schema/run-set.v1.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSet {
    /// [`SCHEMA`].
    pub schema: String,
    /// The sondectl that ran it.
    pub sonde_version: String,
    /// The scenario as written.
    pub scenario: Scenario,
    /// A hash of the scenario (FNV-1a of its JSON), so that runs of one spec can be matched.
    pub scenario_hash: String,
    /// Where it ran (`lab NAME`, `cluster`).
    pub origin: String,
    /// When it started and ended, ms since the epoch.
    pub started_at_unix_ms: u64,
    /// When it ended.
    pub ended_at_unix_ms: u64,
    /// The plan it followed.
    pub plan: PlanDoc,
    /// Every planned measurement, run or not.
    pub measurements: Vec<Record>,
    /// Every measurement complete.
    pub complete: bool,
    /// What went wrong, one line each.
    pub errors: Vec<String>,
}

/// The plan of a run-set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanDoc {
    /// The nodes taking part.
    pub nodes: Vec<String>,
    /// Measurement IDs by round.
    pub rounds: Vec<Vec<usize>>,
    /// Combinations left out, and why.
    pub skipped: Vec<SkippedDoc>,
    /// What the rounds should take, s.
    pub expected_wall_seconds: f64,
    /// What one measurement at a time would take, s.
    pub expected_serial_seconds: f64,
}

/// A combination left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedDoc {
    /// Test, path and pair.
    pub what: String,
    /// Why.
    pub why: String,
}

impl From<&Skipped> for SkippedDoc {
    fn from(skipped: &Skipped) -> Self {
        Self {
            what: skipped.what.clone(),
            why: skipped.why.clone(),
        }
    }
}

/// What became of a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every run complete.
    Complete,
    /// Ran, and something failed (the errors say what; what was measured is kept).
    Failed,
    /// Never started: the set was cancelled first.
    NotRun,
}

/// One measurement of the set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Its ID in the plan.
    pub id: usize,
    /// Test, path and pair, stable across runs of the scenario.
    pub key: String,
    /// The test's name.
    pub test: String,
    /// The generator.
    pub kind: String,
    /// The path.
    pub path: PathName,
    /// The pair's placement class.
    pub placement: Placement,
    /// The client's node.
    pub from_node: String,
    /// The server's node.
    pub to_node: String,
    /// Scheduling class.
    pub class: Class,
    /// The round it ran in (0-based).
    pub round: usize,
    /// Its runs' endpoints.
    pub ends: Vec<EndsDoc>,
    /// What became of it.
    pub status: Status,
    /// When it started, ms since the epoch.
    pub started_at_unix_ms: Option<u64>,
    /// When it ended.
    pub ended_at_unix_ms: Option<u64>,
    /// Time spent waiting for its nodes, s.
    pub waited_seconds: f64,
    /// Whom it waited for, one line per refusal.
    pub waits: Vec<String>,
    /// What failed.
    pub errors: Vec<String>,
    /// Each run's result document (`run-result.v1`): one for a pair, one per client for a
    /// fan-in.
    pub results: Vec<serde_json::Value>,
    /// The figures the tables show.
    pub headline: Option<Headline>,
    /// A fan-in's aggregate and shares.
    pub fan_in: Option<FanIn>,
    /// Taken as it was from an earlier run-set (`--resume`).
    #[serde(default)]
    pub resumed: bool,
    /// When paced (the monitor), how far into its slot it started, ms: a random offset, so
    /// that the rounds of several monitors never synchronise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_in_slot_ms: Option<u64>,
}

/// How a paced run spreads its rounds (the monitor's): round `i` of the set starts `i` slots
/// after the start, and each measurement at a random offset within what its slot leaves.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// The length of one round's slot.
    pub slot: Duration,
}

/// One run's ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndsDoc {
    /// Client endpoint.
    pub from: String,
    /// Server endpoint.
    pub to: String,
}

/// The figures of a measurement that tables compare: medians over its repetitions.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Headline {
    /// Latency median, ns (request/response kinds).
    pub p50_ns: Option<u64>,
    /// Latency 99th percentile, ns.
    pub p99_ns: Option<u64>,
    /// Throughput, bit/s (summed over a fan-in's clients).
    pub bits_per_second: Option<f64>,
    /// Messages (transactions, datagrams) per second.
    pub messages_per_second: Option<f64>,
}

/// How a fan-in shared its choke point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanIn {
    /// Sum of the clients' throughputs, bit/s.
    pub aggregate_bits_per_second: f64,
    /// Each client's.
    pub shares: Vec<Share>,
    /// Jain's fairness index over the clients' throughputs: 1 when equal, 1/n when one took
    /// everything.
    pub jain_index: f64,
}

/// One client's share of a fan-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Share {
    /// The client's endpoint.
    pub from: String,
    /// Its throughput, bit/s.
    pub bits_per_second: f64,
    /// Its fraction of the aggregate.
    pub fraction: f64,
}

/// Jain's fairness index of `values`.
pub fn jain_index(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|v| v * v).sum();
    if values.is_empty() || squares == 0.0 {
        return 0.0;
    }
    sum * sum / (values.len() as f64 * squares)
}

/// Where a scenario's endpoints are resolved.
#[derive(Debug)]
pub enum Target {
    /// A lab.
    Lab(Inventory),
    /// A Kubernetes cluster.
    Cluster(Box<crate::cluster::endpoints::Cluster>),
}

impl Target {
    /// The ends of one run.
    async fn ends(&self, from: &str, to: &str) -> crate::Result<Ends> {
        let from_ref: EndpointRef = from.parse().map_err(crate::Error::refused)?;
        let to_ref: EndpointRef = to.parse().map_err(crate::Error::refused)?;
        let (source, destination) = match self {
            Self::Lab(lab) => (
                endpoint::resolve_source(&from_ref, Some(lab))?,
                endpoint::resolve_destination(&to_ref, Some(lab))?,
            ),
            Self::Cluster(cluster) => (
                cluster.source(&from_ref).await?,
                cluster.destination(&to_ref).await?,
            ),
        };
        let path = endpoint::path_kind(&from_ref, &to_ref, &source, &destination);
        Ok(Ends {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
            destination,
            path,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// FNV-1a of the scenario's JSON.
pub fn scenario_hash(scenario: &Scenario) -> String {
    let json = serde_json::to_string(scenario).unwrap_or_default();
    format!("{:016x}", super::fnv1a(json.as_bytes()))
}

/// A plan for one run of `test` between `ends`.
fn plan_of(test: &Test, class: Class, ends: Ends, timeout: Duration) -> crate::Result<Plan> {
    let mut plan = Plan::between(test.kind, ends, timeout)?;
    plan.class = class;
    plan.duration = test.duration;
    plan.warmup = test.warmup;
    plan.sizes = test.sizes.clone();
    plan.parallel = test.parallel;
    plan.rate = test.rate;
    plan.direction = test.direction.proto();
    plan.plain_io = test.plain_io;
    plan.repetitions = test.repetitions;
    plan.trace = test.trace;
    plan.trace_windows = test.trace_windows;
    Ok(plan)
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> Option<T> {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len() / 2).copied()
}

/// The headline figures of one run's report.
pub fn headline_of(report: &RunReport) -> Headline {
    let m = &report.measurements;
    Headline {
        p50_ns: median(
            m.iter()
                .filter_map(|m| Some(m.latency.as_ref()?.p50_ns))
                .collect(),
        ),
        p99_ns: median(
            m.iter()
                .filter_map(|m| Some(m.latency.as_ref()?.p99_ns))
                .collect(),
        ),
        bits_per_second: median(
            m.iter()
                .filter_map(|m| m.throughput_bits_per_second)
                .collect(),
        ),
        messages_per_second: median(m.iter().filter_map(|m| m.messages_per_second).collect()),
    }
}

/// Runs one planned measurement: its runs at once (one, or a fan-in's clients).
async fn measure(
    session: &Session,
    target: &Target,
    test: &Test,
    planned: &Planned,
    round: usize,
) -> Record {
    let mut record = Record {
        id: planned.id,
        key: planned.key.clone(),
        test: planned.test_name.clone(),
        kind: test.kind.name().to_owned(),
        path: planned.path,
        placement: planned.placement,
        from_node: planned.from_node.clone(),
        to_node: planned.to_node.clone(),
        class: planned.class,
        round,
        ends: planned
            .ends
            .iter()
            .map(|(from, to)| EndsDoc {
                from: from.clone(),
                to: to.clone(),
            })
            .collect(),
        status: Status::NotRun,
        started_at_unix_ms: None,
        ended_at_unix_ms: None,
        waited_seconds: 0.0,
        waits: Vec::new(),
        errors: Vec::new(),
        results: Vec::new(),
        headline: None,
        fan_in: None,
        resumed: false,
        offset_in_slot_ms: None,
    };
    if session.is_cancelled() {
        return record;
    }
    let mut plans = Vec::new();
    for (from, to) in &planned.ends {
        match target.ends(from, to).await {
            Ok(ends) => match plan_of(test, planned.class, ends, session.timeout()) {
                Ok(plan) => plans.push(plan),
                Err(err) => record
                    .errors
                    .push(format!("{from} -> {to}: {}", crate::error::chain(&err))),
            },
            Err(err) => record
                .errors
                .push(format!("{from} -> {to}: {}", crate::error::chain(&err))),
        }
    }
    if !record.errors.is_empty() {
        record.status = Status::Failed;
        return record;
    }
    record.started_at_unix_ms = Some(now_ms());
    let reports = join_all(plans.iter().map(|plan| session.run(plan))).await;
    record.ended_at_unix_ms = Some(now_ms());
    let cancelled = session.is_cancelled();
    for report in &reports {
        record.waited_seconds = record.waited_seconds.max(report.waited_seconds);
        for wait in &report.waits {
            if !record.waits.contains(wait) {
                record.waits.push(wait.clone());
            }
        }
        record.errors.extend(
            report
                .errors
                .iter()
                .map(|e| format!("{} -> {}: {e}", report.from.endpoint, report.to.endpoint)),
        );
    }
    let headlines: Vec<Headline> = reports.iter().map(headline_of).collect();
    record.headline = match headlines.as_slice() {
        [one] => Some(*one),
        [] => None,
        many => Some(Headline {
            p50_ns: median(many.iter().filter_map(|h| h.p50_ns).collect()),
            p99_ns: median(many.iter().filter_map(|h| h.p99_ns).collect()),
            bits_per_second: Some(many.iter().filter_map(|h| h.bits_per_second).sum()),
            messages_per_second: Some(many.iter().filter_map(|h| h.messages_per_second).sum()),
        }),
    };
    if planned.ends.len() > 1 {
        let bits: Vec<f64> = headlines
            .iter()
            .map(|h| h.bits_per_second.unwrap_or(0.0))
            .collect();
        let aggregate: f64 = bits.iter().sum();
        record.fan_in = Some(FanIn {
            aggregate_bits_per_second: aggregate,
            shares: reports
                .iter()
                .zip(&bits)
                .map(|(report, &bits)| Share {
                    from: report.from.endpoint.clone(),
                    bits_per_second: bits,
                    fraction: if aggregate > 0.0 {
                        bits / aggregate
                    } else {
                        0.0
                    },
                })
                .collect(),
            jain_index: jain_index(&bits),
        });
    }
    let complete = !cancelled && reports.iter().all(|r| r.complete);
    record.status = if complete {
        Status::Complete
    } else {
        Status::Failed
    };
    record.results = reports
        .iter()
        .map(|report| serde_json::to_value(report).unwrap_or_default())
        .collect();
    record
}

/// Runs `expansion` of `scenario` round by round on `session`; measurements `resume_from`
/// holds as complete are taken as they are. `progress`: one bar for the whole set on stderr.
pub async fn run(
    session: &Session,
    target: &Target,
    scenario: &Scenario,
    expansion: &Expansion,
    resume_from: Option<&RunSet>,
    progress: bool,
    pace: Option<Pace>,
) -> RunSet {
    let started_at_unix_ms = now_ms();
    let started = tokio::time::Instant::now();
    let earlier: HashMap<&str, &Record> = resume_from
        .map(|set| {
            set.measurements
                .iter()
                .filter(|r| r.status == Status::Complete)
                .map(|r| (r.key.as_str(), r))
                .collect()
        })
        .unwrap_or_default();
    let total = expansion.measurements.len() as u64;
    let bar = progress.then(|| {
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} measurements  {msg}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(scenario.name.clone());
        bar
    });
    let mut records: Vec<Option<Record>> = vec![None; expansion.measurements.len()];
    let rounds = expansion.rounds.len();
    for (round, ids) in expansion.rounds.iter().enumerate() {
        if let Some(bar) = &bar {
            bar.set_message(format!("round {}/{rounds}", round + 1));
        }
        let mut to_run = Vec::new();
        for &id in ids {
            let planned = &expansion.measurements[id];
            match earlier.get(planned.key.as_str()) {
                Some(done) => {
                    let mut done = (*done).clone();
                    done.id = id;
                    done.round = round;
                    done.resumed = true;
                    records[id] = Some(done);
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                }
                None => to_run.push(planned),
            }
        }
        let slot_start = pace.map(|pace| started + pace.slot * round as u32);
        if let Some(at) = slot_start {
            tokio::time::sleep_until(at).await;
        }
        let bar_ref = &bar;
        let done = join_all(to_run.into_iter().map(|planned| async move {
            // Paced: start at a random offset within what the slot leaves after the
            // measurement's own length (pScheduler's slip).
            let offset = pace.map(|pace| {
                let slack = pace.slot.saturating_sub(planned.expected);
                slack.mul_f64(fastrand::f64())
            });
            if let Some(offset) = offset {
                tokio::time::sleep(offset).await;
            }
            let mut record = measure(
                session,
                target,
                &expansion.tests[planned.test],
                planned,
                round,
            )
            .await;
            record.offset_in_slot_ms = offset.map(|o| o.as_millis() as u64);
            if let Some(bar) = bar_ref {
                bar.inc(1);
            }
            record
        }))
        .await;
        for record in done {
            let id = record.id;
            records[id] = Some(record);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let measurements: Vec<Record> = records.into_iter().flatten().collect();
    let mut errors: Vec<String> = measurements
        .iter()
        .filter(|r| r.status == Status::Failed)
        .map(|r| {
            format!(
                "{}: {}",
                r.key,
                r.errors.first().map_or("failed", String::as_str)
            )
        })
        .collect();
    if session.is_cancelled() {
        errors.push("cancelled (Ctrl-C): what was measured is kept; --resume runs the rest".into());
    }
    let complete = measurements.iter().all(|r| r.status == Status::Complete);
    RunSet {
        schema: SCHEMA.to_owned(),
        sonde_version: env!("CARGO_PKG_VERSION").to_owned(),
        scenario: scenario.clone(),
        scenario_hash: scenario_hash(scenario),
        origin: String::new(),
        started_at_unix_ms,
        ended_at_unix_ms: now_ms(),
        plan: plan_doc(expansion),
        measurements,
        complete,
        errors,
    }
}

/// The plan part of the document.
pub fn plan_doc(expansion: &Expansion) -> PlanDoc {
    PlanDoc {
        nodes: expansion.nodes.clone(),
        rounds: expansion.rounds.clone(),
        skipped: expansion.skipped.iter().map(SkippedDoc::from).collect(),
        expected_wall_seconds: expansion.expected_wall.as_secs_f64(),
        expected_serial_seconds: expansion.expected_serial.as_secs_f64(),
    }
}

/// Seconds a set took from start to end.
pub fn wall(set: &RunSet) -> Duration {
    Duration::from_millis(set.ended_at_unix_ms.saturating_sub(set.started_at_unix_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_is_one_when_equal_and_one_over_n_when_one_takes_all() {
        assert!((jain_index(&[25.0, 25.0, 25.0, 25.0]) - 1.0).abs() < 1e-12);
        assert!((jain_index(&[100.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        let skewed = jain_index(&[40.0, 30.0, 20.0, 10.0]);
        assert!(skewed > 0.25 && skewed < 1.0);
    }
}
