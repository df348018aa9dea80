//! A run-set as tables: per test and path, a node x node matrix of the headline figure
//! (latency p50/p99 for request/response kinds, throughput for streams); then a summary by
//! placement class and path (median and spread); then what failed and what was skipped.

use std::collections::BTreeMap;

use super::{
    execute::{Headline, Record, RunSet, Status},
    expand::Expansion,
};
use crate::{
    output,
    run::report::{bits, nanos},
};

/// The figure a cell shows.
fn cell(record: &Record) -> String {
    let Some(headline) = record.headline.filter(|_| record.status != Status::NotRun) else {
        return "-".into();
    };
    let mark = if record.status == Status::Failed {
        " !"
    } else {
        ""
    };
    match (headline.p50_ns, headline.p99_ns, headline.bits_per_second) {
        (Some(p50), Some(p99), _) if is_rr(&record.kind) => {
            format!("{}/{}{mark}", nanos(p50), nanos(p99))
        }
        (_, _, Some(bps)) => format!("{}{mark}", bits(bps)),
        _ => format!("?{mark}"),
    }
}

fn is_rr(kind: &str) -> bool {
    sonde_proto::kinds::KindRules::by_name(kind).is_none_or(|rules| rules.is_request_response())
}

/// The number a summary compares: p50 for request/response kinds, throughput for streams.
fn figure(record: &Record) -> Option<f64> {
    let headline: Headline = record.headline?;
    if record.status != Status::Complete {
        return None;
    }
    if is_rr(&record.kind) {
        headline.p50_ns.map(|ns| ns as f64)
    } else {
        headline.bits_per_second
    }
}

/// The run-set as text.
pub fn table(set: &RunSet) -> String {
    let mut out = String::new();
    let mut groups: BTreeMap<(String, &str), Vec<&Record>> = BTreeMap::new();
    for record in &set.measurements {
        groups
            .entry((record.test.clone(), record.path.name()))
            .or_default()
            .push(record);
    }
    let nodes = &set.plan.nodes;
    for ((test, path), records) in &groups {
        let fan_ins: Vec<&&Record> = records.iter().filter(|r| r.fan_in.is_some()).collect();
        if !fan_ins.is_empty() {
            for record in fan_ins {
                out.push_str(&fan_in_table(test, path, record));
            }
            continue;
        }
        let unit = if is_rr(&records[0].kind) {
            "latency p50/p99"
        } else {
            "throughput"
        };
        out.push_str(&format!(
            "{test} over {path}: {unit}, client (row) to server (column)\n"
        ));
        let mut header = vec!["from \\ to"];
        header.extend(nodes.iter().map(String::as_str));
        let mut table = output::table(&header);
        for from in nodes {
            let mut row = vec![from.clone()];
            for to in nodes {
                row.push(
                    records
                        .iter()
                        .find(|r| &r.from_node == from && &r.to_node == to)
                        .map_or_else(String::new, |r| cell(r)),
                );
            }
            table.add_row(row);
        }
        out.push_str(&output::trim_lines(&table));
        out.push_str("\n\n");
    }
    out.push_str(&summary(set));
    let failed: Vec<&Record> = set
        .measurements
        .iter()
        .filter(|r| r.status != Status::Complete)
        .collect();
    if !failed.is_empty() {
        out.push_str("\nnot complete (! in the matrices):\n");
        for record in failed {
            out.push_str(&format!(
                "  {} ({:?}): {}\n",
                record.key,
                record.status,
                record.errors.first().map_or("", String::as_str)
            ));
        }
    }
    let waited: Vec<&Record> = set
        .measurements
        .iter()
        .filter(|r| !r.waits.is_empty())
        .collect();
    if !waited.is_empty() {
        out.push_str("\nwaited for their nodes:\n");
        for record in waited {
            out.push_str(&format!(
                "  {} waited {:.1}s: {}\n",
                record.key,
                record.waited_seconds,
                record.waits.first().map_or("", String::as_str)
            ));
        }
    }
    if !set.plan.skipped.is_empty() {
        out.push_str(&format!("\nskipped ({}):\n", set.plan.skipped.len()));
        for skipped in &set.plan.skipped {
            out.push_str(&format!("  {}: {}\n", skipped.what, skipped.why));
        }
    }
    let wall = super::execute::wall(set).as_secs_f64();
    let resumed = set.measurements.iter().filter(|r| r.resumed).count();
    out.push_str(&format!(
        "\n{} measurements in {} rounds, {:.1}s (one at a time: about {:.0}s){}\n",
        set.measurements.len(),
        set.plan.rounds.len(),
        wall,
        set.plan.expected_serial_seconds,
        if resumed > 0 {
            format!("; {resumed} taken from the resumed run-set")
        } else {
            String::new()
        }
    ));
    out
}

fn fan_in_table(test: &str, path: &str, record: &Record) -> String {
    let Some(fan_in) = &record.fan_in else {
        return String::new();
    };
    let mut out = format!(
        "{test} over {path}: fan-in of {} clients to {}: {} in all, Jain's index {:.3}\n",
        fan_in.shares.len(),
        record.to_node,
        bits(fan_in.aggregate_bits_per_second),
        fan_in.jain_index
    );
    let mut table = output::table(&["client", "throughput", "share"]);
    for share in &fan_in.shares {
        table.add_row(vec![
            share.from.clone(),
            bits(share.bits_per_second),
            format!("{:.1}%", share.fraction * 100.0),
        ]);
    }
    out.push_str(&output::trim_lines(&table));
    out.push_str("\n\n");
    out
}

/// Median and spread of the headline figure by test, placement class and path.
fn summary(set: &RunSet) -> String {
    let mut groups: BTreeMap<(String, String, &str), Vec<f64>> = BTreeMap::new();
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for record in &set.measurements {
        kinds.insert(record.test.clone(), record.kind.clone());
        let placement = record.placement.name().to_owned();
        let entry = groups
            .entry((record.test.clone(), placement, record.path.name()))
            .or_default();
        if let Some(value) = figure(record) {
            entry.push(value);
        }
    }
    let mut table = output::table(&["test", "placement", "path", "n", "median", "min", "max"]);
    for ((test, placement, path), mut values) in groups {
        values.sort_by(f64::total_cmp);
        let rr = kinds.get(&test).is_some_and(|kind| is_rr(kind));
        let show = |value: Option<&f64>| match value {
            None => "-".to_owned(),
            Some(&v) if rr => nanos(v as u64),
            Some(&v) => bits(v),
        };
        table.add_row(vec![
            test,
            placement,
            path.to_owned(),
            values.len().to_string(),
            show(values.get(values.len() / 2)),
            show(values.first()),
            show(values.last()),
        ]);
    }
    format!(
        "summary (p50 for request/response, throughput for streams):\n{}\n",
        output::trim_lines(&table)
    )
}

/// An expansion, before anything runs: what `sondectl scenario plan` prints.
pub fn plan_table(name: &str, expansion: &Expansion) -> String {
    let mut out = format!(
        "scenario {name}: {} measurements over {} nodes in {} rounds; about {:.0}s (one at a time: {:.0}s)\n\n",
        expansion.measurements.len(),
        expansion.nodes.len(),
        expansion.rounds.len(),
        expansion.expected_wall.as_secs_f64(),
        expansion.expected_serial.as_secs_f64(),
    );
    let mut table = output::table(&[
        "round",
        "id",
        "test",
        "path",
        "placement",
        "class",
        "from",
        "to",
    ]);
    for (round, ids) in expansion.rounds.iter().enumerate() {
        for &id in ids {
            let m = &expansion.measurements[id];
            let placement = m.placement.name().to_owned();
            let (from, to) = match m.ends.as_slice() {
                [(from, to)] => (from.clone(), to.clone()),
                many => (
                    format!("{} clients", many.len()),
                    many.first().map(|e| e.1.clone()).unwrap_or_default(),
                ),
            };
            table.add_row(vec![
                (round + 1).to_string(),
                id.to_string(),
                m.test_name.clone(),
                m.path.name().to_owned(),
                placement,
                m.class.name().to_owned(),
                from,
                to,
            ]);
        }
    }
    out.push_str(&output::trim_lines(&table));
    out.push('\n');
    if !expansion.skipped.is_empty() {
        out.push_str(&format!("\nskipped ({}):\n", expansion.skipped.len()));
        for skipped in &expansion.skipped {
            out.push_str(&format!("  {}: {}\n", skipped.what, skipped.why));
        }
    }
    out
}
