//! Endpoints of a run: what `--from` and `--to` name, resolved to the daemon that runs that
//! side, the network namespace it runs in, and the address traffic goes to.
//!
//! - `pod/NAME`: a lab pod (its node's daemon, the pod's namespace, the pod IP).
//! - `node/NAME`: a lab node's host network (its daemon's own namespace, the node IP).
//! - `service/NAME` (`--to` only): a lab ClusterIP Service: a server on every pod behind it,
//!   traffic to the ClusterIP, spread by the Service's DNAT.
//! - `HOST:PORT` or `unix:PATH`: a daemon's address, its own namespace (HOST must be an IP
//!   address for `--to`, as traffic goes there).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::Serialize;

use crate::{
    agent::AgentAddr,
    error::{Context as _, refuse},
    lab::Inventory,
};

/// What the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointRef {
    /// `pod/NAME` (lab) or `pod/NAMESPACE/NAME` (Kubernetes).
    Pod(String),
    /// `node/NAME`.
    Node(String),
    /// `service/NAME` (lab) or `service/NAMESPACE/NAME` (Kubernetes).
    Service(String),
    /// A daemon's address.
    Agent(AgentAddr),
    /// `dns/ADDRESS[:PORT]`: a DNS server that is not sonde's (`dns` runs only).
    Dns(SocketAddr),
}

impl FromStr for EndpointRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // NAME, or NAMESPACE/NAME where a Kubernetes namespace applies (pods and Services).
        let named = |kind: &str, name: &str, namespaced: bool| {
            let parts: Vec<&str> = name.split('/').collect();
            let fits = match parts.as_slice() {
                [one] => !one.is_empty(),
                [namespace, one] => namespaced && !namespace.is_empty() && !one.is_empty(),
                _ => false,
            };
            if fits {
                Ok(name.to_owned())
            } else if namespaced {
                Err(format!(
                    "invalid endpoint {text:?}: {kind}/NAME or {kind}/NAMESPACE/NAME"
                ))
            } else {
                Err(format!(
                    "invalid endpoint {text:?}: {kind}/NAME needs a name"
                ))
            }
        };
        if let Some(name) = text.strip_prefix("pod/") {
            return named("pod", name, true).map(Self::Pod);
        }
        if let Some(name) = text.strip_prefix("node/") {
            return named("node", name, false).map(Self::Node);
        }
        if let Some(name) = text.strip_prefix("service/") {
            return named("service", name, true).map(Self::Service);
        }
        if let Some(address) = text.strip_prefix("dns/") {
            return address
                .parse::<SocketAddr>()
                .or_else(|_| address.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map(Self::Dns)
                .map_err(|_| {
                    format!("invalid endpoint {text:?}: dns/ADDRESS or dns/ADDRESS:PORT")
                });
        }
        text.parse::<AgentAddr>().map(Self::Agent).map_err(|_| {
            format!(
                "invalid endpoint {text:?}: expected pod/NAME, node/NAME, service/NAME, \
                 dns/ADDRESS, HOST:PORT or unix:PATH"
            )
        })
    }
}

impl fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(name) => write!(f, "pod/{name}"),
            Self::Node(name) => write!(f, "node/{name}"),
            Self::Service(name) => write!(f, "service/{name}"),
            Self::Agent(addr) => write!(f, "{addr}"),
            Self::Dns(addr) => write!(f, "dns/{addr}"),
        }
    }
}

/// One side of a run, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    /// The daemon that runs this side.
    pub agent: String,
    /// The node it is on (the daemon's name for it, when known).
    pub node: Option<String>,
    /// The pod, for pod endpoints.
    pub pod: Option<String>,
    /// The namespace the generator runs in ("" for the daemon's own).
    pub netns: String,
    /// The address traffic to this side goes to.
    pub ip: Option<IpAddr>,
    /// The host side of the pod's veth, in the daemon's namespace (pod endpoints).
    pub host_interface: Option<String>,
    /// The node's uplink, in the daemon's namespace (lab endpoints).
    pub uplink: Option<String>,
    /// The address a pod's traffic to a Service backed by itself (hairpin) is masqueraded to:
    /// its node's bridge, as kube-proxy does. The probes must follow that flow too.
    #[serde(skip)]
    pub hairpin_source: Option<IpAddr>,
    /// The node's zone (Kubernetes `topology.kubernetes.io/zone`, or the lab's), for placement
    /// checks and so that a result says whether it crossed zones.
    pub zone: Option<String>,
}

/// The receiving end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// Where servers run (one, or every pod behind a Service).
    pub servers: Vec<Place>,
    /// Where the client sends: the server's IP, or the ClusterIP.
    pub ip: IpAddr,
    /// A fixed port (a Service's), or `None` for whatever the server gets.
    pub port: Option<u16>,
    /// The port the servers must listen on (a Service's target port).
    pub server_port: Option<u16>,
    /// A lab Service whose endpoints the run follows while it runs (a rollout changes them).
    #[serde(skip)]
    pub follow: Option<FollowedService>,
}

/// A Service a run follows while it runs, and what is seen of it goes on the run's timeline.
#[derive(Clone)]
pub enum FollowedService {
    /// A lab's: a pod that joins it mid-run (a rollout's) gets a server side before its
    /// traffic comes; the lab's recorded rollout steps are the events.
    Lab {
        /// The lab.
        lab: String,
        /// The Service.
        service: String,
    },
    /// A cluster's: the changes of its EndpointSlices during the run are the events.
    Cluster {
        /// The API server.
        client: kube::Client,
        /// The Service's namespace.
        namespace: String,
        /// The Service.
        service: String,
    },
}

impl FollowedService {
    /// `NAMESPACE/NAME` or the lab's `NAME`.
    pub fn name(&self) -> String {
        match self {
            Self::Lab { service, .. } => service.clone(),
            Self::Cluster {
                namespace, service, ..
            } => format!("{namespace}/{service}"),
        }
    }
}

impl fmt::Debug for FollowedService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lab { lab, service } => write!(f, "lab {lab} Service {service}"),
            Self::Cluster { .. } => write!(f, "Service {}", self.name()),
        }
    }
}

impl PartialEq for FollowedService {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Lab { .. }, Self::Lab { .. }) | (Self::Cluster { .. }, Self::Cluster { .. }) => {
                format!("{self:?}") == format!("{other:?}")
            }
            _ => false,
        }
    }
}

impl Eq for FollowedService {}

impl Destination {
    /// A server that is not sonde's, at `addr`: no server side to prepare.
    pub fn external(addr: SocketAddr) -> Self {
        Self {
            servers: Vec::new(),
            ip: addr.ip(),
            port: Some(addr.port()),
            server_port: None,
            follow: None,
        }
    }

    /// Whether the server is not sonde's (nothing to prepare, nothing it reports).
    pub fn is_external(&self) -> bool {
        self.servers.is_empty()
    }

    /// A single server at `place`, reached at its own address (`endpoint` names it in errors).
    pub fn at(place: Place, endpoint: &EndpointRef) -> crate::Result<Self> {
        let ip = place
            .ip
            .with_context(|| format!("{endpoint} has no IP address traffic could go to"))?;
        Ok(Self {
            servers: vec![place],
            ip,
            port: None,
            server_port: None,
            follow: None,
        })
    }
}

/// Refuses a Service as the client end: traffic starts in a pod or on a node.
pub fn check_source(endpoint: &EndpointRef) -> crate::Result<()> {
    match endpoint {
        EndpointRef::Service(_) => {
            refuse!("--from cannot be a Service: traffic starts in a pod or on a node")
        }
        EndpointRef::Dns(_) => {
            refuse!("--from cannot be a DNS server: traffic starts in a pod or on a node")
        }
        _ => Ok(()),
    }
}

/// How traffic gets from one end to the other, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Pod to pod IP.
    PodIp,
    /// Through a ClusterIP Service.
    Service,
    /// Host network at one end or both.
    Host,
    /// Both ends in the same pod.
    IntraPod,
    /// To a DNS server that is not sonde's.
    DnsServer,
}

/// The pods of a lab Service now, ready or not, resolved to places.
pub fn service_pods(lab: &str, service: &str) -> crate::Result<Vec<Place>> {
    let lab = Inventory::load(lab)?;
    let service = lab
        .services
        .iter()
        .find(|found| found.name == service)
        .with_context(|| format!("the lab has no Service {service:?} any more"))?;
    service
        .endpoints
        .iter()
        .chain(&service.pending)
        .map(|pod| resolve_place(&EndpointRef::Pod(pod.clone()), Some(&lab)))
        .collect()
}

/// Resolves the client end.
pub fn resolve_source(endpoint: &EndpointRef, lab: Option<&Inventory>) -> crate::Result<Place> {
    check_source(endpoint)?;
    resolve_place(endpoint, lab)
}

/// Resolves the server end.
pub fn resolve_destination(
    endpoint: &EndpointRef,
    lab: Option<&Inventory>,
) -> crate::Result<Destination> {
    if let EndpointRef::Dns(addr) = endpoint {
        return Ok(Destination::external(*addr));
    }
    if let EndpointRef::Service(name) = endpoint {
        let lab =
            lab.context("service/NAME endpoints need a lab (`sondectl lab up --service ...`)")?;
        let service = lab
            .services
            .iter()
            .find(|service| &service.name == name)
            .with_context(|| format!("the lab has no Service {name:?}"))?;
        // Pods not ready yet (a rollout's) too: traffic comes to them once they are.
        let servers = service
            .endpoints
            .iter()
            .chain(&service.pending)
            .map(|pod| resolve_place(&EndpointRef::Pod(pod.clone()), Some(lab)))
            .collect::<crate::Result<Vec<_>>>()?;
        return Ok(Destination {
            servers,
            ip: IpAddr::V4(service.cluster_ip),
            port: Some(service.port),
            server_port: Some(service.target_port),
            follow: Some(FollowedService::Lab {
                lab: lab.name.clone(),
                service: name.clone(),
            }),
        });
    }
    Destination::at(resolve_place(endpoint, lab)?, endpoint)
}

fn resolve_place(endpoint: &EndpointRef, lab: Option<&Inventory>) -> crate::Result<Place> {
    let need_lab = || {
        lab.with_context(|| {
            format!("{endpoint} names a lab object, but no lab is up (`sondectl lab up`)")
        })
    };
    match endpoint {
        EndpointRef::Pod(name) => {
            let lab = need_lab()?;
            let pod = lab.pod(name).with_context(|| {
                let pods: Vec<&str> = lab.pods.iter().map(|p| p.name.as_str()).collect();
                format!("the lab has no pod {name:?} (pods: {})", pods.join(", "))
            })?;
            let node = lab
                .node(&pod.node)
                .context("the inventory is inconsistent")?;
            Ok(Place {
                agent: node.agent.clone(),
                node: Some(node.name.clone()),
                pod: Some(pod.name.clone()),
                netns: format!("/run/netns/{}", pod.netns),
                ip: Some(IpAddr::V4(pod.ip)),
                host_interface: Some(pod.host_veth.clone()),
                uplink: Some(crate::lab::inventory::ETH0.to_owned()),
                hairpin_source: Some(IpAddr::V4(node.gateway)),
                zone: node.zone.clone(),
            })
        }
        EndpointRef::Node(name) => {
            let lab = need_lab()?;
            let node = lab.node(name).with_context(|| {
                let nodes: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
                format!("the lab has no node {name:?} (nodes: {})", nodes.join(", "))
            })?;
            Ok(Place {
                agent: node.agent.clone(),
                node: Some(node.name.clone()),
                pod: None,
                netns: String::new(),
                ip: Some(IpAddr::V4(node.ip)),
                host_interface: None,
                uplink: Some(crate::lab::inventory::ETH0.to_owned()),
                hairpin_source: None,
                zone: node.zone.clone(),
            })
        }
        EndpointRef::Agent(addr) => Ok(Place {
            agent: addr.to_string(),
            node: None,
            pod: None,
            netns: String::new(),
            ip: match addr {
                AgentAddr::Tcp { host, .. } => host.parse().ok(),
                AgentAddr::Unix(_) | AgentAddr::PortForward { .. } => None,
            },
            host_interface: None,
            uplink: None,
            hairpin_source: None,
            zone: None,
        }),
        EndpointRef::Service(_) => refuse!("a Service is not a place a generator runs"),
        EndpointRef::Dns(_) => refuse!("a DNS server is not a place a generator runs"),
    }
}

/// The path a run takes, from its two ends.
pub fn path_kind(
    from: &EndpointRef,
    to: &EndpointRef,
    source: &Place,
    destination: &Destination,
) -> PathKind {
    match (from, to) {
        (_, EndpointRef::Dns(_)) => PathKind::DnsServer,
        (_, EndpointRef::Service(_)) => PathKind::Service,
        (EndpointRef::Pod(a), EndpointRef::Pod(b)) if a == b => PathKind::IntraPod,
        (EndpointRef::Pod(_), EndpointRef::Pod(_)) => PathKind::PodIp,
        _ if destination.servers.first() == Some(source) => PathKind::IntraPod,
        _ => PathKind::Host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!("pod/pod1".parse(), Ok(EndpointRef::Pod("pod1".to_owned())));
        assert_eq!(
            "node/node2".parse(),
            Ok(EndpointRef::Node("node2".to_owned()))
        );
        assert_eq!(
            "service/web".parse(),
            Ok(EndpointRef::Service("web".to_owned()))
        );
        assert!(matches!(
            "127.0.0.1:7470".parse(),
            Ok(EndpointRef::Agent(_))
        ));
        assert_eq!(
            "pod/perf/client-0".parse(),
            Ok(EndpointRef::Pod("perf/client-0".to_owned()))
        );
        for bad in [
            "pod/",
            "thing/x",
            "pod/a/b/c",
            "pod//b",
            "node/a/b",
            "nowhere",
        ] {
            let err = bad.parse::<EndpointRef>().expect_err(bad);
            assert!(err.contains("endpoint"), "{bad}: {err}");
        }
    }
}
