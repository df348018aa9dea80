//! From a scenario and a fleet to measurements, and from measurements to rounds.
//!
//! Every combination of test, path and node pair (the topology's, kept when its placement
//! class is asked for) is one measurement; a combination that cannot exist here (no pod on a
//! node, no Service backed by the server's node, a headless Service in the lab) is listed as
//! skipped, with why. Rounds pack measurements that share no node, so that a scenario never
//! loads a node twice at once: a mesh of ordered pairs comes out in tournament order (the
//! circle method, both directions), 2(n-1) rounds of n/2 pairs for an even n.

use std::time::Duration;

use serde::Serialize;

use super::{
    fleet::{Fleet, FleetNode},
    spec::{Class, FanInSpec, NodeSet, PathName, Scenario, ScenarioError, Test, Topology},
};
use crate::cluster::placement::Placement;

/// One measurement of the expansion.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// Its place in the expansion.
    pub id: usize,
    /// What it is, stably across runs of the same scenario (`--resume` matches on it).
    pub key: String,
    /// The test's index in the scenario.
    pub test: usize,
    /// The test's name.
    pub test_name: String,
    /// The path.
    pub path: PathName,
    /// The pair's placement class: same-node, cross-node (one zone or zones unknown) or
    /// cross-zone.
    pub placement: Placement,
    /// The client's node (fan-in: the first client's).
    pub from_node: String,
    /// The server's node.
    pub to_node: String,
    /// The runs, as `(from, to)` endpoints: one for a pair, one per client for a fan-in.
    #[serde(serialize_with = "ends_as_objects")]
    pub ends: Vec<(String, String)>,
    /// Every node it loads, in name order.
    pub nodes: Vec<String>,
    /// How it is scheduled.
    pub class: Class,
    /// Its expected length (sizes x repetitions x (warm-up + duration)).
    #[serde(serialize_with = "super::seconds")]
    pub expected: Duration,
}

/// `{from, to}` objects, as the run-set document has them.
fn ends_as_objects<S: serde::Serializer>(
    ends: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq as _;
    let mut seq = serializer.serialize_seq(Some(ends.len()))?;
    for (from, to) in ends {
        seq.serialize_element(&serde_json::json!({ "from": from, "to": to }))?;
    }
    seq.end()
}

/// A combination that was left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Test, path and pair.
    pub what: String,
    /// Why.
    pub why: String,
}

/// A scenario expanded over a fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Expansion {
    /// The nodes taking part, in order.
    pub nodes: Vec<String>,
    /// The tests, resolved.
    pub tests: Vec<Test>,
    /// Every measurement.
    pub measurements: Vec<Planned>,
    /// Combinations left out.
    pub skipped: Vec<Skipped>,
    /// Measurement IDs by round: those of a round share no node (background ones aside).
    pub rounds: Vec<Vec<usize>>,
    /// Sum of the rounds' longest measurements.
    #[serde(serialize_with = "super::seconds")]
    pub expected_wall: Duration,
    /// Sum of every measurement: what one at a time would take.
    #[serde(serialize_with = "super::seconds")]
    pub expected_serial: Duration,
}

/// What a measurement costs besides its own length: connecting, preparing, finishing.
const SET_UP: Duration = Duration::from_millis(500);

fn invalid(field: &str, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// The placement class of a pair: the most specific that holds.
pub fn class_of(from: &FleetNode, to: &FleetNode) -> Placement {
    if from.name == to.name {
        Placement::SameNode
    } else if matches!((&from.zone, &to.zone), (Some(a), Some(b)) if a != b) {
        Placement::CrossZone
    } else {
        Placement::CrossNode
    }
}

/// Whether a pair of class `class` is one `wanted` asks for (cross-node includes cross-zone:
/// both are two nodes).
fn wanted(wanted: &[Placement], class: Placement) -> bool {
    wanted.iter().any(|asked| {
        *asked == class || (*asked == Placement::CrossNode && class == Placement::CrossZone)
    })
}

/// The nodes a scenario names, in fleet order.
pub(crate) fn select<'a>(
    scenario: &Scenario,
    fleet: &'a Fleet,
) -> Result<Vec<&'a FleetNode>, ScenarioError> {
    let nodes: Vec<&FleetNode> = match &scenario.nodes {
        NodeSet::All(_) => fleet.nodes.iter().collect(),
        NodeSet::Names(names) => names
            .iter()
            .map(|name| {
                fleet.node(name).ok_or_else(|| {
                    invalid("nodes", format!("{} has no node {name:?}", fleet.origin))
                })
            })
            .collect::<Result<_, _>>()?,
        NodeSet::Some(filter) => {
            let mut nodes = Vec::new();
            for node in &fleet.nodes {
                let keep = match &filter.selector {
                    Some(selector) => node
                        .matches(selector)
                        .map_err(|err| invalid("nodes.selector", err))?,
                    None => true,
                };
                if keep {
                    nodes.push(node);
                }
            }
            nodes.truncate(filter.count.unwrap_or(usize::MAX));
            nodes
        }
    };
    if nodes.is_empty() {
        return Err(invalid(
            "nodes",
            format!("no node of {} matches", fleet.origin),
        ));
    }
    Ok(nodes)
}

/// Every ordered pair of `n` nodes in tournament order: the circle method gives n-1 rounds
/// (n even; a bye when odd) in which every node plays once; forward rounds first, then the same
/// rounds reversed.
pub fn tournament(n: usize) -> Vec<(usize, usize)> {
    if n < 2 {
        return Vec::new();
    }
    let players = n + n % 2;
    let mut circle: Vec<usize> = (0..players).collect();
    let mut forward = Vec::new();
    for round in 0..players - 1 {
        for i in 0..players / 2 {
            let (a, b) = (circle[i], circle[players - 1 - i]);
            if a < n && b < n {
                // Alternate who serves, so that each node is client about half the time.
                forward.push(if (round + i) % 2 == 0 { (a, b) } else { (b, a) });
            }
        }
        // Keep the first fixed, turn the rest.
        if let Some(last) = circle.pop() {
            circle.insert(1, last);
        }
    }
    let reverse: Vec<(usize, usize)> = forward.iter().map(|&(a, b)| (b, a)).collect();
    forward.into_iter().chain(reverse).collect()
}

/// A ring of the nodes in the order of a hash of their names: deterministic for a set of
/// nodes, and a node's neighbours change little when others come and go.
pub(crate) fn hash_ring(nodes: &[&FleetNode]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| (super::fnv1a(nodes[i].name.as_bytes()), i));
    order
}

/// The topology's node pairs, as indices into `nodes`, in the order they should be packed.
fn pairs(topology: &Topology, nodes: &[&FleetNode]) -> Result<Vec<(usize, usize)>, ScenarioError> {
    let n = nodes.len();
    let index = |name: &str, field: &str| {
        nodes
            .iter()
            .position(|node| node.name == name)
            .ok_or_else(|| {
                invalid(
                    field,
                    format!("{name:?} is not one of the scenario's nodes"),
                )
            })
    };
    Ok(match topology {
        Topology::Pairs(pairs) => pairs
            .iter()
            .enumerate()
            .map(|(i, pair)| {
                Ok((
                    index(&pair.from, &format!("topology.pairs[{i}].from"))?,
                    index(&pair.to, &format!("topology.pairs[{i}].to"))?,
                ))
            })
            .collect::<Result<_, ScenarioError>>()?,
        Topology::Mesh { peers: None } => tournament(n),
        Topology::Mesh { peers: Some(k) } => {
            if *k >= n {
                return Err(invalid(
                    "topology.mesh.peers",
                    format!(
                        "{k} peers per node needs at least {} nodes; there are {n}",
                        k + 1
                    ),
                ));
            }
            let ring = hash_ring(nodes);
            // Offset by offset: each offset is a permutation (every node measures one and is
            // measured by one), so the rounds pack well.
            (1..=*k)
                .flat_map(|d| {
                    let ring = &ring;
                    (0..n).map(move |i| (ring[(i + d) % n], ring[i]))
                })
                .collect()
        }
        Topology::Ring => {
            if n < 2 {
                return Err(invalid("topology", "a ring needs at least 2 nodes"));
            }
            (0..n).map(|i| (i, (i + 1) % n)).collect()
        }
        Topology::FanIn(_) => Vec::new(),
    })
}

/// The endpoints of one run of `path` from `from` to `to`, or why there is none.
fn ends(
    path: PathName,
    test: &Test,
    from: &FleetNode,
    to: &FleetNode,
    fleet: &Fleet,
    kubernetes: bool,
) -> Result<(String, String), String> {
    let pod_on =
        |node: &FleetNode, skip: usize| {
            node.pods.get(skip).cloned().ok_or_else(|| {
            if kubernetes {
                format!(
                    "no endpoint pod on {} (`sondectl deploy --endpoints` puts one on every node)",
                    node.name
                )
            } else {
                format!("{} has {} pod(s), {} needed", node.name, node.pods.len(), skip + 1)
            }
        })
        };
    let same = from.name == to.name;
    match path {
        PathName::PodIp => Ok((
            format!("pod/{}", pod_on(from, 0)?),
            format!("pod/{}", pod_on(to, usize::from(same))?),
        )),
        PathName::Host if same => Err("the host network to itself is loopback, not a path".into()),
        PathName::Host => Ok((format!("node/{}", from.name), format!("node/{}", to.name))),
        PathName::Headless => Err(if kubernetes {
            "headless Services are not measured yet (pod-ip takes the same datapath)".into()
        } else {
            "the lab has no cluster DNS, so no headless Service".into()
        }),
        PathName::Service if kubernetes => Err(
            "the endpoints' ClusterIP Service spreads over every node: a Service path per node \
             pair is measured in the lab only, for now"
                .into(),
        ),
        PathName::Service => {
            let udp = test.kind.rules().transport == sonde_proto::kinds::Transport::Udp;
            let service = fleet
                .services
                .iter()
                .find(|s| s.udp == udp && s.nodes == [to.name.clone()])
                .ok_or_else(|| {
                    format!(
                        "no {} Service whose pods are all on {} (lab: `--service NAME=PORT{}@POD` with pods of that node)",
                        if udp { "UDP" } else { "TCP" },
                        to.name,
                        if udp { "/udp" } else { "" }
                    )
                })?;
            let client = from
                .pods
                .iter()
                .find(|pod| !service.pods.contains(pod))
                .ok_or_else(|| format!("no pod on {} outside the Service", from.name))?;
            Ok((format!("pod/{client}"), format!("service/{}", service.name)))
        }
    }
}

/// Expands `scenario` over `fleet` (`kubernetes`: the fleet is a cluster's).
pub fn expand(
    scenario: &Scenario,
    fleet: &Fleet,
    kubernetes: bool,
) -> Result<Expansion, ScenarioError> {
    let tests = scenario.tests()?;
    let nodes = select(scenario, fleet)?;
    let mut pairs = pairs(&scenario.topology, &nodes)?;
    if scenario.placement.contains(&Placement::SameNode)
        && !matches!(scenario.topology, Topology::Pairs(_) | Topology::FanIn(_))
    {
        pairs.extend((0..nodes.len()).map(|i| (i, i)));
    }
    let mut measurements = Vec::new();
    let mut skipped = Vec::new();
    for (test_index, test) in tests.iter().enumerate() {
        let expected =
            (test.warmup + test.duration + SET_UP) * (test.sizes.len() as u32 * test.repetitions);
        for &path in &scenario.paths {
            if let Topology::FanIn(fan_in) = &scenario.topology {
                match fan_in_ends(fan_in, path, test, &nodes, fleet, kubernetes) {
                    Ok((server, clients)) => {
                        let mut loaded: Vec<String> =
                            clients.iter().map(|(node, _)| node.clone()).collect();
                        loaded.push(server.name.clone());
                        loaded.sort();
                        loaded.dedup();
                        let first = clients.first().map(|(n, _)| n.clone()).unwrap_or_default();
                        let ends: Vec<(String, String)> =
                            clients.into_iter().map(|(_, ends)| ends).collect();
                        measurements.push(Planned {
                            id: measurements.len(),
                            key: format!(
                                "{}|{}|fan-in:{}x{}",
                                test.name,
                                path.name(),
                                ends.len(),
                                server.name
                            ),
                            test: test_index,
                            test_name: test.name.clone(),
                            path,
                            placement: Placement::CrossNode,
                            from_node: first,
                            to_node: server.name.clone(),
                            ends,
                            nodes: loaded,
                            class: Class::Exclusive,
                            expected,
                        });
                    }
                    Err(why) => skipped.push(Skipped {
                        what: format!("{} over {} (fan-in)", test.name, path.name()),
                        why,
                    }),
                }
                continue;
            }
            for &(a, b) in &pairs {
                let (from, to) = (nodes[a], nodes[b]);
                let class = class_of(from, to);
                if !wanted(&scenario.placement, class) {
                    continue;
                }
                let what = format!(
                    "{} over {} from {} to {}",
                    test.name,
                    path.name(),
                    from.name,
                    to.name
                );
                match ends(path, test, from, to, fleet, kubernetes) {
                    Ok(pair) => {
                        let mut loaded = vec![from.name.clone(), to.name.clone()];
                        loaded.sort();
                        loaded.dedup();
                        measurements.push(Planned {
                            id: measurements.len(),
                            key: format!(
                                "{}|{}|{}->{}",
                                test.name,
                                path.name(),
                                from.name,
                                to.name
                            ),
                            test: test_index,
                            test_name: test.name.clone(),
                            path,
                            placement: class,
                            from_node: from.name.clone(),
                            to_node: to.name.clone(),
                            ends: vec![pair],
                            nodes: loaded,
                            class: test.class,
                            expected,
                        });
                    }
                    Err(why) => skipped.push(Skipped { what, why }),
                }
            }
        }
    }
    let rounds = pack(&measurements);
    let expected_wall = rounds
        .iter()
        .map(|round| {
            round
                .iter()
                .map(|&id| measurements[id].expected)
                .max()
                .unwrap_or_default()
        })
        .sum();
    let expected_serial = measurements.iter().map(|m| m.expected).sum();
    Ok(Expansion {
        nodes: nodes.iter().map(|node| node.name.clone()).collect(),
        tests,
        measurements,
        skipped,
        rounds,
        expected_wall,
        expected_serial,
    })
}

impl Expansion {
    /// One measurement per round, in expansion order (`scenario run --serial`).
    pub fn serialize_rounds(&mut self) {
        self.rounds = self.measurements.iter().map(|m| vec![m.id]).collect();
        self.expected_wall = self.expected_serial;
    }
}

/// The server node and each client's (node, ends) of a fan-in.
#[expect(clippy::type_complexity, reason = "a private helper's pair of results")]
fn fan_in_ends<'a>(
    fan_in: &FanInSpec,
    path: PathName,
    test: &Test,
    nodes: &[&'a FleetNode],
    fleet: &Fleet,
    kubernetes: bool,
) -> Result<(&'a FleetNode, Vec<(String, (String, String))>), String> {
    let server = match &fan_in.server {
        Some(name) => *nodes
            .iter()
            .find(|node| &node.name == name)
            .ok_or_else(|| format!("the server {name:?} is not one of the scenario's nodes"))?,
        None => nodes[0],
    };
    let others: Vec<&FleetNode> = nodes
        .iter()
        .copied()
        .filter(|node| node.name != server.name)
        .collect();
    if others.is_empty() {
        return Err("a fan-in needs a node besides the server's".into());
    }
    let wanted = fan_in.clients.unwrap_or(others.len());
    // One client per other node first, then their second pods, and so on.
    let mut clients = Vec::new();
    let mut depth = 0;
    while clients.len() < wanted {
        let before = clients.len();
        for node in &others {
            if clients.len() == wanted {
                break;
            }
            let (from, to) = ends(path, test, node, server, fleet, kubernetes)?;
            let from = match (depth, path) {
                (0, _) => Some(from),
                (_, PathName::Host) => None,
                _ => node.pods.get(depth).map(|pod| format!("pod/{pod}")),
            };
            if let Some(from) = from {
                clients.push((node.name.clone(), (from, to)));
            }
        }
        if clients.len() == before {
            return Err(format!(
                "{wanted} clients asked for, and only {} places to run them",
                clients.len()
            ));
        }
        depth += 1;
    }
    Ok((server, clients))
}

/// Packs measurements into rounds, first fit in expansion order: a measurement joins the first
/// round where none of its nodes is busy (background measurements go anywhere).
pub fn pack(measurements: &[Planned]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<(Vec<usize>, std::collections::HashSet<&str>)> = Vec::new();
    for m in measurements {
        let free = |busy: &std::collections::HashSet<&str>| {
            m.class == Class::Background || m.nodes.iter().all(|n| !busy.contains(n.as_str()))
        };
        let slot = match rounds.iter().position(|(_, busy)| free(busy)) {
            Some(slot) => slot,
            None => {
                rounds.push((Vec::new(), std::collections::HashSet::new()));
                rounds.len() - 1
            }
        };
        let (ids, busy) = &mut rounds[slot];
        ids.push(m.id);
        if m.class != Class::Background {
            busy.extend(m.nodes.iter().map(String::as_str));
        }
    }
    rounds.into_iter().map(|(ids, _)| ids).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::scenario::fleet::FleetService;

    fn fleet(nodes: usize, zones: usize, pods: usize) -> Fleet {
        Fleet {
            origin: "lab t".into(),
            nodes: (1..=nodes)
                .map(|i| FleetNode {
                    name: format!("node{i}"),
                    zone: Some(format!("zone-{}", (b'a' + ((i - 1) % zones) as u8) as char)),
                    labels: BTreeMap::from([(
                        crate::cluster::discover::ZONE_LABEL.to_owned(),
                        format!("zone-{}", (b'a' + ((i - 1) % zones) as u8) as char),
                    )]),
                    pods: (1..=pods)
                        .map(|p| format!("pod{}", (i - 1) * pods + p))
                        .collect(),
                })
                .collect(),
            services: Vec::new(),
        }
    }

    fn scenario(yaml: &str) -> Scenario {
        Scenario::parse(yaml).expect("scenario")
    }

    const MESH: &str = "name: mesh-rr\nnodes: all\ntopology: mesh\nplacement: [cross-node]\npaths: [pod-ip]\ntests:\n  - kind: tcp-rr\n    duration: 1s\n    warmup: 0s\n";

    fn check_rounds(expansion: &Expansion) {
        let mut seen = HashSet::new();
        for round in &expansion.rounds {
            let mut busy = HashSet::new();
            for &id in round {
                assert!(seen.insert(id), "measurement {id} in two rounds");
                for node in &expansion.measurements[id].nodes {
                    assert!(busy.insert(node.clone()), "{node} twice in a round");
                }
            }
        }
        assert_eq!(seen.len(), expansion.measurements.len());
    }

    #[test]
    fn a_mesh_of_six_nodes_is_thirty_pairs_in_ten_rounds() {
        let expansion = expand(&scenario(MESH), &fleet(6, 2, 2), false).expect("expand");
        assert_eq!(expansion.measurements.len(), 30);
        let pairs: HashSet<(String, String)> = expansion
            .measurements
            .iter()
            .map(|m| (m.from_node.clone(), m.to_node.clone()))
            .collect();
        assert_eq!(pairs.len(), 30, "every ordered pair once");
        assert_eq!(expansion.rounds.len(), 10);
        assert!(expansion.rounds.iter().all(|round| round.len() == 3));
        check_rounds(&expansion);
        // 2 zones of 3: 18 of the pairs cross zones, 12 stay in one.
        let cross_zone = expansion
            .measurements
            .iter()
            .filter(|m| m.placement == Placement::CrossZone)
            .count();
        assert_eq!(cross_zone, 18);
        assert!(
            expansion.expected_serial.as_secs_f64() / expansion.expected_wall.as_secs_f64() > 2.9
        );
    }

    #[test]
    fn tournaments_of_odd_and_even_sizes_cover_every_ordered_pair() {
        for n in 2..=11 {
            let order = tournament(n);
            let set: HashSet<(usize, usize)> = order.iter().copied().collect();
            assert_eq!(order.len(), n * (n - 1), "n={n}");
            assert_eq!(set.len(), n * (n - 1), "n={n}");
            let measurements: Vec<Planned> = order
                .iter()
                .enumerate()
                .map(|(id, &(a, b))| Planned {
                    id,
                    key: String::new(),
                    test: 0,
                    test_name: String::new(),
                    path: PathName::Host,
                    placement: Placement::CrossNode,
                    from_node: a.to_string(),
                    to_node: b.to_string(),
                    ends: Vec::new(),
                    nodes: vec![a.to_string(), b.to_string()],
                    class: Class::Exclusive,
                    expected: Duration::from_secs(1),
                })
                .collect();
            let rounds = pack(&measurements);
            let bound = if n % 2 == 0 { 2 * (n - 1) } else { 2 * n };
            assert_eq!(rounds.len(), bound, "n={n}");
        }
    }

    #[test]
    fn a_mesh_with_k_peers_measures_each_node_from_exactly_k_others() {
        let fleet = fleet(20, 3, 1);
        let expansion = expand(
            &scenario("name: k\nnodes: all\ntopology: {mesh: {peers: 3}}\npaths: [host]\ntests: [{kind: tcp-rr}]\n"),
            &fleet,
            false,
        )
        .expect("expand");
        assert_eq!(expansion.measurements.len(), 60);
        for node in &fleet.nodes {
            let measured_by: HashSet<&str> = expansion
                .measurements
                .iter()
                .filter(|m| m.to_node == node.name)
                .map(|m| m.from_node.as_str())
                .collect();
            assert_eq!(measured_by.len(), 3, "{}", node.name);
            assert!(!measured_by.contains(node.name.as_str()));
        }
        check_rounds(&expansion);
        // The same nodes give the same pairs.
        let again = expand(
            &scenario("name: k\nnodes: all\ntopology: {mesh: {peers: 3}}\npaths: [host]\ntests: [{kind: tcp-rr}]\n"),
            &fleet,
            false,
        )
        .expect("expand");
        let keys = |e: &Expansion| {
            e.measurements
                .iter()
                .map(|m| m.key.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&expansion), keys(&again));
    }

    #[test]
    fn placement_classes_and_paths_expand_into_a_matrix_and_say_what_they_skip() {
        let mut fleet = fleet(4, 2, 2);
        // A TCP Service backed by node2's pods only, and one spread over two nodes.
        fleet.services = vec![
            FleetService {
                name: "web2".into(),
                udp: false,
                pods: vec!["pod3".into(), "pod4".into()],
                nodes: vec!["node2".into()],
            },
            FleetService {
                name: "spread".into(),
                udp: false,
                pods: vec!["pod1".into(), "pod3".into()],
                nodes: vec!["node1".into(), "node2".into()],
            },
        ];
        let expansion = expand(
            &scenario(
                "name: m\nnodes: all\ntopology: {pairs: [{from: node1, to: node1}, {from: node1, to: node3}, {from: node1, to: node2}]}\n\
                 placement: [same-node, cross-node, cross-zone]\npaths: [pod-ip, service, host]\ntests: [{kind: tcp-rr}]\n",
            ),
            &fleet,
            false,
        )
        .expect("expand");
        let got: Vec<(Placement, PathName, &str, &str)> = expansion
            .measurements
            .iter()
            .map(|m| {
                (
                    m.placement,
                    m.path,
                    m.ends[0].0.as_str(),
                    m.ends[0].1.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Placement::SameNode, PathName::PodIp, "pod/pod1", "pod/pod2"),
                (
                    Placement::CrossNode,
                    PathName::PodIp,
                    "pod/pod1",
                    "pod/pod5"
                ),
                (
                    Placement::CrossZone,
                    PathName::PodIp,
                    "pod/pod1",
                    "pod/pod3"
                ),
                (
                    Placement::CrossZone,
                    PathName::Service,
                    "pod/pod1",
                    "service/web2"
                ),
                (
                    Placement::CrossNode,
                    PathName::Host,
                    "node/node1",
                    "node/node3"
                ),
                (
                    Placement::CrossZone,
                    PathName::Host,
                    "node/node1",
                    "node/node2"
                ),
            ]
        );
        // Service to node1 and node3: no Service backed by them alone; host to itself.
        assert_eq!(expansion.skipped.len(), 3, "{:#?}", expansion.skipped);
        assert!(expansion.skipped.iter().any(|s| s.why.contains("loopback")));
    }

    #[test]
    fn a_fan_in_is_one_measurement_of_every_client() {
        let expansion = expand(
            &scenario("name: f\nnodes: all\ntopology: {fan-in: {server: node1, clients: 4}}\ntests: [{kind: tcp-stream, direction: reverse}]\n"),
            &fleet(3, 1, 2),
            false,
        )
        .expect("expand");
        assert_eq!(expansion.measurements.len(), 1);
        let fan_in = &expansion.measurements[0];
        assert_eq!(fan_in.ends.len(), 4);
        assert_eq!(fan_in.nodes, vec!["node1", "node2", "node3"]);
        let clients: HashSet<&str> = fan_in.ends.iter().map(|(from, _)| from.as_str()).collect();
        assert_eq!(clients.len(), 4, "each client its own pod");
        assert!(fan_in.ends.iter().all(|(_, to)| to == "pod/pod1"));
    }

    #[test]
    fn selectors_and_unknown_nodes() {
        let fleet = fleet(6, 2, 1);
        let some = expand(
            &scenario("name: s\nnodes: {selector: zone=zone-a}\ntopology: ring\ntests: [{kind: tcp-rr}]\n"),
            &fleet,
            false,
        )
        .expect("expand");
        assert_eq!(some.nodes, vec!["node1", "node3", "node5"]);
        let err = expand(
            &scenario("name: s\nnodes: [node1, node9]\ntopology: ring\ntests: [{kind: tcp-rr}]\n"),
            &fleet,
            false,
        )
        .expect_err("node9");
        assert!(err.to_string().contains("node9"), "{err}");
    }
}
