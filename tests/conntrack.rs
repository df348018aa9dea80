//! Conntrack pressure in the lab, on the real kernel's tables: `conntrack watch` during a
//! tcp-crr run through a Service (DNAT entries and the rate of new ones), the capacity model's
//! projected time-to-full against when a node's table actually filled, and `conntrack ramp`
//! finding the knee, with the evictions (unassured entries in the way) or drops (assured ones)
//! it counts equal to the kernel's own counters, read from procfs.
//!
//! Only lab namespaces are changed: the node's UDP timeout (a per-namespace setting) and its
//! table; the host's `nf_conntrack_max` is checked to be untouched.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use sonde_integration::{lab::Lab, require_root, run, workspace_bin};

/// Starts `sondectl conntrack watch -o json` on the lab's node1.
fn watch(lab: &Lab, extra: &[&str]) -> Child {
    Command::new(workspace_bin("sondectl"))
        .args(["conntrack", "watch", "--nodes", "node1", "-o", "json"])
        .args(extra)
        .env("SONDE_LAB", &lab.name)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start conntrack watch")
}

/// Stops a watch started without `--count` (SIGINT, as Ctrl-C) and returns its lines.
fn stop(child: Child) -> Vec<serde_json::Value> {
    let mut child = child;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let stdout = child.stdout.take().expect("stdout");
    let lines = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    let _ = child.wait();
    lines
}

/// Every JSON line the watch printed (it ends by itself after `--count`).
fn lines_of(child: Child) -> Vec<serde_json::Value> {
    let mut child = child;
    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<serde_json::Value> = BufReader::new(stdout)
        .lines()
        .map(|line| serde_json::from_str(&line.expect("line")).expect("a JSON line"))
        .collect();
    assert!(
        child.wait().expect("wait").success(),
        "conntrack watch failed"
    );
    lines
}

/// Runs `sondectl ARGS` (space-separated words) in the lab and returns its JSON output.
fn json_of(lab: &Lab, args: &str) -> serde_json::Value {
    let args: Vec<&str> = args.split_whitespace().collect();
    let output = lab.sondectl(&args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// The kernel's own counters for `netns`, summed over CPUs, from procfs (not ctnetlink):
/// (insert_failed, drop, early_drop).
fn kernel_counters(netns: &str) -> (u64, u64, u64) {
    let text = run(
        "ip",
        &["netns", "exec", netns, "cat", "/proc/net/stat/nf_conntrack"],
    );
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column in {text}"))
    };
    let (failed, drop, early) = (
        column("insert_failed"),
        column("drop"),
        column("early_drop"),
    );
    let mut total = (0, 0, 0);
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| u64::from_str_radix(fields[i], 16).expect("hex counter");
        total.0 += hex(failed);
        total.1 += hex(drop);
        total.2 += hex(early);
    }
    total
}

/// What a ramp counted on node1 over all its steps, in `kernel_counters`' shape:
/// (insert_failed, drop, early_drop).
fn node1_totals(ramp: &serde_json::Value) -> (u64, u64, u64) {
    let totals = ramp["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .find(|t| t["node"] == "node1")
        .unwrap_or_else(|| panic!("no node1 totals: {ramp:#}"));
    let counted = |field: &str| totals[field].as_u64().expect("count");
    (
        counted("insert_failed"),
        counted("drop"),
        counted("early_drop"),
    )
}

fn host_conntrack_max() -> String {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").expect("host max")
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn watch_model_and_ramp_on_a_lab_node() {
    require_root();
    let host_max = host_conntrack_max();
    let lab = Lab::up(&["--service", "web=80:8080"]);
    let node1 = lab.inventory.node("node1").expect("node1").netns.clone();

    // 1. A tcp-crr run through the Service while node1's table is watched with its census.
    let watching = watch(&lab, &["--interval", "500ms", "--count", "8"]);
    let result = json_of(
        &lab,
        "run tcp-crr --from pod/pod1 --to service/web --rate 1000 --duration 2s --warmup 200ms --no-trace -o json",
    );
    let samples = lines_of(watching);
    let busiest = samples
        .iter()
        .filter(|s| s["census"]["dnat"].as_u64().unwrap_or(0) > 0)
        .max_by_key(|s| s["census"]["dnat"].as_u64())
        .unwrap_or_else(|| panic!("no sample showed DNAT entries: {samples:#?}"));
    let time_wait = busiest["census"]["states"]
        .as_array()
        .expect("states")
        .iter()
        .any(|state| state["state"] == "TIME_WAIT" && state["entries"].as_u64() > Some(0));
    assert!(time_wait, "closed connections are in TIME_WAIT: {busiest}");
    let peak_rate = samples
        .iter()
        .filter_map(|s| s["rates"]["created_per_s"].as_f64())
        .fold(0.0, f64::max);
    assert!(
        (700.0..1400.0).contains(&peak_rate),
        "about 1000 new entries a second at 1000 connections a second, saw {peak_rate}"
    );
    // The run's own result carries node1's delta: every connection made an entry there.
    let measurement = &result["measurements"][0];
    let transactions = measurement["latency"]["count"].as_u64().expect("count");
    let node1_delta = measurement["conntrack"]
        .as_array()
        .expect("conntrack deltas")
        .iter()
        .find(|d| d["node"] == "node1")
        .unwrap_or_else(|| panic!("no node1 delta in {measurement}"))
        .clone();
    assert!(
        node1_delta["created"].as_u64().expect("created") >= transactions,
        "{transactions} connections measured, {node1_delta}"
    );

    // 2. The model's projected time-to-full, against when node1's table really filled. UDP
    // entries must outlive the fill: the node's (per-namespace) UDP timeout goes to 300 s.
    run("ip", &["netns", "exec", &node1, "conntrack", "-F"]);
    run(
        "ip",
        &[
            "netns",
            "exec",
            &node1,
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_udp_timeout=300",
        ],
    );
    let max: u64 = host_max.trim().parse().expect("max");
    let watching = watch(&lab, &["--interval", "250ms", "--no-census"]);
    let flows = (max + 5000).to_string();
    json_of(
        &lab,
        &format!("lab conntrack-fill --node node1 --rate 25000 --flows {flows}"),
    );
    // The fill is done: half a second more of samples, then stop watching.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let samples = stop(watching);
    // Full: at the limit, or evicting to stay under it (a sample can fall between an eviction
    // and the insert it made room for).
    let evicted = |s: &serde_json::Value| s["counters"]["early_drop"].as_u64().unwrap_or(0);
    let evicted_before = samples.first().map_or(0, evicted);
    let full_at = samples
        .iter()
        .find(|s| s["entries"].as_u64() >= Some(max) || evicted(s) > evicted_before)
        .unwrap_or_else(|| panic!("node1's table never filled: {samples:#?}"))["unix_ms"]
        .as_f64()
        .expect("time");
    let projected = samples
        .iter()
        .filter(|s| {
            s["fill_ratio"]
                .as_f64()
                .is_some_and(|f| (0.3..0.6).contains(&f))
        })
        .find(|s| s["projection"]["seconds_to_full"].as_f64().is_some())
        .unwrap_or_else(|| panic!("no projection between 30% and 60% full: {samples:#?}"));
    let taken_at = projected["unix_ms"].as_f64().expect("time");
    let predicted = taken_at
        + 1000.0
            * projected["projection"]["seconds_to_full"]
                .as_f64()
                .expect("ttf");
    let horizon = full_at - taken_at;
    eprintln!(
        "projected at {:.0}% full: full in {:.2}s; it filled after {:.2}s",
        100.0 * projected["fill_ratio"].as_f64().unwrap_or_default(),
        (predicted - taken_at) / 1000.0,
        horizon / 1000.0
    );
    assert!(
        (predicted - full_at).abs() <= 0.2 * horizon,
        "projected full at +{:.2}s, it filled at +{:.2}s",
        (predicted - taken_at) / 1000.0,
        horizon / 1000.0
    );
    assert!(
        samples.iter().any(|s| s["projection"]["level"] == "full"),
        "the full table is reported as full"
    );

    // 3. The ramp: node1 nearly full of cheap entries, tcp-crr from pod2 (on node1) to pod3
    // (on node2) at doubling rates until node1's table gives.
    run("ip", &["netns", "exec", &node1, "conntrack", "-F"]);
    let headroom = 6000;
    let prefill = (max - headroom).to_string();
    json_of(
        &lab,
        &format!("lab conntrack-fill --node node1 --rate 50000 --flows {prefill}"),
    );
    let before = kernel_counters(&node1);
    let ramp = json_of(
        &lab,
        "conntrack ramp --from pod/pod2 --to pod/pod3 --start-rate 500 --step 2s --ceiling 32000 -o json",
    );
    let after = kernel_counters(&node1);
    let knee = &ramp["knee"];
    assert_eq!(knee["limit"], "early-drop", "{ramp:#}");
    assert_eq!(knee["node"], "node1", "{ramp:#}");
    assert!(knee["occupancy"].as_f64() > Some(0.99), "{knee}");
    let steps = ramp["steps"].as_array().expect("steps");
    assert!(steps.len() >= 2, "the knee is not the first step: {ramp:#}");
    let counted = node1_totals(&ramp);
    assert_eq!(
        counted,
        (after.0 - before.0, after.1 - before.1, after.2 - before.2)
    );
    assert!(counted.2 > 0, "evictions were counted");

    // 4. The same with assured entries in the way: the kernel cannot evict them, so it drops
    // the new connections' packets ("table full, dropping packet").
    run("ip", &["netns", "exec", &node1, "conntrack", "-F"]);
    json_of(
        &lab,
        &format!("lab conntrack-fill --node node1 --rate 100000 --flows {prefill} --assured"),
    );
    let before = kernel_counters(&node1);
    let ramp = json_of(
        &lab,
        "conntrack ramp --from pod/pod2 --to pod/pod3 --start-rate 500 --step 2s --ceiling 32000 \
         --trace -o json",
    );
    let after = kernel_counters(&node1);
    let knee = &ramp["knee"];
    assert_eq!(knee["limit"], "drop", "{ramp:#}");
    // Traced, the run's own SYNs are seen dropped by netfilter right after they left pod2.
    let last = ramp["steps"]
        .as_array()
        .and_then(|s| s.last())
        .expect("a step");
    let syn_drops: u64 = last["kernel_drops"]
        .as_array()
        .expect("kernel drops")
        .iter()
        .filter(|d| d["node"] == "node1" && d["reason"] == "NETFILTER_DROP")
        .filter(|d| d["after"] == "pod_out")
        .filter_map(|d| d["count"].as_u64())
        .sum();
    assert!(
        syn_drops > 0 && syn_drops <= after.1 - before.1,
        "{syn_drops} of the run's packets seen dropped, {} by the kernel: {last:#}",
        after.1 - before.1
    );
    assert_eq!(knee["node"], "node1", "{ramp:#}");
    let counted = node1_totals(&ramp);
    assert_eq!(
        counted,
        (after.0 - before.0, after.1 - before.1, after.2 - before.2)
    );
    assert!(counted.1 > 0, "drops were counted");

    // 5. The same counters on the daemon's Prometheus endpoint, against procfs.
    let metrics = lab.scrape("node1");
    let exported = |name: &str| {
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let now = kernel_counters(&node1);
    assert_eq!(
        exported("sonde_conntrack_early_drops_total"),
        now.2,
        "{metrics}"
    );
    assert_eq!(exported("sonde_conntrack_dropped_packets_total"), now.1);
    assert_eq!(exported("sonde_conntrack_insert_failed_total"), now.0);
    assert_eq!(exported("sonde_conntrack_max_entries"), max);
    assert!(metrics.contains("sonde_conntrack_created_entries_total{protocol=\"udp\"}"));
    assert_eq!(
        host_conntrack_max(),
        host_max,
        "the host's limit is untouched"
    );
}
