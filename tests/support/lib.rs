//! Helpers for sonde's privileged integration tests: root checks, network namespaces that
//! remove themselves, and the workspace's binaries.
//!
//! Everything a test creates carries the `sonde-t` prefix and the test process's PID, and is
//! removed on drop, so a failing test leaves nothing behind and parallel tests never collide.

pub mod cluster;
pub mod fake_apiserver;
pub mod fake_leases;
pub mod lab;

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// The stages of one direction of a cross-node run's kernel breakdown, in order.
pub const CROSS_NODE_STAGES: [&str; 5] = [
    "sender stack",
    "sender node",
    "wire",
    "receiver node",
    "receiver stack",
];

/// A child process (a server, a pod's workload) killed and reaped when the test ends.
#[derive(Debug)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// The stages of a breakdown's direction that have samples, in order.
pub fn stages_with_samples(direction: &serde_json::Value) -> Vec<&str> {
    direction["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter(|s| s["latency"]["samples"].as_u64().unwrap_or(0) > 0)
        .filter_map(|s| s["name"].as_str())
        .collect()
}

/// Asserts that a cross-node run's `kernel` breakdown has both directions, each with every
/// stage sampled.
pub fn assert_full_breakdown(kernel: &serde_json::Value) {
    let directions = kernel["directions"]
        .as_array()
        .unwrap_or_else(|| panic!("no breakdown: {kernel}"));
    assert_eq!(directions.len(), 2, "{kernel}");
    for direction in directions {
        assert_eq!(
            stages_with_samples(direction),
            CROSS_NODE_STAGES,
            "{direction}"
        );
    }
}

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (namespaces, eBPF): run it through `cargo xtask test`"
    );
}

/// Runs a command and returns its stdout, failing the test with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a fresh namespace named `sonde-t<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("sonde-t{}-{n}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Self { name }
    }

    /// The namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let setting = format!("{key}={value}");
        run(
            "ip",
            &["netns", "exec", &self.name, "sysctl", "-q", "-w", &setting],
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Path of a binary of this workspace (`sonded`, `sondectl`) next to the test executable's
/// target directory. `cargo xtask test` builds them before running the tests.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, which \
         `cargo xtask test` does)",
        bin.display()
    );
    bin
}
