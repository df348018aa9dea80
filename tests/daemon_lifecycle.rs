//! sonded as an operator runs it: start, answer `sondectl nodes` with what this kernel really
//! allows, stop on SIGTERM or die on SIGKILL, and in both cases leave no program, link or mount
//! behind (the kernel's own list of loaded programs is the judge).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sonde_integration::{require_root, workspace_bin};

/// A running sonded and everything it has logged so far.
struct Daemon {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start() -> Self {
        let mut child = Command::new(workspace_bin("sonded"))
            .args(["--listen", "127.0.0.1:0", "--node-name", "lifecycle"])
            .arg("--insecure")
            .env("SONDE_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sonded");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serving gRPC")
                    && let Some(addr) = line.split("addr=").nth(1)
                {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                let mut log = log_writer.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!("sonded did not start serving: {}", log.lock().expect("log"))
            });
        Self { child, addr, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sonded did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sondectl_nodes_json(addr: &str) -> serde_json::Value {
    let output = Command::new(workspace_bin("sondectl"))
        .args(["nodes", "--agents", addr, "--insecure", "-o", "json"])
        .output()
        .expect("run sondectl");
    assert!(
        output.status.success(),
        "sondectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("sondectl prints JSON")
}

/// Kernel IDs of the programs the daemon reports, checked against the kernel's own list.
fn reported_program_ids(node: &serde_json::Value) -> Vec<u32> {
    let ids: Vec<u32> = node["programs"]
        .as_array()
        .expect("programs array")
        .iter()
        .map(|program| {
            u32::try_from(program["kernel_id"].as_u64().expect("kernel_id")).expect("u32 id")
        })
        .collect();
    let names: Vec<&str> = node["programs"]
        .as_array()
        .expect("programs array")
        .iter()
        .map(|program| program["name"].as_str().expect("name"))
        .collect();
    // The counters and every stage program are loaded at start (the BTF tracepoint needs the
    // BTF parsed then); none is attached until a run is traced.
    assert_eq!(
        names,
        [
            "sonde_connect",
            "sonde_drop",
            "sonde_flush",
            "sonde_free",
            "sonde_node_in",
            "sonde_node_out",
            "sonde_pod_in",
            "sonde_pod_in_counted",
            "sonde_pod_out",
            "sonde_pod_out_counted",
            "sonde_read",
            "sonde_retransmit",
            "sonde_sock_send",
            "sonde_tc_egress",
            "sonde_tc_ingress"
        ]
    );
    for id in &ids {
        assert!(
            kernel_program_ids().contains(id),
            "program {id} not in the kernel"
        );
    }
    ids
}

fn kernel_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| info.id())
        .collect()
}

/// Programs are freed after their last reference goes (RCU): give the kernel a moment.
fn assert_programs_released(ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let still: Vec<u32> = kernel_program_ids()
            .into_iter()
            .filter(|id| ids.contains(id))
            .collect();
        if still.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {still:?} still loaded after sonded exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo")
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn reports_this_kernels_capabilities_and_releases_everything_on_sigterm() {
    require_root();
    let mounts_before = host_mounts();
    let mut daemon = Daemon::start();

    let report = sondectl_nodes_json(&daemon.addr);
    assert_eq!(report["errors"], serde_json::json!([]));
    let node = &report["nodes"][0];
    assert_eq!(node["node_name"], "lifecycle");
    assert_eq!(node["pid"], daemon.child.id());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(node["kernel_release"], release.trim());

    let capabilities: BTreeMap<&str, (bool, &str)> = node["capabilities"]
        .as_array()
        .expect("capabilities array")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name"),
                (
                    c["available"].as_bool().expect("available"),
                    c["detail"].as_str().expect("detail"),
                ),
            )
        })
        .collect();
    let names: Vec<&str> = capabilities.keys().copied().collect();
    assert_eq!(
        names,
        [
            "btf",
            "fentry",
            "kprobe",
            "ringbuf",
            "sock_ops",
            "tcx",
            "tp_btf",
            "tracepoint"
        ]
    );
    // What every kernel sonde supports has (and this one is documented to have).
    for name in ["btf", "tcx", "tracepoint", "tp_btf", "sock_ops", "ringbuf"] {
        let (available, detail) = capabilities[name];
        assert!(available, "{name} should be available here: {detail}");
    }
    // kprobes exist exactly when the kernel has a kprobe PMU; sonde must agree with it.
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let (kprobe, kprobe_detail) = capabilities["kprobe"];
    assert_eq!(kprobe, kprobe_pmu, "kprobe: {kprobe_detail}");
    // Whatever is missing says why, in the kernel's words.
    for (name, (available, detail)) in &capabilities {
        if !available {
            assert!(
                detail.contains("os error"),
                "{name} without the kernel's error: {detail}"
            );
        }
    }

    let ids = reported_program_ids(node);
    kill(daemon.pid(), Signal::SIGTERM).expect("send SIGTERM");
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "sonded exited with {status}");
    let log = daemon.log.lock().expect("log").clone();
    assert!(
        log.contains("stop requested") && log.contains("stopped; eBPF programs unloaded"),
        "{log}"
    );
    assert_programs_released(&ids);
    assert_eq!(
        host_mounts(),
        mounts_before,
        "sonded changed the host's mounts"
    );
}

#[test]
#[ignore = "privileged: needs root; run by cargo xtask test"]
fn sigkill_leaves_nothing_loaded() {
    require_root();
    let mut daemon = Daemon::start();
    let report = sondectl_nodes_json(&daemon.addr);
    let ids = reported_program_ids(&report["nodes"][0]);
    kill(daemon.pid(), Signal::SIGKILL).expect("send SIGKILL");
    daemon.wait_exit(Duration::from_secs(5));
    assert_programs_released(&ids);
}
