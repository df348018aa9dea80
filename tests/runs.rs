//! `sondectl run` in the lab: every generator across nodes and through a Service, payload
//! sweeps, a daemon killed mid-run, bad requests, dns to sonde's responder and to dnsmasq.
//! Every JSON document is checked against the published schema
//! (docs/schema/run-result.v1.json).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_integration::{lab::Lab, require_root, run, workspace_bin};

fn schema() -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/schema/run-result.v1.json"
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

/// Runs `sondectl run ... -o json` in `lab`; returns the document (checked against the
/// schema) and whether sondectl succeeded.
fn run_json(lab: &Lab, args: &[&str]) -> (serde_json::Value, bool) {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", "json"]);
    let output = lab.sondectl(&full);
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "{args:?}: no JSON ({err}); stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let validator = schema();
    let problems: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        problems.is_empty(),
        "{args:?}: not valid against the schema: {problems:#?}"
    );
    (document, output.status.success())
}

fn f64_at(value: &serde_json::Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} in {value}"))
}

/// A measurement's timeline: `intervals` of them, every one present, summing to the client
/// side's counts; request/response kinds with their latency percentiles in each interval.
fn check_timeline(m: &serde_json::Value, what: &str, intervals: usize) {
    let timeline = m["timeline"]["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no timeline in {m}"));
    assert_eq!(timeline.len(), intervals, "{what}: {timeline:?}");
    let sum = |field: &str| -> u64 {
        timeline
            .iter()
            .map(|interval| interval[field].as_u64().expect("a count"))
            .sum()
    };
    let client = &m["client"];
    let moved = client["bytes_sent"].as_u64().expect("sent")
        + client["bytes_received"].as_u64().expect("received");
    assert_eq!(sum("bytes"), moved, "{what}: {timeline:?}");
    assert_eq!(sum("messages"), client["messages"], "{what}: {timeline:?}");
    assert_eq!(sum("errors") + sum("failed_connects"), 0, "{what}");
    for (i, interval) in timeline.iter().enumerate() {
        assert!(
            (f64_at(interval, "/start_seconds") - i as f64 * 0.1).abs() < 1e-9,
            "{what}: {interval}"
        );
        // (An interval may be empty on a machine running other tests at once: a stall.)
        if m["latency"].is_object() && interval["messages"].as_u64() > Some(0) {
            let (p50, p99) = (
                f64_at(interval, "/latency_p50_ns"),
                f64_at(interval, "/latency_p99_ns"),
            );
            assert!(0.0 < p50 && p50 <= p99, "{what}: {interval}");
        }
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn every_generator_runs_across_nodes_and_through_a_service() {
    require_root();
    // Two zones: node1 (pod1) in zone-a, node2 (pod3) in zone-b; every pod-IP run is placed
    // --cross-zone, and the result names both zones.
    let lab = Lab::up(&[
        "--zones",
        "2",
        "--service",
        "web=80:8080",
        "--service",
        "dgram=90:9090/udp",
    ]);
    for (kind, service) in [
        ("tcp-stream", "web"),
        ("tcp-rr", "web"),
        ("tcp-crr", "web"),
        ("udp-stream", "dgram"),
        ("udp-rr", "dgram"),
        ("http", "web"),
        ("http-crr", "web"),
    ] {
        for to in ["pod/pod3".to_owned(), format!("service/{service}")] {
            let what = format!("{kind} pod/pod1 -> {to}");
            let mut args = vec![
                kind,
                "--from",
                "pod/pod1",
                "--to",
                &to,
                "--duration",
                "500ms",
                "--warmup",
                "100ms",
                "--interval",
                "100ms",
            ];
            // Paced, so that loss means something: unpaced UDP on two shared cores loses
            // what the receiver cannot keep up with, by design.
            if kind == "udp-stream" {
                args.extend_from_slice(&["--rate", "20000"]);
            }
            if to == "pod/pod3" {
                args.push("--cross-zone");
            }
            let (doc, ok) = run_json(&lab, &args);
            assert!(ok, "{what}: {}", doc["errors"]);
            assert_eq!(doc["complete"], true, "{what}");
            assert_eq!(doc["from"]["places"][0]["zone"], "zone-a", "{what}");
            if to == "pod/pod3" {
                assert_eq!(doc["to"]["places"][0]["zone"], "zone-b", "{what}");
            }
            assert_eq!(
                doc["path"],
                if to.starts_with("service") {
                    "service"
                } else {
                    "pod-ip"
                }
            );
            let m = &doc["measurements"][0];
            assert!(
                f64_at(m, "/throughput_bits_per_second") > 0.0,
                "{what}: {m}"
            );
            assert!(f64_at(m, "/messages_per_second") > 0.0, "{what}: {m}");
            if kind.ends_with("rr") {
                let (p50, p99, max) = (
                    f64_at(m, "/latency/p50_ns"),
                    f64_at(m, "/latency/p99_ns"),
                    f64_at(m, "/latency/max_ns"),
                );
                assert!(
                    0.0 < p50 && p50 <= p99 && p99 <= max,
                    "{what}: {p50} {p99} {max}"
                );
            }
            if kind.starts_with("udp") {
                assert!(f64_at(m, "/udp/loss_ratio") < 0.05, "{what}: {m}");
            } else {
                assert!(f64_at(m, "/tcp/connections") >= 1.0, "{what}: {m}");
            }
            // The client really ran in pod1's namespace.
            assert_eq!(m["client"]["local_ip"], lab.ip("pod1"), "{what}");
            // The lab's veths keep Linux's default MTU.
            assert_eq!(m["client"]["mtu"], 1500, "{what}");
            check_timeline(m, &what, 5);
        }
    }
    // pod1 and pod2 share node1, so zone-a: --cross-zone refuses before anything runs.
    let output = lab.sondectl(&[
        "run",
        "tcp-rr",
        "--from",
        "pod/pod1",
        "--to",
        "pod/pod2",
        "--cross-zone",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--cross-zone: both ends are in zone zone-a (node1 and node1)"),
        "{stderr}"
    );
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn intra_pod_baselines_run_in_one_pod_and_both_sides_agree() {
    require_root();
    let lab = Lab::up(&[]);
    for kind in ["unix-stream", "unix-rr", "fs-rr"] {
        let (doc, ok) = run_json(
            &lab,
            &[
                kind,
                "--from",
                "pod/pod1",
                "--to",
                "pod/pod1",
                "--duration",
                "400ms",
                "--warmup",
                "0",
                "--interval",
                "100ms",
            ],
        );
        assert!(ok, "{kind}: {}", doc["errors"]);
        assert_eq!(doc["path"], "intra-pod", "{kind}");
        let m = &doc["measurements"][0];
        assert!(m["tcp"].is_null() && m["udp"].is_null(), "{kind}: {m}");
        check_timeline(m, kind, 4);
        let (client, server) = (&m["client"], &m["server"]);
        if kind == "unix-stream" {
            assert!(
                client["bytes_sent"].as_u64().expect("bytes") > 1 << 20,
                "{kind}: {m}"
            );
            assert_eq!(server["bytes_received"], client["bytes_sent"], "{kind}");
        } else {
            assert!(
                client["messages"].as_u64().expect("messages") > 10,
                "{kind}: {m}"
            );
            assert_eq!(
                server["messages"], client["messages"],
                "{kind}: every request answered"
            );
            assert!(m["latency"]["p50_ns"].as_u64().expect("p50") > 0);
        }
    }
    // The server sides' private directories are gone.
    let left: Vec<_> = std::fs::read_dir("/run/sonde/runs")
        .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run directories left: {left:?}");
    let output = lab.sondectl(&["run", "unix-rr", "--from", "pod/pod1", "--to", "pod/pod2"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be the same pod"));
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_payload_sweep_covers_all_19_sizes_and_renders_as_csv() {
    require_root();
    let lab = Lab::up(&[]);
    let args = [
        "tcp-rr",
        "--from",
        "pod/pod1",
        "--to",
        "pod/pod2",
        "--sizes",
        "64B..16MiB",
        "--duration",
        "100ms",
        "--warmup",
        "0",
    ];
    let (doc, ok) = run_json(&lab, &args);
    assert!(ok, "{}", doc["errors"]);
    let sizes: Vec<u64> = doc["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .map(|m| m["size_bytes"].as_u64().expect("size"))
        .collect();
    let expected: Vec<u64> = (0..19).map(|k| 64 << k).collect();
    assert_eq!(sizes, expected);
    let mut csv_args = vec!["run"];
    csv_args.extend_from_slice(&args);
    csv_args.extend_from_slice(&["-o", "csv"]);
    let csv = lab.sondectl(&csv_args);
    assert!(csv.status.success());
    let text = String::from_utf8_lossy(&csv.stdout);
    assert_eq!(text.lines().count(), 20, "{text}");
    assert!(text.starts_with("kind,from,to,path,size_bytes,"));
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_client_daemon_killed_mid_run_keeps_what_was_measured_and_says_which_side_failed() {
    require_root();
    let lab = Lab::up(&[]);
    let child = Command::new(workspace_bin("sondectl"))
        .args([
            "run",
            "tcp-stream",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod3",
            "--duration",
            "6s",
            "--warmup",
            "0",
            "-o",
            "json",
        ])
        .env("SONDE_LAB", &lab.name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sondectl run");
    std::thread::sleep(Duration::from_millis(1500));
    let pid = lab
        .inventory
        .node("node1")
        .expect("node1")
        .daemon_pid
        .expect("pid");
    run("kill", &["-9", &pid.to_string()]);
    let output = child.wait_with_output().expect("sondectl ends");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(schema().is_valid(&doc));
    assert_eq!(doc["complete"], false);
    let m = &doc["measurements"][0];
    // The server side (node2) measured what arrived before the client died.
    assert!(
        m["server"]["bytes_received"]
            .as_u64()
            .expect("server bytes")
            > 1 << 20,
        "{m}"
    );
    // The client's own live progress until it died is kept too: what it sent, over the
    // measured time its progress covered (killed 1.5 s in, reported every 0.5 s).
    let until = &m["until_failure"];
    let seconds = f64_at(until, "/measured_seconds");
    assert!((0.4..=1.6).contains(&seconds), "{until}");
    assert!(until["bytes"].as_u64().expect("bytes") > 1 << 20, "{until}");
    assert!(f64_at(until, "/bits_per_second") > 0.0, "{until}");
    let errors = doc["errors"].to_string();
    assert!(errors.contains("client side on pod/pod1"), "{errors}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("did not complete"), "{stderr}");
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn bad_requests_give_clear_errors() {
    require_root();
    let lab = Lab::up(&[]);
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &[
                "run",
                "tcp-rr",
                "--from",
                "pod/pod1",
                "--to",
                "pod/pod2",
                "--size",
                "0",
                "--duration",
                "1s",
            ],
            1,
            "spec.request_size",
        ),
        (
            &[
                "run",
                "tcp-rr",
                "--from",
                "pod/pod1",
                "--to",
                "pod/pod2",
                "--duration",
                "0s",
            ],
            2,
            "positive duration",
        ),
        (
            &["run", "tcp-rr", "--from", "pod/pod1", "--to", "pod/nope"],
            1,
            "no pod \"nope\"",
        ),
        (
            &[
                "run",
                "udp-stream",
                "--from",
                "pod/pod1",
                "--to",
                "pod/pod2",
                "--size",
                "70000",
                "--duration",
                "1s",
            ],
            1,
            "spec.request_size",
        ),
    ];
    for (args, code, says) in cases {
        let output = lab.sondectl(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// dnsmasq serving `names` (name, IPv4, IPv6) on `ip:port` in `netns`, killed on drop.
struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    fn start(netns: &str, ip: &str, port: u16, names: &[(&str, &str, &str)]) -> Self {
        let mut args = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            netns.to_owned(),
            "dnsmasq".to_owned(),
            "--keep-in-foreground".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--bind-interfaces".to_owned(),
            "--user=root".to_owned(),
            "--pid-file=".to_owned(),
            format!("--listen-address={ip}"),
            format!("--port={port}"),
        ];
        for (name, v4, v6) in names {
            args.push(format!("--address=/{name}/{v4}"));
            args.push(format!("--address=/{name}/{v6}"));
        }
        let child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (cargo xtask setup installs dnsmasq-base)");
        // Listening once its socket is bound in the namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        let bound = || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    netns,
                    "ss",
                    "-Hlun",
                    &format!("sport = :{port}"),
                ])
                .output()
                .is_ok_and(|output| !output.stdout.is_empty())
        };
        while !bound() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn dns_to_a_pod_through_a_service_and_to_a_dns_server_that_is_not_sondes() {
    require_root();
    let lab = Lab::up(&["--service", "dns=53/udp@pod3"]);
    let common = [
        "--from",
        "pod/pod1",
        "--duration",
        "1s",
        "--warmup",
        "100ms",
        "--dns-type",
        "A,AAAA,SRV",
    ];
    // sonde's own responder: in a pod, and behind a ClusterIP Service, with the kernel
    // breakdown of its queries (followed by their DNS message IDs).
    for to in ["pod/pod3", "service/dns"] {
        let mut args = vec!["dns", "--to", to];
        args.extend_from_slice(&common);
        let (doc, ok) = run_json(&lab, &args);
        assert!(ok, "{to}: {}", doc["errors"]);
        assert_eq!(doc["complete"], true, "{to}");
        let m = &doc["measurements"][0];
        let answered = f64_at(m, "/udp/received");
        assert!(answered > 100.0, "{to}: {m}");
        assert_eq!(f64_at(m, "/udp/lost"), 0.0, "{to}: {m}");
        assert_eq!(f64_at(m, "/udp/rcodes/NoError"), answered, "{to}: {m}");
        assert!(f64_at(m, "/latency/p50_ns") > 0.0);
        let directions = m["kernel"]["directions"]
            .as_array()
            .expect("kernel breakdown");
        assert_eq!(directions.len(), 2, "{to}: {m}");
        for direction in directions {
            let stages = direction["stages"].as_array().expect("stages");
            assert!(!stages.is_empty(), "{to}: {direction}");
            // Every answered query's packets were followed at each point of the network
            // path (the socket points of UDP are not followed yet: see the closing notes of
            // issue 25).
            let network = ["sender node", "wire", "receiver node"];
            for stage in stages
                .iter()
                .filter(|s| network.contains(&s["name"].as_str().unwrap_or("")))
            {
                assert!(
                    f64_at(stage, "/latency/samples") >= answered * 0.9,
                    "{to}: {stage}"
                );
            }
            let followed: Vec<&str> = stages.iter().filter_map(|s| s["name"].as_str()).collect();
            for name in network {
                assert!(
                    followed.contains(&name),
                    "{to}: {name} missing: {followed:?}"
                );
            }
        }
    }
    // A DNS server that is not sonde's (dnsmasq in pod3), at a bounded rate: its answers'
    // response codes are counted.
    let pod3 = lab.ip("pod3");
    let netns = lab
        .inventory
        .pods
        .iter()
        .find(|pod| pod.name == "pod3")
        .map(|pod| pod.netns.clone())
        .expect("pod3");
    let _dnsmasq = Dnsmasq::start(
        &netns,
        &pod3,
        5353,
        &[("web.sonde.lab", "10.244.9.9", "fd00::9")],
    );
    let server = format!("dns/{pod3}:5353");
    for (name, rcode) in [("web.sonde.lab", "NoError"), ("other.example", "Refused")] {
        let mut args = vec!["dns", "--to", &server, "--dns-name", name, "--rate", "200"];
        args.extend_from_slice(&common[..6]);
        args.extend_from_slice(&["--dns-type", "A,AAAA"]);
        let (doc, ok) = run_json(&lab, &args);
        assert!(ok, "{name}: {}", doc["errors"]);
        assert_eq!(doc["path"], "dns-server");
        assert_eq!(doc["spec"]["dns_name"], name);
        let m = &doc["measurements"][0];
        let sent = f64_at(m, "/udp/sent");
        // Paced at 200 a second for 1 s.
        assert!((150.0..=210.0).contains(&sent), "{name}: {m}");
        assert_eq!(
            f64_at(m, &format!("/udp/rcodes/{rcode}")),
            sent,
            "{name}: {m}"
        );
        assert!(m["server"].is_null(), "no sonde server side: {m}");
    }
    // Above the cap: refused before anything is sent.
    let output = lab.sondectl(&[
        "run",
        "dns",
        "--from",
        "pod/pod1",
        "--to",
        &server,
        "--dns-name",
        "web.sonde.lab",
        "--rate",
        "5000",
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--rate 1 to 1000"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
