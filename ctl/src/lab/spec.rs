//! What a lab should look like: the options of `sondectl lab up`, validated before anything is
//! created.

use std::{fmt, str::FromStr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Most nodes a lab may have (one /24 of the pod range each, and one daemon each).
pub const MAX_NODES: u8 = 16;
/// Most pods a node may have.
pub const MAX_PODS_PER_NODE: u8 = 32;

/// The shape of a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// The lab's name: 1 to 8 lower-case letters or digits (it prefixes every object's name).
    pub name: String,
    /// How many nodes.
    pub nodes: u8,
    /// How many pods on each node.
    pub pods_per_node: u8,
    /// How many zones the nodes are spread over, round robin (node 1 in `zone-a`, node 2 in
    /// the next zone, ...), so that cross-zone placement can be tried without a cluster.
    pub zones: u8,
    /// The pods' range; node N (1-based) gets the N-th /24 inside it.
    pub pod_cidr: Ipv4Net,
    /// The underlay joining the nodes' uplinks (a /24: node N is .(10+N)).
    pub node_cidr: Ipv4Net,
    /// Where ClusterIPs come from (service N, 0-based, gets .(10+N)).
    pub service_cidr: Ipv4Net,
    /// ClusterIP Services.
    pub services: Vec<ServiceSpec>,
    /// Per-pod egress bandwidth limits.
    pub bandwidth: Vec<BandwidthSpec>,
}

/// A ClusterIP Service: `NAME=PORT[:TARGET_PORT][/tcp|/udp][@POD,POD...]` on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The Service's name.
    pub name: String,
    /// The port clients connect to on the ClusterIP.
    pub port: u16,
    /// The port on the pods (the same as `port` when not given).
    pub target_port: u16,
    /// Which transport the Service carries.
    pub protocol: Protocol,
    /// The pods behind it; every pod when empty.
    pub pods: Vec<String>,
}

/// A Service's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// An egress bandwidth limit: `POD=RATE` (as `kubernetes.io/egress-bandwidth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthSpec {
    /// The pod it applies to.
    pub pod: String,
    /// The rate, in bits per second.
    pub bits_per_second: u64,
}

impl LabSpec {
    /// Checks everything that can be checked before touching the system.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = (1..=8).contains(&self.name.len())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !name_ok {
            return Err(format!(
                "lab name {:?} must be 1 to 8 lower-case letters or digits",
                self.name
            ));
        }
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(format!("--nodes must be from 1 to {MAX_NODES}"));
        }
        if !(1..=MAX_PODS_PER_NODE).contains(&self.pods_per_node) {
            return Err(format!(
                "--pods-per-node must be from 1 to {MAX_PODS_PER_NODE}"
            ));
        }
        if !(1..=self.nodes).contains(&self.zones) {
            return Err(format!(
                "--zones must be from 1 to the number of nodes ({})",
                self.nodes
            ));
        }
        if self.pod_cidr.prefix_len() > 16 {
            return Err(format!(
                "--pod-cidr {} must be a /16 or larger (one /24 per node)",
                self.pod_cidr
            ));
        }
        for (flag, net) in [
            ("--node-cidr", self.node_cidr),
            ("--service-cidr", self.service_cidr),
        ] {
            if net.prefix_len() > 24 {
                return Err(format!("{flag} {net} must be a /24 or larger"));
            }
        }
        let ranges = [
            ("--pod-cidr", self.pod_cidr),
            ("--node-cidr", self.node_cidr),
            ("--service-cidr", self.service_cidr),
        ];
        for (i, (flag_a, a)) in ranges.iter().enumerate() {
            for (flag_b, b) in &ranges[i + 1..] {
                if overlaps(*a, *b) {
                    return Err(format!("{flag_a} {a} overlaps {flag_b} {b}"));
                }
            }
        }
        let pods = self.pod_names();
        let mut seen = Vec::new();
        for service in &self.services {
            if seen.contains(&&service.name) {
                return Err(format!("service {:?} is defined twice", service.name));
            }
            seen.push(&service.name);
            if let Some(unknown) = service.pods.iter().find(|pod| !pods.contains(pod)) {
                return Err(format!(
                    "service {:?} selects pod {unknown:?}, which this lab does not have (pods: \
                     pod1..pod{})",
                    service.name,
                    pods.len()
                ));
            }
        }
        if self.services.len() > 200 {
            return Err("at most 200 services".to_owned());
        }
        for limit in &self.bandwidth {
            if !pods.contains(&limit.pod) {
                return Err(format!(
                    "--bandwidth names pod {:?}, which this lab does not have",
                    limit.pod
                ));
            }
        }
        Ok(())
    }

    /// The zone of node `n` (1-based): `zone-a`, `zone-b`, ... round robin.
    pub fn zone_of(&self, n: u8) -> String {
        let letter = char::from(b'a' + (n - 1) % self.zones.max(1));
        format!("zone-{letter}")
    }

    /// Pod names in order: node 1's pods first.
    pub fn pod_names(&self) -> Vec<String> {
        let count = u32::from(self.nodes) * u32::from(self.pods_per_node);
        (1..=count).map(|n| format!("pod{n}")).collect()
    }
}

/// Whether two IPv4 ranges share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl FromStr for ServiceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "invalid service {text:?}: {why} (expected NAME=PORT[:TARGET_PORT][/tcp|/udp]\
                 [@POD,POD...])"
            )
        };
        let (name, rest) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(bad("the name must be lower-case letters, digits and '-'"));
        }
        let (ports, pods) = match rest.split_once('@') {
            Some((ports, pods)) => (
                ports,
                pods.split(',')
                    .filter(|pod| !pod.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => (rest, Vec::new()),
        };
        let (ports, protocol) = match ports.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (ports, Protocol::Tcp),
        };
        let port = |text: &str| match text.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("ports are numbers from 1 to 65535")),
            Ok(port) => Ok(port),
        };
        let (port, target_port) = match ports.split_once(':') {
            Some((port_text, target)) => (port(port_text)?, port(target)?),
            None => (port(ports)?, port(ports)?),
        };
        Ok(Self {
            name: name.to_owned(),
            port,
            target_port,
            protocol,
            pods,
        })
    }
}

impl FromStr for BandwidthSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (pod, rate) = text.split_once('=').ok_or_else(|| {
            format!("invalid bandwidth {text:?}: expected POD=RATE, e.g. pod1=100M")
        })?;
        Ok(Self {
            pod: pod.to_owned(),
            bits_per_second: parse_rate(rate)?,
        })
    }
}

/// Parses a rate in bits per second with Kubernetes' suffixes (`100M`, `1G`, `500k`) or tc's
/// (`100mbit`, `1gbit`, `500kbit`). Decimal multiples, as both use.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("rate {text:?} must start with a whole number"))?;
    let multiplier: u64 = match unit {
        "" | "bit" => 1,
        "k" | "kbit" => 1_000,
        "m" | "mbit" => 1_000_000,
        "g" | "gbit" => 1_000_000_000,
        _ => {
            return Err(format!(
                "rate {text:?}: unknown unit {unit:?} (use k, M or G)"
            ));
        }
    };
    let bits = value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("rate {text:?} is too large"))?;
    if !(8_000..=100_000_000_000).contains(&bits) {
        return Err(format!("rate {text:?} must be from 8k to 100G"));
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LabSpec {
        LabSpec {
            name: "lab".to_owned(),
            nodes: 2,
            pods_per_node: 2,
            zones: 1,
            pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
            node_cidr: "10.250.0.0/24".parse().expect("cidr"),
            service_cidr: "10.96.0.0/24".parse().expect("cidr"),
            services: Vec::new(),
            bandwidth: Vec::new(),
        }
    }

    #[test]
    fn services_parse_in_every_form() {
        let web: ServiceSpec = "web=80:8080@pod1,pod3".parse().expect("service");
        assert_eq!(
            web,
            ServiceSpec {
                name: "web".to_owned(),
                port: 80,
                target_port: 8080,
                protocol: Protocol::Tcp,
                pods: vec!["pod1".to_owned(), "pod3".to_owned()],
            }
        );
        let dns: ServiceSpec = "dns=53/udp".parse().expect("service");
        assert_eq!(
            (dns.port, dns.target_port, dns.protocol),
            (53, 53, Protocol::Udp)
        );
        assert!(dns.pods.is_empty());
        for bad in ["web", "Web=80", "web=0", "web=80:x", "web=80/sctp", "=80"] {
            assert!(bad.parse::<ServiceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_parse_with_kubernetes_and_tc_units() {
        assert_eq!(parse_rate("100M"), Ok(100_000_000));
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("100T").is_err());
        assert!(parse_rate("1").is_err());
    }

    #[test]
    fn a_valid_spec_passes() {
        let mut spec = spec();
        spec.services.push("web=80@pod4".parse().expect("service"));
        spec.bandwidth.push("pod2=100M".parse().expect("bandwidth"));
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.pod_names(), ["pod1", "pod2", "pod3", "pod4"]);
    }

    #[test]
    fn nodes_take_zones_round_robin() {
        let mut spec = spec();
        spec.nodes = 5;
        spec.zones = 2;
        assert_eq!(spec.validate(), Ok(()));
        let zones: Vec<String> = (1..=5).map(|n| spec.zone_of(n)).collect();
        assert_eq!(zones, ["zone-a", "zone-b", "zone-a", "zone-b", "zone-a"]);
        spec.zones = 1;
        assert_eq!(spec.zone_of(4), "zone-a");
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        type Change = fn(&mut LabSpec);
        let cases: [(Change, &str); 9] = [
            (|s| s.name = "My-Lab".to_owned(), "lower-case"),
            (|s| s.nodes = 0, "--nodes"),
            (
                |s| s.zones = 0,
                "--zones must be from 1 to the number of nodes (2)",
            ),
            (
                |s| s.zones = 3,
                "--zones must be from 1 to the number of nodes (2)",
            ),
            (|s| s.pods_per_node = 33, "--pods-per-node"),
            (
                |s| s.pod_cidr = "10.244.0.0/24".parse().expect("cidr"),
                "/16",
            ),
            (
                |s| s.service_cidr = "10.244.5.0/24".parse().expect("cidr"),
                "overlaps",
            ),
            (
                |s| s.services.push("web=80@pod9".parse().expect("service")),
                "pod \"pod9\"",
            ),
            (
                |s| s.bandwidth.push("pod7=1M".parse().expect("bandwidth")),
                "pod \"pod7\"",
            ),
        ];
        for (change, why) in cases {
            let mut spec = spec();
            change(&mut spec);
            let err = spec.validate().expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
