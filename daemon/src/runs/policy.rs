//! Where a daemon may send traffic: a daemon runs on every node, so it must not be usable as a
//! traffic cannon. Targets must be inside the configured ranges (loopback only by default; the
//! lab and the DaemonSet configure the cluster's ranges), and every generator refuses to send
//! load until the peer has proved it is a sonde server of the same run (see `generators::wire`).

use std::net::IpAddr;

use ipnet::IpNet;

/// The ranges a daemon may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    allowed: Vec<IpNet>,
}

impl TargetPolicy {
    /// Loopback, plus `extra`.
    pub fn new(extra: &[IpNet]) -> Self {
        let mut allowed = vec![
            "127.0.0.0/8"
                .parse()
                .unwrap_or(IpNet::V4(Default::default())),
            "::1/128".parse().unwrap_or(IpNet::V6(Default::default())),
        ];
        allowed.extend_from_slice(extra);
        Self { allowed }
    }

    /// Whether `ip` may be a target.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// The ranges, for messages.
    pub fn describe(&self) -> String {
        self.allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self::new(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_configured_ranges_only() {
        let policy = TargetPolicy::new(&["10.244.0.0/16".parse().expect("net")]);
        assert!(policy.allows("127.0.0.1".parse().expect("ip")));
        assert!(policy.allows("::1".parse().expect("ip")));
        assert!(policy.allows("10.244.3.7".parse().expect("ip")));
        assert!(!policy.allows("10.245.0.1".parse().expect("ip")));
        assert!(!policy.allows("192.0.2.1".parse().expect("ip")));
        assert_eq!(policy.describe(), "127.0.0.0/8,::1/128,10.244.0.0/16");
    }
}
