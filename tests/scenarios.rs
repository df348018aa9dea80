//! Scenarios in the lab: a mesh of every ordered pair of six nodes in tournament rounds, a
//! matrix of placement classes and paths, two scenarios and a hand-run stream started against
//! each other (checked from the daemons' own records of when each run held a node), a fan-in
//! through a bandwidth-limited pod, and a daemon killed mid-scenario with `--resume` after.
//! Every run-set is checked against docs/schema/run-set.v1.json, its scenario against
//! scenario.v1.json and every run result in it against run-result.v1.json.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use sonde_integration::{lab::Lab, require_root, run};

fn validator(name: &str) -> jsonschema::Validator {
    let path = format!("{}/../docs/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema file")).expect("JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn assert_valid(validator: &jsonschema::Validator, doc: &serde_json::Value, what: &str) {
    let problems: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(problems.is_empty(), "{what}: {problems:#?}");
}

/// Checks a run-set against all three schemas.
fn check_schemas(set: &serde_json::Value) {
    assert_valid(&validator("run-set.v1.json"), set, "run-set");
    assert_valid(
        &validator("scenario.v1.json"),
        &set["scenario"],
        "run-set's scenario",
    );
    let result = validator("run-result.v1.json");
    for m in set["measurements"].as_array().expect("measurements") {
        for r in m["results"].as_array().expect("results") {
            assert_valid(&result, r, &format!("result of {}", m["key"]));
        }
    }
}

/// A scenario with every test setting a file may give, as a run-set carries it, passes the
/// schema: a setting sondectl accepts but the schema lacks would fail every validator users run.
#[test]
fn every_test_setting_a_scenario_accepts_is_in_its_schema() {
    let scenario = sonde_ctl::scenario::spec::Scenario::parse(
        "name: every-setting\nnodes: all\ntopology: mesh\n\
         tests:\n\
         - {kind: tcp-rr, name: rr, duration: 2s, warmup: 1s, request-size: 64B, \
            response-size: 1KiB, parallel: 2, rate: 100, repetitions: 2, trace: true, \
            trace-windows: true, class: normal}\n\
         - {kind: tcp-stream, sizes: 64B..1KiB, direction: both, plain-io: true, \
            class: exclusive}\n\
         - {kind: udp-stream, size: 1KiB, trace: false, class: background}\n",
    )
    .expect("a valid scenario");
    let json = serde_json::to_value(&scenario).expect("the scenario as JSON");
    assert_eq!(json["tests"][0]["trace-windows"], true, "{json}");
    assert_valid(&validator("scenario.v1.json"), &json, "every setting");
}

/// A scenario file for one test.
fn scenario_file(name: &str, yaml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("sonde-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("write scenario");
    path
}

/// `sondectl scenario run FILE -o json` in `lab`: the run-set and the process's output.
fn scenario_run(lab: &Lab, file: &Path, extra: &[&str]) -> (serde_json::Value, Output) {
    let path = file.to_string_lossy();
    let mut args = vec!["scenario", "run", path.as_ref(), "-o", "json"];
    args.extend_from_slice(extra);
    let output = lab.sondectl(&args);
    let set = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "no run-set ({err}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    check_schemas(&set);
    (set, output)
}

fn measurements(set: &serde_json::Value) -> &Vec<serde_json::Value> {
    set["measurements"].as_array().expect("measurements")
}

fn ms(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("not ms: {value}"))
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_mesh_of_six_nodes_in_two_zones_measures_thirty_pairs_in_ten_rounds() {
    require_root();
    let lab = Lab::up(&["--nodes", "6", "--zones", "2", "--pods-per-node", "1"]);
    // The README's first example, as written.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/scenarios/mesh-rr.yaml");
    let validate = lab.sondectl(&["scenario", "validate", &file.to_string_lossy()]);
    assert!(validate.status.success());
    let (set, output) = scenario_run(&lab, &file, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let all = measurements(&set);
    assert_eq!(all.len(), 30);
    assert_eq!(set["plan"]["rounds"].as_array().expect("rounds").len(), 10);
    let pairs: std::collections::HashSet<(String, String)> = all
        .iter()
        .map(|m| (m["from_node"].to_string(), m["to_node"].to_string()))
        .collect();
    assert_eq!(pairs.len(), 30);
    for m in all {
        assert_eq!(m["status"], "complete", "{}", m["errors"]);
        assert!(m["headline"]["p50_ns"].as_u64().expect("p50") > 0);
    }
    // 3 nodes per zone: 18 pairs cross zones, 12 stay in one.
    let cross_zone = all
        .iter()
        .filter(|m| m["placement"] == "cross-zone")
        .count();
    assert_eq!(cross_zone, 18);
    // Measurements of one round never shared a node while they ran.
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let shared = [&a["from_node"], &a["to_node"]]
                .iter()
                .any(|n| *n == &b["from_node"] || *n == &b["to_node"]);
            let overlap = ms(&a["started_at_unix_ms"]) < ms(&b["ended_at_unix_ms"])
                && ms(&b["started_at_unix_ms"]) < ms(&a["ended_at_unix_ms"]);
            assert!(
                !(shared && overlap),
                "{} and {} overlapped",
                a["key"],
                b["key"]
            );
        }
    }
    let wall = (ms(&set["ended_at_unix_ms"]) - ms(&set["started_at_unix_ms"])) as f64 / 1000.0;
    let serial: f64 = all
        .iter()
        .map(|m| (ms(&m["ended_at_unix_ms"]) - ms(&m["started_at_unix_ms"])) as f64 / 1000.0)
        .sum();
    println!(
        "mesh of 6 nodes: 30 measurements in 10 rounds, {wall:.1} s; one at a time they took {serial:.1} s (ratio {:.2})",
        serial / wall
    );
    assert!(
        wall < serial,
        "rounds ({wall} s) no faster than serial ({serial} s)"
    );
    assert!(lab.assert_no_collision() >= 60);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_matrix_of_placement_classes_and_paths_measures_each_combination() {
    require_root();
    // node1 and node3 in zone-a, node2 in zone-b; a Service backed by one pod of each node.
    let lab = Lab::up(&[
        "--nodes",
        "3",
        "--zones",
        "2",
        "--pods-per-node",
        "2",
        "--service",
        "web1=80:8080@pod2",
        "--service",
        "web2=80:8080@pod4",
        "--service",
        "web3=80:8080@pod6",
    ]);
    let file = scenario_file(
        "matrix",
        "name: matrix\nnodes: all\n\
         topology: {pairs: [{from: node1, to: node1}, {from: node1, to: node3}, {from: node1, to: node2}]}\n\
         placement: [same-node, cross-node, cross-zone]\npaths: [pod-ip, service, host]\n\
         tests: [{kind: tcp-rr, duration: 1s, warmup: 0s}]\n",
    );
    let plan = lab.sondectl(&["scenario", "plan", &file.to_string_lossy(), "-o", "json"]);
    assert!(plan.status.success());
    let (set, output) = scenario_run(&lab, &file, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Vec<(String, String, String, String)> = measurements(&set)
        .iter()
        .map(|m| {
            assert_eq!(m["status"], "complete", "{}", m["errors"]);
            (
                m["placement"].as_str().unwrap_or_default().to_owned(),
                m["path"].as_str().unwrap_or_default().to_owned(),
                m["ends"][0]["to"].as_str().unwrap_or_default().to_owned(),
                m["results"][0]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let expected = [
        ("same-node", "pod-ip", "pod/pod2", "pod-ip"),
        ("cross-node", "pod-ip", "pod/pod5", "pod-ip"),
        ("cross-zone", "pod-ip", "pod/pod3", "pod-ip"),
        ("same-node", "service", "service/web1", "service"),
        ("cross-node", "service", "service/web3", "service"),
        ("cross-zone", "service", "service/web2", "service"),
        ("cross-node", "host", "node/node3", "host"),
        ("cross-zone", "host", "node/node2", "host"),
    ];
    let expected: Vec<(String, String, String, String)> = expected
        .iter()
        .map(|(a, b, c, d)| ((*a).into(), (*b).into(), (*c).into(), (*d).into()))
        .collect();
    assert_eq!(got, expected);
    let skipped = set["plan"]["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]["why"]
            .as_str()
            .unwrap_or_default()
            .contains("loopback")
    );
    // The table's summary has a row per class and path.
    let table = lab.sondectl(&["scenario", "run", &file.to_string_lossy()]);
    let text = String::from_utf8_lossy(&table.stdout);
    for row in [
        "same-node   service",
        "cross-zone  host",
        "cross-node  pod-ip",
    ] {
        assert!(text.contains(row), "{row} in:\n{text}");
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn scenarios_and_a_hand_run_started_together_never_share_a_node() {
    require_root();
    let lab = Lab::up(&["--nodes", "4", "--pods-per-node", "1"]);
    let ring = |name: &str, kind: &str| {
        scenario_file(
            name,
            &format!(
                "name: {name}\nnodes: all\ntopology: ring\n\
                 tests: [{{kind: {kind}, duration: 1s, warmup: 0s, trace: false}}]\n"
            ),
        )
    };
    let (a, b) = (ring("streams", "tcp-stream"), ring("storms", "tcp-crr"));
    let spawn =
        |file: &Path| lab.spawn(&["scenario", "run", &file.to_string_lossy(), "-o", "json"]);
    let (first, second) = (spawn(&a), spawn(&b));
    let (first, second) = (
        first.wait_with_output().expect("first"),
        second.wait_with_output().expect("second"),
    );
    let mut waited = Vec::new();
    for output in [&first, &second] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let set: serde_json::Value = serde_json::from_slice(&output.stdout).expect("run-set");
        check_schemas(&set);
        for m in measurements(&set) {
            for wait in m["waits"].as_array().expect("waits") {
                waited.push(wait.as_str().unwrap_or_default().to_owned());
            }
        }
    }
    // Both rings load every node from the start: one of them waited, and said for whom.
    assert!(!waited.is_empty(), "nobody waited");
    assert!(
        waited
            .iter()
            .all(|w| w.contains("held exclusive by") && w.contains("scenario ")),
        "{waited:#?}"
    );

    // A stream started by hand during a scenario's 4 s measurement waits for it.
    let long = scenario_file(
        "long",
        "name: long\nnodes: all\ntopology: {pairs: [{from: node1, to: node2}]}\n\
         tests: [{kind: tcp-stream, duration: 4s, warmup: 0s, trace: false}]\n",
    );
    let scenario = spawn(&long);
    std::thread::sleep(Duration::from_millis(1500));
    // `sondectl nodes` shows who holds node1 meanwhile.
    let nodes = lab.sondectl(&["nodes", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).expect("nodes JSON");
    let node1 = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node_name"] == "node1")
        .expect("node1");
    assert!(
        node1["reservations"]
            .as_array()
            .expect("reservations")
            .iter()
            .any(|r| r["scenario"] == "long" && r["class"] == "exclusive"),
        "{node1}"
    );
    let by_hand = lab.sondectl(&[
        "run",
        "tcp-stream",
        "--from",
        "pod/pod1",
        "--to",
        "pod/pod3",
        "--duration",
        "1s",
        "--warmup",
        "0",
        "--no-trace",
        "-o",
        "json",
    ]);
    let scenario = scenario.wait_with_output().expect("scenario");
    assert!(scenario.status.success());
    assert!(
        by_hand.status.success(),
        "{}",
        String::from_utf8_lossy(&by_hand.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&by_hand.stdout).expect("result");
    assert_valid(&validator("run-result.v1.json"), &doc, "hand run");
    let waits = doc["waits"].to_string();
    assert!(waits.contains("scenario long"), "{waits}");
    assert!(doc["waited_seconds"].as_f64().expect("waited") > 1.0);
    // Refused at once when it may not wait, naming the holder.
    let scenario = spawn(&long);
    std::thread::sleep(Duration::from_millis(1500));
    let refused = lab.sondectl(&[
        "run",
        "tcp-stream",
        "--from",
        "pod/pod2",
        "--to",
        "pod/pod1",
        "--duration",
        "1s",
        "--warmup",
        "0",
        "--wait",
        "0",
        "--no-trace",
    ]);
    let _ = scenario.wait_with_output();
    assert_eq!(refused.status.code(), Some(1));
    let text = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("held exclusive by") && text.contains("scenario long"),
        "{text}"
    );

    // node1's daemon counted what it served and what it refused.
    let metrics = lab.scrape("node1");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    assert!(value("sonde_runs_served_total{side=\"server\"}") >= 1.0);
    assert!(value("sonde_runs_served_total{side=\"client\"}") >= 1.0);
    assert!(
        value("sonde_reservation_refusals_total") >= 1.0,
        "the hand runs were refused"
    );
    assert_eq!(value("sonde_reservations_held"), 0.0);
    let checked = lab.assert_no_collision();
    assert!(checked >= 2 * 8 + 2 * 2 + 2, "{checked} run sides recorded");
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_fan_in_through_a_limited_pod_shares_the_limit_and_measures_how_fairly() {
    require_root();
    let lab = Lab::up(&[
        "--nodes",
        "3",
        "--pods-per-node",
        "2",
        "--bandwidth",
        "pod1=100M",
    ]);
    // Reversed streams: pod1 sends, so its 100 Mbit/s egress is the choke point.
    let alone = lab.sondectl(&[
        "run",
        "tcp-stream",
        "--from",
        "pod/pod3",
        "--to",
        "pod/pod1",
        "--direction",
        "reverse",
        "--duration",
        "3s",
        "--no-trace",
        "-o",
        "json",
    ]);
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    let alone: serde_json::Value = serde_json::from_slice(&alone.stdout).expect("result");
    let one = alone["measurements"][0]["throughput_bits_per_second"]
        .as_f64()
        .expect("throughput");
    let file = scenario_file(
        "fanin",
        "name: fanin\nnodes: all\ntopology: {fan-in: {server: node1, clients: 4}}\n\
         tests: [{kind: tcp-stream, direction: reverse, duration: 3s, trace: false}]\n",
    );
    let (set, output) = scenario_run(&lab, &file, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let all = measurements(&set);
    assert_eq!(all.len(), 1);
    let fan_in = &all[0]["fan_in"];
    let aggregate = fan_in["aggregate_bits_per_second"]
        .as_f64()
        .expect("aggregate");
    let shares = fan_in["shares"].as_array().expect("shares");
    assert_eq!(shares.len(), 4);
    let jain = fan_in["jain_index"].as_f64().expect("jain");
    println!(
        "fan-in of 4 through 100 Mbit/s: {:.1} Mbit/s in all (one client alone {:.1}, ratio {:.4}), Jain's index {jain:.3}, shares {:?}",
        aggregate / 1e6,
        one / 1e6,
        aggregate / one,
        shares
            .iter()
            .map(|s| format!("{:.1}%", s["fraction"].as_f64().unwrap_or_default() * 100.0))
            .collect::<Vec<_>>()
    );
    assert!(
        (aggregate / one - 1.0).abs() <= 0.02,
        "{aggregate} vs {one}"
    );
    assert!((80e6..=105e6).contains(&aggregate), "{aggregate}");
    assert!(jain > 0.25 && jain <= 1.0);
    let sum: f64 = shares
        .iter()
        .map(|s| s["fraction"].as_f64().unwrap_or_default())
        .sum();
    assert!((sum - 1.0).abs() < 1e-9);
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_daemon_killed_mid_scenario_fails_its_measurements_and_resume_runs_only_those() {
    require_root();
    let lab = Lab::up(&["--nodes", "4", "--pods-per-node", "1"]);
    let file = scenario_file(
        "kill",
        "name: kill\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr, duration: 1s, warmup: 0s}]\n",
    );
    let child = lab.spawn(&["scenario", "run", &file.to_string_lossy(), "-o", "json"]);
    std::thread::sleep(Duration::from_millis(3500));
    let pid = lab
        .inventory
        .node("node4")
        .expect("node4")
        .daemon_pid
        .expect("pid");
    run("kill", &["-9", &pid.to_string()]);
    let output = child.wait_with_output().expect("scenario ends");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let set: serde_json::Value = serde_json::from_slice(&output.stdout).expect("run-set");
    check_schemas(&set);
    let all = measurements(&set);
    assert_eq!(all.len(), 12, "every planned measurement is recorded");
    let failed: Vec<&serde_json::Value> = all.iter().filter(|m| m["status"] == "failed").collect();
    assert!(!failed.is_empty());
    for m in &failed {
        assert!(
            m["from_node"] == "node4" || m["to_node"] == "node4",
            "{} failed without node4: {}",
            m["key"],
            m["errors"]
        );
        assert!(!m["errors"].as_array().expect("errors").is_empty());
    }
    // The other nodes' measurements went on.
    let others = all
        .iter()
        .filter(|m| m["from_node"] != "node4" && m["to_node"] != "node4")
        .count();
    assert_eq!(others, 6);
    assert!(
        all.iter()
            .filter(|m| m["from_node"] != "node4" && m["to_node"] != "node4")
            .all(|m| m["status"] == "complete")
    );
    let earlier = std::env::temp_dir().join(format!("sonde-{}-kill.json", std::process::id()));
    std::fs::write(&earlier, &output.stdout).expect("write run-set");
    let (resumed, output) = scenario_run(&lab, &file, &["--resume", &earlier.to_string_lossy()]);
    assert_eq!(output.status.code(), Some(1), "node4 is still gone");
    let again = measurements(&resumed);
    assert_eq!(again.len(), 12);
    let rerun: Vec<&serde_json::Value> = again.iter().filter(|m| m["resumed"] == false).collect();
    assert_eq!(rerun.len(), failed.len(), "only the failed ones ran again");
    for m in rerun {
        assert!(failed.iter().any(|f| f["key"] == m["key"]));
    }
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn ctrl_c_stops_a_scenario_and_keeps_what_it_measured() {
    require_root();
    let lab = Lab::up(&["--nodes", "4", "--pods-per-node", "1"]);
    let file = scenario_file(
        "interrupt",
        "name: interrupt\nnodes: all\ntopology: mesh\ntests: [{kind: tcp-rr, duration: 1s, warmup: 0s}]\n",
    );
    let child = lab.spawn(&["scenario", "run", &file.to_string_lossy(), "-o", "json"]);
    std::thread::sleep(Duration::from_millis(2500));
    run("kill", &["-INT", &child.id().to_string()]);
    let output = child.wait_with_output().expect("scenario ends");
    assert_eq!(output.status.code(), Some(1));
    let set: serde_json::Value = serde_json::from_slice(&output.stdout).expect("run-set");
    check_schemas(&set);
    let all = measurements(&set);
    assert_eq!(all.len(), 12, "every planned measurement is recorded");
    let count = |status: &str| all.iter().filter(|m| m["status"] == status).count();
    assert!(count("complete") >= 2, "what was measured is kept");
    assert!(count("not-run") >= 4, "nothing starts after Ctrl-C");
    assert!(
        set["errors"].to_string().contains("cancelled"),
        "{}",
        set["errors"]
    );
    // Both sides of the interrupted measurement were stopped: no daemon holds a run.
    std::thread::sleep(Duration::from_millis(500));
    lab.assert_no_collision();
}
