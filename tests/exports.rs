//! Results reach real dashboards' back ends, started here from Debian's packages (`cargo xtask
//! setup` installs them): a scenario's results pushed to a Pushgateway come back through
//! Prometheus' query API with the values of the run-set, `--push-delete` removes them,
//! carbon's whisper files hold the Graphite lines' values, and Prometheus scraping a monitor
//! holds the values of the monitor's own log.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_integration::{Killed, free_port, lab::Lab, require_root};

fn start(program: &str, args: &[&str]) -> Killed {
    Killed(
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{program}: {err} (cargo xtask setup installs it)")),
    )
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP/1.0 GET of `path` on 127.0.0.1:`port`: the body.
fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// A PromQL query through Prometheus' HTTP API: (labels, value) of each series.
fn query(port: u16, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get(port, &format!("/api/v1/query?query={encoded}"));
    let answer: serde_json::Value = serde_json::from_str(&body).expect("Prometheus JSON");
    assert_eq!(answer["status"], "success", "{body}");
    answer["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|series| {
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("value");
            (series["metric"].clone(), value)
        })
        .collect()
}

/// Polls `query` until it returns `count` series.
fn query_until(port: u16, promql: &str, count: usize) -> Vec<(serde_json::Value, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = query(port, promql);
        if result.len() == count {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: {} series, not {count}: {result:?}",
            result.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Forwards TCP connections on a free loopback port to a Unix socket (Prometheus scrapes only
/// TCP; the lab's daemons serve their metrics on Unix sockets). Returns the port.
fn forward_to_unix(path: &str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let path = path.to_owned();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let Ok(unix) = std::os::unix::net::UnixStream::connect(&path) else {
                continue;
            };
            let (Ok(mut tcp_read), Ok(mut unix_write)) = (tcp.try_clone(), unix.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || std::io::copy(&mut tcp_read, &mut unix_write));
            let (mut unix_read, mut tcp_write) = (unix, tcp);
            std::thread::spawn(move || std::io::copy(&mut unix_read, &mut tcp_write));
        }
    });
    port
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// carbon-cache's configuration in `dir`, its plaintext port `line`.
fn carbon_conf(dir: &Path, line: u16) -> PathBuf {
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).expect("conf dir");
    let storage = dir.join("storage");
    std::fs::write(
        conf.join("carbon.conf"),
        format!(
            "[cache]\nSTORAGE_DIR = {s}\nLOCAL_DATA_DIR = {s}/whisper\nWHITELISTS_DIR = {s}/lists\n\
             CONF_DIR = {c}\nLOG_DIR = {d}/log\nPID_DIR = {d}/run\n\
             LINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {line}\nENABLE_UDP_LISTENER = False\n\
             PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {pickle}\n\
             CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = {query}\n\
             MAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = 10000\nMAX_CREATES_PER_MINUTE = inf\n\
             WHISPER_AUTOFLUSH = True\n",
            s = storage.display(),
            c = conf.display(),
            d = dir.display(),
            pickle = free_port(),
            query = free_port(),
        ),
    )
    .expect("carbon.conf");
    std::fs::write(
        conf.join("storage-schemas.conf"),
        "[default]\npattern = .*\nretentions = 1s:1h\n",
    )
    .expect("storage-schemas.conf");
    conf.join("carbon.conf")
}

/// The values a whisper file holds (`whisper-fetch --json`: full precision).
fn whisper_values(file: &Path) -> Vec<f64> {
    let output = Command::new("whisper-fetch")
        .args(["--json", "--from", "0", "--drop", "nulls"])
        .arg(file)
        .output()
        .expect("whisper-fetch");
    let fetched: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    fetched["values"]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn results_reach_a_real_pushgateway_prometheus_and_carbon() {
    require_root();
    let lab = Lab::up(&["--nodes", "2", "--pods-per-node", "1"]);
    let dir = std::env::temp_dir().join(format!("sonde-exports-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("log")).expect("dir");
    std::fs::create_dir_all(dir.join("run")).expect("dir");
    let (gateway, prometheus, line, monitor) = (free_port(), free_port(), free_port(), free_port());
    let _gateway = start(
        "prometheus-pushgateway",
        &[&format!("--web.listen-address=127.0.0.1:{gateway}")],
    );
    let carbon = carbon_conf(&dir, line);
    let _carbon = start(
        "carbon-cache",
        &[
            &format!("--config={}", carbon.display()),
            &format!("--pidfile={}", dir.join("run/carbon.pid").display()),
            "--nodaemon",
            "start",
        ],
    );
    let daemon = forward_to_unix(
        lab.inventory
            .node("node1")
            .expect("node1")
            .metrics
            .strip_prefix("unix:")
            .expect("a unix: address"),
    );
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/sonde-alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n\
             - job_name: pushgateway\n  honor_labels: true\n  static_configs: [{{targets: ['127.0.0.1:{gateway}']}}]\n\
             - job_name: monitor\n  static_configs: [{{targets: ['127.0.0.1:{monitor}']}}]\n\
             - job_name: sonded\n  static_configs: [{{targets: ['127.0.0.1:{daemon}']}}]\n",
            rules = rules.display()
        ),
    )
    .expect("prometheus.yml");
    for (what, file) in [("rules", &rules), ("config", &config)] {
        let check = Command::new("promtool")
            .args(["check", what])
            .arg(file)
            .output()
            .expect("promtool");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
    let _prometheus = start(
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            &format!("--web.listen-address=127.0.0.1:{prometheus}"),
        ],
    );
    for port in [gateway, line, prometheus] {
        wait_for_port(port);
    }

    // A scenario's results, pushed and sent to Graphite.
    let file = dir.join("pushed.yaml");
    std::fs::write(
        &file,
        "name: pushed\nnodes: all\ntopology: mesh\n\
         tests: [{kind: tcp-rr, duration: 1s, warmup: 0s, trace: false}]\n",
    )
    .expect("scenario");
    let path = file.to_string_lossy().into_owned();
    let output = lab.sondectl(&[
        "scenario",
        "run",
        &path,
        "-o",
        "json",
        "--push-gateway",
        &format!("http://127.0.0.1:{gateway}"),
        "--push-run-id",
        "ci-1",
        "--graphite",
        &format!("127.0.0.1:{line}"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let set: serde_json::Value = serde_json::from_slice(&output.stdout).expect("run-set");
    let p50 = |from: &str, to: &str| -> f64 {
        let m = set["measurements"]
            .as_array()
            .expect("measurements")
            .iter()
            .find(|m| m["from_node"] == from && m["to_node"] == to)
            .expect("pair");
        m["headline"]["p50_ns"].as_f64().expect("p50") / 1e9
    };
    let series = query_until(
        prometheus,
        r#"sonde_latency_p50_seconds{job="sonde",scenario="pushed",run_id="ci-1"}"#,
        2,
    );
    for (labels, value) in &series {
        let (from, to) = (
            labels["source"].as_str().expect("source"),
            labels["target"].as_str().expect("target"),
        );
        assert!(
            close(*value, p50(from, to)),
            "{from}->{to}: {value} vs {}",
            p50(from, to)
        );
    }
    // Carbon wrote a whisper file per metric, holding the same values.
    let whisper =
        dir.join("storage/whisper/sonde/pushed/node1/node2/tcp-rr/pod-ip/latency_p50_seconds.wsp");
    let deadline = Instant::now() + Duration::from_secs(20);
    let values = loop {
        let values = if whisper.exists() {
            whisper_values(&whisper)
        } else {
            Vec::new()
        };
        if !values.is_empty() {
            break values;
        }
        assert!(
            Instant::now() < deadline,
            "no values in {}",
            whisper.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        values.iter().any(|v| close(*v, p50("node1", "node2"))),
        "{values:?} vs {}",
        p50("node1", "node2")
    );
    // --push-delete removes the group (the gateway never expires it).
    let deleted = lab.sondectl(&[
        "scenario",
        "run",
        &path,
        "--push-gateway",
        &format!("http://127.0.0.1:{gateway}"),
        "--push-run-id",
        "ci-1",
        "--push-delete",
    ]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let pushed = get(gateway, "/metrics");
    assert!(!pushed.contains("scenario=\"pushed\""), "{pushed}");

    // Prometheus scraping a monitor holds the values of the monitor's own log, and every
    // query of the Grafana dashboard returns data while it runs.
    let log = dir.join("monitor.jsonl");
    let watched = dir.join("watched.yaml");
    std::fs::write(
        &watched,
        "name: watched\nnodes: all\ntopology: mesh\n\
         tests: [{kind: tcp-rr, duration: 500ms, warmup: 0s, trace: true},\n\
                 {kind: tcp-stream, duration: 500ms, warmup: 0s, trace: false}]\n",
    )
    .expect("scenario");
    let running = lab.spawn(&[
        "monitor",
        "--scenario",
        &watched.to_string_lossy(),
        "--peers",
        "1",
        "--heavy-every",
        "1",
        "--every",
        "5s",
        "--rounds",
        "4",
        "--metrics-listen",
        &format!("127.0.0.1:{monitor}"),
        "--log",
        &log.to_string_lossy(),
    ]);
    let mut running = running;
    let deadline = Instant::now() + Duration::from_secs(45);
    while query(prometheus, "sonde_monitor_rounds_total >= 2").len() != 1 {
        if let Ok(Some(status)) = running.try_wait() {
            let output = running.wait_with_output().expect("the monitor's output");
            panic!(
                "the monitor ended ({status}) before Prometheus scraped two rounds: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if Instant::now() > deadline {
            let _ = running.kill();
            let output = running.wait_with_output().expect("the monitor's output");
            panic!(
                "Prometheus never scraped two rounds of the monitor in 45 s; its log: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/sonde-dashboard.json"),
        )
        .expect("dashboard"),
    )
    .expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$kind", ".*")
                .replace("$path", ".*");
            let deadline = Instant::now() + Duration::from_secs(20);
            while query(prometheus, &expr).is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{}: no data for {expr}",
                    panel["title"]
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    // Every alert rule loaded and evaluates without error.
    let rules: serde_json::Value =
        serde_json::from_str(&get(prometheus, "/api/v1/rules")).expect("rules JSON");
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect();
    assert_eq!(loaded.len(), 5);
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let ran = running.wait_with_output().expect("monitor ends");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let logged: Vec<(String, String, f64)> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .flat_map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            line["set"]["measurements"]
                .as_array()
                .expect("measurements")
                .iter()
                .map(|m| {
                    (
                        m["from_node"].as_str().unwrap_or_default().to_owned(),
                        m["to_node"].as_str().unwrap_or_default().to_owned(),
                        m["headline"]["p50_ns"].as_f64().unwrap_or_default() / 1e9,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let scraped = query_until(
        prometheus,
        "last_over_time(sonde_monitor_pair_latency_p50_seconds[5m])",
        2,
    );
    for (labels, value) in &scraped {
        let (from, to) = (
            labels["source"].as_str().expect("source"),
            labels["target"].as_str().expect("target"),
        );
        assert!(
            logged
                .iter()
                .any(|(f, t, v)| f == from && t == to && close(*v, *value)),
            "{from}->{to}: {value} is in no logged round: {logged:?}"
        );
    }
    // The kernel stages' medians of the traced rr: each scraped value is one the log holds.
    let stages: Vec<(String, String, String, String, f64)> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .flat_map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let mut found = Vec::new();
            for m in line["set"]["measurements"]
                .as_array()
                .expect("measurements")
            {
                let directions = &m["results"][0]["measurements"][0]["kernel"]["directions"];
                for direction in directions.as_array().into_iter().flatten() {
                    for stage in direction["stages"].as_array().into_iter().flatten() {
                        found.push((
                            m["from_node"].as_str().unwrap_or_default().to_owned(),
                            m["to_node"].as_str().unwrap_or_default().to_owned(),
                            direction["direction"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            stage["name"].as_str().unwrap_or_default().to_owned(),
                            stage["latency"]["p50_ns"].as_f64().unwrap_or_default() / 1e9,
                        ));
                    }
                }
            }
            found
        })
        .collect();
    assert!(!stages.is_empty(), "the traced rr logged no kernel stages");
    let scraped = query(
        prometheus,
        "last_over_time(sonde_monitor_pair_stage_latency_p50_seconds{kind=\"tcp-rr\"}[5m])",
    );
    assert!(!scraped.is_empty(), "no kernel stage series scraped");
    for (labels, value) in &scraped {
        let key = ["source", "target", "direction", "stage"]
            .map(|name| labels[name].as_str().expect("label").to_owned());
        assert!(
            stages
                .iter()
                .any(|(f, t, d, s, v)| [f, t, d, s] == key.each_ref() && close(*v, *value)),
            "{key:?}: {value} is in no logged round"
        );
    }
    let rounds = query_until(
        prometheus,
        "max_over_time(sonde_monitor_rounds_total[5m])",
        1,
    );
    assert!(rounds[0].1 >= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}
