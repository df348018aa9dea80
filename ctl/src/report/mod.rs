//! `sondectl report`: results as one self-contained HTML file (inline SVG and CSS, nothing
//! fetched: it opens offline and attaches to a ticket).
//!
//! # Layout
//! - [`extract`]: what the charts draw, read from result documents.
//! - [`charts`]: the charts, drawn in Rust as SVG.
//!
//! Sections, each with an `id`: its link in the page's navigation shows it alone (CSS
//! `:target`, no script), and the page opened plainly shows them all: what was measured; latency spectra; figures against
//! message size; kernel stages; timelines; node x node heatmaps; the comparison with a
//! baseline. A section with nothing to show says so. Large run-sets are summarised rather than
//! drawn whole: each section says how many it shows of how many, and which.

pub mod charts;
pub mod extract;

use std::{collections::BTreeMap, fmt::Write as _};

use extract::{Measured, Unit};

use crate::{
    error::Result,
    results::{Document, compare::Comparison},
    run::report::{bits, nanos},
};

/// Most spectra drawn (the highest p99 first), eight to a chart.
const MAX_SPECTRA: usize = 48;
/// Lines per spectrum or size chart.
const PER_CHART: usize = 8;
/// Most kernel breakdowns and timelines drawn.
const MAX_STAGES: usize = 12;
const MAX_TIMELINES: usize = 12;

/// The sections, in order: (id, title).
pub const SECTIONS: [(&str, &str); 7] = [
    ("summary", "What was measured"),
    ("spectra", "Latency spectra"),
    ("sizes", "Against message size"),
    ("stages", "Kernel stages"),
    ("timelines", "Timelines"),
    ("heatmaps", "Node x node"),
    ("comparison", "Compared with the baseline"),
];

/// The report of `documents` (each with the name it is shown under), compared with a
/// baseline when given.
pub fn html(documents: &[(String, Document)], comparison: Option<&Comparison>) -> Result<String> {
    let measured = extract::measurements(documents);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>sonde report</title><style>{STYLE}</style></head><body>\n\
         <h1>sonde report</h1><p class=\"meta\">{} document{}, {} measurement{}; written by sondectl {}</p>\n<nav>",
        documents.len(),
        plural(documents.len()),
        measured.len(),
        plural(measured.len()),
        env!("CARGO_PKG_VERSION"),
    );
    // A section's link shows that section alone (CSS :target, no script); "all" shows all.
    page.push_str("<a href=\"#\">all</a> ");
    for (id, title) in SECTIONS {
        let _ = write!(page, "<a href=\"#{id}\">{title}</a> ");
    }
    page.push_str("</nav>\n");
    section(&mut page, "summary", summary(documents));
    section(&mut page, "spectra", spectra(&measured)?);
    section(&mut page, "sizes", sizes(&measured)?);
    section(&mut page, "stages", stages(&measured)?);
    section(&mut page, "timelines", timelines(&measured)?);
    section(&mut page, "heatmaps", heatmaps(documents)?);
    section(&mut page, "comparison", compared(comparison)?);
    page.push_str("</body></html>\n");
    Ok(page)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:900px;color:#222}\
    h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}\
    nav a{margin-right:12px}table{border-collapse:collapse;font-size:12px;margin:8px 0}\
    td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}th{background:#f4f4f4}\
    .meta,.note{color:#666;font-size:13px}figure{margin:12px 0}\
    .regressed{color:#c00;font-weight:bold}.improved{color:#080}.unknown{color:#b70}\
    body:has(section:target) section:not(:target){display:none}";

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Text made safe for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn section(page: &mut String, id: &str, body: String) {
    let title = SECTIONS
        .iter()
        .find(|(section, _)| *section == id)
        .map_or(id, |(_, title)| title);
    let _ = write!(
        page,
        "<section id=\"{id}\"><h2>{title}</h2>\n{body}</section>\n"
    );
}

fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

fn figure(svg: String) -> String {
    format!("<figure>{svg}</figure>\n")
}

fn summary(documents: &[(String, Document)]) -> String {
    let mut out = String::from(
        "<table><tr><th>result</th><th>what</th><th>started (UTC)</th><th>kinds</th>\
         <th>nodes</th><th>kernels</th><th>measurements</th><th>complete</th></tr>\n",
    );
    for (name, document) in documents {
        let facts = document.facts();
        let started = facts.started();
        let what = facts.what(document.shape());
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{started}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&what),
            escape(&facts.kinds.join(", ")),
            escape(&facts.nodes.join(", ")),
            escape(&facts.kernels.join(", ")),
            facts.measurements,
            if facts.complete { "yes" } else { "no" },
        );
    }
    out.push_str("</table>\n");
    out
}

fn spectra(measured: &[Measured<'_>]) -> Result<String> {
    // Chosen by the p99 the documents state, and only those decoded: a histogram is a few
    // hundred KiB once expanded.
    let mut chosen: Vec<(&Measured<'_>, f64)> = measured
        .iter()
        .filter_map(|m| Some((m, m.p99()?)))
        .collect();
    let total = chosen.len();
    chosen.sort_by(|a, b| b.1.total_cmp(&a.1));
    chosen.truncate(MAX_SPECTRA);
    let with: Vec<(&Measured<'_>, hdrhistogram::Histogram<u64>)> = chosen
        .into_iter()
        .filter_map(|(m, _)| Some((m, m.histogram()?)))
        .collect();
    if with.is_empty() {
        return Ok(note(
            "No latency histograms: no request/response measurement.",
        ));
    }
    let mut out = String::new();
    if total > with.len() {
        out.push_str(&note(&format!(
            "{} of {total} measurements, the highest p99 first.",
            with.len()
        )));
    }
    for (i, chunk) in with.chunks(PER_CHART).enumerate() {
        let series: Vec<(String, hdrhistogram::Histogram<u64>)> = chunk
            .iter()
            .map(|(m, h)| (m.label.clone(), h.clone()))
            .collect();
        let title = if with.len() > PER_CHART {
            format!(
                "latency by percentile ({} of {})",
                i + 1,
                with.len().div_ceil(PER_CHART)
            )
        } else {
            "latency by percentile".to_owned()
        };
        out.push_str(&figure(charts::spectrum(&title, &series)?));
    }
    Ok(out)
}

fn median(values: &[f64]) -> f64 {
    crate::results::compare::median(values)
}

/// A series' figures at one size, over its repetitions.
#[derive(Debug, Default)]
struct AtSize {
    throughput: Vec<f64>,
    p50: Vec<f64>,
}

/// A series by size.
type Sweep = BTreeMap<u64, AtSize>;

/// A chart's line: its label and (size, median) points.
type Line = (String, Vec<(u64, f64)>);

fn sizes(measured: &[Measured<'_>]) -> Result<String> {
    // Per kind: each series (path, pair) with its figures at each size.
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, Sweep>> = BTreeMap::new();
    for m in measured {
        let at = by_kind
            .entry(&m.kind)
            .or_default()
            .entry(&m.series)
            .or_default()
            .entry(m.size)
            .or_default();
        at.throughput.extend(m.throughput());
        at.p50.extend(m.p50());
    }
    let mut out = String::new();
    for (kind, series) in by_kind {
        let swept: Vec<(&str, &Sweep)> = series
            .iter()
            .filter(|(_, sweep)| sweep.len() >= 2)
            .map(|(name, sweep)| (*name, sweep))
            .take(PER_CHART)
            .collect();
        let lines = |pick: fn(&AtSize) -> &[f64]| -> Vec<Line> {
            swept
                .iter()
                .map(|(name, sweep)| {
                    let points = sweep
                        .iter()
                        .filter(|(_, at)| !pick(at).is_empty())
                        .map(|(size, at)| (*size, median(pick(at))))
                        .collect();
                    ((*name).to_owned(), points)
                })
                .filter(|(_, points): &Line| !points.is_empty())
                .collect()
        };
        for (unit, what, line) in [
            (
                Unit::BitsPerSecond,
                "throughput",
                lines(|at| &at.throughput),
            ),
            (Unit::LatencyNs, "latency", lines(|at| &at.p50)),
        ] {
            if !line.is_empty() {
                out.push_str(&figure(charts::against_size(
                    &format!("{kind}: {what} against message size"),
                    unit,
                    &line,
                )?));
            }
        }
    }
    if out.is_empty() {
        return Ok(note(
            "No payload sweep: no series measured at two sizes or more (`sondectl run --sizes`).",
        ));
    }
    Ok(out)
}

fn stages(measured: &[Measured<'_>]) -> Result<String> {
    let with: Vec<&Measured<'_>> = measured.iter().filter(|m| m.kernel().is_some()).collect();
    if with.is_empty() {
        return Ok(note("No kernel breakdown: no traced measurement."));
    }
    let mut out = String::new();
    if with.len() > MAX_STAGES {
        out.push_str(&note(&format!(
            "The first {MAX_STAGES} of {} traced measurements.",
            with.len()
        )));
    }
    for m in with.iter().take(MAX_STAGES) {
        if let Some(kernel) = m.kernel()
            && let Some(svg) = charts::stages(&m.label, kernel)?
        {
            out.push_str(&figure(svg));
        }
    }
    Ok(out)
}

fn timelines(measured: &[Measured<'_>]) -> Result<String> {
    let mut with: Vec<&Measured<'_>> = measured.iter().filter(|m| m.timeline().is_some()).collect();
    if with.is_empty() {
        return Ok(note(
            "No timeline: the results came from daemons without timelines.",
        ));
    }
    // Those where something happened first: events, then failures.
    let weight = |m: &Measured<'_>| {
        let timeline = m.timeline();
        let events = timeline
            .and_then(|t| t["events"].as_array())
            .map_or(0, Vec::len);
        let failures: u64 = timeline
            .and_then(|t| t["intervals"].as_array())
            .into_iter()
            .flatten()
            .map(|i| i["errors"].as_u64().unwrap_or(0) + i["failed_connects"].as_u64().unwrap_or(0))
            .sum();
        (events, failures)
    };
    with.sort_by_key(|m| std::cmp::Reverse(weight(m)));
    let mut out = String::new();
    if with.len() > MAX_TIMELINES {
        out.push_str(&note(&format!(
            "{MAX_TIMELINES} of {} timelines: those with events and failures first.",
            with.len()
        )));
    }
    for m in with.iter().take(MAX_TIMELINES) {
        if let Some(svg) = charts::timeline(&m.label, m)? {
            out.push_str(&figure(svg));
        }
    }
    Ok(out)
}

fn heatmaps(documents: &[(String, Document)]) -> Result<String> {
    let matrices = extract::matrices(documents);
    if matrices.is_empty() {
        return Ok(note(
            "No run-set with node pairs: heatmaps come from scenario runs.",
        ));
    }
    let mut out = String::new();
    for matrix in &matrices {
        out.push_str(&figure(charts::heatmap(matrix)?));
    }
    Ok(out)
}

fn compared(comparison: Option<&Comparison>) -> Result<String> {
    let Some(comparison) = comparison else {
        return Ok(note(
            "No baseline given (`sondectl report --baseline REF`).",
        ));
    };
    let mut out = String::new();
    if let Some(svg) = charts::changes(comparison)? {
        out.push_str(&figure(svg));
    }
    out.push_str(
        "<table><tr><th>measurement</th><th>metric</th><th>baseline</th><th>current</th>\
         <th>change [95% CI]</th><th>p</th><th>verdict</th></tr>\n",
    );
    for row in &comparison.rows {
        let value = |v: f64| match row.metric.as_str() {
            "throughput" => bits(v),
            m if m.ends_with("/s") => format!("{v:.0}/s"),
            _ => nanos(v.max(0.0) as u64),
        };
        let verdict = row.verdict.name().to_lowercase();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{} (n={})</td><td>{} (n={})</td>\
             <td>{:+.1}% [{:+.1}%, {:+.1}%]</td><td>{:.3}</td><td class=\"{verdict}\">{verdict}</td></tr>",
            escape(&row.measurement),
            escape(&row.metric),
            value(row.baseline_median),
            row.baseline_samples,
            value(row.current_median),
            row.current_samples,
            row.change * 100.0,
            row.change_interval[0] * 100.0,
            row.change_interval[1] * 100.0,
            row.p_value,
        );
    }
    out.push_str("</table>\n");
    out.push_str(&note(&format!(
        "Threshold {:.1}%, alpha {}: a change is a regression when the test rejects no change \
         and the median moved beyond the threshold.",
        comparison.settings.threshold * 100.0,
        comparison.settings.alpha
    )));
    Ok(out)
}
