//! `sondectl lab up`: make the lab the spec describes, start a daemon per node, record it all.
//!
//! Refuses to start over anything already there (a lab of the same name, whole or half-built)
//! and over address ranges the host routes; if a step fails, everything made so far is removed
//! again before the error is reported.

use std::{
    fs::OpenOptions,
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;

use super::{
    inventory::{BRIDGE, ETH0, Inventory, Node, UNDERLAY_BRIDGE, netns_prefix},
    nft,
    spec::{LabSpec, overlaps},
    sys::{self, ip_in, sysctl_in},
    teardown,
};
use crate::{
    agent::{self, AgentAddr},
    error::{Context as _, Within as _, refuse},
};

/// How long the daemons get to load eBPF and answer.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes the lab, returns its inventory (also saved in its state directory).
pub async fn up(spec: &LabSpec, sonded: &Path) -> crate::Result<Inventory> {
    spec.validate().map_err(crate::Error::refused)?;
    if !sys::is_root() {
        refuse!(
            "the lab creates network namespaces and loads eBPF: it needs root (CAP_NET_ADMIN and \
             CAP_SYS_ADMIN)"
        );
    }
    if !sonded.is_file() {
        refuse!(
            "sonded not found at {}: build it (`cargo build --bins`) or pass --sonded PATH",
            sonded.display()
        );
    }
    refuse_existing(&spec.name)?;
    refuse_host_overlap(spec)?;

    let mut inventory = Inventory::plan(spec);
    std::fs::create_dir_all(&inventory.state_dir)
        .with_context(|| format!("creating {}", inventory.state_dir.display()))?;
    match build(&mut inventory, sonded).await {
        Ok(()) => {
            inventory.save()?;
            Ok(inventory)
        }
        Err(err) => {
            // Leave nothing half-made: the error is what the user needs, not the debris.
            let _ = teardown::down(&spec.name);
            Err(err).within_with(|| {
                format!(
                    "lab {:?} could not be built; removed what was made",
                    spec.name
                )
            })
        }
    }
}

fn refuse_existing(name: &str) -> crate::Result<()> {
    let existing = sys::netns_with_prefix(&netns_prefix(name));
    let state = Inventory::path(name);
    if state.exists() && !existing.is_empty() {
        refuse!("lab {name:?} is already up (`sondectl lab status --name {name}`, or `lab down`)");
    }
    if !existing.is_empty() || state.parent().is_some_and(Path::exists) {
        refuse!(
            "a half-built lab {name:?} is in the way ({} namespaces, state directory {}): remove \
             it with `sondectl lab down --name {name}`",
            existing.len(),
            state
                .parent()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The lab's ranges must not overlap anything the host routes or owns: a lab address that is
/// also a real one would make results (and the host's traffic) ambiguous.
fn refuse_host_overlap(spec: &LabSpec) -> crate::Result<()> {
    let routes = sys::run("ip", &["-j", "-4", "route", "show", "table", "all"])?;
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(&routes).context("reading the host's routes (ip -j route)")?;
    for route in &routes {
        let Some(dst) = route["dst"].as_str() else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let Some(dst) = dst
            .parse::<Ipv4Net>()
            .ok()
            .or_else(|| dst.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        else {
            continue;
        };
        for (flag, range) in [
            ("--pod-cidr", spec.pod_cidr),
            ("--node-cidr", spec.node_cidr),
            ("--service-cidr", spec.service_cidr),
        ] {
            if overlaps(range, dst) {
                refuse!("{flag} {range} overlaps the host's route to {dst}: choose another range");
            }
        }
    }
    Ok(())
}

async fn build(inventory: &mut Inventory, sonded: &Path) -> crate::Result<()> {
    let underlay = inventory.underlay_netns.clone();
    sys::run("ip", &["netns", "add", &underlay])?;
    ip_in(&underlay, &["link", "set", "lo", "up"])?;
    ip_in(
        &underlay,
        &["link", "add", UNDERLAY_BRIDGE, "type", "bridge"],
    )?;
    ip_in(&underlay, &["link", "set", UNDERLAY_BRIDGE, "up"])?;

    for node in &inventory.nodes {
        make_node(node, &underlay, inventory.node_cidr.prefix_len())?;
    }
    for pod in &inventory.pods {
        let node = inventory
            .node(&pod.node)
            .context("a pod names a node the plan does not have")?;
        make_pod(pod, node)?;
    }
    for node in &inventory.nodes {
        for other in inventory
            .nodes
            .iter()
            .filter(|other| other.name != node.name)
        {
            ip_in(
                &node.netns,
                &[
                    "route",
                    "add",
                    &other.pod_cidr.to_string(),
                    "via",
                    &other.ip.to_string(),
                    "dev",
                    ETH0,
                ],
            )?;
        }
    }
    nft::load(inventory)?;
    for pod in &inventory.pods {
        if let Some(rate) = pod.egress_bits_per_second {
            let node = inventory
                .node(&pod.node)
                .context("a pod names a node the plan does not have")?;
            limit_egress(
                &node.netns,
                &pod.host_veth,
                &format!("ifb{}", pod.name),
                rate,
            )?;
        }
    }
    start_daemons(inventory, sonded).await
}

fn make_node(node: &Node, underlay: &str, underlay_prefix: u8) -> crate::Result<()> {
    let netns = node.netns.as_str();
    sys::run("ip", &["netns", "add", netns])?;
    ip_in(netns, &["link", "set", "lo", "up"])?;
    sysctl_in(netns, "net.ipv4.ip_forward", "1")?;
    // Bridged traffic must pass conntrack and NAT, as Kubernetes requires of bridge CNIs:
    // without it, a Service's reply from a pod on the same bridge skips the reverse DNAT.
    sysctl_in(netns, "net.bridge.bridge-nf-call-iptables", "1")?;

    let underlay_end = underlay_port(node);
    ip_in(
        underlay,
        &[
            "link",
            "add",
            &underlay_end,
            "type",
            "veth",
            "peer",
            "name",
            ETH0,
            "netns",
            netns,
        ],
    )?;
    ip_in(
        underlay,
        &[
            "link",
            "set",
            &underlay_end,
            "master",
            UNDERLAY_BRIDGE,
            "up",
        ],
    )?;
    ip_in(
        netns,
        &[
            "addr",
            "add",
            &format!("{}/{underlay_prefix}", node.ip),
            "dev",
            ETH0,
        ],
    )?;
    ip_in(netns, &["link", "set", ETH0, "up"])?;

    ip_in(netns, &["link", "add", BRIDGE, "type", "bridge"])?;
    ip_in(
        netns,
        &[
            "addr",
            "add",
            &format!("{}/24", node.gateway),
            "dev",
            BRIDGE,
        ],
    )?;
    ip_in(netns, &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Makes a pod as a bridge CNI would: its namespace, a veth on its node's bridge (hairpin on),
/// its address and default route.
pub(super) fn make_pod(pod: &super::inventory::Pod, node: &Node) -> crate::Result<()> {
    let netns = pod.netns.as_str();
    sys::run("ip", &["netns", "add", netns])?;
    ip_in(netns, &["link", "set", "lo", "up"])?;
    ip_in(
        &node.netns,
        &[
            "link",
            "add",
            &pod.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            ETH0,
            "netns",
            netns,
        ],
    )?;
    ip_in(
        &node.netns,
        &["link", "set", &pod.host_veth, "master", BRIDGE, "up"],
    )?;
    // Bridge CNI's hairpinMode: a pod reaching itself through a Service gets its packets back
    // out of the port they came in on (without it, the bridge drops them).
    ip_in(
        &node.netns,
        &[
            "link",
            "set",
            &pod.host_veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ],
    )?;
    ip_in(
        netns,
        &["addr", "add", &format!("{}/24", pod.ip), "dev", ETH0],
    )?;
    ip_in(netns, &["link", "set", ETH0, "up"])?;
    ip_in(
        netns,
        &["route", "add", "default", "via", &node.gateway.to_string()],
    )?;
    Ok(())
}

/// The bandwidth plugin's egress shaping: what the pod sends arrives on the host-side veth's
/// ingress, is redirected to an IFB device, and leaves it through a TBF at `rate`.
///
/// The burst is what TBF can send at once after idling. The plugin leaves it to the caller and
/// kubelet passes a huge one, which lets a short test run far above the rate; here it is the
/// larger of 1 ms at the rate and 64 KiB (one full-size GSO segment must fit, or TBF splits
/// it), which a 10-second test at 100 Mbit/s cannot tell from the rate (+0.05%).
fn limit_egress(node_netns: &str, veth: &str, ifb: &str, rate: u64) -> crate::Result<()> {
    let burst_bytes = (rate / 8 / 1000).max(64 * 1024);
    let rate = format!("{rate}bit");
    let burst = burst_bytes.to_string();
    ip_in(node_netns, &["link", "add", ifb, "type", "ifb"])?;
    ip_in(node_netns, &["link", "set", ifb, "up"])?;
    let tc = |args: &[&str]| {
        let mut full = vec!["-n", node_netns];
        full.extend_from_slice(args);
        sys::run("tc", &full)
    };
    tc(&[
        "qdisc", "add", "dev", ifb, "root", "tbf", "rate", &rate, "burst", &burst, "latency",
        "25ms",
    ])?;
    tc(&["qdisc", "add", "dev", veth, "handle", "ffff:", "ingress"])?;
    // u32 matching everything, as the plugin does (and matchall is not built everywhere).
    tc(&[
        "filter", "add", "dev", veth, "parent", "ffff:", "protocol", "all", "u32", "match", "u32",
        "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    ])?;
    Ok(())
}

/// Issues the lab's own CA, its daemons' certificate and a client certificate, under its
/// state directory (root's only): a lab's daemons serve only callers holding the lab's client
/// certificate, as a cluster's serve only holders of its Secret.
fn issue_certificates(inventory: &Inventory) -> crate::Result<()> {
    use crate::tls::{self, issue};
    let ca = issue::Authority::generate(&format!("sonde lab {} CA", inventory.name))?;
    let daemon = ca.issue(issue::Role::Daemon, tls::DAEMON_NAME)?;
    ca.write_dir(&tls::lab_daemon_dir(&inventory.state_dir), &daemon)?;
    let client = ca.issue(issue::Role::Client, "sondectl")?;
    ca.write_dir(&tls::lab_client_dir(&inventory.state_dir), &client)?;
    // The CA too (root's, as the lab): what a cluster's sonde-ca Secret is to deploy, for
    // issuing more clients (tests/kubernetes.rs's in-cluster job).
    ca.write_dir(&tls::lab_ca_dir(&inventory.state_dir), &ca.issued)
}

async fn start_daemons(inventory: &mut Inventory, sonded: &Path) -> crate::Result<()> {
    let allowed = format!(
        "{},{},{}",
        inventory.pod_cidr, inventory.node_cidr, inventory.service_cidr
    );
    issue_certificates(inventory)?;
    let tls = crate::tls::lab_daemon_dir(&inventory.state_dir);
    for node in &mut inventory.nodes {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        // nsenter switches only the network namespace; `ip netns exec` would also remount /sys,
        // hiding the cgroup2 mount sonded attaches sock_ops programs to.
        let child = Command::new("nsenter")
            .arg(format!(
                "--net={}",
                Path::new(sys::NETNS_DIR).join(&node.netns).display()
            ))
            .arg("--")
            .arg(sonded)
            .args(["--listen", &node.agent, "--node-name", &node.name])
            .args(["--metrics-listen", &node.metrics])
            // The lab's generators may send anywhere in the lab, and nowhere else.
            .args(["--allow-target", &allowed])
            .arg("--tls-cert")
            .arg(tls.join(crate::tls::CERT_FILE))
            .arg("--tls-key")
            .arg(tls.join(crate::tls::KEY_FILE))
            .arg("--tls-ca")
            .arg(tls.join(crate::tls::CA_FILE))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for sondectl must not stop the lab.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting sonded for {}", node.name))?;
        // nsenter execs the command, so this is sonded's own PID.
        node.daemon_pid = Some(child.id());
    }
    for node in &inventory.nodes {
        wait_ready(node).await?;
    }
    Ok(())
}

async fn wait_ready(node: &Node) -> crate::Result<()> {
    let addr: AgentAddr = node.agent.parse().map_err(crate::Error::refused)?;
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        let answered = match agent::connect(&addr, Duration::from_secs(2)).await {
            Ok(mut client) => client
                .get_node_facts(sonde_proto::v1::GetNodeFactsRequest {})
                .await
                .is_ok(),
            Err(_) => false,
        };
        if answered {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            refuse!(
                "sonded on {} did not answer within {DAEMON_START_TIMEOUT:?}; its log ({}) ends: {}",
                node.name,
                node.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sonded` next to this `sondectl` (how cargo and packages lay them out).
/// The underlay's end of a node's uplink (a port of the underlay bridge).
pub fn underlay_port(node: &Node) -> String {
    format!("ul{}", node.name)
}

/// sonded next to this sondectl, where `cargo build` puts both.
pub fn default_sonded() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("sonded")))
        .unwrap_or_else(|| PathBuf::from("sonded"))
}
