//! The results store on disk: a store written at schema version 1 (a checked-in fixture, see
//! `fixtures/make-results-v1.py`) opens in this sondectl with its documents intact and the
//! newer columns filled from them; a thousand stored runs list in well under half a second;
//! `results` and `compare` through the real binary, with their exit codes.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use sonde_ctl::results::{
    Document, Shape, Store,
    store::{Filter, SCHEMA_VERSION},
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh directory for one test's store.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("store-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn document(name: &str) -> Document {
    Document::parse(&std::fs::read_to_string(fixture(name)).expect("fixture")).expect("a document")
}

#[test]
fn a_version_1_store_migrates_with_its_documents_and_new_columns_filled() {
    let dir = scratch("migrate");
    let path = dir.join("results.db");
    std::fs::copy(fixture("results-v1.db"), &path).expect("copy the fixture");
    let mut store = Store::open(&path).expect("a version 1 store opens");
    assert_eq!(store.version().expect("version"), SCHEMA_VERSION);
    let entries = store.list(&Filter::default()).expect("list");
    assert_eq!(entries.len(), 2);
    let run = &entries[0];
    assert_eq!(run.shape, Shape::Run);
    assert_eq!(run.facts.kinds, ["tcp-rr"]);
    // Version 2's columns, backfilled from the stored documents.
    assert_eq!(run.facts.paths, ["pod-ip"]);
    assert_eq!(run.facts.sizes, [1]);
    assert_eq!(run.facts.measurements, 2);
    assert!(!run.facts.kernels.is_empty(), "{:?}", run.facts);
    // The lab's zone, read from the places (the fixtures predate MTUs: none).
    assert_eq!(run.facts.zones, ["zone-a"]);
    assert!(run.facts.mtus.is_empty());
    let set = &entries[1];
    assert_eq!(set.shape, Shape::RunSet);
    assert_eq!(set.facts.scenario.as_deref(), Some("fixture-mesh"));
    assert_eq!(set.facts.placements, ["cross-node"]);
    assert_eq!(set.facts.measurements, 2);
    // The documents themselves, unchanged.
    assert_eq!(
        store.get(run.id).expect("stored").json(),
        document("run-tcp-rr.json").json()
    );
    assert_eq!(
        store.get(set.id).expect("stored").json(),
        document("run-set-mesh.json").json()
    );
    // And the store goes on: a new result, the scenario index.
    let id = store
        .record(&document("run-set-mesh.json"))
        .expect("record");
    assert_eq!(
        store.last_of_scenario("fixture-mesh", 5).expect("last"),
        [set.id, id]
    );
    drop(store);
    // Opened again: nothing to migrate, nothing changed.
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.list(&Filter::default()).expect("list").len(), 3);
}

#[test]
fn a_thousand_stored_runs_list_in_well_under_half_a_second() {
    let dir = scratch("thousand");
    let mut store = Store::open(&dir.join("results.db")).expect("open");
    let run = document("run-tcp-rr.json");
    let set = document("run-set-mesh.json");
    for i in 0..1000 {
        store
            .record(if i % 10 == 0 { &set } else { &run })
            .expect("record");
    }
    let started = Instant::now();
    let all = store.list(&Filter::default()).expect("list");
    let took = started.elapsed();
    assert_eq!(all.len(), 1000);
    let sets = store
        .list(&Filter {
            scenario: Some("fixture-mesh".into()),
            since_unix_ms: None,
        })
        .expect("list");
    assert_eq!(sets.len(), 100);
    println!("1000 stored results listed in {took:?}");
    assert!(took.as_secs_f64() < 0.5, "listing took {took:?}");
    // gc keeps the newest N of each scenario, plain runs counting as one.
    assert_eq!(store.gc(10).expect("gc"), 1000 - 20);
    assert_eq!(store.list(&Filter::default()).expect("list").len(), 20);
}

fn sondectl(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sondectl"))
        .args(args)
        .env("SONDE_STORE", store)
        .output()
        .expect("run sondectl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn results_import_list_export_and_compare_exit_codes() {
    let dir = scratch("cli");
    let store = dir.join("results.db");
    // Reading commands need a store to read.
    let none = sondectl(&store, &["results", "list"]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("no results store"),
        "{}",
        stderr(&none)
    );
    let run = fixture("run-tcp-rr.json");
    let set = fixture("run-set-mesh.json");
    let imported = sondectl(
        &store,
        &[
            "results",
            "import",
            &run.to_string_lossy(),
            &set.to_string_lossy(),
        ],
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let listed = sondectl(&store, &["results", "list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert_eq!(listed[1]["facts"]["scenario"], "fixture-mesh");
    // Export gives back the document as imported.
    let exported = dir.join("exported.json");
    let out = sondectl(
        &store,
        &[
            "results",
            "export",
            "1",
            "--to",
            &exported.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exported).expect("exported")).expect("JSON");
    assert_eq!(&back, document("run-tcp-rr.json").json());
    // A file against its own stored copy: two repetitions are too few to decide anything, so
    // nothing regressed (exit 0), and the verdicts say how many more it takes.
    let same = sondectl(
        &store,
        &["compare", "1", &exported.to_string_lossy(), "-o", "json"],
    );
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    let comparison: serde_json::Value = serde_json::from_slice(&same.stdout).expect("JSON");
    let rows = comparison["rows"].as_array().expect("rows");
    assert!(rows.len() >= 3, "{comparison}");
    assert!(rows.iter().all(|row| row["verdict"] == "unknown"
        && row["more_repetitions"] == 2
        && row["change"] == 0.0));
    // Bad input: exit 2 with what is wrong.
    for (args, says) in [
        (vec!["compare", "99", "1"], "no result 99"),
        (vec!["compare", "1", "2"], "no measurement in common"),
        (
            vec!["compare", "scenario:nope@last-3", "1"],
            "no run-set of scenario \"nope\"",
        ),
        (
            vec!["compare", "1", "/nonexistent/run.json"],
            "reading /nonexistent/run.json",
        ),
        (vec!["compare", "1", "2", "--threshold", "5"], "below 100%"),
    ] {
        let out = sondectl(&store, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
