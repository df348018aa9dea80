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
