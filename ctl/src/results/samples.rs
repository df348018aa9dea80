//! The figures of result documents, by measurement and metric, for comparison: each
//! repetition of a measurement is one sample, and measurements are matched across documents
//! by what they measured (kind, size, path, placement and pair), never by when.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::document::{Document, Shape, array};

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    /// Throughput, transactions per second.
    Higher,
    /// Latency, a kernel stage's time.
    Lower,
}

/// The samples of one metric of one measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Which way it improves.
    pub better: Better,
    /// One value per repetition (per document, when several are pooled), in the metric's
    /// unit (bit/s, 1/s, ns).
    pub values: Vec<f64>,
}

/// A measurement and a metric of it: `tcp-rr|pod-ip|node1->node2 1B`, `latency p99`.
pub type Slot = (String, String);

/// Every sample of some documents, by measurement and metric.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// By (measurement, metric).
    pub series: BTreeMap<Slot, Series>,
}

impl Samples {
    /// The samples of `documents`, pooled (e.g. the last runs of a scenario).
    pub fn of<'a>(documents: impl IntoIterator<Item = &'a Document>) -> Self {
        let mut samples = Self::default();
        for document in documents {
            samples.add(document);
        }
        samples
    }

    /// Adds the samples of `document`.
    pub fn add(&mut self, document: &Document) {
        match document.shape() {
            Shape::Run => self.add_run(&run_key(document.json()), document.json()),
            Shape::RunSet => {
                for record in array(document.json(), "measurements") {
                    let key = record
                        .get("key")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let runs: Vec<&Value> = array(record, "results").collect();
                    let several = runs.len() > 1;
                    for (i, run) in runs.into_iter().enumerate() {
                        let key = if several {
                            format!("{key} client {}", i + 1)
                        } else {
                            key.to_owned()
                        };
                        self.add_run(&key, run);
                    }
                }
            }
        }
    }

    fn add_run(&mut self, key: &str, run: &Value) {
        for measurement in array(run, "measurements") {
            // A measurement that failed half-way says little about the path.
            if measurement.get("complete").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let size = measurement
                .get("size_bytes")
                .and_then(Value::as_u64)
                .unwrap_or_default();
            let at = format!("{key} {size}B");
            let number = |value: Option<&Value>| value.and_then(Value::as_f64);
            let latency = measurement.get("latency").filter(|l| !l.is_null());
            if let Some(latency) = latency {
                self.push(
                    &at,
                    "transactions/s",
                    Better::Higher,
                    number(measurement.get("messages_per_second")),
                );
                self.push(
                    &at,
                    "latency p50",
                    Better::Lower,
                    number(latency.get("p50_ns")),
                );
                self.push(
                    &at,
                    "latency p99",
                    Better::Lower,
                    number(latency.get("p99_ns")),
                );
            } else {
                self.push(
                    &at,
                    "throughput",
                    Better::Higher,
                    number(measurement.get("throughput_bits_per_second")),
                );
            }
            let Some(kernel) = measurement.get("kernel").filter(|k| !k.is_null()) else {
                continue;
            };
            for direction in array(kernel, "directions") {
                let way = direction
                    .get("direction")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                for stage in array(direction, "stages") {
                    let name = stage
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let p50 = stage.get("latency").and_then(|l| number(l.get("p50_ns")));
                    self.push(
                        &at,
                        &format!("kernel {way}: {name} p50"),
                        Better::Lower,
                        p50,
                    );
                }
            }
        }
    }

    fn push(&mut self, at: &str, metric: &str, better: Better, value: Option<f64>) {
        let Some(value) = value.filter(|v| v.is_finite()) else {
            return;
        };
        self.series
            .entry((at.to_owned(), metric.to_owned()))
            .or_insert_with(|| Series {
                better,
                values: Vec::new(),
            })
            .values
            .push(value);
    }
}

/// A plain run's measurement key: its kind, path and ends, as the user named them.
fn run_key(run: &Value) -> String {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).unwrap_or_default().to_owned();
    let end = |name: &str| text(run.get(name).and_then(|end| end.get("endpoint")));
    format!(
        "{}|{}|{}->{}",
        text(run.get("kind")),
        text(run.get("path")),
        end("from"),
        end("to")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: &str, p50s: &[u64]) -> Document {
        let measurements: Vec<Value> = p50s
            .iter()
            .enumerate()
            .map(|(i, p50)| {
                serde_json::json!({
                    "size_bytes": 1, "repetition": i + 1, "complete": true,
                    "messages_per_second": 1e9 / *p50 as f64,
                    "latency": {"p50_ns": p50, "p99_ns": p50 * 2},
                    "kernel": {"directions": [{"direction": "client-to-server",
                        "stages": [{"name": "wire", "latency": {"p50_ns": 900}}]}]}
                })
            })
            .collect();
        Document::from_json(serde_json::json!({
            "schema": "sonde.run-result/v1", "kind": kind, "path": "pod-ip",
            "from": {"endpoint": "pod/pod1"}, "to": {"endpoint": "pod/pod3"},
            "spec": {}, "measurements": measurements, "complete": true,
        }))
        .expect("a run document")
    }

    #[test]
    fn every_repetition_is_a_sample_of_each_metric() {
        let samples = Samples::of([&run("tcp-rr", &[100, 110, 120])]);
        let key = "tcp-rr|pod-ip|pod/pod1->pod/pod3 1B".to_owned();
        let p50 = &samples.series[&(key.clone(), "latency p50".to_owned())];
        assert_eq!(p50.values, vec![100.0, 110.0, 120.0]);
        assert_eq!(p50.better, Better::Lower);
        let wire = &samples.series[&(key.clone(), "kernel client-to-server: wire p50".to_owned())];
        assert_eq!(wire.values.len(), 3);
        assert_eq!(
            samples.series[&(key, "transactions/s".to_owned())].better,
            Better::Higher
        );
    }

    #[test]
    fn documents_pool_and_incomplete_measurements_are_left_out() {
        let mut broken = run("tcp-rr", &[100]);
        let json = serde_json::json!({
            "schema": "sonde.run-result/v1", "kind": "tcp-rr", "path": "pod-ip",
            "from": {"endpoint": "pod/pod1"}, "to": {"endpoint": "pod/pod3"}, "spec": {},
            "measurements": [{"size_bytes": 1, "complete": false, "latency": {"p50_ns": 5}}],
        });
        broken = Document::from_json(json).unwrap_or(broken);
        let samples = Samples::of([&run("tcp-rr", &[100, 110]), &run("tcp-rr", &[120]), &broken]);
        let key = (
            "tcp-rr|pod-ip|pod/pod1->pod/pod3 1B".to_owned(),
            "latency p50".to_owned(),
        );
        assert_eq!(samples.series[&key].values, vec![100.0, 110.0, 120.0]);
    }
}
