//! The daemons in a cluster: their pods, found by label, with their nodes' zones and labels.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client, api::ListParams};
use serde::Serialize;

use crate::error::Context as _;

/// The well-known label of a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// One daemon as the API server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Daemon {
    /// Its node.
    pub node: String,
    /// The node's zone, when labelled.
    pub zone: Option<String>,
    /// The node's labels.
    pub node_labels: BTreeMap<String, String>,
    /// The daemon's pod.
    pub pod: String,
    /// The pod's namespace (sonde's).
    pub namespace: String,
    /// Its IP (the node's, with host networking): where sondectl dials it.
    pub pod_ip: Option<String>,
    /// Whether the pod is Ready (its gRPC health check passes).
    pub ready: bool,
}

/// The daemons in `namespace`, on nodes matching `node_selector` (a label selector; empty for
/// all), sorted by node.
pub async fn daemons(
    client: &Client,
    namespace: &str,
    node_selector: &str,
) -> crate::Result<Vec<Daemon>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(super::manifests::DAEMON_SELECTOR))
        .await
        .with_context(|| format!("listing sonde's pods in namespace {namespace}"))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut params = ListParams::default();
    if !node_selector.is_empty() {
        params = params.labels(node_selector);
    }
    let nodes = nodes.list(&params).await.context("listing nodes")?;
    let labels_of: BTreeMap<String, BTreeMap<String, String>> = nodes
        .items
        .into_iter()
        .filter_map(|node| {
            Some((
                node.metadata.name?,
                node.metadata.labels.unwrap_or_default(),
            ))
        })
        .collect();
    let mut daemons: Vec<Daemon> = pods
        .items
        .into_iter()
        .filter_map(|pod| {
            let spec = pod.spec?;
            let node = spec.node_name?;
            let node_labels = labels_of.get(&node)?.clone();
            let status = pod.status.unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Some(Daemon {
                zone: node_labels.get(ZONE_LABEL).cloned(),
                node_labels,
                node,
                pod: pod.metadata.name.unwrap_or_default(),
                namespace: namespace.to_owned(),
                pod_ip: status.pod_ip,
                ready,
            })
        })
        .collect();
    daemons.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(daemons)
}

/// A measurement endpoint pod (`sondectl deploy --endpoints`).
#[derive(Debug, Clone, Serialize)]
pub struct EndpointPod {
    /// Its node.
    pub node: String,
    /// As endpoints name it: `NAMESPACE/NAME`.
    pub name: String,
    /// Whether it is Ready with an IP.
    pub ready: bool,
}

/// The endpoint pods in `namespace`, by node name.
pub async fn endpoint_pods(client: &Client, namespace: &str) -> crate::Result<Vec<EndpointPod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(super::manifests::ENDPOINT_SELECTOR))
        .await
        .with_context(|| format!("listing sonde's endpoint pods in namespace {namespace}"))?;
    let mut found: Vec<EndpointPod> = pods
        .items
        .into_iter()
        .filter_map(|pod| {
            let node = pod.spec?.node_name?;
            let status = pod.status.unwrap_or_default();
            let ready = status.pod_ip.is_some()
                && status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            Some(EndpointPod {
                node,
                name: format!("{namespace}/{}", pod.metadata.name?),
                ready,
            })
        })
        .collect();
    found.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    Ok(found)
}
