//! A scenario file (YAML, `docs/schema/scenario.v1.json`): which nodes, which topology, which
//! placement classes and paths, which tests. Parsed, then checked field by field, so that a
//! mistake is named by where it is (`tests[1].duration`) before anything runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    cli::{DirectionArg, RunKindArg},
    cluster::placement::Placement,
    run::sizes,
};

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML of the scenario's shape.
    #[error("{0}")]
    Parse(String),
    /// A field holds a value the scenario cannot run.
    #[error("{field}: {reason}")]
    Invalid {
        /// Where, as `tests[0].duration`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A scenario as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    /// Its name (1 to 63 lower-case letters, digits and dashes): results and reservations
    /// carry it.
    pub name: String,
    /// What it is for, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Which nodes take part.
    pub nodes: NodeSet,
    /// Which node pairs are measured.
    pub topology: Topology,
    /// Which placement classes of pairs are kept (default: cross-node).
    #[serde(default = "default_placement")]
    pub placement: Vec<Placement>,
    /// Which paths each pair is measured over (default: pod-ip).
    #[serde(default = "default_paths")]
    pub paths: Vec<PathName>,
    /// What is measured on every pair and path.
    pub tests: Vec<TestSpec>,
}

fn default_placement() -> Vec<Placement> {
    vec![Placement::CrossNode]
}

fn default_paths() -> Vec<PathName> {
    vec![PathName::PodIp]
}

/// The nodes of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NodeSet {
    /// `all`: every node with a daemon.
    All(AllNodes),
    /// A list of node names.
    Names(Vec<String>),
    /// `{selector: "label=value,..."}` (Kubernetes node labels; in the lab, `zone=NAME`), or
    /// `{count: N}`: the first N nodes in name order.
    Some(NodeFilter),
}

/// The word `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllNodes {
    /// Every node.
    All,
}

/// Some of the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFilter {
    /// A label selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// At most this many nodes, in name order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
}

/// Which node pairs a scenario measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// An explicit list of (client node, server node).
    Pairs(Vec<PairSpec>),
    /// Every ordered pair (`peers: None`), or each node measured by exactly `peers` others on
    /// a ring (kubenurse's neighbours: deterministic, not random).
    Mesh {
        /// Peers measuring each node.
        #[serde(skip_serializing_if = "Option::is_none")]
        peers: Option<usize>,
    },
    /// Each node to the next, the last to the first.
    Ring,
    /// `clients` nodes to one server node at once: one measurement of the aggregate.
    FanIn(FanInSpec),
}

/// One pair of a `pairs` topology.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PairSpec {
    /// The client's node.
    pub from: String,
    /// The server's node.
    pub to: String,
}

/// A fan-in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FanInSpec {
    /// The server's node (default: the first node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// How many clients (default: every other node), each on another node when there are
    /// enough, else on pods of the nodes in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<usize>,
}

impl<'de> Deserialize<'de> for Topology {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MeshSpec {
            peers: Option<usize>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        enum Shaped {
            Pairs(Vec<PairSpec>),
            Mesh(MeshSpec),
            FanIn(FanInSpec),
        }
        let value = serde_json::Value::deserialize(deserializer)?;
        let known = "pairs, mesh, mesh: {peers: K}, ring or fan-in";
        match value {
            serde_json::Value::String(name) => match name.as_str() {
                "mesh" => Ok(Self::Mesh { peers: None }),
                "ring" => Ok(Self::Ring),
                "fan-in" => Ok(Self::FanIn(FanInSpec {
                    server: None,
                    clients: None,
                })),
                "pairs" => Err(D::Error::custom(
                    "topology: pairs needs its list: `pairs: [{from: NODE, to: NODE}, ...]`",
                )),
                other => Err(D::Error::custom(format!(
                    "topology: unknown topology {other:?} (expected {known})"
                ))),
            },
            serde_json::Value::Object(_) => match serde_json::from_value::<Shaped>(value) {
                Ok(Shaped::Pairs(pairs)) => Ok(Self::Pairs(pairs)),
                Ok(Shaped::Mesh(mesh)) => Ok(Self::Mesh { peers: mesh.peers }),
                Ok(Shaped::FanIn(fan_in)) => Ok(Self::FanIn(fan_in)),
                Err(err) => Err(D::Error::custom(format!(
                    "topology: {err} (expected {known})"
                ))),
            },
            _ => Err(D::Error::custom(format!("topology: expected {known}"))),
        }
    }
}

/// A path between two nodes' ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathName {
    /// Pod to pod, by pod IP.
    PodIp,
    /// Pod to a ClusterIP Service whose pods are on the server's node.
    Service,
    /// Node to node, host network at both ends.
    Host,
    /// Pod to pod through a headless Service's name (Kubernetes only).
    Headless,
}

impl PathName {
    /// Its name in files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::PodIp => "pod-ip",
            Self::Service => "service",
            Self::Host => "host",
            Self::Headless => "headless",
        }
    }
}

/// What a measurement does to the nodes it runs on, as pScheduler's classes: exclusive
/// excludes exclusive and normal on the same node; normal excludes exclusive; background
/// excludes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Loads the node: streams, connection storms, fan-in, ramps.
    Exclusive,
    /// Light but latency-sensitive: request/response.
    Normal,
    /// Light enough to run beside anything: a slow trace flow.
    Background,
}

impl Class {
    /// The class a kind's run has unless a test says otherwise: the API's rule, which the
    /// daemons apply to runs that name no reservation.
    pub fn of_kind(kind: RunKindArg) -> Self {
        match kind.proto().reservation_class() {
            sonde_proto::v1::ReservationClass::Normal => Self::Normal,
            sonde_proto::v1::ReservationClass::Background => Self::Background,
            _ => Self::Exclusive,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exclusive => "exclusive",
            Self::Normal => "normal",
            Self::Background => "background",
        }
    }
}

/// A size: bytes, or text with a unit (`64KiB`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SizeText {
    /// Bytes.
    Bytes(u64),
    /// With a unit.
    Text(String),
}

/// A duration: seconds, or text with a unit (`500ms`, `1s`, `2m`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DurationText {
    /// Seconds.
    Seconds(f64),
    /// With a unit.
    Text(String),
}

/// One test: everything `sondectl run` takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TestSpec {
    /// The generator.
    pub kind: RunKindArg,
    /// A name for reports (default: the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Measured part (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationText>,
    /// Warm-up before it (default 1s; 0 for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<DurationText>,
    /// Message size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeText>,
    /// A sweep instead of one size (`64B..16MiB`, or a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<SweepText>,
    /// RR request size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_size: Option<SizeText>,
    /// RR response size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_size: Option<SizeText>,
    /// Connections or flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    /// Messages per second (0: as fast as possible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Stream direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<DirectionArg>,
    /// One plain syscall per message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_io: Option<bool>,
    /// Repetitions of each size (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetitions: Option<u32>,
    /// Trace the packets in the kernel (default: on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<bool>,
    /// Trace only in the daemons' stamping windows, 100 ms of every second (default: off;
    /// see `sondectl run --trace-windows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_windows: Option<bool>,
    /// The class it is scheduled as (default: from the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
}

/// A sweep: text (`64B..16MiB`) or a list of sizes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SweepText {
    /// As `--sizes` takes it.
    Text(String),
    /// One size after the other.
    List(Vec<SizeText>),
}

/// A test with every value checked and every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Test {
    /// Its name in reports.
    pub name: String,
    /// The generator.
    pub kind: RunKindArg,
    /// Measured part.
    #[serde(serialize_with = "super::seconds")]
    pub duration: Duration,
    /// Warm-up.
    #[serde(serialize_with = "super::seconds")]
    pub warmup: Duration,
    /// Each size: (request or message, response for RR kinds).
    pub sizes: Vec<(u64, Option<u64>)>,
    /// Connections.
    pub parallel: u32,
    /// Messages per second.
    pub rate: f64,
    /// Stream direction.
    pub direction: DirectionArg,
    /// Plain I/O.
    pub plain_io: bool,
    /// Repetitions of each size.
    pub repetitions: u32,
    /// Traced.
    pub trace: bool,
    /// Traced in windows only.
    pub trace_windows: bool,
    /// Scheduling class.
    pub class: Class,
}

impl Scenario {
    /// Parses and checks a scenario from YAML (JSON is YAML too).
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Self =
            serde_saphyr::from_str(text).map_err(|err| ScenarioError::Parse(err.to_string()))?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Reads, parses and checks a scenario file.
    pub fn load(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Every check a scenario passes before it is expanded.
    fn check(&self) -> Result<(), ScenarioError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be 1 to 63 lower-case letters, digits and dashes",
                    self.name
                ),
            ));
        }
        match &self.nodes {
            NodeSet::Names(names) if names.is_empty() => {
                return Err(invalid("nodes", "the list of nodes is empty"));
            }
            NodeSet::Some(filter) if filter.selector.is_none() && filter.count.is_none() => {
                return Err(invalid(
                    "nodes",
                    "name `all`, a list of nodes, {selector: ...} or {count: N}",
                ));
            }
            NodeSet::Some(NodeFilter { count: Some(0), .. }) => {
                return Err(invalid("nodes.count", "must be at least 1"));
            }
            _ => {}
        }
        match &self.topology {
            Topology::Pairs(pairs) if pairs.is_empty() => {
                return Err(invalid("topology.pairs", "the list of pairs is empty"));
            }
            Topology::Mesh { peers: Some(0) } => {
                return Err(invalid("topology.mesh.peers", "must be at least 1"));
            }
            Topology::FanIn(FanInSpec {
                clients: Some(0), ..
            }) => return Err(invalid("topology.fan-in.clients", "must be at least 1")),
            _ => {}
        }
        if self.placement.is_empty() {
            return Err(invalid("placement", "name at least one placement class"));
        }
        if self.paths.is_empty() {
            return Err(invalid("paths", "name at least one path"));
        }
        if self.tests.is_empty() {
            return Err(invalid("tests", "name at least one test"));
        }
        for (index, test) in self.tests.iter().enumerate() {
            test.resolve(index)?;
        }
        Ok(())
    }

    /// The tests, checked and with their defaults.
    pub fn tests(&self) -> Result<Vec<Test>, ScenarioError> {
        self.tests
            .iter()
            .enumerate()
            .map(|(index, test)| test.resolve(index))
            .collect()
    }
}

fn size_of(field: &str, size: &SizeText) -> Result<u64, ScenarioError> {
    let bytes = match size {
        SizeText::Bytes(bytes) => *bytes,
        SizeText::Text(text) => sizes::parse_size(text).map_err(|err| invalid(field, err))?,
    };
    if bytes == 0 {
        return Err(invalid(field, "must be at least 1 byte"));
    }
    Ok(bytes)
}

fn duration_of(
    field: &str,
    duration: Option<&DurationText>,
    default: Duration,
    zero_ok: bool,
) -> Result<Duration, ScenarioError> {
    let Some(duration) = duration else {
        return Ok(default);
    };
    let seconds = match duration {
        DurationText::Seconds(seconds) => *seconds,
        DurationText::Text(text) => crate::cli::parse_duration_or_zero(text)
            .map_err(|err| invalid(field, err))?
            .as_secs_f64(),
    };
    if !(seconds.is_finite() && (seconds > 0.0 || zero_ok && seconds == 0.0)) || seconds > 3600.0 {
        return Err(invalid(
            field,
            format!(
                "must be {} to 3600 seconds",
                if zero_ok { "0" } else { "more than 0" }
            ),
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl TestSpec {
    /// Checks the test (`index` names it in errors) and fills in its defaults.
    pub fn resolve(&self, index: usize) -> Result<Test, ScenarioError> {
        let at = |field: &str| format!("tests[{index}].{field}");
        let kind = self.kind;
        if kind.is_intra_pod() {
            return Err(invalid(
                at("kind"),
                format!(
                    "{} is an intra-pod baseline, not a measurement between nodes: use `sondectl run`",
                    kind.name()
                ),
            ));
        }
        let duration = duration_of(
            &at("duration"),
            self.duration.as_ref(),
            Duration::from_secs(10),
            false,
        )?;
        let warmup = duration_of(
            &at("warmup"),
            self.warmup.as_ref(),
            Duration::from_secs(1),
            true,
        )?;
        let rr = kind.is_request_response();
        let sizes = match (&self.sizes, &self.size) {
            (Some(_), Some(_)) => {
                return Err(invalid(at("sizes"), "give size or sizes, not both"));
            }
            (Some(SweepText::Text(text)), None) => sizes::parse_sweep(text)
                .map_err(|err| invalid(at("sizes"), err))?
                .into_iter()
                .map(|size| (size, rr.then_some(size)))
                .collect(),
            (Some(SweepText::List(list)), None) => {
                if list.is_empty() {
                    return Err(invalid(at("sizes"), "the list is empty"));
                }
                list.iter()
                    .map(|size| size_of(&at("sizes"), size).map(|s| (s, rr.then_some(s))))
                    .collect::<Result<Vec<_>, _>>()?
            }
            (None, size) => {
                let size = match size {
                    Some(size) => size_of(&at("size"), size)?,
                    None => kind.default_size(),
                };
                let request = match &self.request_size {
                    Some(request) if rr => size_of(&at("request-size"), request)?,
                    Some(_) => {
                        return Err(invalid(
                            at("request-size"),
                            "only request/response kinds have one",
                        ));
                    }
                    None => size,
                };
                let response = match &self.response_size {
                    Some(response) if rr => Some(size_of(&at("response-size"), response)?),
                    Some(_) => {
                        return Err(invalid(
                            at("response-size"),
                            "only request/response kinds have one",
                        ));
                    }
                    None => rr.then_some(size),
                };
                vec![(request, response)]
            }
        };
        let parallel = self.parallel.unwrap_or(1);
        if !(1..=256).contains(&parallel) {
            return Err(invalid(at("parallel"), "must be 1 to 256"));
        }
        let rate = self.rate.unwrap_or(0.0);
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(invalid(
                at("rate"),
                "must be 0 (as fast as possible) or a positive number of messages per second",
            ));
        }
        let repetitions = self.repetitions.unwrap_or(1);
        if !(1..=1000).contains(&repetitions) {
            return Err(invalid(at("repetitions"), "must be 1 to 1000"));
        }
        if self.direction.is_some() && rr {
            return Err(invalid(
                at("direction"),
                "only stream kinds have a direction",
            ));
        }
        Ok(Test {
            name: self.name.clone().unwrap_or_else(|| kind.name().to_owned()),
            kind,
            duration,
            warmup,
            sizes,
            parallel,
            rate,
            direction: self.direction.unwrap_or(DirectionArg::Forward),
            plain_io: self.plain_io.unwrap_or(false),
            repetitions,
            trace: self.trace.unwrap_or(true),
            trace_windows: self.trace_windows.unwrap_or(false),
            class: self.class.unwrap_or(Class::of_kind(kind)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const README_EXAMPLE: &str = "
name: mesh-rr
nodes: all
topology: mesh
placement: [cross-node]
paths: [pod-ip]
tests:
  - kind: tcp-rr
    duration: 1s
    warmup: 0s
";

    #[test]
    fn the_readme_example_parses() {
        let scenario = Scenario::parse(README_EXAMPLE).expect("parse");
        assert_eq!(scenario.nodes, NodeSet::All(AllNodes::All));
        assert_eq!(scenario.topology, Topology::Mesh { peers: None });
        let tests = scenario.tests().expect("tests");
        assert_eq!(tests[0].duration, Duration::from_secs(1));
        assert_eq!(tests[0].warmup, Duration::ZERO);
        assert_eq!(tests[0].sizes, vec![(1, Some(1))]);
        assert_eq!(tests[0].class, Class::Normal);
    }

    #[test]
    fn every_topology_and_node_set_parses() {
        for (text, topology) in [
            ("{mesh: {peers: 3}}", Topology::Mesh { peers: Some(3) }),
            ("ring", Topology::Ring),
            (
                "{pairs: [{from: node1, to: node2}]}",
                Topology::Pairs(vec![PairSpec {
                    from: "node1".into(),
                    to: "node2".into(),
                }]),
            ),
            (
                "{fan-in: {server: node1, clients: 4}}",
                Topology::FanIn(FanInSpec {
                    server: Some("node1".into()),
                    clients: Some(4),
                }),
            ),
        ] {
            let yaml = format!(
                "name: t\nnodes: [node1, node2]\ntopology: {text}\ntests: [{{kind: tcp-stream, sizes: 1KiB..4KiB}}]\n"
            );
            let scenario = Scenario::parse(&yaml).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(scenario.topology, topology);
            assert_eq!(scenario.tests().expect("tests")[0].sizes.len(), 3);
        }
        let some = Scenario::parse(
            "name: t\nnodes: {selector: zone=zone-a, count: 2}\ntopology: ring\ntests: [{kind: udp-rr}]\n",
        )
        .expect("parse");
        assert_eq!(
            some.nodes,
            NodeSet::Some(NodeFilter {
                selector: Some("zone=zone-a".into()),
                count: Some(2)
            })
        );
    }

    #[test]
    fn mistakes_are_named_where_they_are() {
        for (yaml, expected) in [
            (
                "name: Bad\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr}]",
                "name:",
            ),
            (
                "name: t\nnodes: all\ntopology: star\ntests: [{kind: tcp-rr}]",
                "unknown topology \"star\"",
            ),
            (
                "name: t\nnodes: all\ntopology: {mesh: {peers: 0}}\ntests: [{kind: tcp-rr}]",
                "topology.mesh.peers",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\ntests: []",
                "tests: name at least one",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr, duration: 1x}]",
                "tests[0].duration",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr}, {kind: tcp-rr, parallel: 0}]",
                "tests[1].parallel",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr, direction: reverse}]",
                "tests[0].direction",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\ntests: [{kind: unix-rr}]",
                "intra-pod",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr, sizes: 1KiB..x}]",
                "tests[0].sizes",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr, colour: red}]",
                "colour",
            ),
            (
                "name: t\nnodes: []\ntopology: mesh\ntests: [{kind: tcp-rr}]",
                "nodes",
            ),
            (
                "name: t\nnodes: all\ntopology: mesh\nplacement: [far]\ntests: [{kind: tcp-rr}]",
                "far",
            ),
        ] {
            let err = Scenario::parse(yaml).expect_err(yaml).to_string();
            assert!(
                err.contains(expected),
                "{yaml}\n  gave: {err}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn request_response_kinds_are_normal_and_the_rest_exclusive() {
        for (kind, class) in [
            (RunKindArg(&sonde_proto::kinds::TCP_RR), Class::Normal),
            (RunKindArg(&sonde_proto::kinds::UDP_RR), Class::Normal),
            (RunKindArg(&sonde_proto::kinds::HTTP), Class::Normal),
            (
                RunKindArg(&sonde_proto::kinds::TCP_STREAM),
                Class::Exclusive,
            ),
            (RunKindArg(&sonde_proto::kinds::TCP_CRR), Class::Exclusive),
            (RunKindArg(&sonde_proto::kinds::HTTP_CRR), Class::Exclusive),
            (
                RunKindArg(&sonde_proto::kinds::UDP_STREAM),
                Class::Exclusive,
            ),
        ] {
            assert_eq!(Class::of_kind(kind), class, "{}", kind.name());
        }
    }
}
