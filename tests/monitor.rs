//! `sondectl monitor` in the lab: 12 nodes, 2 peers per node per round, every ordered pair
//! measured within 6 rounds, O(n·K) per-pair series in its /metrics, no two conflicting
//! measurements on a node at once (from the daemons' records), and start offsets spread over
//! their slots.

use std::{
    collections::HashSet,
    io::{BufRead as _, Read as _, Write as _},
    time::{Duration, Instant},
};

use sonde_integration::{lab::Lab, require_root};

/// GET /metrics from the monitor at `addr`, or None if it does not answer yet.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.contains("200 OK").then_some(text)
}

fn value_of(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn a_monitor_covers_every_pair_of_twelve_nodes_in_six_rounds_of_two_peers() {
    require_root();
    let lab = Lab::up(&["--nodes", "12", "--zones", "3", "--pods-per-node", "1"]);
    let dir = std::env::temp_dir();
    let scenario = dir.join(format!("sonde-{}-monitor.yaml", std::process::id()));
    std::fs::write(
        &scenario,
        "name: watch\nnodes: all\ntopology: mesh\n\
         tests: [{kind: tcp-rr, duration: 500ms, warmup: 0s, trace: false}]\n",
    )
    .expect("scenario");
    let log = dir.join(format!("sonde-{}-monitor.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        probe.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut monitor = lab.spawn(&[
        "monitor",
        "--scenario",
        &scenario.to_string_lossy(),
        "--peers",
        "2",
        "--every",
        "8s",
        "--rounds",
        "6",
        "--metrics-listen",
        &addr,
        "--log",
        &log.to_string_lossy(),
    ]);
    // After two rounds, the per-pair series are the last round's pairs only: n·K, not n².
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Some(text) = scrape(&addr)
            && value_of(&text, "sonde_monitor_rounds_total").unwrap_or(0.0) >= 2.0
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no second round in a minute");
        std::thread::sleep(Duration::from_millis(500));
    };
    let series = metrics
        .lines()
        .filter(|line| line.starts_with("sonde_monitor_pair_latency_p50_seconds{"))
        .count();
    println!("per-pair p50 series after 2 rounds: {series} (n·K = 24; a full mesh: 132)");
    assert!((20..=24).contains(&series), "{series} series:\n{metrics}");
    assert_eq!(value_of(&metrics, "sonde_monitor_pairs "), Some(132.0));
    let stderr = monitor.stderr.take().expect("stderr");
    let status = monitor.wait().expect("monitor ends");
    let said: Vec<String> = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(status.success(), "{said:#?}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 6);
    let rounds: Vec<u64> = lines
        .iter()
        .map(|l| l["round"].as_u64().expect("round"))
        .collect();
    assert!(rounds.windows(2).all(|w| w[1] == w[0] + 1), "{rounds:?}");
    let mut pairs = HashSet::new();
    let mut offsets = Vec::new();
    for line in &lines {
        let measurements = line["set"]["measurements"]
            .as_array()
            .expect("measurements");
        assert_eq!(measurements.len(), 24, "12 nodes x 2 peers");
        for m in measurements {
            assert_eq!(m["status"], "complete", "{}", m["errors"]);
            pairs.insert((m["from_node"].to_string(), m["to_node"].to_string()));
            offsets.push(m["offset_in_slot_ms"].as_u64().expect("offset"));
        }
    }
    assert_eq!(pairs.len(), 132, "every ordered pair within 6 rounds");
    offsets.sort_unstable();
    let (low, high) = (offsets[0], offsets[offsets.len() - 1]);
    let mean = offsets.iter().sum::<u64>() as f64 / offsets.len() as f64;
    println!(
        "start offsets in their slots: {low}-{high} ms, mean {mean:.0} ms, over {} measurements",
        offsets.len()
    );
    assert!(high - low >= 100, "offsets not spread: {low}-{high} ms");
    // The daemons' own records: 4 run sides a round on each node, and no two holders on a
    // node at once in conflicting classes.
    assert!(lab.holds().values().all(|runs| runs.len() == 6 * 2 * 2));
    lab.assert_no_collision();
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn two_monitors_and_a_hand_run_stream_share_a_lab_without_colliding() {
    require_root();
    let lab = Lab::up(&["--nodes", "4", "--pods-per-node", "1"]);
    let dir = std::env::temp_dir();
    let spawn = |name: &str, kind: &str| {
        let scenario = dir.join(format!("sonde-{}-{name}.yaml", std::process::id()));
        std::fs::write(
            &scenario,
            format!(
                "name: {name}\nnodes: all\ntopology: mesh\n\
                 tests: [{{kind: {kind}, duration: 500ms, warmup: 0s, trace: false}}]\n"
            ),
        )
        .expect("scenario");
        let log = dir.join(format!("sonde-{}-{name}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let child = lab.spawn(&[
            "monitor",
            "--scenario",
            &scenario.to_string_lossy(),
            "--peers",
            "1",
            "--every",
            "6s",
            "--rounds",
            "3",
            "--heavy-every",
            "1",
            "--log",
            &log.to_string_lossy(),
        ]);
        (child, log)
    };
    // Streams (exclusive, every round) in one, request/response (normal) in the other: they
    // exclude each other, so they must take turns on every node.
    let (first, first_log) = spawn("alpha", "tcp-stream");
    let (second, second_log) = spawn("beta", "tcp-rr");
    std::thread::sleep(Duration::from_millis(2500));
    let by_hand = lab.sondectl(&[
        "run",
        "tcp-stream",
        "--from",
        "pod/pod1",
        "--to",
        "pod/pod2",
        "--duration",
        "1s",
        "--warmup",
        "0",
        "--no-trace",
        "-o",
        "json",
    ]);
    for child in [first, second] {
        let output = child.wait_with_output().expect("monitor ends");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(
        by_hand.status.success(),
        "{}",
        String::from_utf8_lossy(&by_hand.stderr)
    );
    let mut waited = 0;
    for log in [&first_log, &second_log] {
        let text = std::fs::read_to_string(log).expect("log");
        for line in text.lines() {
            let line: serde_json::Value = serde_json::from_str(line).expect("JSON");
            for m in line["set"]["measurements"]
                .as_array()
                .expect("measurements")
            {
                assert_eq!(m["status"], "complete", "{}", m["errors"]);
                waited += m["waits"].as_array().map_or(0, Vec::len);
            }
        }
    }
    let hand: serde_json::Value = serde_json::from_slice(&by_hand.stdout).expect("result");
    println!(
        "two monitors: {waited} measurements waited; the hand run waited {:.1} s",
        hand["waited_seconds"].as_f64().unwrap_or(0.0)
    );
    assert!(
        waited > 0,
        "two monitors of streams on the same nodes never waited"
    );
    // The daemons' records: no node held by two holders at once in conflicting classes.
    lab.assert_no_collision();
}
