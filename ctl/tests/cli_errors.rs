//! sondectl's failures as a user sees them: one line on stderr, a non-zero exit, no panic.

use std::process::{Command, Output};

fn sondectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sondectl"))
        .args(args)
        .env_remove("SONDE_AGENTS")
        .output()
        .expect("sondectl runs")
}

fn stderr_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    stderr
}

#[test]
fn a_bad_agent_address_is_one_line_and_exit_2() {
    let output = sondectl(&["nodes", "--agents", "127.0.0.1"]);
    let stderr = stderr_line(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sondectl: "), "{stderr}");
    assert!(
        stderr.contains("expected HOST:PORT, unix:PATH or port-forward:"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_daemon_is_reported_and_exits_non_zero() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let output = sondectl(&[
        "nodes",
        "--agents",
        "127.0.0.1:1",
        "--timeout",
        "2s",
        "--insecure",
    ]);
    let stderr = stderr_line(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "sondectl: agent 127.0.0.1:1: cannot connect: transport error: tcp connect: \
             Connection refused (os error 111)",
            "sondectl: 1 of 1 agents did not answer",
        ],
    );
}

#[test]
fn json_output_keeps_the_failure_in_the_document() {
    let output = sondectl(&[
        "nodes",
        "--agents",
        "127.0.0.1:1",
        "-o",
        "json",
        "--insecure",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    assert_eq!(report["nodes"], serde_json::json!([]));
    assert_eq!(report["errors"][0]["agent"], "127.0.0.1:1");
    assert!(
        report["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Connection refused"))
    );
}

#[test]
fn a_daemon_without_credentials_for_it_is_not_dialled() {
    let output = sondectl(&["nodes", "--agents", "127.0.0.1:1"]);
    let stderr = stderr_line(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no client certificate for 127.0.0.1:1: give --tls-cert"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
}

#[test]
fn no_agents_and_no_lab_says_what_to_do() {
    let output = sondectl(&["nodes", "--lab", "nosuchlab"]);
    let stderr = stderr_line(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--agents"), "{stderr}");
    assert!(stderr.contains("sondectl lab up"), "{stderr}");
}

#[test]
fn an_unbounded_or_negative_conntrack_ramp_is_refused() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--stop-on", "none"],
            "a ramp needs a stop condition (--stop-on",
        ),
        (
            &["--start-rate", "-5"],
            "--start-rate must be a positive number",
        ),
        (&["--factor", "1"], "--factor must be more than 1"),
        (
            &["--ceiling", "-100"],
            "--ceiling must be a rate of at least",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "conntrack",
            "ramp",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod2",
            "--lab",
            "nosuchlab",
        ];
        args.extend_from_slice(extra);
        let output = sondectl(&args);
        let stderr = stderr_line(&output);
        assert_eq!(output.status.code(), Some(1), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
}

#[test]
fn a_conntrack_fill_out_of_bounds_is_refused() {
    let output = sondectl(&[
        "lab",
        "conntrack-fill",
        "--name",
        "nosuchlab",
        "--node",
        "node1",
        "--rate",
        "-1",
        "--flows",
        "10",
    ]);
    let stderr = stderr_line(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--rate must be a positive number"),
        "{stderr}"
    );
}
