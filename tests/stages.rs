//! The kernel breakdown in the lab: every stage of a `tcp-rr` present and non-negative on one
//! node and across nodes, the kernel's share no larger than the application's latency, the
//! clock estimator against the lab's known zero offset, a pod's packet counter that stamps
//! while traced, and no program or link left behind by a daemon killed with SIGKILL.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use sonde_integration::{lab::Lab, require_root, workspace_bin};

/// Runs sondectl in the lab with `args` (ending in `-o json`) and returns its JSON output,
/// failing the test with sondectl's error if it fails.
fn json_of(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let output = lab.sondectl(args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// Runs a traced `tcp-rr` and returns its first measurement's kernel breakdown.
fn breakdown(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut full = vec![
        "run",
        "tcp-rr",
        "--duration",
        "1500ms",
        "--warmup",
        "300ms",
        "-o",
        "json",
    ];
    full.extend_from_slice(args);
    json_of(lab, &full)["measurements"][0].clone()
}

/// Runs a traced stream of `kind` (tcp-stream, udp-stream) from pod1 to pod3, on two nodes,
/// and returns its document.
fn cross_node_stream(lab: &Lab, kind: &str, duration: &str) -> serde_json::Value {
    json_of(
        lab,
        &[
            "run",
            kind,
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod3",
            "--duration",
            duration,
            "--warmup",
            "300ms",
            "-o",
            "json",
        ],
    )
}

/// Times `program` ran on `node`, by a traced result's `kernel` section (0: never).
fn runs_of(kernel: &serde_json::Value, node: &str, program: &str) -> u64 {
    kernel["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter(|p| p["node"] == node && p["name"] == program)
        .map(|p| p["invocations"].as_u64().expect("invocations"))
        .sum()
}

/// (name, samples, p50, error) of each stage of `direction`.
fn stages(measurement: &serde_json::Value, direction: &str) -> Vec<(String, u64, i64, u64)> {
    let directions = measurement["kernel"]["directions"]
        .as_array()
        .expect("directions");
    let found = directions
        .iter()
        .find(|d| d["direction"] == direction)
        .unwrap_or_else(|| panic!("no {direction} in {measurement}"));
    found["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_owned(),
                s["latency"]["samples"].as_u64().expect("samples"),
                s["latency"]["p50_ns"].as_i64().expect("p50"),
                s["error_ns"].as_u64().expect("error"),
            )
        })
        .collect()
}

fn check_path(measurement: &serde_json::Value, expected: &[&str]) {
    let transactions = measurement["latency"]["count"].as_u64().expect("count");
    for direction in ["client-to-server", "server-to-client"] {
        let found = stages(measurement, direction);
        let names: Vec<&str> = found.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(names, expected, "{direction}: {measurement}");
        for (name, samples, p50, _) in &found {
            // Most transactions are seen at every point (a few straddle the window's edges).
            assert!(
                *samples * 10 >= transactions * 9,
                "{direction} {name}: {samples} samples for {transactions} transactions"
            );
            assert!(*p50 >= 0, "{direction} {name}: p50 {p50} ns");
        }
    }
    let kernel = measurement["kernel"]["kernel_mean_ns"]
        .as_f64()
        .expect("kernel");
    let application = measurement["kernel"]["application_mean_ns"]
        .as_f64()
        .expect("application");
    assert!(
        kernel > 0.0 && kernel <= application,
        "kernel stages {kernel} ns against the application's {application} ns"
    );
    assert_eq!(measurement["kernel"]["events_lost"], 0);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn tcp_rr_breakdown_on_one_node_and_across_nodes() {
    require_root();
    let lab = Lab::up(&["--service", "web=80:8080"]);

    let same = breakdown(&lab, &["--from", "pod/pod1", "--to", "pod/pod2"]);
    check_path(&same, &["sender stack", "node", "receiver stack"]);

    let cross = breakdown(&lab, &["--from", "pod/pod1", "--to", "pod/pod3"]);
    check_path(&cross, &sonde_integration::CROSS_NODE_STAGES);
    // Lab nodes share a kernel: one clock, no error bar.
    assert_eq!(cross["kernel"]["clock"]["method"], "same-kernel");
    for (name, _, _, error) in stages(&cross, "client-to-server") {
        assert_eq!(error, 0, "{name}");
    }
    // The run's connections were seen being made.
    assert!(
        cross["kernel"]["connect"]["samples"]
            .as_u64()
            .expect("connect")
            >= 1
    );
    // Every hook is named (the send hook too: every send is stamped), and the probes' cost
    // is reported for both nodes.
    let hooks = cross["kernel"]["hooks"].to_string();
    for node in ["node1", "node2"] {
        assert!(
            hooks.contains(&format!("{node}: tp_btf:tcp_sendmsg_locked")),
            "{hooks}"
        );
    }
    let programs = cross["kernel"]["programs"].as_array().expect("programs");
    for node in ["node1", "node2"] {
        assert!(
            programs
                .iter()
                .any(|p| p["node"] == node && p["invocations"].as_u64() > Some(0)),
            "{node}: {programs:?}"
        );
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_request_response_run_traced_in_windows_keeps_every_stage_from_a_tenth_of_it() {
    require_root();
    let lab = Lab::up(&[]);
    let measurement = &breakdown(
        &lab,
        &["--from", "pod/pod1", "--to", "pod/pod3", "--trace-windows"],
    );
    let transactions = measurement["latency"]["count"].as_u64().expect("count");
    for direction in ["client-to-server", "server-to-client"] {
        let found = stages(measurement, direction);
        let names: Vec<&str> = found.iter().map(|(name, ..)| name.as_str()).collect();
        // Every stage, the sender's stack too: sends are stamped in the windows.
        assert_eq!(
            names,
            sonde_integration::CROSS_NODE_STAGES,
            "{direction}: {measurement}"
        );
        for (name, samples, p50, _) in &found {
            // 100 ms of every second: one or two windows of the run (and of its warm-up),
            // every transaction in them followed; continuous stamping would see nine in ten.
            assert!(
                *samples >= 50 && *samples * 4 <= transactions,
                "{direction} {name}: {samples} samples for {transactions} transactions"
            );
            assert!(*p50 >= 0, "{direction} {name}: p50 {p50} ns");
        }
    }
    let notes = measurement["kernel"]["notes"].to_string();
    for node in ["node1", "node2"] {
        assert!(
            notes.contains(&format!("{node}: stamped in windows")),
            "{notes}"
        );
    }
    assert_eq!(measurement["kernel"]["events_lost"], 0);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn the_clock_estimate_brackets_the_labs_zero_offset() {
    require_root();
    let lab = Lab::up(&[]);
    let cross = breakdown(
        &lab,
        &["--from", "pod/pod1", "--to", "pod/pod3", "--estimate-clock"],
    );
    let clock = &cross["kernel"]["clock"];
    assert_eq!(clock["method"], "ntp-style");
    let offset = clock["offset_ns"].as_i64().expect("offset");
    let error = clock["error_ns"].as_u64().expect("error");
    assert!(error > 0, "an estimate always has an error bar: {clock}");
    assert!(
        offset.unsigned_abs() <= error,
        "the true offset is 0 (one kernel): {offset} ± {error}"
    );
    let wire = stages(&cross, "client-to-server")
        .into_iter()
        .find(|(name, ..)| name == "wire")
        .expect("a wire stage");
    assert_eq!(
        wire.3, error,
        "the wire stage carries the offset's error bar"
    );
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_service_run_is_traced_through_dnat() {
    require_root();
    let lab = Lab::up(&[
        "--service",
        "web=80:8080@pod2,pod3,pod4",
        "--service",
        "self=80:8080@pod1",
    ]);
    // Hairpin: pod1 reaching a Service backed by itself is masqueraded to its node's bridge
    // (as kube-proxy does); that flow is followed too, so every stage is there.
    let hairpin = breakdown(&lab, &["--from", "pod/pod1", "--to", "service/self"]);
    check_path(&hairpin, &["sender stack", "node", "receiver stack"]);
    let measurement = breakdown(&lab, &["--from", "pod/pod1", "--to", "service/web"]);
    // Whichever pod served, the client's packets were recognised before and after DNAT.
    let names: Vec<String> = stages(&measurement, "client-to-server")
        .into_iter()
        .map(|(name, ..)| name)
        .collect();
    assert!(
        names.contains(&"sender stack".to_owned()) && names.contains(&"receiver stack".to_owned()),
        "{names:?}"
    );
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn trace_prints_only_the_breakdown_of_a_light_flow() {
    require_root();
    let lab = Lab::up(&[]);
    let trace = json_of(
        &lab,
        &[
            "trace",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod3",
            "--duration",
            "1s",
            "--rate",
            "500",
            "-o",
            "json",
        ],
    );
    assert_eq!(trace["kind"], "tcp-rr");
    assert_eq!(trace["rate"], 500.0);
    let kernel = &trace["kernel"];
    let directions = kernel["directions"].as_array().expect("directions");
    assert_eq!(directions.len(), 2, "{kernel}");
    for direction in directions {
        let names: Vec<&str> = direction["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(names, sonde_integration::CROSS_NODE_STAGES);
        for stage in direction["stages"].as_array().expect("stages") {
            // About 500 requests/s for 1 s: the light flow, every packet followed.
            let samples = stage["latency"]["samples"].as_u64().expect("samples");
            assert!((350..=650).contains(&samples), "{stage}");
        }
    }

    let table = lab.sondectl(&[
        "trace",
        "--from",
        "pod/pod1",
        "--to",
        "pod/pod2",
        "--duration",
        "500ms",
        "--protocol",
        "udp",
    ]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("udp-rr") && text.contains("kernel breakdown"),
        "{text}"
    );
    // UDP has no socket-send hook, and its reads are stamped only when the kernel copies
    // through skb_copy_datagram_iter: the pod-to-pod stage is what is always there.
    assert!(
        text.contains("client-to-server  node") && !text.contains("THROUGHPUT"),
        "{text}"
    );

    let refused = lab.sondectl(&[
        "trace", "--from", "pod/pod1", "--to", "pod/pod3", "--rate", "0",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--rate"));
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_stream_is_sampled_the_same_way_on_both_nodes() {
    require_root();
    let lab = Lab::up(&[]);
    let document = cross_node_stream(&lab, "tcp-stream", "3s");
    let kernel = &document["measurements"][0]["kernel"];
    let notes = kernel["notes"].to_string();
    assert!(notes.contains("1 packet in 16"), "{notes}");
    // Faster than 11.5 Gbit/s, the flow's sequence numbers wrap within the run (4 GiB), and
    // packet names come back: each must still be joined with its own pass.
    let bytes = document["measurements"][0]["server"]["bytes_received"]
        .as_u64()
        .expect("bytes received");
    // A sampled stream's sends are not stamped: the send hook stays detached.
    let hooks = kernel["hooks"].to_string();
    assert!(hooks.contains("tp_btf:consume_skb"), "{hooks}");
    assert!(!hooks.contains("tcp_sendmsg_locked"), "{hooks}");
    // One way: each uplink gets the classifier its data passes, and the ACKs coming back
    // pay for none.
    assert!(
        hooks.contains("egress only") && hooks.contains("ingress only"),
        "{hooks}"
    );
    let runs = |node: &str, program: &str| runs_of(kernel, node, program);
    assert!(runs("node1", "sonde_node_out") > 1000 && runs("node2", "sonde_node_in") > 1000);
    assert_eq!(
        (
            runs("node1", "sonde_node_in"),
            runs("node2", "sonde_node_out")
        ),
        (0, 0)
    );
    let data = kernel["directions"]
        .as_array()
        .expect("directions")
        .iter()
        .find(|d| d["direction"] == "client-to-server")
        .expect("the data direction");
    let stages = data["stages"].as_array().expect("stages");
    // The wire stage joins the two nodes' stamps: only packets both sampled can join. The
    // windows open at the same moment on both nodes, so nearly all do.
    let wire = stages
        .iter()
        .find(|s| s["name"] == "wire")
        .unwrap_or_else(|| panic!("no wire stage: {data}"));
    let sender = &stages[0];
    let (wire_n, sender_n) = (
        wire["latency"]["samples"].as_u64().expect("samples"),
        sender["latency"]["samples"].as_u64().expect("samples"),
    );
    assert!(
        wire_n * 10 >= sender_n * 9 && wire_n > 100,
        "wire {wire_n} against sender {sender_n}, {bytes} bytes"
    );
    // One kernel, one clock: nothing arrives before it left, nor a second later.
    for at in ["p50_ns", "max_ns"] {
        let ns = wire["latency"][at].as_i64().expect("wire latency");
        assert!((0..1_000_000_000).contains(&ns), "wire {at} {ns}: {wire}");
    }
    // The receiving node follows as many packets as the sending one, though the server
    // splices (its reads pass no hook, so its packets are let go by age).
    let receiver = stages
        .iter()
        .find(|s| s["name"] == "receiver node")
        .unwrap_or_else(|| panic!("no receiver node stage: {data}"));
    let receiver_n = receiver["latency"]["samples"].as_u64().expect("samples");
    assert!(
        receiver_n * 10 >= sender_n * 8,
        "receiver node {receiver_n} against sender {sender_n}, {bytes} bytes"
    );
    assert_eq!(kernel["events_lost"], 0);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_udp_stream_sent_in_gso_batches_is_followed() {
    require_root();
    let lab = Lab::up(&[]);
    // Three of the stamping windows (100 ms of each second).
    let document = cross_node_stream(&lab, "udp-stream", "3s");
    let measurement = &document["measurements"][0];
    // A batch of datagrams crosses the stack as one packet whose payload is not in the
    // classifiers' direct view: the first datagram's header is read all the same.
    assert_eq!(measurement["client"]["io_path"], "udp-gso", "{measurement}");
    let kernel = &measurement["kernel"];
    let stages = kernel["directions"][0]["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no stages: {kernel}"));
    let names: Vec<&str> = stages.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["sender node", "wire", "receiver node"], "{kernel}");
    for stage in stages {
        assert!(stage["latency"]["samples"].as_u64() > Some(30), "{stage}");
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_delay_on_the_underlay_lands_in_the_wire_stage() {
    require_root();
    let lab = Lab::up(&[]);
    // 5 ms added to what node1 sends node2, for long enough to cover the run; the line stops
    // by itself (and its TAP devices and links go with it).
    let mut line = Command::new(workspace_bin("sondectl"))
        .args([
            "lab", "delay", "--name", &lab.name, "--from", "node1", "--to", "node2",
        ])
        .args(["--delay", "5ms", "--duration", "12s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sondectl lab delay");
    let ready = line
        .stdout
        .take()
        .and_then(|out| std::io::BufRead::lines(std::io::BufReader::new(out)).next())
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(ready.contains("ready"), "the delay line said {ready:?}");

    let measurement = breakdown(&lab, &["--from", "pod/pod1", "--to", "pod/pod3"]);
    let _ = line.kill();
    let _ = line.wait();
    let p50 = |direction, name: &str| {
        stages(&measurement, direction)
            .into_iter()
            .find(|(stage, ..)| stage == name)
            .map(|(_, _, p50, _)| p50)
            .unwrap_or_else(|| panic!("no {name} stage {direction}: {measurement}"))
    };
    let wire = p50("client-to-server", "wire");
    assert!(
        (wire - 5_000_000).abs() <= 250_000,
        "the wire stage is {wire} ns with 5 ms added: not within 5%"
    );
    // Nothing else took the delay: every other stage, and the way back, stay short.
    for (direction, name) in [
        ("client-to-server", "sender stack"),
        ("client-to-server", "sender node"),
        ("client-to-server", "receiver node"),
        ("client-to-server", "receiver stack"),
        ("server-to-client", "wire"),
    ] {
        let took = p50(direction, name);
        assert!(took < 1_000_000, "{direction} {name}: {took} ns");
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn drops_are_counted_once_with_the_kernels_reason() {
    require_root();
    let lab = Lab::up(&[]);
    let pod3 = &lab.inventory.pod("pod3").expect("pod3").netns;
    // In pod3, drop 1 in 20 of pod1's data segments (requests are 400 bytes; ACKs and
    // handshakes are smaller and pass), counting them.
    let pod1 = lab.ip("pod1");
    for command in [
        "add table inet sondetest".to_owned(),
        "add chain inet sondetest input { type filter hook input priority 0 ; }".to_owned(),
        format!(
            "add rule inet sondetest input ip saddr {pod1} ip length > 200 \
             numgen random mod 20 == 0 counter drop"
        ),
    ] {
        sonde_integration::run("ip", &["netns", "exec", pod3, "nft", &command]);
    }
    // No warm-up: every drop the rule counts is one of the measured window's.
    let document = json_of(
        &lab,
        &[
            "run",
            "tcp-rr",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod3",
            "--size",
            "400",
            "--duration",
            "1500ms",
            "--warmup",
            "0",
            "-o",
            "json",
        ],
    );
    let measurement = &document["measurements"][0];
    let listed = sonde_integration::run(
        "ip",
        &[
            "netns",
            "exec",
            pod3,
            "nft",
            "-j",
            "list",
            "table",
            "inet",
            "sondetest",
        ],
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("nft JSON");
    let dropped_by_nft = listed["nftables"]
        .as_array()
        .expect("nftables")
        .iter()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .find_map(|expr| expr["counter"]["packets"].as_u64())
        .expect("the rule's counter");
    assert!(
        dropped_by_nft >= 3,
        "only {dropped_by_nft} drops: too few to check"
    );

    let drops = measurement["kernel"]["drops"].as_array().expect("drops");
    let netfilter: Vec<&serde_json::Value> = drops
        .iter()
        .filter(|d| d["reason"] == "NETFILTER_DROP")
        .collect();
    // Each drop once (both lab daemons share the kernel and see it), where it happened:
    // after the packet entered pod3 (node2's probes).
    assert_eq!(netfilter.len(), 1, "{drops:?}");
    assert_eq!(netfilter[0]["after"], "pod_in", "{drops:?}");
    assert_eq!(netfilter[0]["node"], "node2", "{drops:?}");
    // Runs match the rule's counter exactly (6 of 6 in a row), but one of the first runs
    // counted one drop more, not explained yet (see issue 5's notes): one is allowed.
    let counted = netfilter[0]["count"].as_u64().expect("count");
    assert!(
        counted.abs_diff(dropped_by_nft) <= 1,
        "sonde counted {counted} drops, the rule {dropped_by_nft}: {drops:?}"
    );
    // TCP resent every dropped segment.
    let retransmits = measurement["kernel"]["retransmits"]
        .as_u64()
        .expect("retransmits");
    assert!(retransmits >= dropped_by_nft, "{retransmits} retransmits");
}

/// What node1's daemon reports of itself (`sondectl nodes`).
fn node1_facts(lab: &Lab) -> serde_json::Value {
    let nodes = json_of(lab, &["nodes", "-o", "json"]);
    nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node_name"] == "node1")
        .expect("node1")
        .clone()
}

/// Kernel IDs of the programs node1's daemon holds, as it reports them.
fn programs_of_node1(lab: &Lab) -> Vec<u64> {
    programs_named(&node1_facts(lab), |_| true)
}

/// Kernel IDs of the programs in `facts` whose name passes `wanted`.
fn programs_named(facts: &serde_json::Value, wanted: impl Fn(&str) -> bool) -> Vec<u64> {
    facts["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter(|p| wanted(p["name"].as_str().expect("name")))
        .map(|p| p["kernel_id"].as_u64().expect("kernel_id"))
        .collect()
}

/// Kernel IDs of node1's counter programs: (those that stamp too, the plain ones).
fn counter_programs(lab: &Lab) -> (Vec<u64>, Vec<u64>) {
    let facts = node1_facts(lab);
    (
        programs_named(&facts, |name| name.ends_with("_counted")),
        programs_named(&facts, |name| name.starts_with("sonde_tc_")),
    )
}

/// Packets node1's counter has seen leave the pod behind `veth`.
fn packets_from_pod(lab: &Lab, veth: &str) -> u64 {
    let facts = node1_facts(lab);
    facts["pod_interfaces"]
        .as_array()
        .expect("pod_interfaces")
        .iter()
        .find(|p| p["host_interface"] == veth)
        .unwrap_or_else(|| panic!("no {veth} in {facts}"))["packets_from_pod"]
        .as_u64()
        .expect("packets_from_pod")
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_pods_counter_stamps_while_traced_and_counts_throughout() {
    require_root();
    let lab = Lab::up(&[]);
    let (counted, plain) = counter_programs(&lab);
    assert_eq!((counted.len(), plain.len()), (2, 2));
    // Idle: node1's two pods have the plain counter, ingress and egress.
    assert_eq!((still_held(&counted).1, still_held(&plain).1), (0, 4));
    let before = packets_from_pod(&lab, "vethpod1");

    let cross = breakdown(&lab, &["--from", "pod/pod1", "--to", "pod/pod3"]);
    // The stamps of the counter's links make the whole path, as the stage classifiers do.
    check_path(&cross, &sonde_integration::CROSS_NODE_STAGES);
    let hooks = cross["kernel"]["hooks"].to_string();
    assert!(
        hooks.contains("node1: tc:pod vethpod1 (in the packet counter's links)"),
        "{hooks}"
    );
    let runs_on_node1 = |name: &str| runs_of(&cross["kernel"], "node1", name);
    assert_eq!(runs_on_node1("sonde_pod_out"), 0, "{}", cross["kernel"]);
    let stamped = runs_on_node1("sonde_pod_out_counted");
    assert!(stamped > 100, "{stamped}");

    // Every packet the counting stamper saw was counted: the counter never stopped.
    let counted_packets = packets_from_pod(&lab, "vethpod1") - before;
    assert!(
        counted_packets >= stamped,
        "{counted_packets} packets counted, {stamped} stamped"
    );
    // The run over, the plain counters are back in the same links.
    assert_eq!((still_held(&counted).1, still_held(&plain).1), (0, 4));
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_sampled_stream_is_stamped_only_in_windows_and_counted_throughout() {
    require_root();
    let lab = Lab::up(&[]);
    let (counted, plain) = counter_programs(&lab);
    let before = packets_from_pod(&lab, "vethpod1");

    let document = cross_node_stream(&lab, "tcp-stream", "3s");
    let measurement = &document["measurements"][0];
    let kernel = &measurement["kernel"];
    let notes = kernel["notes"].to_string();
    for node in ["node1", "node2"] {
        assert!(
            notes.contains(&format!("{node}: stamped in windows, 100 ms of every 1 s")),
            "{notes}"
        );
    }
    let runs = |node: &str, program: &str| runs_of(kernel, node, program);
    // Between windows the pod's counter counted without stamping: the program that stamps
    // ran for about a tenth of the packets the counter saw (every one, were it continuous).
    let sent = packets_from_pod(&lab, "vethpod1") - before;
    let stamping = runs("node1", "sonde_pod_out_counted");
    assert!(
        stamping > 100 && stamping * 4 < sent,
        "{stamping} runs of the stamping counter for {sent} packets from the pod"
    );
    // The uplinks' classifiers and the free hook were detached too.
    for (node, program) in [
        ("node1", "sonde_node_out"),
        ("node2", "sonde_node_in"),
        ("node1", "sonde_free"),
    ] {
        let ran = runs(node, program);
        assert!(ran > 100 && ran * 4 < sent, "{node} {program}: {ran} runs");
    }
    // The windows are the same on both nodes: the wire stage pairs their stamps.
    let names = stages(measurement, "client-to-server");
    let samples = |name: &str| {
        names
            .iter()
            .find(|(n, ..)| n == name)
            .map_or(0, |(_, samples, ..)| *samples)
    };
    assert!(
        samples("wire") > 100 && samples("wire") * 10 >= samples("sender node") * 8,
        "{names:?}"
    );
    assert_eq!(kernel["events_lost"], 0);
    // The run over, the plain counters are back in the same links.
    assert_eq!((still_held(&counted).1, still_held(&plain).1), (0, 4));
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn runs_sharing_an_uplink_share_its_classifiers_until_the_last_one_ends() {
    require_root();
    let lab = Lab::up(&[]);
    let uplink = programs_named(&node1_facts(&lab), |name| {
        ["sonde_node_out", "sonde_node_in"].contains(&name)
    });
    assert_eq!(uplink.len(), 2, "{uplink:?}");
    let attached = || still_held(&uplink).1;
    assert_eq!(attached(), 0, "idle: no uplink classifier attached");

    let long = lab.spawn(&[
        "run",
        "tcp-rr",
        "--from",
        "pod/pod1",
        "--to",
        "pod/pod3",
        "--duration",
        "5s",
        "--warmup",
        "300ms",
        "-o",
        "json",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while attached() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the long run never attached"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second run through node1's uplink while the first is traced: the same two links serve
    // both (never attached twice), and its breakdown crosses the wire like any other.
    let short = breakdown(&lab, &["--from", "pod/pod2", "--to", "pod/pod3"]);
    check_path(&short, &sonde_integration::CROSS_NODE_STAGES);
    // The short run ended first: the long one still holds the uplink's classifiers.
    assert_eq!(
        attached(),
        2,
        "the first run to end detached a shared classifier"
    );
    let output = long.wait_with_output().expect("the long run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    // Its stages all there (a run this long keeps a thinned share of its uplink stamps).
    for direction in ["client-to-server", "server-to-client"] {
        let found = stages(&document["measurements"][0], direction);
        let names: Vec<&str> = found.iter().map(|(name, ..)| name.as_str()).collect();
        assert_eq!(names, sonde_integration::CROSS_NODE_STAGES, "{direction}");
        assert!(
            found.iter().all(|(_, samples, ..)| *samples > 1000),
            "{found:?}"
        );
    }
    // The last user gone, nothing is left attached.
    assert_eq!(attached(), 0, "a classifier outlived the runs that used it");
}

/// (programs still loaded, links still attached) among `ids`.
fn still_held(ids: &[u64]) -> (usize, usize) {
    // bpftool can fail listing an object that goes away under it: ask again.
    let parse = |args: &[&str]| -> Vec<serde_json::Value> {
        for _ in 0..10 {
            let output = Command::new("bpftool")
                .args(args)
                .output()
                .expect("bpftool");
            if let Ok(serde_json::Value::Array(all)) = serde_json::from_slice(&output.stdout) {
                return all;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("bpftool {args:?} kept failing");
    };
    let held = |value: &serde_json::Value, field: &str| {
        value[field].as_u64().is_some_and(|id| ids.contains(&id))
    };
    let programs = parse(&["-j", "prog", "show"]);
    let links = parse(&["-j", "link", "show"]);
    (
        programs.iter().filter(|p| held(p, "id")).count(),
        links.iter().filter(|l| held(l, "prog_id")).count(),
    )
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_daemon_killed_mid_trace_leaves_no_link_or_program() {
    require_root();
    let lab = Lab::up(&[]);
    let pid = lab
        .inventory
        .node("node1")
        .and_then(|node| node.daemon_pid)
        .expect("node1's daemon pid");
    let ids = programs_of_node1(&lab);
    assert!(ids.len() >= 8, "{ids:?}");
    let mut client = Command::new(workspace_bin("sondectl"))
        .args([
            "run",
            "tcp-rr",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod3",
            "--duration",
            "20s",
        ])
        .env("SONDE_LAB", &lab.name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sondectl");
    // Wait until node1's daemon (the client side) has attached its stage links.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while still_held(&ids).1 == 0 {
        assert!(std::time::Instant::now() < deadline, "no links appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    // sondectl sees the stream break, finishes the server side and reports the failure.
    let status = client.wait().expect("sondectl exits");
    assert!(!status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while still_held(&ids) != (0, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed daemon's programs and links stayed: {:?}",
            still_held(&ids)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
