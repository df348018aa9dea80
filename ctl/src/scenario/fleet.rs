//! The nodes a scenario can use, wherever they come from: a lab's inventory or a cluster's
//! daemons. Planning sees only this, so it is the same in both and testable with neither.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    cluster::discover::{Daemon, EndpointPod, ZONE_LABEL},
    lab::{Inventory, spec::Protocol},
};

/// The nodes and Services a scenario may measure.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// Where it comes from (`lab NAME`, `cluster`), for reports.
    pub origin: String,
    /// Every node with a daemon, in name order.
    pub nodes: Vec<FleetNode>,
    /// ClusterIP Services, by the nodes their pods are on.
    pub services: Vec<FleetService>,
}

/// One node.
#[derive(Debug, Clone, Serialize)]
pub struct FleetNode {
    /// Its name.
    pub name: String,
    /// Its zone, when known.
    pub zone: Option<String>,
    /// Its labels (Kubernetes; the lab's nodes have `topology.kubernetes.io/zone`).
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
    /// Pods on it a measurement can run in, as endpoints name them (`pod1`, `NS/NAME`).
    pub pods: Vec<String>,
}

/// A ClusterIP Service.
#[derive(Debug, Clone, Serialize)]
pub struct FleetService {
    /// As endpoints name it.
    pub name: String,
    /// Its protocol.
    pub udp: bool,
    /// The pods behind it.
    pub pods: Vec<String>,
    /// The nodes those pods are on.
    pub nodes: Vec<String>,
}

impl Fleet {
    /// A lab's nodes, pods and Services.
    pub fn from_lab(lab: &Inventory) -> Self {
        let nodes = lab
            .nodes
            .iter()
            .map(|node| FleetNode {
                name: node.name.clone(),
                zone: node.zone.clone(),
                labels: node
                    .zone
                    .iter()
                    .map(|zone| (ZONE_LABEL.to_owned(), zone.clone()))
                    .collect(),
                pods: lab
                    .pods
                    .iter()
                    .filter(|pod| pod.node == node.name)
                    .map(|pod| pod.name.clone())
                    .collect(),
            })
            .collect();
        let services = lab
            .services
            .iter()
            .map(|service| {
                let mut nodes: Vec<String> = service
                    .endpoints
                    .iter()
                    .filter_map(|pod| lab.pod(pod).map(|pod| pod.node.clone()))
                    .collect();
                nodes.sort();
                nodes.dedup();
                FleetService {
                    name: service.name.clone(),
                    udp: service.protocol == Protocol::Udp,
                    pods: service.endpoints.clone(),
                    nodes,
                }
            })
            .collect();
        Self {
            origin: format!("lab {}", lab.name),
            nodes,
            services,
        }
    }

    /// A cluster's nodes with a ready daemon, and the ready endpoint pods on each (`deploy
    /// --endpoints`; without them only the host path exists).
    pub fn from_cluster(daemons: &[Daemon], endpoints: &[EndpointPod]) -> Self {
        let mut nodes: Vec<FleetNode> = daemons
            .iter()
            .filter(|daemon| daemon.ready)
            .map(|daemon| FleetNode {
                name: daemon.node.clone(),
                zone: daemon.zone.clone(),
                labels: daemon.node_labels.clone(),
                pods: endpoints
                    .iter()
                    .filter(|pod| pod.ready && pod.node == daemon.node)
                    .map(|pod| pod.name.clone())
                    .collect(),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        Self {
            origin: "cluster".to_owned(),
            nodes,
            services: Vec::new(),
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&FleetNode> {
        self.nodes.iter().find(|node| node.name == name)
    }
}

impl FleetNode {
    /// Whether its labels match a selector of `key=value` and `key!=value` terms (commas
    /// between them), as Kubernetes' equality-based selectors.
    pub fn matches(&self, selector: &str) -> Result<bool, String> {
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value, equal) = if let Some((key, value)) = term.split_once("!=") {
                (key, value, false)
            } else if let Some((key, value)) = term.split_once("==") {
                (key, value, true)
            } else if let Some((key, value)) = term.split_once('=') {
                (key, value, true)
            } else {
                return Err(format!(
                    "{term:?} is not key=value or key!=value (only equality selectors)"
                ));
            };
            // The lab's nodes know one label; `zone=` is short for it there and in clusters.
            let key = if key.trim() == "zone" {
                ZONE_LABEL
            } else {
                key.trim()
            };
            let holds = self.labels.get(key).map(String::as_str) == Some(value.trim());
            if holds != equal {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
