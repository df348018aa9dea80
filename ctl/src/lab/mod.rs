//! The lab: a multi-node, Kubernetes-shaped cluster made of network namespaces on one machine.
//!
//! Shape, per node: a namespace with a bridge (`cni0`) its pods' veths join, as a bridge CNI
//! does; an uplink (`eth0`) to an underlay namespace that joins the nodes, with routes between
//! the nodes' pod /24s; ClusterIP Services as nftables DNAT with real conntrack, as kube-proxy's
//! nftables mode does; egress bandwidth limits as TBF on an IFB device fed from the pod's
//! host-side veth, as the bandwidth CNI plugin does; and a `sonded` in the node's namespace,
//! reached over a Unix socket in the lab's state directory (the host never gets a route into
//! the lab).
//!
//! # Layout
//! - [`spec`]: the options, validated before anything is made.
//! - [`inventory`]: every name and address, planned from the spec; the record of the lab.
//! - [`nft`]: the Services' nftables ruleset.
//! - [`create`]: `lab up`.
//! - [`fill`]: `lab conntrack-fill`, cheap conntrack entries in one node's table.
//! - [`sys`]: the system commands it is made with.
//! - [`teardown`]: `lab down`, which also cleans up after crashes.

pub mod create;
pub mod fill;
pub mod inventory;
pub mod nft;
pub mod rollout;
pub mod spec;
pub mod sys;
pub mod teardown;

pub use inventory::Inventory;
pub use spec::LabSpec;
