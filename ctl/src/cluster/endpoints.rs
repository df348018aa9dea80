//! A run's endpoints named in Kubernetes, resolved through the API server to the daemon on the
//! right node, the pod it runs in and the address traffic goes to:
//!
//! - `pod/NAMESPACE/NAME`: the daemon on the pod's node runs the side inside the pod (named to
//!   it by the pod's address, which it maps to the pod's namespace itself); host-network pods
//!   run in the daemon's own namespace.
//! - `node/NAME`: the node's host network, where its daemon is.
//! - `service/NAMESPACE/NAME` (`--to`): a ClusterIP Service: a server in every ready pod behind
//!   it (from its EndpointSlices), traffic to the ClusterIP; a headless Service resolves to its
//!   first ready pod, as a client's DNS lookup would.

use std::net::IpAddr;

use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Api, Client, api::ListParams};

use super::{
    discover::{self, Daemon},
    portforward::Reach,
};
use crate::{
    agent::AgentAddr,
    endpoint::{Destination, EndpointRef, Place},
    error::{Context as _, refuse},
};

/// The port sonde's daemons serve gRPC on (the DaemonSet's `grpc` port, host network).
pub const DAEMON_PORT: u16 = 7470;

/// The daemons of a cluster, by node, and the client to ask more.
pub struct Cluster {
    client: Client,
    /// The namespace sonde's daemons (and endpoint pods) run in.
    namespace: String,
    daemons: Vec<Daemon>,
    /// The label selector the daemons' nodes were chosen by ("" for all).
    node_selector: String,
    /// How the daemons are dialled.
    reach: Reach,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("daemons", &self.daemons)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Finds sonde's daemons in `namespace` ("" for the default) on the nodes matching
    /// `node_selector` ("" for all), to be reached as `reach` says.
    async fn new(
        client: Client,
        namespace: &str,
        node_selector: &str,
        reach: Reach,
    ) -> crate::Result<Self> {
        let namespace = if namespace.is_empty() {
            super::manifests::DEFAULT_NAMESPACE
        } else {
            namespace
        };
        let daemons = discover::daemons(&client, namespace, node_selector).await?;
        if daemons.is_empty() {
            let on = if node_selector.is_empty() {
                String::new()
            } else {
                format!(" on nodes matching {node_selector}")
            };
            refuse!(
                "no sonde daemons in namespace {namespace}{on} (deploy them with `sondectl deploy`)"
            );
        }
        crate::tls::use_cluster(&client, namespace);
        let reach = reach.resolved();
        if reach == Reach::PortForward {
            super::portforward::use_client(&client);
        }
        Ok(Self {
            client,
            namespace: namespace.to_owned(),
            daemons,
            node_selector: node_selector.to_owned(),
            reach,
        })
    }

    /// The daemons of the cluster `args` names (its kubeconfig, else the environment's).
    pub async fn connect(args: &crate::cli::KubernetesArgs) -> crate::Result<Self> {
        let client = super::client(args.kubeconfig.as_deref()).await?;
        Self::new(client, &args.namespace, &args.node_selector, args.reach).await
    }

    /// The measurement endpoint pods (`deploy --endpoints`) in sonde's namespace.
    pub async fn endpoint_pods(&self) -> crate::Result<Vec<discover::EndpointPod>> {
        discover::endpoint_pods(&self.client, &self.namespace).await
    }

    /// The daemons found, ready or not.
    pub fn daemons(&self) -> &[Daemon] {
        &self.daemons
    }

    /// Every ready daemon, by node, with the address it is reached at.
    pub fn agents(&self) -> crate::Result<Vec<(String, AgentAddr)>> {
        self.daemons
            .iter()
            .filter(|daemon| daemon.ready)
            .map(|daemon| Ok((daemon.node.clone(), self.agent_of(daemon)?)))
            .collect()
    }

    /// The client end.
    pub async fn source(&self, endpoint: &EndpointRef) -> crate::Result<Place> {
        crate::endpoint::check_source(endpoint)?;
        self.place(endpoint).await
    }

    /// The server end.
    pub async fn destination(&self, endpoint: &EndpointRef) -> crate::Result<Destination> {
        let name = match endpoint {
            EndpointRef::Service(name) => name,
            EndpointRef::Dns(addr) => return Ok(Destination::external(*addr)),
            _ => return Destination::at(self.place(endpoint).await?, endpoint),
        };
        let (namespace, name) = namespaced(name, "service")?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let service = services
            .get(name)
            .await
            .with_context(|| format!("getting Service {namespace}/{name}"))?;
        let spec = service.spec.unwrap_or_default();
        let port = spec
            .ports
            .as_ref()
            .and_then(|ports| ports.first())
            .with_context(|| format!("Service {namespace}/{name} has no port"))?;
        let target_port = match &port.target_port {
            Some(IntOrString::Int(number)) => u16::try_from(*number).ok(),
            None => u16::try_from(port.port).ok(),
            Some(IntOrString::String(named)) => refuse!(
                "Service {namespace}/{name} targets the named port {named:?}: sonde's servers need a number"
            ),
        };
        let pods = self.ready_pods(namespace, name).await?;
        if pods.is_empty() {
            refuse!("Service {namespace}/{name} has no ready pod behind it");
        }
        let mut servers = Vec::new();
        for pod in &pods {
            servers.push(
                self.place(&EndpointRef::Pod(format!("{namespace}/{pod}")))
                    .await?,
            );
        }
        match spec.cluster_ip.as_deref() {
            None | Some("None") | Some("") => {
                // Headless: the name resolves to the pods themselves.
                Destination::at(servers.swap_remove(0), endpoint)
            }
            Some(cluster_ip) => Ok(Destination {
                servers,
                ip: cluster_ip
                    .parse()
                    .with_context(|| format!("ClusterIP {cluster_ip:?}"))?,
                port: u16::try_from(port.port).ok(),
                server_port: target_port,
                follow: Some(crate::endpoint::FollowedService::Cluster {
                    client: self.client.clone(),
                    namespace: namespace.to_owned(),
                    service: name.to_owned(),
                }),
            }),
        }
    }

    /// The names of the ready pods behind a Service, from its EndpointSlices.
    async fn ready_pods(&self, namespace: &str, service: &str) -> crate::Result<Vec<String>> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("kubernetes.io/service-name={service}");
        let slices = slices
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("listing the EndpointSlices of {namespace}/{service}"))?;
        let mut pods: Vec<String> = slices
            .items
            .iter()
            .flat_map(|slice| &slice.endpoints)
            .filter(|endpoint| {
                endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true)
            })
            .filter_map(|endpoint| {
                let target = endpoint.target_ref.as_ref()?;
                (target.kind.as_deref() == Some("Pod")).then(|| target.name.clone())?
            })
            .collect();
        pods.sort();
        pods.dedup();
        Ok(pods)
    }

    /// Where a pod or node end runs.
    async fn place(&self, endpoint: &EndpointRef) -> crate::Result<Place> {
        match endpoint {
            EndpointRef::Pod(name) => {
                let (namespace, name) = namespaced(name, "pod")?;
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
                let pod = pods
                    .get(name)
                    .await
                    .with_context(|| format!("getting pod {namespace}/{name}"))?;
                let spec = pod.spec.unwrap_or_default();
                let node = spec
                    .node_name
                    .with_context(|| format!("pod {namespace}/{name} is not scheduled yet"))?;
                let ip: IpAddr = pod
                    .status
                    .and_then(|status| status.pod_ip)
                    .with_context(|| format!("pod {namespace}/{name} has no IP yet"))?
                    .parse()
                    .context("the pod's IP")?;
                let daemon = self.daemon_on(&node)?;
                let host_network = spec.host_network.unwrap_or(false);
                Ok(Place {
                    agent: self.agent_of(daemon)?.to_string(),
                    node: Some(node.clone()),
                    pod: Some(format!("{namespace}/{name}")),
                    netns: if host_network {
                        String::new()
                    } else {
                        format!("pod-ip:{ip}")
                    },
                    ip: Some(ip),
                    host_interface: None,
                    uplink: None,
                    hairpin_source: None,
                    zone: daemon.zone.clone(),
                })
            }
            EndpointRef::Node(node) => {
                let daemon = self.daemon_on(node)?;
                Ok(Place {
                    agent: self.agent_of(daemon)?.to_string(),
                    node: Some(node.clone()),
                    pod: None,
                    netns: String::new(),
                    ip: daemon.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
                    host_interface: None,
                    uplink: None,
                    hairpin_source: None,
                    zone: daemon.zone.clone(),
                })
            }
            EndpointRef::Agent(_) => refuse!(
                "{endpoint}: with --kubeconfig, name pods (pod/NAMESPACE/NAME) and nodes (node/NAME)"
            ),
            EndpointRef::Service(_) => refuse!("a Service is not a place a generator runs"),
            EndpointRef::Dns(_) => refuse!("a DNS server is not a place a generator runs"),
        }
    }

    /// The address a daemon is dialled at.
    fn agent_of(&self, daemon: &Daemon) -> crate::Result<AgentAddr> {
        if self.reach == Reach::PortForward {
            return Ok(AgentAddr::PortForward {
                namespace: daemon.namespace.clone(),
                pod: daemon.pod.clone(),
                port: DAEMON_PORT,
            });
        }
        let ip: IpAddr = daemon
            .pod_ip
            .as_deref()
            .with_context(|| format!("the sonde daemon on {} has no IP yet", daemon.node))?
            .parse()
            .with_context(|| format!("the IP of the sonde daemon on {}", daemon.node))?;
        Ok(AgentAddr::Tcp {
            host: ip.to_string(),
            port: DAEMON_PORT,
        })
    }

    fn daemon_on(&self, node: &str) -> crate::Result<&Daemon> {
        let daemon = self
            .daemons
            .iter()
            .find(|daemon| daemon.node == node)
            .with_context(|| match self.node_selector.as_str() {
                "" => format!("no sonde daemon on node {node}"),
                selector => format!(
                    "no sonde daemon on node {node} among the nodes matching --node-selector {selector}"
                ),
            })?;
        if !daemon.ready {
            refuse!(
                "the sonde daemon on node {node} ({}) is not ready",
                daemon.pod
            );
        }
        Ok(daemon)
    }
}

/// `NAMESPACE/NAME` split; Kubernetes endpoints need both.
fn namespaced<'a>(name: &'a str, kind: &str) -> crate::Result<(&'a str, &'a str)> {
    name.split_once('/')
        .with_context(|| format!("with --kubeconfig, name the {kind} as {kind}/NAMESPACE/NAME"))
}
