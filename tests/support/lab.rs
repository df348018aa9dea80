//! Labs for tests: `sondectl lab up` under a unique name, `lab down` on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use sonde_ctl::lab::Inventory;

use crate::{run, workspace_bin};

/// Runs sondectl with `args`, ignoring the caller's SONDE_* settings.
pub fn sondectl(args: &[&str]) -> Output {
    Command::new(workspace_bin("sondectl"))
        .args(args)
        .env_remove("SONDE_LAB")
        .env_remove("SONDE_AGENTS")
        .output()
        .expect("run sondectl")
}

/// The stdout of a sondectl that must have succeeded.
pub fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sondectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A lab for one test, with a unique name; `lab down` on drop.
#[derive(Debug)]
pub struct Lab {
    /// The lab's name.
    pub name: String,
    /// What `lab up` made.
    pub inventory: Inventory,
}

impl Lab {
    /// `sondectl lab up` with `extra` options.
    pub fn up(extra: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut args = vec!["lab", "up", "--name", &name, "-o", "json"];
        args.extend_from_slice(extra);
        let inventory: Inventory =
            serde_json::from_str(&stdout_of(&sondectl(&args))).expect("inventory JSON");
        Self { name, inventory }
    }

    /// The namespace file of a pod or node.
    pub fn netns_path(&self, pod_or_node: &str) -> PathBuf {
        let netns = self
            .inventory
            .pod(pod_or_node)
            .map(|pod| pod.netns.clone())
            .or_else(|| {
                self.inventory
                    .node(pod_or_node)
                    .map(|node| node.netns.clone())
            })
            .unwrap_or_else(|| panic!("no pod or node {pod_or_node}"));
        Path::new("/run/netns").join(netns)
    }

    /// A pod's IP.
    pub fn ip(&self, pod: &str) -> String {
        self.inventory.pod(pod).expect("pod").ip.to_string()
    }

    /// (rx, tx) packets of a node's uplink, from the kernel's own counters.
    pub fn uplink_packets(&self, node: &str) -> (u64, u64) {
        let netns = &self.inventory.node(node).expect("node").netns;
        let json = run("ip", &["-n", netns, "-j", "-s", "link", "show", "eth0"]);
        let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j");
        let stats = &links[0]["stats64"];
        (
            stats["rx"]["packets"].as_u64().expect("rx"),
            stats["tx"]["packets"].as_u64().expect("tx"),
        )
    }

    /// A pod made by hand after the lab is up, as a CNI would make it: namespace `NAME` (with
    /// the lab's prefix, so that `lab down` removes it), a veth `vethNAME` on `node`'s bridge,
    /// and the `host`th address of the node's pod range. Returns its namespace and address.
    pub fn add_pod(&self, name: &str, node: &str, host: u32) -> (String, std::net::Ipv4Addr) {
        let node = self.inventory.node(node).expect("node");
        let netns = format!(
            "{}{name}",
            sonde_ctl::lab::inventory::netns_prefix(&self.name)
        );
        let veth = format!("veth{name}");
        let ip = std::net::Ipv4Addr::from(u32::from(node.pod_cidr.network()) + host);
        let address = format!("{ip}/24");
        run("ip", &["netns", "add", &netns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &veth,
                "netns",
                &node.netns,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &node.netns,
                "link",
                "set",
                &veth,
                "master",
                "cni0",
                "up",
            ],
        );
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"]);
        run(
            "ip",
            &["-n", &netns, "addr", "add", &address, "dev", "eth0"],
        );
        (netns, ip)
    }

    /// sondectl with `SONDE_LAB` set to this lab, started and left running: stdout and stderr
    /// piped, for `wait_with_output`.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(workspace_bin("sondectl"))
            .args(args)
            .env("SONDE_LAB", &self.name)
            .env_remove("SONDE_AGENTS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start sondectl")
    }

    /// sondectl with `SONDE_LAB` set to this lab.
    pub fn sondectl(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("sondectl"))
            .args(args)
            .env("SONDE_LAB", &self.name)
            .env_remove("SONDE_AGENTS")
            .output()
            .expect("run sondectl")
    }
}

/// One run side a daemon recorded holding its node.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The holder's session.
    pub session: String,
    /// Its reservation class (`sonde.v1.ReservationClass`).
    pub class: i32,
    /// When it started and ended, ms since the epoch (0: still running).
    pub started_at_unix_ms: u64,
    /// When it ended.
    pub ended_at_unix_ms: u64,
}

impl Lab {
    /// `GET /metrics` of a node's daemon over its Unix socket, plain HTTP/1.0.
    pub fn scrape(&self, node: &str) -> String {
        use std::io::{Read as _, Write as _};
        let address = &self.inventory.node(node).expect("node").metrics;
        let path = address.strip_prefix("unix:").expect("a unix: address");
        let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect to metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: sonded\r\n\r\n")
            .expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
        response
    }

    /// Every run side each daemon recorded holding its node, by node name.
    pub fn holds(&self) -> std::collections::BTreeMap<String, Vec<Hold>> {
        use sonde_proto::v1 as pb;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut all = std::collections::BTreeMap::new();
            for node in &self.inventory.nodes {
                let addr = node.agent.parse().expect("agent address");
                let mut client =
                    sonde_ctl::agent::connect(&addr, std::time::Duration::from_secs(5))
                        .await
                        .expect("connect");
                let runs = client
                    .list_reservations(pb::ListReservationsRequest {})
                    .await
                    .expect("ListReservations")
                    .into_inner()
                    .runs
                    .into_iter()
                    .map(|run| Hold {
                        session: run.holder.map(|h| h.session).unwrap_or_default(),
                        class: run.class,
                        started_at_unix_ms: run.started_at_unix_ms,
                        ended_at_unix_ms: run.ended_at_unix_ms,
                    })
                    .collect();
                all.insert(node.name.clone(), runs);
            }
            all
        })
    }

    /// Checks, from the daemons' own records, that no node was ever held by two holders at
    /// once in conflicting classes, and that no run side still holds one; returns how many
    /// run sides were checked.
    pub fn assert_no_collision(&self) -> usize {
        use sonde_proto::v1::ReservationClass;
        let (exclusive, normal) = (
            ReservationClass::Exclusive as i32,
            ReservationClass::Normal as i32,
        );
        let conflict = |a: i32, b: i32| {
            (a == exclusive && (b == exclusive || b == normal)) || (a == normal && b == exclusive)
        };
        let mut checked = 0;
        for (node, runs) in self.holds() {
            checked += runs.len();
            for (i, a) in runs.iter().enumerate() {
                assert!(
                    a.ended_at_unix_ms > 0,
                    "{node}: a run side still holds it: {a:?}"
                );
                for b in &runs[i + 1..] {
                    let overlap = a.started_at_unix_ms < b.ended_at_unix_ms
                        && b.started_at_unix_ms < a.ended_at_unix_ms;
                    assert!(
                        !(a.session != b.session && conflict(a.class, b.class) && overlap),
                        "{node}: {a:?} and {b:?} held it at once"
                    );
                }
            }
        }
        checked
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sondectl(&["lab", "down", "--name", &self.name]);
    }
}
