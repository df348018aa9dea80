//! The Services' nftables ruleset, loaded into every node's namespace (as kube-proxy does on
//! every node): DNAT from the ClusterIP to one of the Service's pods, chosen at random per new
//! connection, with conntrack keeping each connection on its pod. Traffic a pod sends to a
//! Service that lands back on itself (hairpin) is masqueraded, or its reply would bypass the
//! translation.
//!
//! Priorities are numeric (-100 is `dstnat`, 100 is `srcnat`): nft 1.0.6, Debian 12's, refuses
//! the names on the output hook.

use std::fmt::Write as _;

use super::{inventory::Inventory, spec::Protocol};

/// The table's name in each node namespace.
pub const TABLE: &str = "sonde-lab";
/// The packet mark that asks postrouting to masquerade (kube-proxy's value).
const MASQUERADE_MARK: u32 = 0x4000;

/// Loads (or replaces) the Services' rules in every node, each node in one transaction: the
/// old table goes and the new one comes at once, as kube-proxy's nftables mode syncs. Existing
/// connections keep their translations (conntrack holds them); new ones see the new rules.
pub fn load(inventory: &Inventory) -> crate::Result<()> {
    let Some(rules) = ruleset(inventory) else {
        return Ok(());
    };
    // `table ... {}` first, so that the delete finds a table the first time too.
    let replace = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n{rules}");
    for node in &inventory.nodes {
        super::sys::run_with_input(
            "ip",
            &["netns", "exec", &node.netns, "nft", "-f", "-"],
            Some(&replace),
        )?;
    }
    Ok(())
}

/// The ruleset for `inventory`'s Services (`nft -f` input), or `None` when it has none.
pub fn ruleset(inventory: &Inventory) -> Option<String> {
    if inventory.services.is_empty() {
        return None;
    }
    let mut text = String::new();
    let mut line = |s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    line(format!("table ip {TABLE} {{"));
    line("  chain prerouting {".to_owned());
    line("    type nat hook prerouting priority -100; policy accept;".to_owned());
    line("    jump services".to_owned());
    line("  }".to_owned());
    line("  chain output {".to_owned());
    line("    type nat hook output priority -100; policy accept;".to_owned());
    line("    jump services".to_owned());
    line("  }".to_owned());
    line("  chain postrouting {".to_owned());
    line("    type nat hook postrouting priority 100; policy accept;".to_owned());
    line(format!(
        "    meta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} masquerade"
    ));
    line("  }".to_owned());
    line("  chain services {".to_owned());
    for service in &inventory.services {
        line(format!(
            "    ip daddr {} {} dport {} jump svc-{}",
            service.cluster_ip, service.protocol, service.port, service.name
        ));
    }
    line("  }".to_owned());
    for service in &inventory.services {
        let endpoints: Vec<_> = service
            .endpoints
            .iter()
            .filter_map(|name| inventory.pod(name))
            .collect();
        let mut vmap = String::new();
        for (i, pod) in endpoints.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(vmap, "{sep}{i} : jump svc-{}-{}", service.name, pod.name);
        }
        line(format!("  chain svc-{} {{", service.name));
        line(format!(
            "    numgen random mod {} vmap {{ {vmap} }}",
            endpoints.len()
        ));
        line("  }".to_owned());
        for pod in endpoints {
            let l4 = match service.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            line(format!("  chain svc-{}-{} {{", service.name, pod.name));
            line(format!(
                "    ip saddr {} meta mark set meta mark | {MASQUERADE_MARK:#x}",
                pod.ip
            ));
            line(format!(
                "    meta l4proto {l4} dnat to {}:{}",
                pod.ip, service.target_port
            ));
            line("  }".to_owned());
        }
    }
    line("}".to_owned());
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::spec::LabSpec;

    #[test]
    fn a_service_spreads_over_its_pods_and_marks_hairpin() {
        let spec = LabSpec {
            name: "t".to_owned(),
            nodes: 2,
            pods_per_node: 1,
            zones: 1,
            pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
            node_cidr: "10.250.0.0/24".parse().expect("cidr"),
            service_cidr: "10.96.0.0/24".parse().expect("cidr"),
            services: vec!["web=80:8080".parse().expect("service")],
            bandwidth: Vec::new(),
        };
        let rules = ruleset(&Inventory::plan(&spec)).expect("one service");
        assert!(
            rules.contains("ip daddr 10.96.0.10 tcp dport 80 jump svc-web"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "numgen random mod 2 vmap { 0 : jump svc-web-pod1, 1 : jump svc-web-pod2 }"
            ),
            "{rules}"
        );
        assert!(
            rules.contains("meta l4proto tcp dnat to 10.244.2.11:8080"),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr 10.244.1.11 meta mark set meta mark | 0x4000"),
            "{rules}"
        );
        assert!(
            rules.contains("meta mark & 0x4000 == 0x4000 masquerade"),
            "{rules}"
        );
    }
}
