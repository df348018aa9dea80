//! The cluster's own address ranges, read from the API server: where `deploy` lets the daemons
//! send generated traffic (their `SONDE_ALLOW_TARGETS`) instead of all of 10.0.0.0/8.
//!
//! Pods: each node's `spec.podCIDRs`. Nodes: each node's addresses. Services: the
//! `networking.k8s.io/v1` ServiceCIDRs (Kubernetes 1.33); a cluster without that API has its
//! existing Services' ClusterIPs instead, and the note says to name the range with
//! `--allow-target`.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    networking::v1::ServiceCIDR,
};
use kube::{Api, Client, api::ListParams};

use crate::error::Context as _;

/// The ranges found, and what could not be found exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    /// Where pods get their addresses.
    pub pods: Vec<IpNet>,
    /// The nodes' own addresses.
    pub nodes: Vec<IpNet>,
    /// Where Services get their ClusterIPs.
    pub services: Vec<IpNet>,
    /// What was inferred rather than read, one line each.
    pub notes: Vec<String>,
}

impl Ranges {
    /// Every range, aggregated, as `SONDE_ALLOW_TARGETS` takes them.
    pub fn allowed(&self) -> Vec<IpNet> {
        let all: Vec<IpNet> = [&self.pods, &self.nodes, &self.services]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        IpNet::aggregate(&all)
    }
}

/// Reads the cluster's ranges.
pub async fn read(client: &Client) -> crate::Result<Ranges> {
    let mut ranges = Ranges::default();
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes (for the cluster's pod and node ranges)")?;
    let mut without_pod_cidr = 0;
    for node in &nodes.items {
        let spec = node.spec.clone().unwrap_or_default();
        let cidrs: Vec<String> = match (spec.pod_cidrs, spec.pod_cidr) {
            (Some(cidrs), _) if !cidrs.is_empty() => cidrs,
            (_, Some(cidr)) => vec![cidr],
            _ => Vec::new(),
        };
        if cidrs.is_empty() {
            without_pod_cidr += 1;
        }
        ranges
            .pods
            .extend(cidrs.iter().filter_map(|cidr| cidr.parse::<IpNet>().ok()));
        let addresses = node
            .status
            .as_ref()
            .and_then(|status| status.addresses.clone())
            .unwrap_or_default();
        ranges.nodes.extend(
            addresses
                .iter()
                .filter(|address| address.type_ == "InternalIP" || address.type_ == "ExternalIP")
                .filter_map(|address| address.address.parse::<IpAddr>().ok())
                .map(IpNet::from),
        );
    }
    if without_pod_cidr > 0 {
        // The CNI assigns addresses itself (Calico's or Cilium's IPAM): the pods' own.
        let pods: Api<Pod> = Api::all(client.clone());
        let pods = pods
            .list(&ListParams::default())
            .await
            .context("listing pods (nodes without podCIDRs)")?;
        ranges.pods.extend(
            pods.items
                .iter()
                .filter(|pod| pod.spec.as_ref().and_then(|s| s.host_network) != Some(true))
                .filter_map(|pod| pod.status.as_ref()?.pod_ip.as_ref()?.parse::<IpAddr>().ok())
                .map(IpNet::from),
        );
        ranges.notes.push(format!(
            "{without_pod_cidr} nodes have no podCIDR (the CNI assigns addresses itself): only \
             today's pods' addresses are allowed; name the pod range with --allow-target"
        ));
    }
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    match cidrs.list(&ListParams::default()).await {
        Ok(list) => ranges.services.extend(
            list.items
                .iter()
                .flat_map(|cidr| cidr.spec.clone().and_then(|s| s.cidrs).unwrap_or_default())
                .filter_map(|cidr| cidr.parse::<IpNet>().ok()),
        ),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let services: Api<Service> = Api::all(client.clone());
            let services = services
                .list(&ListParams::default())
                .await
                .context("listing Services (no ServiceCIDR API)")?;
            ranges.services.extend(
                services
                    .items
                    .iter()
                    .flat_map(|s| {
                        s.spec
                            .clone()
                            .and_then(|s| s.cluster_ips)
                            .unwrap_or_default()
                    })
                    .filter_map(|ip| ip.parse::<IpAddr>().ok())
                    .map(IpNet::from),
            );
            ranges.notes.push(
                "no ServiceCIDR API (Kubernetes before 1.33): only today's Services' ClusterIPs \
                 are allowed; name the Service range with --allow-target"
                    .to_owned(),
            );
        }
        Err(err) => {
            return Err(err).context("listing ServiceCIDRs (for the cluster's Service range)");
        }
    }
    if ranges.allowed().is_empty() {
        crate::error::refuse!(
            "no address range found in the cluster (no node has a podCIDR or an address): \
             name the ranges with --allow-target"
        );
    }
    Ok(ranges)
}
