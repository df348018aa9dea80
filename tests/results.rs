//! Results that last, in the lab: run-sets recorded in the store as they end, then compared as
//! a CI gate would. A/A (the same scenario twice through a pod limited to 100 Mbit/s): exit 0,
//! nothing different. A/B (the limit lowered to 90 Mbit/s): the throughput regressed by about
//! 10%, exit 1.

use std::{path::Path, process::Output};

use sonde_integration::{lab::Lab, require_root};

/// The stream through the limited pod: node2's pod is the client, node1's pod (pod1, whose
/// egress is limited) sends (`reverse`), five repetitions.
const SCENARIO: &str = "name: limited\nnodes: all\ntopology: {pairs: [{from: node2, to: node1}]}\n\
    tests: [{kind: tcp-stream, direction: reverse, duration: 2s, warmup: 1s, repetitions: 5, trace: false}]\n";

fn limited_lab(rate: &str) -> Lab {
    Lab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--bandwidth",
        &format!("pod1={rate}"),
    ])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs the scenario in `lab`, recorded in `store`; returns its result ID.
fn run_recorded(lab: &Lab, scenario: &Path, store: &Path) -> i64 {
    let output = lab.sondectl(&[
        "scenario",
        "run",
        &scenario.to_string_lossy(),
        "--store",
        &store.to_string_lossy(),
    ]);
    let said = stderr(&output);
    assert!(output.status.success(), "{said}");
    let id = said
        .lines()
        .find_map(|line| line.strip_prefix("sondectl: recorded as result "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no record line in: {said}"));
    println!("{}", String::from_utf8_lossy(&output.stdout));
    id
}

/// `sondectl compare` against `store`: its exit code and JSON.
fn compare(lab: &Lab, store: &Path, baseline: &str, current: &str) -> (i32, serde_json::Value) {
    let output = lab.sondectl(&[
        "compare",
        baseline,
        current,
        "--store",
        &store.to_string_lossy(),
        "-o",
        "json",
    ]);
    let code = output.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("no comparison ({err}): {}", stderr(&output)));
    (code, json)
}

fn throughput_row(comparison: &serde_json::Value) -> &serde_json::Value {
    let rows = comparison["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "one stream, untraced: {comparison:#}");
    assert_eq!(rows[0]["metric"], "throughput");
    assert_eq!(rows[0]["baseline_samples"], 5);
    &rows[0]
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn the_same_scenario_compares_same_and_a_lower_limit_regresses_with_exit_1() {
    require_root();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("results-lab");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let store = dir.join("results.db");
    let scenario = dir.join("limited.yaml");
    std::fs::write(&scenario, SCENARIO).expect("scenario file");

    let (first, second) = {
        let lab = limited_lab("100M");
        (
            run_recorded(&lab, &scenario, &store),
            run_recorded(&lab, &scenario, &store),
        )
    };
    let lab = limited_lab("90M");
    let third = run_recorded(&lab, &scenario, &store);

    // A/A: by IDs, and the latest of the scenario against the first.
    let (code, aa) = compare(&lab, &store, &first.to_string(), &second.to_string());
    let row = throughput_row(&aa);
    println!("A/A: {row}");
    assert_eq!(code, 0, "{aa:#}");
    assert_eq!(row["verdict"], "same", "{row}");
    assert!(
        row["change"].as_f64().expect("change").abs() < 0.05,
        "{row}"
    );

    // A/B: 100 then 90 Mbit/s.
    let (code, ab) = compare(&lab, &store, &first.to_string(), "scenario:limited@last-1");
    let row = throughput_row(&ab);
    println!("A/B: {row}");
    assert_eq!(code, 1, "{ab:#}");
    assert_eq!(row["verdict"], "regressed", "{row}");
    assert_eq!(row["current_samples"], 5);
    let change = row["change"].as_f64().expect("change");
    assert!((-0.13..=-0.07).contains(&change), "{row}");
    let interval = row["change_interval"].as_array().expect("interval");
    assert!(interval[1].as_f64().expect("high") < -0.05, "{row}");
    assert!(row["p_value"].as_f64().expect("p") < 0.05, "{row}");

    // `@last-N` pools the scenario's N latest run-sets: all three, fifteen samples.
    let (_, pooled) = compare(&lab, &store, "scenario:limited@last-3", &first.to_string());
    assert_eq!(pooled["rows"][0]["baseline_samples"], 15, "{pooled:#}");

    // The table says it in words, and the gate's message names the threshold.
    let table = lab.sondectl(&[
        "compare",
        &first.to_string(),
        &third.to_string(),
        "--store",
        &store.to_string_lossy(),
    ]);
    assert_eq!(table.status.code(), Some(1));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("REGRESSED"), "{text}");
    assert!(
        stderr(&table).contains("1 metric regressed beyond the 5.0% threshold"),
        "{}",
        stderr(&table)
    );
}

/// A long http run through a 4-pod Service while `lab rollout` replaces its pods one at a
/// time: the run follows the Service (servers on the new pods before they are ready), its
/// timeline carries every step, and its totals are the sum of its intervals.
#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_rollout_during_an_http_run_is_on_its_timeline_step_by_step() {
    require_root();
    // pod1 (node1) is the client; web is pod2 and pod3 (node1), pod5 and pod6 (node2).
    let lab = Lab::up(&[
        "--nodes",
        "2",
        "--pods-per-node",
        "3",
        "--service",
        "web=80:8080@pod2,pod3,pod5,pod6",
    ]);
    let run = lab.spawn(&[
        "run",
        "http",
        "--from",
        "pod/pod1",
        "--to",
        "service/web",
        "--duration",
        "20s",
        "--warmup",
        "1s",
        "--parallel",
        "4",
        "--interval",
        "500ms",
        "--no-trace",
        "--no-store",
        "-o",
        "json",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let rollout = lab.sondectl(&[
        "lab",
        "rollout",
        "--service",
        "web",
        "--ready-after",
        "1s",
        "--drain",
        "1s",
        "--pause",
        "1s",
    ]);
    assert!(rollout.status.success(), "{}", stderr(&rollout));
    println!("{}", String::from_utf8_lossy(&rollout.stdout));
    let output = run.wait_with_output().expect("the run");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("no result ({err}): {}", stderr(&output)));
    let m = &doc["measurements"][0];
    let timeline = &m["timeline"];
    let intervals = timeline["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 40, "20 s in 500 ms intervals");
    let events = timeline["events"].as_array().expect("events");
    for event in events {
        println!(
            "{:6.2}s  {}",
            event["at_seconds"].as_f64().unwrap_or(-1.0),
            event["what"]
        );
    }
    // Five steps per pod, four pods, all inside the measured part.
    assert_eq!(events.len(), 20, "{events:#?}");
    for event in events {
        let at = event["at_seconds"].as_f64().expect("at");
        assert!((0.0..20.0).contains(&at), "{event}");
        assert_eq!(event["source"], "lab-rollout");
    }
    for old in ["pod2", "pod3", "pod5", "pod6"] {
        for step in ["removed from web's endpoints", "terminated", "deleted"] {
            assert!(
                events.iter().any(|e| e["what"]
                    .as_str()
                    .is_some_and(|w| w.starts_with(old) && w.contains(step))),
                "{old} {step}: {events:#?}"
            );
        }
    }
    // The totals are the sum of the intervals.
    let sum = |field: &str| -> u64 {
        intervals
            .iter()
            .map(|i| i[field].as_u64().expect("a count"))
            .sum()
    };
    let client = &m["client"];
    assert_eq!(
        sum("messages"),
        client["messages"].as_u64().expect("messages")
    );
    assert_eq!(
        sum("bytes"),
        client["bytes_sent"].as_u64().expect("sent")
            + client["bytes_received"].as_u64().expect("received")
    );
    // Requests went on through the rollout and after it, to the new pods.
    let last = intervals.last().expect("an interval");
    assert!(last["messages"].as_u64() > Some(0), "{last}");
    println!("errors: {}", m["errors"]);
    for interval in intervals {
        let failed = interval["errors"].as_u64().unwrap_or(0)
            + interval["failed_connects"].as_u64().unwrap_or(0);
        if failed > 0 {
            println!(
                "{:5.1}s: {failed} failed, {} completed, p99 {} ns",
                interval["start_seconds"], interval["messages"], interval["latency_p99_ns"]
            );
        }
    }
    let failures = sum("errors") + sum("failed_connects");
    println!(
        "{} requests, {failures} failed (errors {}, failed connects {}); complete: {}",
        sum("messages"),
        sum("errors"),
        sum("failed_connects"),
        doc["complete"]
    );
    // The Service is the four new pods now, and the old ones are gone.
    let inventory = sonde_ctl::lab::Inventory::load(&lab.name).expect("inventory");
    let web = inventory
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("web");
    assert_eq!(web.endpoints.len(), 4);
    for old in ["pod2", "pod3", "pod5", "pod6"] {
        assert!(
            !web.endpoints.iter().any(|p| p == old),
            "{old} still behind web"
        );
        assert!(inventory.pod(old).is_none(), "{old} still in the lab");
    }
}
