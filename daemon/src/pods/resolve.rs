//! Where a request's side runs, resolved on this node: a namespace named by a pod's IP (a
//! Kubernetes caller knows a pod's address, not its namespace's path), and the uplink this
//! node routes another node's pods through (the caller does not know the node's devices).

use std::{io, net::IpAddr, path::PathBuf};

use super::{PodInterface, rtnl::Rtnl};
use crate::runs::{netns_path, spec::InvalidSpec};

/// A side's namespace: `None` for the daemon's own; the pod when the request named one.
#[derive(Debug, Default)]
pub struct SideNamespace {
    /// The namespace's path.
    pub netns: Option<PathBuf>,
    /// The pod it belongs to, when named by `pod-ip:` (its veth is the pod stage's).
    pub pod: Option<PodInterface>,
}

/// The namespace `text` names in request field `field`: a path (`/run/netns/NAME`,
/// `/proc/PID/ns/net`), or `pod-ip:ADDRESS` for one of `pods`, this node's.
pub fn namespace(
    field: &'static str,
    text: &str,
    pods: Vec<PodInterface>,
) -> Result<SideNamespace, InvalidSpec> {
    let Some(address) = text.strip_prefix("pod-ip:") else {
        return Ok(SideNamespace {
            netns: netns_path(field, text)?,
            pod: None,
        });
    };
    let invalid = |reason: String| InvalidSpec { field, reason };
    let ip: IpAddr = address
        .parse()
        .map_err(|_| invalid(format!("{address:?} in pod-ip: is not an IP address")))?;
    let known: Vec<String> = pods
        .iter()
        .flat_map(|pod| pod.ips.iter().map(ToString::to_string))
        .collect();
    match pods.into_iter().find(|pod| pod.ips.contains(&ip)) {
        Some(pod) => Ok(SideNamespace {
            netns: Some(pod.netns.clone()),
            pod: Some(pod),
        }),
        None => Err(invalid(format!(
            "no pod with IP {ip} on this node (its pods: {})",
            if known.is_empty() {
                "none found".to_owned()
            } else {
                known.join(", ")
            }
        ))),
    }
}

/// The device this node (the daemon's namespace) routes packets for `toward` out of, as
/// `ip route get` says; `None` when the address is local or has no route.
pub fn uplink_toward(toward: IpAddr) -> io::Result<Option<String>> {
    Rtnl::open()?.route_device(toward)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: &str) -> PodInterface {
        PodInterface {
            host_interface: "veth-a".to_owned(),
            host_ifindex: 7,
            netns: PathBuf::from("/run/netns/pod-a"),
            ips: vec![ip.parse().expect("an IP")],
            pod: None,
        }
    }

    #[test]
    fn a_pod_ip_names_that_pods_namespace_and_veth() {
        let side = namespace(
            "netns",
            "pod-ip:10.1.0.5",
            vec![pod("10.1.0.4"), pod("10.1.0.5")],
        )
        .expect("a known pod");
        assert_eq!(side.netns, Some(PathBuf::from("/run/netns/pod-a")));
        assert_eq!(
            side.pod.map(|pod| pod.ips),
            Some(vec!["10.1.0.5".parse().expect("an IP")])
        );
    }

    #[test]
    fn an_unknown_or_malformed_pod_ip_says_which_pods_there_are() {
        let err =
            namespace("netns", "pod-ip:10.1.0.9", vec![pod("10.1.0.4")]).expect_err("no such pod");
        assert_eq!(err.field, "netns");
        assert!(err.reason.contains("10.1.0.4"), "{err}");
        let err = namespace("netns", "pod-ip:ten", vec![]).expect_err("not an IP");
        assert!(err.reason.contains("not an IP address"), "{err}");
        let empty = namespace("netns", "", vec![]).expect("the daemon's own");
        assert!(empty.netns.is_none() && empty.pod.is_none());
    }
}
