//! Placement: where a run's two ends must be, checked against where the daemons are, so that a
//! run never silently measures a path other than the one asked for.

use serde::Serialize;

use super::discover::Daemon;
use crate::error::refuse;

/// Where the two ends of a run must be relative to each other.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Both on one node.
    SameNode,
    /// On two different nodes.
    CrossNode,
    /// On nodes in two different zones.
    CrossZone,
}

impl Placement {
    /// Its name in files, reports and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::SameNode => "same-node",
            Self::CrossNode => "cross-node",
            Self::CrossZone => "cross-zone",
        }
    }
}

/// Where one end of a run is: its node and the node's zone.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    /// The node.
    pub node: &'a str,
    /// The node's zone, when labelled.
    pub zone: Option<&'a str>,
}

impl<'a> From<&'a Daemon> for End<'a> {
    fn from(daemon: &'a Daemon) -> Self {
        Self {
            node: &daemon.node,
            zone: daemon.zone.as_deref(),
        }
    }
}

/// Checks that `client` and `server` are placed as asked.
pub fn check(placement: Placement, client: &Daemon, server: &Daemon) -> crate::Result<()> {
    check_ends(placement, client.into(), server.into())
}

/// Checks that the two ends of a run are placed as asked.
pub fn check_ends(placement: Placement, client: End<'_>, server: End<'_>) -> crate::Result<()> {
    match placement {
        Placement::SameNode if client.node != server.node => refuse!(
            "--same-node: the client is on {} and the server on {}",
            client.node,
            server.node
        ),
        Placement::CrossNode if client.node == server.node => {
            refuse!("--cross-node: both ends are on {}", client.node)
        }
        Placement::CrossZone => match (client.zone, server.zone) {
            (Some(a), Some(b)) if a != b => Ok(()),
            (Some(a), Some(_)) => refuse!(
                "--cross-zone: both ends are in zone {a} ({} and {})",
                client.node,
                server.node
            ),
            _ => refuse!(
                "--cross-zone: {} or {} has no {} label",
                client.node,
                server.node,
                super::discover::ZONE_LABEL
            ),
        },
        _ => Ok(()),
    }
}

/// Picks a (client, server) pair of ready daemons placed as asked: the first such pair in node
/// order, so that the same cluster gives the same pick.
pub fn pick(placement: Placement, daemons: &[Daemon]) -> crate::Result<(Daemon, Daemon)> {
    let ready: Vec<&Daemon> = daemons.iter().filter(|d| d.ready).collect();
    if ready.is_empty() {
        refuse!("no ready sonde daemon found");
    }
    for client in &ready {
        for server in &ready {
            let distinct = !std::ptr::eq(*client, *server);
            if (placement == Placement::SameNode || distinct)
                && check(placement, client, server).is_ok()
            {
                return Ok(((*client).clone(), (*server).clone()));
            }
        }
    }
    match placement {
        Placement::SameNode => refuse!("no ready daemon to place both ends on"),
        Placement::CrossNode => refuse!(
            "--cross-node needs two nodes with a ready daemon; found {}",
            ready.len()
        ),
        Placement::CrossZone => {
            let mut zones: Vec<&str> = ready.iter().filter_map(|d| d.zone.as_deref()).collect();
            zones.sort_unstable();
            zones.dedup();
            refuse!(
                "--cross-zone needs ready daemons in two zones; found {} ({})",
                zones.len(),
                if zones.is_empty() {
                    "no zone labels".to_owned()
                } else {
                    zones.join(", ")
                }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(node: &str, zone: Option<&str>, ready: bool) -> Daemon {
        Daemon {
            node: node.to_owned(),
            zone: zone.map(str::to_owned),
            node_labels: Default::default(),
            pod: format!("sonded-{node}"),
            namespace: "sonde".to_owned(),
            pod_ip: Some("10.0.0.1".to_owned()),
            ready,
        }
    }

    #[test]
    fn cross_zone_picks_two_zones_and_refuses_one() {
        let two = [
            daemon("a", Some("z1"), true),
            daemon("b", Some("z1"), true),
            daemon("c", Some("z2"), true),
        ];
        let (client, server) = pick(Placement::CrossZone, &two).expect("a pair");
        assert_eq!((client.node.as_str(), server.node.as_str()), ("a", "c"));
        let one = [daemon("a", Some("z1"), true), daemon("b", Some("z1"), true)];
        let err = pick(Placement::CrossZone, &one).expect_err("one zone");
        assert!(err.to_string().contains("found 1 (z1)"), "{err}");
        // A daemon that is not ready does not count.
        let unready = [
            daemon("a", Some("z1"), true),
            daemon("c", Some("z2"), false),
        ];
        assert!(pick(Placement::CrossZone, &unready).is_err());
    }

    #[test]
    fn checks_say_where_the_ends_are() {
        let (a, b) = (daemon("a", None, true), daemon("b", None, true));
        assert!(check(Placement::SameNode, &a, &a).is_ok());
        assert!(check(Placement::CrossNode, &a, &b).is_ok());
        let err = check(Placement::SameNode, &a, &b).expect_err("two nodes");
        assert!(
            err.to_string()
                .contains("client is on a and the server on b")
        );
        assert!(check(Placement::CrossNode, &a, &a).is_err());
        let err = check(Placement::CrossZone, &a, &b).expect_err("no zones");
        assert!(err.to_string().contains("topology.kubernetes.io/zone"));
    }
}
