//! The lab's inventory: every name and address in the lab, computed from the spec before
//! anything is made ([`Inventory::plan`]), written to the lab's state directory once the lab is
//! up, and read by every later command (`sondectl nodes`, `run --from pod/NAME`, `lab down`).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::spec::{LabSpec, Protocol};
use crate::error::{Context as _, refuse};

/// Where labs keep their state: on tmpfs, so it goes with a reboot exactly as namespaces do.
pub const STATE_ROOT: &str = "/run/sonde/lab";
/// The bridge in every node namespace, as a bridge CNI names it.
pub const BRIDGE: &str = "cni0";
/// The node's uplink to the underlay, and a pod's interface: both `eth0`, as in a cluster.
pub const ETH0: &str = "eth0";
/// The bridge in the underlay namespace that joins the nodes' uplinks.
pub const UNDERLAY_BRIDGE: &str = "underlay0";

/// Everything in one lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The lab's name.
    pub name: String,
    /// Its state directory (inventory, daemon sockets, logs).
    pub state_dir: PathBuf,
    /// The namespace that plays the network between the nodes.
    pub underlay_netns: String,
    /// The underlay's range.
    pub node_cidr: Ipv4Net,
    /// The pods' range.
    pub pod_cidr: Ipv4Net,
    /// The ClusterIP range.
    pub service_cidr: Ipv4Net,
    /// The nodes, in order.
    pub nodes: Vec<Node>,
    /// The pods, node 1's first.
    pub pods: Vec<Pod>,
    /// The ClusterIP Services.
    pub services: Vec<Service>,
}

/// A node: a network namespace with a bridge for its pods, an uplink and a daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `node1`, `node2`, ...
    pub name: String,
    /// Its network namespace (under /run/netns).
    pub netns: String,
    /// Its address on the underlay (on its `eth0`).
    pub ip: Ipv4Addr,
    /// The /24 its pods get addresses from.
    pub pod_cidr: Ipv4Net,
    /// The bridge's address: the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// Where its sonded listens.
    pub agent: String,
    /// Where its sonded serves Prometheus metrics (`unix:PATH`).
    #[serde(default)]
    pub metrics: String,
    /// sonded's log file.
    pub log: PathBuf,
    /// sonded's process ID, once started.
    pub daemon_pid: Option<u32>,
    /// Its zone (`topology.kubernetes.io/zone` in a cluster).
    #[serde(default)]
    pub zone: Option<String>,
}

/// A pod: a network namespace joined to its node's bridge by a veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// `pod1`, `pod2`, ...
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address (on its `eth0`).
    pub ip: Ipv4Addr,
    /// The host-side end of its veth, in the node's namespace (where node probes attach).
    pub host_veth: String,
    /// Its egress limit in bits per second, if any.
    pub egress_bits_per_second: Option<u64>,
}

/// A ClusterIP Service: DNAT in every node's namespace, spread over its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Its ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on the pods.
    pub target_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The pods behind it (ready: in the DNAT rules).
    pub endpoints: Vec<String>,
    /// Pods of the Service not ready yet (a rollout's new pod before it is added to the
    /// rules), as an EndpointSlice lists them with `ready: false`: a run through the Service
    /// prepares its servers there before traffic comes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

impl Inventory {
    /// Every name and address of the lab `spec` describes (the spec must be valid).
    pub fn plan(spec: &LabSpec) -> Self {
        let state_dir = Path::new(STATE_ROOT).join(&spec.name);
        let prefix = netns_prefix(&spec.name);
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        let pod_names = spec.pod_names();
        let mut pod_names = pod_names.iter();
        for n in 1..=spec.nodes {
            let name = format!("node{n}");
            let pod_cidr = nth_slash24(spec.pod_cidr, u32::from(n));
            let gateway = host(pod_cidr, 1);
            for m in 1..=spec.pods_per_node {
                let Some(pod_name) = pod_names.next() else {
                    break;
                };
                pods.push(Pod {
                    netns: format!("{prefix}{pod_name}"),
                    ip: host(pod_cidr, 10 + u32::from(m)),
                    host_veth: format!("veth{pod_name}"),
                    egress_bits_per_second: spec
                        .bandwidth
                        .iter()
                        .find(|limit| &limit.pod == pod_name)
                        .map(|limit| limit.bits_per_second),
                    name: pod_name.clone(),
                    node: name.clone(),
                });
            }
            nodes.push(Node {
                netns: format!("{prefix}{name}"),
                ip: host(spec.node_cidr, 10 + u32::from(n)),
                pod_cidr,
                gateway,
                agent: format!("unix:{}", state_dir.join(format!("{name}.sock")).display()),
                metrics: format!(
                    "unix:{}",
                    state_dir.join(format!("{name}.metrics.sock")).display()
                ),
                log: state_dir.join(format!("{name}.log")),
                daemon_pid: None,
                zone: Some(spec.zone_of(n)),
                name,
            });
        }
        let services = spec
            .services
            .iter()
            .zip(0_u32..)
            .map(|(service, n)| Service {
                name: service.name.clone(),
                cluster_ip: host(spec.service_cidr, 10 + n),
                port: service.port,
                target_port: service.target_port,
                protocol: service.protocol,
                endpoints: if service.pods.is_empty() {
                    pods.iter().map(|pod| pod.name.clone()).collect()
                } else {
                    service.pods.clone()
                },
                pending: Vec::new(),
            })
            .collect();
        Self {
            name: spec.name.clone(),
            underlay_netns: format!("{prefix}underlay"),
            node_cidr: spec.node_cidr,
            pod_cidr: spec.pod_cidr,
            service_cidr: spec.service_cidr,
            state_dir,
            nodes,
            pods,
            services,
        }
    }

    /// The inventory file of the lab named `name`.
    pub fn path(name: &str) -> PathBuf {
        Path::new(STATE_ROOT).join(name).join("inventory.json")
    }

    /// Reads the inventory of the lab named `name`.
    pub fn load(name: &str) -> crate::Result<Self> {
        let path = Self::path(name);
        if !path.exists() {
            refuse!(
                "no lab named {name:?} is up ({} is missing): start one with `sondectl lab up`",
                path.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// Writes the inventory into the state directory (atomically: a reader never sees half).
    pub fn save(&self) -> crate::Result<()> {
        let path = Self::path(&self.name);
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// A pod to add on `node`: a name no pod has now (`podN`, after the highest: a rollout's
    /// new pod is made before the old one goes, so names are not reused) and the node's next
    /// address after the highest in use, as host-local IPAM allocates round the range: an
    /// address just freed is not handed out again at once (the node's neighbour entry for it
    /// still names the old pod's MAC, and would swallow the new pod's first packets).
    pub fn new_pod(&self, node: &str) -> Option<Pod> {
        let node = self.node(node)?;
        let highest = self
            .pods
            .iter()
            .filter_map(|pod| pod.name.strip_prefix("pod")?.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        let name = format!("pod{}", highest + 1);
        let used: Vec<u32> = self
            .pods
            .iter()
            .filter(|pod| pod.node == node.name)
            .map(|pod| u32::from(pod.ip) - u32::from(node.pod_cidr.network()))
            .collect();
        let last = used.iter().copied().max().unwrap_or(10);
        let ip = (last + 1..250)
            .chain(11..=last)
            .find(|n| !used.contains(n))
            .map(|n| host(node.pod_cidr, n))?;
        Some(Pod {
            netns: format!("{}{name}", netns_prefix(&self.name)),
            ip,
            host_veth: format!("veth{name}"),
            egress_bits_per_second: None,
            node: node.name.clone(),
            name,
        })
    }

    /// Every namespace of the lab: pods, nodes, underlay.
    pub fn namespaces(&self) -> Vec<&str> {
        let pods = self.pods.iter().map(|pod| pod.netns.as_str());
        let nodes = self.nodes.iter().map(|node| node.netns.as_str());
        pods.chain(nodes)
            .chain([self.underlay_netns.as_str()])
            .collect()
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|pod| pod.name == name)
    }
}

/// The prefix of every namespace of the lab `name`: what `lab down` looks for, also when the
/// inventory is gone. Lab names have no '-', so no lab's prefix is another's.
pub fn netns_prefix(name: &str) -> String {
    format!("sonde-{name}-")
}

/// The `n`-th /24 inside `range` (n >= 1; the spec's limits keep it inside).
fn nth_slash24(range: Ipv4Net, n: u32) -> Ipv4Net {
    let base = u32::from(range.network()) + (n << 8);
    Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap_or(range)
}

/// Host number `n` of `net`.
fn host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-zone lab with the default ranges and nothing else.
    fn spec(name: &str, nodes: u8, pods_per_node: u8) -> LabSpec {
        LabSpec {
            name: name.to_owned(),
            nodes,
            pods_per_node,
            zones: 1,
            pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
            node_cidr: "10.250.0.0/24".parse().expect("cidr"),
            service_cidr: "10.96.0.0/24".parse().expect("cidr"),
            services: Vec::new(),
            bandwidth: Vec::new(),
        }
    }

    #[test]
    fn plans_names_and_addresses_like_a_cluster() {
        let spec = LabSpec {
            services: vec!["web=80:8080@pod2,pod3".parse().expect("service")],
            bandwidth: vec!["pod4=100M".parse().expect("bandwidth")],
            ..spec("t1", 2, 2)
        };
        let inventory = Inventory::plan(&spec);
        let node2 = inventory.node("node2").expect("node2");
        assert_eq!(node2.netns, "sonde-t1-node2");
        assert_eq!(node2.ip, Ipv4Addr::new(10, 250, 0, 12));
        assert_eq!(node2.pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(node2.gateway, Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(node2.agent, "unix:/run/sonde/lab/t1/node2.sock");
        let pod3 = inventory.pod("pod3").expect("pod3");
        assert_eq!(
            (pod3.node.as_str(), pod3.ip),
            ("node2", Ipv4Addr::new(10, 244, 2, 11))
        );
        assert_eq!(pod3.host_veth, "vethpod3");
        assert_eq!(
            inventory.pod("pod4").expect("pod4").egress_bits_per_second,
            Some(100_000_000)
        );
        assert_eq!(
            inventory.services[0].cluster_ip,
            Ipv4Addr::new(10, 96, 0, 10)
        );
        assert_eq!(inventory.services[0].endpoints, ["pod2", "pod3"]);
        assert_eq!(
            inventory.namespaces(),
            [
                "sonde-t1-pod1",
                "sonde-t1-pod2",
                "sonde-t1-pod3",
                "sonde-t1-pod4",
                "sonde-t1-node1",
                "sonde-t1-node2",
                "sonde-t1-underlay"
            ]
        );
    }

    #[test]
    fn a_new_pod_takes_a_new_name_and_does_not_reuse_a_freed_address_at_once() {
        let mut inventory = Inventory::plan(&spec("t2", 2, 2));
        let first = inventory.new_pod("node1").expect("room");
        assert_eq!(first.name, "pod5");
        assert_eq!(first.ip, Ipv4Addr::new(10, 244, 1, 13));
        assert_eq!(first.netns, "sonde-t2-pod5");
        inventory.pods.push(first);
        // pod1 (10.244.1.11) goes: its address is not the next one handed out.
        inventory.pods.retain(|pod| pod.name != "pod1");
        let second = inventory.new_pod("node1").expect("room");
        assert_eq!(
            (second.name.as_str(), second.ip),
            ("pod6", Ipv4Addr::new(10, 244, 1, 14))
        );
        assert!(inventory.new_pod("node9").is_none());
    }

    #[test]
    fn interface_names_fit_the_kernels_limit() {
        let spec = spec(
            "abcdefgh",
            super::super::spec::MAX_NODES,
            super::super::spec::MAX_PODS_PER_NODE,
        );
        assert_eq!(spec.validate(), Ok(()));
        let inventory = Inventory::plan(&spec);
        for pod in &inventory.pods {
            // IFNAMSIZ is 16 with the NUL; ifb names add 4 characters to the pod name.
            assert!(pod.host_veth.len() <= 15, "{}", pod.host_veth);
            assert!(format!("ifb{}", pod.name).len() <= 15);
        }
        assert_eq!(inventory.pods.len(), 512);
    }
}
