//! The lab with real packets: `sondectl lab up` builds it, traffic crosses it the way it
//! crosses a cluster, `sondectl lab down` removes every trace, also after a `kill -9`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    path::Path,
    process::Command,
    time::Duration,
};

use sonde_daemon::netns;
use sonde_integration::{
    lab::{Lab, sondectl, stdout_of},
    require_root, run, workspace_bin,
};

fn in_ns<T: Send>(path: &Path, work: impl FnOnce() -> T + Send) -> T {
    netns::run_in(path, work).expect("enter namespace")
}

/// A TCP server in `pod` answering each connection with the pod's name, for `connections`.
fn name_server(lab: &Lab, pod: &str, port: u16, connections: usize) -> std::thread::JoinHandle<()> {
    let listener = in_ns(&lab.netns_path(pod), || {
        TcpListener::bind(("0.0.0.0", port))
    })
    .expect("bind in pod");
    let name = pod.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.write_all(name.as_bytes());
        }
    })
}

/// Connects from `pod` to `addr` and returns what the server said.
fn ask_from(lab: &Lab, pod: &str, addr: SocketAddr) -> String {
    let mut stream = in_ns(&lab.netns_path(pod), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .unwrap_or_else(|err| panic!("{pod} -> {addr}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn pods_reach_each_other_on_one_node_and_across_nodes_through_both_uplinks() {
    require_root();
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "2"]);

    // Same node: pod1 -> pod2 over node1's bridge.
    let server = name_server(&lab, "pod2", 7000, 1);
    let pod2: SocketAddr = format!("{}:7000", lab.ip("pod2")).parse().expect("addr");
    assert_eq!(ask_from(&lab, "pod1", pod2), "pod2");
    server.join().expect("server");

    // Across nodes: 300 datagrams pod1 (node1) -> pod3 (node2), all received, and each one left
    // node1 through its uplink and entered node2 through its uplink.
    let before = (lab.uplink_packets("node1"), lab.uplink_packets("node2"));
    let receiver = in_ns(&lab.netns_path("pod3"), || {
        UdpSocket::bind(("0.0.0.0", 7001))
    })
    .expect("bind in pod3");
    receiver
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let sender =
        in_ns(&lab.netns_path("pod1"), || UdpSocket::bind(("0.0.0.0", 0))).expect("bind in pod1");
    let pod3: SocketAddr = format!("{}:7001", lab.ip("pod3")).parse().expect("addr");
    let mut buf = [0_u8; 64];
    for i in 0_u32..300 {
        sender.send_to(&i.to_be_bytes(), pod3).expect("send");
        let (len, from) = receiver.recv_from(&mut buf).expect("datagram arrives");
        assert_eq!(&buf[..len], i.to_be_bytes());
        assert_eq!(
            from.ip().to_string(),
            lab.ip("pod1"),
            "no NAT on the pod-IP path"
        );
    }
    let after = (lab.uplink_packets("node1"), lab.uplink_packets("node2"));
    let node1_tx = after.0.1 - before.0.1;
    let node2_rx = after.1.0 - before.1.0;
    assert!(node1_tx >= 300, "node1's uplink sent {node1_tx} packets");
    assert!(
        node2_rx >= 300,
        "node2's uplink received {node2_rx} packets"
    );

    // `sondectl nodes` with no flags lists the lab's daemons.
    let output = Command::new(workspace_bin("sondectl"))
        .args(["nodes", "-o", "json"])
        .env("SONDE_LAB", &lab.name)
        .env_remove("SONDE_AGENTS")
        .output()
        .expect("sondectl nodes");
    let report: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("JSON");
    let nodes: Vec<&str> = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| node["node_name"].as_str().expect("name"))
        .collect();
    assert_eq!(nodes, ["node1", "node2"]);
    let status = sondectl(&["lab", "status", "--name", &lab.name]);
    assert!(stdout_of(&status).contains("ready"));
    // As JSON, what the table shows: each node, its daemon, its pods by name and IP.
    let status = sondectl(&["lab", "status", "--name", &lab.name, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout_of(&status)).expect("JSON");
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), lab.inventory.nodes.len());
    for node in nodes {
        assert_eq!(node["daemon"], "ready", "{node}");
        let name = node["name"].as_str().expect("name");
        let pods: Vec<(String, String)> = node["pods"]
            .as_array()
            .expect("pods")
            .iter()
            .map(|pod| {
                (
                    pod["name"].as_str().expect("pod name").to_owned(),
                    pod["ip"].as_str().expect("pod IP").to_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = lab
            .inventory
            .pods
            .iter()
            .filter(|pod| pod.node == name)
            .map(|pod| (pod.name.clone(), pod.ip.to_string()))
            .collect();
        assert!(!pods.is_empty(), "{node}");
        assert_eq!(pods, expected);
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_cluster_ip_service_is_dnat_with_conntrack_and_spreads_over_its_pods() {
    require_root();
    let lab = Lab::up(&["--service", "web=80:8080"]);
    let service = &lab.inventory.services[0];
    let cluster: SocketAddr = format!("{}:80", service.cluster_ip).parse().expect("addr");
    const CONNECTIONS: usize = 40;
    // Every pod serves; pod1 is both a client and an endpoint (the hairpin case).
    let servers: Vec<_> = ["pod1", "pod2", "pod3", "pod4"]
        .into_iter()
        .map(|pod| name_server(&lab, pod, 8080, CONNECTIONS))
        .collect();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..CONNECTIONS {
        *answers.entry(ask_from(&lab, "pod1", cluster)).or_default() += 1;
    }
    // Uniform choice over 4 pods: all 4 answer in 40 tries but with probability 4e-5.
    let answered: Vec<&str> = answers.keys().map(String::as_str).collect();
    assert_eq!(answered, ["pod1", "pod2", "pod3", "pod4"], "{answers:?}");
    drop(servers);

    // conntrack on pod1's node shows the translation: original to the ClusterIP, reply from
    // a pod's IP.
    let node1 = &lab.inventory.node("node1").expect("node1").netns;
    let entries = run(
        "ip",
        &[
            "netns",
            "exec",
            node1,
            "conntrack",
            "-L",
            "-p",
            "tcp",
            "--orig-dst",
            &service.cluster_ip.to_string(),
        ],
    );
    let endpoint_ips: Vec<String> = ["pod2", "pod3", "pod4"].iter().map(|p| lab.ip(p)).collect();
    let translated = entries.lines().filter(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let srcs: Vec<&&str> = fields.iter().filter(|f| f.starts_with("src=")).collect();
        line.contains(&format!("dst={} ", service.cluster_ip))
            && line.contains("dport=80 ")
            && srcs.len() == 2
            && endpoint_ips
                .iter()
                .any(|ip| *srcs[1] == format!("src={ip}"))
    });
    assert!(translated.count() >= 1, "no DNAT entry in:\n{entries}");
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_bandwidth_limited_pod_sends_at_the_rates_goodput_ceiling() {
    require_root();
    const RATE: f64 = 100e6;
    let lab = Lab::up(&["--bandwidth", "pod4=100M"]);
    let server_ns = lab.inventory.pod("pod1").expect("pod1").netns.clone();
    let client_ns = lab.inventory.pod("pod4").expect("pod4").netns.clone();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &server_ns, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let report = run(
        "ip",
        &[
            "netns",
            "exec",
            &client_ns,
            "iperf3",
            "-c",
            &lab.ip("pod1"),
            "-p",
            "5201",
            "-t",
            "5",
            "-J",
        ],
    );
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_str(&report).expect("iperf3 JSON");
    let goodput = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second");
    let mss = report["start"]["tcp_mss_default"].as_f64().expect("mss");
    // TBF meters whole frames: each MSS of payload costs MSS + 32 (TCP with timestamps) + 20
    // (IPv4) + 14 (Ethernet) bytes of the rate.
    let ceiling = RATE * mss / (mss + 66.0);
    let ratio = goodput / ceiling;
    eprintln!(
        "goodput {:.2} Mbit/s, ceiling {:.2} Mbit/s, ratio {ratio:.4}",
        goodput / 1e6,
        ceiling / 1e6
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "goodput/ceiling = {ratio:.4}"
    );
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn down_after_kill_9_of_a_daemon_leaves_nothing_behind() {
    require_root();
    let host_links = run("ip", &["-br", "link"]);
    let host_tables = run("nft", &["list", "tables"]);
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--service",
        "web=80",
    ]);
    let name = lab.name.clone();
    let state_dir = lab.inventory.state_dir.clone();
    let pid = lab
        .inventory
        .node("node1")
        .expect("node1")
        .daemon_pid
        .expect("pid");
    run("kill", &["-9", &pid.to_string()]);

    let output = sondectl(&["lab", "down", "--name", &name]);
    let said = stdout_of(&output);
    assert!(said.contains("7 namespaces deleted"), "{said}");
    std::mem::forget(lab);

    let prefix = format!("sonde-{name}-");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!state_dir.exists(), "{} left", state_dir.display());
    let stray: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&*state_dir.to_string_lossy()))
        .collect();
    assert!(stray.is_empty(), "processes left: {stray:?}");
    assert_eq!(
        run("ip", &["-br", "link"]),
        host_links,
        "host links changed"
    );
    assert_eq!(
        run("nft", &["list", "tables"]),
        host_tables,
        "host nft tables changed"
    );

    // A second down is harmless and says so.
    let again = stdout_of(&sondectl(&["lab", "down", "--name", &name]));
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn up_refuses_half_built_labs_host_ranges_and_non_root() {
    require_root();
    // A leftover namespace of a lab named like ours: refused, and `down` clears it.
    let name = format!("h{}", std::process::id() % 100_000);
    let stray = format!("sonde-{name}-node1");
    run("ip", &["netns", "add", &stray]);
    let output = sondectl(&["lab", "up", "--name", &name]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("half-built"), "{stderr}");
    let said = stdout_of(&sondectl(&["lab", "down", "--name", &name]));
    assert!(said.contains("1 namespaces deleted"), "{said}");
    assert!(!Path::new("/run/netns").join(&stray).exists());

    // 127.0.0.0/8 is routed by every Linux host (local table): refused, nothing made.
    let output = sondectl(&[
        "lab",
        "up",
        "--name",
        &name,
        "--service-cidr",
        "127.1.0.0/24",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("overlaps the host's route to 127.0.0.0/8"),
        "{stderr}"
    );
    assert!(stderr.lines().count() == 1, "{stderr}");

    // Not root: a clear error.
    let output = Command::new(workspace_bin("sondectl"))
        .args(["lab", "up", "--name", &name])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("needs root"), "{stderr}");
}
