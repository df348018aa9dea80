//! What a report draws, read from result documents: each measurement with its labels, and
//! each run-set's node x node matrices.

use base64::Engine as _;
use hdrhistogram::{Histogram, serialization::Deserializer};
use serde_json::Value;

use crate::results::{Document, Shape, document::array};

/// One measurement of a document, with what tells it apart.
#[derive(Debug, Clone)]
pub struct Measured<'a> {
    /// `tcp-rr pod-ip node1->node2 1B #2`: unique within a report.
    pub label: String,
    /// The same without size and repetition: what a sweep's points share.
    pub series: String,
    /// The generator.
    pub kind: String,
    /// The path (pod-ip, service, host, intra-pod).
    pub path: String,
    /// Message size, bytes.
    pub size: u64,
    /// The measurement as written (`run-result.v1`'s `measurements[i]`).
    pub json: &'a Value,
}

impl Measured<'_> {
    /// Throughput, bit/s, when measured.
    pub fn throughput(&self) -> Option<f64> {
        self.json
            .get("throughput_bits_per_second")
            .and_then(Value::as_f64)
    }

    /// Median latency, ns (request/response kinds).
    pub fn p50(&self) -> Option<f64> {
        self.json.pointer("/latency/p50_ns").and_then(Value::as_f64)
    }

    /// 99th percentile latency, ns.
    pub fn p99(&self) -> Option<f64> {
        self.json.pointer("/latency/p99_ns").and_then(Value::as_f64)
    }

    /// The full latency histogram, ns.
    pub fn histogram(&self) -> Option<Histogram<u64>> {
        let text = self.json.pointer("/latency/histogram")?.as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        let histogram: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .ok()?;
        (!histogram.is_empty()).then_some(histogram)
    }

    /// The kernel breakdown, when traced.
    pub fn kernel(&self) -> Option<&Value> {
        self.json.get("kernel").filter(|kernel| !kernel.is_null())
    }

    /// The timeline, when the daemons reported one.
    pub fn timeline(&self) -> Option<&Value> {
        self.json
            .get("timeline")
            .filter(|timeline| timeline.get("intervals").is_some())
    }
}

/// A run-set's headline figures between its nodes, for a heatmap.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// `tcp-rr over pod-ip in run-set 3`.
    pub title: String,
    /// What the cells show, and which way is better.
    pub unit: Unit,
    /// Row and column names.
    pub nodes: Vec<String>,
    /// (client row, server column, value).
    pub cells: Vec<(usize, usize, f64)>,
}

/// A heatmap's figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Median latency, ns: lower is better.
    LatencyNs,
    /// Throughput, bit/s: higher is better.
    BitsPerSecond,
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Every measurement of `documents` (named `names`, e.g. their store IDs), in order.
pub fn measurements<'a>(documents: &'a [(String, Document)]) -> Vec<Measured<'a>> {
    let mut all = Vec::new();
    let several = documents.len() > 1;
    for (name, document) in documents {
        let prefix = if several {
            format!("{name}: ")
        } else {
            String::new()
        };
        match document.shape() {
            Shape::Run => {
                let run = document.json();
                let pair = format!(
                    "{}->{}",
                    text(run, "/from/endpoint"),
                    text(run, "/to/endpoint")
                );
                push_run(&mut all, &prefix, &pair, run);
            }
            Shape::RunSet => {
                for record in array(document.json(), "measurements") {
                    let pair = format!(
                        "{}->{}",
                        text(record, "/from_node"),
                        text(record, "/to_node")
                    );
                    let test = text(record, "/test");
                    for (i, run) in array(record, "results").enumerate() {
                        let pair = if record.get("fan_in").is_some_and(|f| !f.is_null()) {
                            format!("{pair} client {}", i + 1)
                        } else {
                            pair.clone()
                        };
                        push_run(&mut all, &format!("{prefix}{test} "), &pair, run);
                    }
                }
            }
        }
    }
    all
}

fn push_run<'a>(all: &mut Vec<Measured<'a>>, prefix: &str, pair: &str, run: &'a Value) {
    let kind = text(run, "/kind");
    let path = text(run, "/path");
    let repetitions = run
        .pointer("/spec/repetitions")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    for measurement in array(run, "measurements") {
        let size = measurement
            .get("size_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let repetition = measurement
            .get("repetition")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let series = format!("{prefix}{kind} {path} {pair}");
        let mut label = format!("{series} {}", crate::run::sizes::human(size));
        if repetitions > 1 {
            label.push_str(&format!(" #{repetition}"));
        }
        all.push(Measured {
            label,
            series,
            kind: kind.to_owned(),
            path: path.to_owned(),
            size,
            json: measurement,
        });
    }
}

/// Each run-set's node x node matrices: one per test and path, of the headline figure.
pub fn matrices(documents: &[(String, Document)]) -> Vec<Matrix> {
    let mut matrices = Vec::new();
    for (name, document) in documents {
        if document.shape() != Shape::RunSet {
            continue;
        }
        let set = document.json();
        let nodes: Vec<String> = set
            .pointer("/plan/nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let mut groups: std::collections::BTreeMap<(String, String), Vec<&Value>> =
            Default::default();
        for record in array(set, "measurements") {
            if record.get("fan_in").is_some_and(|f| !f.is_null()) {
                continue;
            }
            groups
                .entry((
                    text(record, "/test").to_owned(),
                    text(record, "/path").to_owned(),
                ))
                .or_default()
                .push(record);
        }
        for ((test, path), records) in groups {
            let rr = sonde_proto::kinds::KindRules::by_name(text(records[0], "/kind"))
                .is_none_or(|rules| rules.is_request_response());
            let unit = if rr {
                Unit::LatencyNs
            } else {
                Unit::BitsPerSecond
            };
            let index = |node: &str| nodes.iter().position(|n| n == node);
            let cells: Vec<(usize, usize, f64)> = records
                .iter()
                .filter_map(|record| {
                    let headline = record.get("headline")?;
                    let value = match unit {
                        Unit::LatencyNs => headline.get("p50_ns")?.as_f64()?,
                        Unit::BitsPerSecond => headline.get("bits_per_second")?.as_f64()?,
                    };
                    Some((
                        index(text(record, "/from_node"))?,
                        index(text(record, "/to_node"))?,
                        value,
                    ))
                })
                .collect();
            if cells.is_empty() {
                continue;
            }
            matrices.push(Matrix {
                title: format!("{test} over {path} ({name})"),
                unit,
                nodes: nodes.clone(),
                cells,
            });
        }
    }
    matrices
}
