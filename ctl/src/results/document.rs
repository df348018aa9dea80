//! A result document as sondectl writes it (`run -o json`, `scenario run -o json`), read back
//! as JSON: the store keeps documents whole, from this sondectl or from another one (CI
//! artifacts), so it reads them by their documented fields rather than by this version's
//! structs.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::{Context as _, Result, refuse};

/// The schema of a single run's document (`docs/schema/run-result.v1.json`).
pub const RUN_SCHEMA: &str = crate::run::report::SCHEMA;
/// The schema of a scenario's run-set (`docs/schema/run-set.v1.json`).
pub const RUN_SET_SCHEMA: &str = crate::scenario::execute::SCHEMA;

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One `sondectl run`.
    Run,
    /// One `sondectl scenario run`.
    RunSet,
}

impl Shape {
    /// As the store and `results list` name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::RunSet => "run-set",
        }
    }
}

/// A result document, checked to be one sondectl writes.
#[derive(Debug, Clone)]
pub struct Document {
    shape: Shape,
    json: Value,
}

/// What makes documents comparable, and what `results list` shows: the facts the store keeps
/// beside each document.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Facts {
    /// When it started, ms since the epoch.
    pub started_at_unix_ms: u64,
    /// The scenario's name (run-sets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// Where it ran: `lab NAME`, `cluster` (run-sets), or the ends (`pod1 -> pod3`).
    pub origin: String,
    /// The generators, sorted.
    pub kinds: Vec<String>,
    /// The nodes taking part, sorted.
    pub nodes: Vec<String>,
    /// Their zones, sorted.
    pub zones: Vec<String>,
    /// Their kernels, sorted.
    pub kernels: Vec<String>,
    /// Placement classes (run-sets), sorted.
    pub placements: Vec<String>,
    /// Paths (pod-ip, service, host, ...), sorted.
    pub paths: Vec<String>,
    /// Message sizes, bytes, sorted.
    pub sizes: Vec<u64>,
    /// The MTUs of the clients' routes, bytes, sorted.
    pub mtus: Vec<u64>,
    /// The sondectl that wrote it.
    pub sonde_version: String,
    /// A hash of what was asked (the scenario's hash, or a run's kind, ends and spec): equal
    /// hashes ran the same thing.
    pub spec_hash: String,
    /// Measurements in it (a run's sizes x repetitions, a run-set's records).
    pub measurements: u64,
    /// Whether every measurement completed.
    pub complete: bool,
}

impl Facts {
    /// What it is in a few words: `run-set mesh (lab lab)`, `run pod/pod1 -> pod/pod3`.
    pub fn what(&self, shape: Shape) -> String {
        match &self.scenario {
            Some(scenario) => format!("{} {scenario} ({})", shape.name(), self.origin),
            None => format!("{} {}", shape.name(), self.origin),
        }
    }

    /// When it started, UTC, to the second.
    pub fn started(&self) -> String {
        jiff::Timestamp::from_millisecond(self.started_at_unix_ms as i64)
            .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|_| self.started_at_unix_ms.to_string())
    }
}

impl Document {
    /// Reads a document from its JSON text.
    pub fn parse(text: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text).context("reading a result document")?;
        Self::from_json(json)
    }

    /// Checks that `json` is a document sondectl writes.
    pub fn from_json(json: Value) -> Result<Self> {
        let shape = match json.get("schema").and_then(Value::as_str) {
            Some(RUN_SCHEMA) => Shape::Run,
            Some(RUN_SET_SCHEMA) => Shape::RunSet,
            Some(other) => refuse!(
                "a document of schema {other:?} is not a result sondectl can store \
                 (expected {RUN_SCHEMA} or {RUN_SET_SCHEMA})"
            ),
            None => refuse!(
                "not a sonde result document: no \"schema\" field (write one with \
                 `sondectl run -o json` or `sondectl scenario run -o json`)"
            ),
        };
        let field = |name: &str| json.get(name).is_some();
        let needed: &[&str] = match shape {
            Shape::Run => &["kind", "from", "to", "spec", "measurements"],
            Shape::RunSet => &["scenario", "plan", "measurements"],
        };
        if let Some(missing) = needed.iter().find(|name| !field(name)) {
            refuse!("a {} document without its {missing:?} field", shape.name());
        }
        Ok(Self { shape, json })
    }

    /// A run or a run-set.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The document as it was written.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The facts the store keeps beside it.
    pub fn facts(&self) -> Facts {
        match self.shape {
            Shape::Run => run_facts(&self.json),
            Shape::RunSet => set_facts(&self.json),
        }
    }

    /// The run-result documents inside: itself, or each record's runs.
    pub fn runs(&self) -> Vec<&Value> {
        match self.shape {
            Shape::Run => vec![&self.json],
            Shape::RunSet => records(&self.json)
                .flat_map(|record| array(record, "results"))
                .collect(),
        }
    }
}

fn text(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The items of `value`'s array field `name` (none when it is missing or not an array).
pub(crate) fn array<'a>(value: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(name)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn records(set: &Value) -> impl Iterator<Item = &Value> {
    array(set, "measurements")
}

/// A run's kernels, nodes and sizes, added to sets a run-set gathers over its records.
#[derive(Default)]
struct Gathered {
    kinds: BTreeSet<String>,
    nodes: BTreeSet<String>,
    zones: BTreeSet<String>,
    kernels: BTreeSet<String>,
    placements: BTreeSet<String>,
    paths: BTreeSet<String>,
    sizes: BTreeSet<u64>,
    mtus: BTreeSet<u64>,
}

impl Gathered {
    fn run(&mut self, run: &Value) {
        self.kinds.insert(text(run, "kind"));
        self.paths.insert(text(run, "path"));
        for end in ["from", "to"] {
            let Some(end) = run.get(end) else { continue };
            for place in array(end, "places") {
                if let Some(node) = place.get("node").and_then(Value::as_str) {
                    self.nodes.insert(node.to_owned());
                }
                if let Some(zone) = place.get("zone").and_then(Value::as_str) {
                    self.zones.insert(zone.to_owned());
                }
            }
            for kernel in array(end, "kernels").filter_map(Value::as_str) {
                self.kernels.insert(kernel.to_owned());
            }
        }
        if let Some(spec) = run.get("spec") {
            self.sizes
                .extend(array(spec, "sizes_bytes").filter_map(Value::as_u64));
        }
        self.mtus.extend(
            array(run, "measurements")
                .filter_map(|m| m.pointer("/client/mtu").and_then(Value::as_u64)),
        );
    }

    fn into_facts(self, facts: Facts) -> Facts {
        let sorted = |set: BTreeSet<String>| -> Vec<String> {
            set.into_iter().filter(|s| !s.is_empty()).collect()
        };
        Facts {
            kinds: sorted(self.kinds),
            nodes: sorted(self.nodes),
            zones: sorted(self.zones),
            kernels: sorted(self.kernels),
            placements: sorted(self.placements),
            paths: sorted(self.paths),
            sizes: self.sizes.into_iter().collect(),
            mtus: self.mtus.into_iter().collect(),
            ..facts
        }
    }
}

fn run_facts(run: &Value) -> Facts {
    let mut gathered = Gathered::default();
    gathered.run(run);
    let end = |name: &str| {
        run.get(name)
            .map(|end| text(end, "endpoint"))
            .unwrap_or_default()
    };
    // What was asked, not what came of it: equal for two runs of the same command.
    let asked = serde_json::json!({
        "kind": run.get("kind"),
        "from": end("from"),
        "to": end("to"),
        "path": run.get("path"),
        "spec": run.get("spec"),
    });
    let measurements = array(run, "measurements").count() as u64;
    gathered.into_facts(Facts {
        started_at_unix_ms: run
            .get("started_at_unix_seconds")
            .and_then(Value::as_u64)
            .unwrap_or_default()
            .saturating_mul(1000),
        scenario: None,
        origin: format!("{} -> {}", end("from"), end("to")),
        sonde_version: text(run, "sonde_version"),
        spec_hash: format!(
            "{:016x}",
            crate::scenario::fnv1a(asked.to_string().as_bytes())
        ),
        measurements,
        complete: run.get("complete").and_then(Value::as_bool) == Some(true),
        ..Facts::default()
    })
}

fn set_facts(set: &Value) -> Facts {
    let mut gathered = Gathered::default();
    for record in records(set) {
        gathered.kinds.insert(text(record, "kind"));
        gathered.placements.insert(text(record, "placement"));
        gathered.paths.insert(text(record, "path"));
        for run in array(record, "results") {
            gathered.run(run);
        }
    }
    if let Some(plan) = set.get("plan") {
        gathered.nodes.extend(
            array(plan, "nodes")
                .filter_map(Value::as_str)
                .map(str::to_owned),
        );
    }
    gathered.into_facts(Facts {
        started_at_unix_ms: set
            .get("started_at_unix_ms")
            .and_then(Value::as_u64)
            .unwrap_or_default(),
        scenario: set
            .get("scenario")
            .and_then(|scenario| scenario.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        origin: text(set, "origin"),
        sonde_version: text(set, "sonde_version"),
        spec_hash: text(set, "scenario_hash"),
        measurements: records(set).count() as u64,
        complete: set.get("complete").and_then(Value::as_bool) == Some(true),
        ..Facts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_of_other_schemas_are_refused_with_what_was_expected() {
        let err = Document::parse(r#"{"schema": "sonde.plan/v1"}"#).expect_err("refused");
        assert!(err.to_string().contains("sonde.run-result/v1"), "{err}");
        let err = Document::parse(r#"{"kind": "tcp-rr"}"#).expect_err("refused");
        assert!(err.to_string().contains("no \"schema\""), "{err}");
        let err = Document::parse(r#"{"schema": "sonde.run-result/v1", "kind": "tcp-rr"}"#)
            .expect_err("refused");
        assert!(err.to_string().contains("\"from\""), "{err}");
        assert!(Document::parse("not json").is_err());
    }
}
