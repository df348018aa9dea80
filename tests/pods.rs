//! The daemons' pod-to-interface mapping in the lab, which imitates a node's pods: each
//! daemon finds exactly its node's pods behind their host-side veths (with their namespaces
//! and addresses), counts their packets there, and follows a pod added after it started, and
//! removed again.

use std::{
    collections::BTreeSet,
    fs::File,
    net::UdpSocket,
    time::{Duration, Instant},
};

use sonde_integration::{lab::Lab, require_root, run};

/// (host veth, netns, IPs) of every pod a node's daemon reports, and its packet counts.
type Mapped = BTreeSet<(String, String, Vec<String>)>;

fn pods_of(lab: &Lab, node: &str) -> (Mapped, Vec<(String, u64)>) {
    let output = lab.sondectl(&["nodes", "-o", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let daemon = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node_name"] == node)
        .unwrap_or_else(|| panic!("no {node} in {report}"))
        .clone();
    let pods = daemon["pod_interfaces"].as_array().expect("pod_interfaces");
    let mapped = pods
        .iter()
        .map(|p| {
            (
                p["host_interface"].as_str().expect("veth").to_owned(),
                p["netns"].as_str().expect("netns").to_owned(),
                p["ips"]
                    .as_array()
                    .expect("ips")
                    .iter()
                    .filter_map(|ip| ip.as_str().map(str::to_owned))
                    .collect(),
            )
        })
        .collect();
    let counts = pods
        .iter()
        .map(|p| {
            (
                p["host_interface"].as_str().expect("veth").to_owned(),
                p["packets_from_pod"].as_u64().expect("count"),
            )
        })
        .collect();
    (mapped, counts)
}

/// Polls `node`'s mapping until it equals `expected` (a daemon looks again on link events).
fn wait_for(lab: &Lab, node: &str, expected: &Mapped) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mapped, _) = pods_of(lab, node);
        if &mapped == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} maps {mapped:#?}, expected {expected:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the lab's inventory says `node`'s pods are.
fn expected(lab: &Lab, node: &str) -> Mapped {
    lab.inventory
        .pods
        .iter()
        .filter(|pod| pod.node == node)
        .map(|pod| {
            (
                pod.host_veth.clone(),
                format!("/run/netns/{}", pod.netns),
                vec![pod.ip.to_string()],
            )
        })
        .collect()
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn each_daemon_maps_exactly_its_pods_and_follows_new_ones() {
    require_root();
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "2"]);
    let mut node1 = expected(&lab, "node1");
    wait_for(&lab, "node1", &node1);
    wait_for(&lab, "node2", &expected(&lab, "node2"));

    // The counters are on the right veth: datagrams sent from pod1 are counted on pod1's.
    let pod1 = lab.inventory.pod("pod1").expect("pod1").clone();
    let pod2_ip = lab.ip("pod2");
    let (_, before) = pods_of(&lab, "node1");
    let netns = File::open(lab.netns_path("pod1")).expect("pod1 netns");
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..20 {
            socket.send_to(b"x", (pod2_ip.as_str(), 9)).expect("send");
        }
    })
    .join()
    .expect("sender");
    let (_, after) = pods_of(&lab, "node1");
    let from = |counts: &[(String, u64)], veth: &str| {
        counts
            .iter()
            .find(|(v, _)| v == veth)
            .map_or(0, |(_, n)| *n)
    };
    assert!(
        from(&after, &pod1.host_veth) >= from(&before, &pod1.host_veth) + 20,
        "{before:?} -> {after:?}"
    );

    // A pod added by hand, after the daemons started: node1's daemon finds it, node2's not.
    let extra = format!(
        "{}extra",
        sonde_ctl::lab::inventory::netns_prefix(&lab.name)
    );
    let node1_netns = lab.inventory.node("node1").expect("node1").netns.clone();
    let cidr = lab.inventory.node("node1").expect("node1").pod_cidr;
    let extra_ip = std::net::Ipv4Addr::from(u32::from(cidr.network()) + 99);
    run("ip", &["netns", "add", &extra]);
    run(
        "ip",
        &[
            "link",
            "add",
            "vethextra",
            "netns",
            &node1_netns,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &extra,
        ],
    );
    run(
        "ip",
        &[
            "-n",
            &node1_netns,
            "link",
            "set",
            "vethextra",
            "master",
            "cni0",
            "up",
        ],
    );
    run("ip", &["-n", &extra, "link", "set", "eth0", "up"]);
    run(
        "ip",
        &[
            "-n",
            &extra,
            "addr",
            "add",
            &format!("{extra_ip}/24"),
            "dev",
            "eth0",
        ],
    );
    node1.insert((
        "vethextra".to_owned(),
        format!("/run/netns/{extra}"),
        vec![extra_ip.to_string()],
    ));
    wait_for(&lab, "node1", &node1);
    wait_for(&lab, "node2", &expected(&lab, "node2"));

    // And when it goes, it is forgotten (its counters detached).
    run("ip", &["netns", "del", &extra]);
    wait_for(&lab, "node1", &expected(&lab, "node1"));
}
