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
    let (extra, extra_ip) = lab.add_pod("extra", "node1", 99);
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

/// A tcp-rr spec for `duration_ms`.
fn rr_spec(duration_ms: u64) -> sonde_proto::v1::RunSpec {
    use sonde_proto::v1 as pb;
    pb::RunSpec {
        kind: pb::RunKind::TcpRr as i32,
        duration_ms,
        warmup_ms: 0,
        parallel: 1,
        request_size: 64,
        response_size: 64,
        rate: 0.0,
        direction: pb::Direction::ClientToServer as i32,
        plain_io: false,
        ..pb::RunSpec::default()
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_run_names_its_pods_by_ip_as_the_daemons_mapped_them() {
    use sonde_proto::v1::{self as pb, client_event::Event};
    require_root();
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1"]);
    wait_for(&lab, "node1", &expected(&lab, "node1"));
    wait_for(&lab, "node2", &expected(&lab, "node2"));
    let (pod1, pod2) = (lab.ip("pod1"), lab.ip("pod2"));
    let agent = |node: &str| -> sonde_ctl::agent::AgentAddr {
        lab.inventory
            .node(node)
            .expect("node")
            .agent
            .parse()
            .expect("agent address")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let timeout = Duration::from_secs(5);
        let mut node1 = sonde_ctl::agent::connect(&agent("node1"), timeout)
            .await
            .expect("node1");
        let mut node2 = sonde_ctl::agent::connect(&agent("node2"), timeout)
            .await
            .expect("node2");
        let prepare = |netns: String| pb::PrepareServerRequest {
            trace: None,
            reservation_id: String::new(),
            run_id: "by-ip".to_owned(),
            spec: Some(rr_spec(500)),
            netns,
            port: 0,
            lease_ms: 0,
            token: Vec::new(),
        };
        // A pod that is not on the node is refused, with the pods it has.
        let status = node2
            .prepare_server(prepare(format!("pod-ip:{pod1}")))
            .await
            .expect_err("pod1 is not on node2");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            format!("netns: no pod with IP {pod1} on this node (its pods: {pod2})")
        );
        // Server in pod2 and client in pod1, each named by its IP.
        let prepared = node2
            .prepare_server(prepare(format!("pod-ip:{pod2}")))
            .await
            .expect("prepare in pod2")
            .into_inner();
        let mut stream = node1
            .start_client(pb::StartClientRequest {
                trace: None,
                reservation_id: String::new(),
                run_id: "by-ip".to_owned(),
                spec: Some(rr_spec(500)),
                netns: format!("pod-ip:{pod1}"),
                target_ip: pod2.clone(),
                target_port: prepared.port,
                token: prepared.token,
                target_path: String::new(),
            })
            .await
            .expect("start in pod1")
            .into_inner();
        let client = loop {
            match stream
                .message()
                .await
                .expect("stream")
                .and_then(|e| e.event)
            {
                Some(Event::Progress(_)) => {}
                Some(Event::Result(result)) => break result,
                None => panic!("no result"),
            }
        };
        let server = node2
            .finish_server(pb::FinishServerRequest {
                run_id: "by-ip".to_owned(),
            })
            .await
            .expect("finish")
            .into_inner()
            .result
            .expect("server result");
        assert!(client.errors.is_empty(), "{:?}", client.errors);
        assert!(client.messages > 0);
        assert_eq!(client.local_ip, pod1, "the client ran in pod1");
        // The server listens on every address of its namespace: that pod2's address reached it
        // says it is pod2's.
        assert_eq!(
            server.messages, client.messages,
            "pod2 served every request"
        );
    });
}
