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

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = sondectl(&["lab", "down", "--name", &self.name]);
    }
}
