//! `sondectl lab up|down|status|delay|conntrack-fill|rollout`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::bail;
use ipnet::Ipv4Net;

use crate::{
    agent,
    cli::{parse_duration, parse_duration_or_zero},
    lab::{
        self, Inventory, LabSpec,
        spec::{BandwidthSpec, ServiceSpec},
        sys,
    },
    output::{self, OutputFormat},
};

/// `sondectl lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Replace a Service's pods one at a time, as a Deployment's rolling update does (new pod
    /// ready and added, old one drained, terminated and deleted); runs through the Service
    /// record each step on their timelines.
    Rollout(LabRolloutArgs),
    /// Build a lab and start a sonded per node; prints the inventory.
    Up(LabUpArgs),
    /// Remove a lab: processes, namespaces (with their links and nft tables), state files.
    Down(LabName),
    /// Check a lab's namespaces and daemons.
    Status(LabName),
    /// Add a known one-way delay on the underlay between two nodes, for a while (a relay
    /// through TAP devices: this kernel has no netem). Runs until its time is up or Ctrl-C.
    Delay(LabDelayArgs),
    /// Fill a node's conntrack table with cheap flows: UDP datagrams from the node to one of
    /// its pods, each to another port, at a steady rate (only that node's table grows).
    ConntrackFill(LabFillArgs),
}

/// Flags of `sondectl lab conntrack-fill`.
#[derive(Debug, clap::Args)]
pub struct LabFillArgs {
    /// The lab's name.
    #[arg(
        long = "name",
        visible_alias = "lab",
        env = "SONDE_LAB",
        default_value = "lab"
    )]
    pub name: String,

    /// The node whose table to fill.
    #[arg(long)]
    pub node: String,

    /// New flows per second (at most 200000).
    #[arg(long, default_value_t = 20_000.0, allow_negative_numbers = true)]
    pub rate: f64,

    /// Flows to make in all (at most 2000000): one entry each while they last.
    #[arg(long)]
    pub flows: u64,

    /// Make the flows assured (a reply each way, used again after two seconds: three datagrams
    /// a flow, between the node and one of its pods). The kernel does not evict assured entries
    /// early, so a table full of them drops new connections instead.
    #[arg(long)]
    pub assured: bool,
}

/// Flags of `sondectl lab delay`.
#[derive(Debug, clap::Args)]
pub struct LabDelayArgs {
    /// The lab's name.
    #[arg(
        long = "name",
        visible_alias = "lab",
        env = "SONDE_LAB",
        default_value = "lab"
    )]
    pub name: String,

    /// The sending node: its frames to `--to` are delayed.
    #[arg(long)]
    pub from: String,

    /// The receiving node.
    #[arg(long)]
    pub to: String,

    /// The added one-way delay (e.g. 5ms; 0 for the relay alone).
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub delay: Duration,

    /// How long the delay stays (at most an hour).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// The sonded binary that relays (default: next to sondectl).
    #[arg(long)]
    pub sonded: Option<PathBuf>,
}

/// Which lab.
#[derive(Debug, clap::Args)]
pub struct LabName {
    /// The lab's name (1 to 8 lower-case letters or digits).
    #[arg(
        long = "name",
        visible_alias = "lab",
        env = "SONDE_LAB",
        default_value = "lab"
    )]
    pub name: String,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Flags of `sondectl lab up`.
#[derive(Debug, clap::Args)]
pub struct LabUpArgs {
    /// The lab's name and output format.
    #[command(flatten)]
    pub lab: LabName,

    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: u8,

    /// Pods on each node.
    #[arg(long, default_value_t = 2)]
    pub pods_per_node: u8,

    /// Zones the nodes are spread over, round robin (node1 in zone-a, node2 in zone-b, ...).
    #[arg(long, default_value_t = 1)]
    pub zones: u8,

    /// A ClusterIP Service: NAME=PORT[:TARGET_PORT][/tcp|/udp][@POD,POD...] (all pods if none
    /// given). Repeatable.
    #[arg(long = "service")]
    pub services: Vec<ServiceSpec>,

    /// An egress bandwidth limit, as kubernetes.io/egress-bandwidth: POD=RATE (100M, 1G,
    /// 500k). Repeatable.
    #[arg(long)]
    pub bandwidth: Vec<BandwidthSpec>,

    /// The pods' range (node N gets its N-th /24).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pod_cidr: Ipv4Net,

    /// The underlay joining the nodes.
    #[arg(long, default_value = "10.250.0.0/24")]
    pub node_cidr: Ipv4Net,

    /// Where ClusterIPs come from.
    #[arg(long, default_value = "10.96.0.0/24")]
    pub service_cidr: Ipv4Net,

    /// The sonded binary to run on each node (default: next to sondectl).
    #[arg(long)]
    pub sonded: Option<PathBuf>,
}

/// Runs a `sondectl lab` subcommand.
pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up(args) => up(args).await,
        LabCommand::Down(args) => down(&args),
        LabCommand::Status(args) => status(&args).await,
        LabCommand::Delay(args) => delay(&args),
        LabCommand::ConntrackFill(args) => conntrack_fill(&args),
        LabCommand::Rollout(args) => rollout(&args).await,
    }
}

/// Flags of `sondectl lab rollout`.
#[derive(Debug, clap::Args)]
pub struct LabRolloutArgs {
    /// The lab's name.
    #[arg(
        long = "name",
        visible_alias = "lab",
        env = "SONDE_LAB",
        default_value = "lab"
    )]
    pub name: String,

    /// The Service whose pods to replace.
    #[arg(long)]
    pub service: String,

    /// From a new pod's creation to its readiness (when it joins the Service's rules).
    #[arg(long, default_value = "1s", value_parser = parse_duration_or_zero)]
    pub ready_after: Duration,

    /// From an old pod's removal from the rules to its termination.
    #[arg(long, default_value = "1s", value_parser = parse_duration_or_zero)]
    pub drain: Duration,

    /// Between one pod's replacement and the next.
    #[arg(long, default_value = "2s", value_parser = parse_duration_or_zero)]
    pub pause: Duration,
}

async fn rollout(args: &LabRolloutArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let pacing = lab::rollout::Pacing {
        ready_after: args.ready_after,
        drain: args.drain,
        pause: args.pause,
    };
    let events = lab::rollout::rollout(&args.name, &args.service, pacing, |event| {
        println!("{:>6.1}s  {}", started.elapsed().as_secs_f64(), event.what);
    })
    .await?;
    println!(
        "{}: rolled out in {:.1}s ({} steps recorded in the lab's events)",
        args.service,
        started.elapsed().as_secs_f64(),
        events.len()
    );
    Ok(())
}

/// `lab conntrack-fill`: prints what it sent as one JSON object.
fn conntrack_fill(args: &LabFillArgs) -> anyhow::Result<()> {
    lab::fill::check(args.rate, args.flows)?;
    let inventory = Inventory::load(&args.name)?;
    let filled = lab::fill::fill(&inventory, &args.node, args.rate, args.flows, args.assured)?;
    println!("{}", serde_json::to_string(&filled)?);
    Ok(())
}

/// `sondectl lab delay`: runs sonded's delay line in the lab's underlay namespace and passes
/// its JSON lines through (`{"ready":true}` once frames are delayed, then what it carried).
fn delay(args: &LabDelayArgs) -> anyhow::Result<()> {
    if args.delay > Duration::from_secs(10) {
        bail!("--delay is at most 10s");
    }
    if args.duration > Duration::from_secs(3600) || args.duration < Duration::from_secs(1) {
        bail!("--duration must be from 1s to 1h");
    }
    let inventory = Inventory::load(&args.name)?;
    let node = |name: &str| {
        inventory
            .nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| anyhow::anyhow!("lab {:?} has no node {name:?}", inventory.name))
    };
    let (from, to) = (node(&args.from)?, node(&args.to)?);
    if from.name == to.name {
        bail!("--from and --to must be two different nodes");
    }
    let mac = sys::mac_of(&to.netns, lab::inventory::ETH0)?;
    let sonded = args
        .sonded
        .clone()
        .unwrap_or_else(lab::create::default_sonded);
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &inventory.underlay_netns])
        .arg(&sonded)
        .args([
            "delay-line",
            "--from-port",
            &lab::create::underlay_port(from),
            "--to-port",
            &lab::create::underlay_port(to),
            "--to-mac",
            &mac,
            "--delay-us",
            &args.delay.as_micros().to_string(),
            "--seconds",
            &args.duration.as_secs().max(1).to_string(),
        ])
        .status()?;
    if !status.success() {
        bail!("the delay line failed ({status})");
    }
    Ok(())
}

async fn up(args: LabUpArgs) -> anyhow::Result<()> {
    let spec = LabSpec {
        name: args.lab.name.clone(),
        nodes: args.nodes,
        pods_per_node: args.pods_per_node,
        zones: args.zones,
        pod_cidr: args.pod_cidr,
        node_cidr: args.node_cidr,
        service_cidr: args.service_cidr,
        services: args.services,
        bandwidth: args.bandwidth,
    };
    let sonded = args.sonded.unwrap_or_else(lab::create::default_sonded);
    let started = Instant::now();
    let inventory = lab::create::up(&spec, &sonded).await?;
    match args.lab.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&inventory)?),
        OutputFormat::Table => {
            print!("{}", render(&inventory));
            println!(
                "\nlab {:?} up in {:.1}s; inventory in {}",
                inventory.name,
                started.elapsed().as_secs_f64(),
                Inventory::path(&inventory.name).display()
            );
        }
    }
    Ok(())
}

fn down(args: &LabName) -> anyhow::Result<()> {
    let removed = lab::teardown::down(&args.name)?;
    if removed == lab::teardown::Removed::default() {
        println!("no lab named {:?} here: nothing to remove", args.name);
    } else {
        println!(
            "lab {:?} removed: {} processes stopped, {} namespaces deleted{}",
            args.name,
            removed.processes,
            removed.namespaces,
            if removed.state_dir {
                ", state directory removed"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn status(args: &LabName) -> anyhow::Result<()> {
    let inventory = Inventory::load(&args.name)?;
    let present = sys::netns_with_prefix(&lab::inventory::netns_prefix(&inventory.name));
    let missing: Vec<&str> = inventory
        .namespaces()
        .into_iter()
        .filter(|ns| !present.iter().any(|p| p == ns))
        .collect();
    let mut table = output::table(&["NODE", "AGENT", "DAEMON", "PODS"]);
    let mut down = Vec::new();
    let mut nodes = Vec::new();
    for node in &inventory.nodes {
        let answer = match node.agent.parse() {
            Ok(addr) => match agent::connect(&addr, Duration::from_secs(2)).await {
                Ok(mut client) => client
                    .get_node_facts(sonde_proto::v1::GetNodeFactsRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|status| agent::status_text(&status)),
                Err(err) => Err(crate::error::chain(&err)),
            },
            Err(err) => Err(err),
        };
        let daemon = match answer {
            Ok(()) => "ready".to_owned(),
            Err(err) => {
                down.push(format!("{}: {err}", node.name));
                "not answering".to_owned()
            }
        };
        let pods: Vec<&str> = inventory
            .pods
            .iter()
            .filter(|pod| pod.node == node.name)
            .map(|pod| pod.name.as_str())
            .collect();
        nodes.push(serde_json::json!({
            "name": node.name,
            "ip": node.ip,
            "zone": node.zone,
            "agent": node.agent,
            "metrics": node.metrics,
            "daemon": daemon,
            "pods": inventory
                .pods
                .iter()
                .filter(|pod| pod.node == node.name)
                .map(|pod| serde_json::json!({
                    "name": pod.name,
                    "ip": pod.ip,
                    "host_veth": pod.host_veth,
                }))
                .collect::<Vec<_>>(),
        }));
        table.add_row([
            node.name.clone(),
            node.agent.clone(),
            daemon,
            pods.join(","),
        ]);
    }
    if args.output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({
                "lab": inventory.name,
                "nodes": nodes,
                "services": inventory
                    .services
                    .iter()
                    .map(|service| serde_json::json!({
                        "name": service.name,
                        "cluster_ip": service.cluster_ip,
                        "protocol": service.protocol,
                        "port": service.port,
                        "target_port": service.target_port,
                        "endpoints": service.endpoints,
                    }))
                    .collect::<Vec<_>>(),
                "missing_namespaces": missing,
                "daemons_down": down,
            })
        );
    } else {
        println!("{}", output::trim_lines(&table));
    }
    if !missing.is_empty() || !down.is_empty() {
        bail!(
            "lab {:?} is degraded: {} namespaces missing, {} daemons not answering{}",
            inventory.name,
            missing.len(),
            down.len(),
            down.first().map(|d| format!(" ({d})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// The inventory as three tables: nodes, pods, Services.
fn render(inventory: &Inventory) -> String {
    let mut nodes = output::table(&[
        "NODE",
        "ZONE",
        "NAMESPACE",
        "IP",
        "POD CIDR",
        "AGENT",
        "PID",
    ]);
    for node in &inventory.nodes {
        nodes.add_row([
            node.name.clone(),
            node.zone.clone().unwrap_or_else(|| "-".to_owned()),
            node.netns.clone(),
            node.ip.to_string(),
            node.pod_cidr.to_string(),
            node.agent.clone(),
            node.daemon_pid
                .map(|pid| pid.to_string())
                .unwrap_or_default(),
        ]);
    }
    let mut pods = output::table(&["POD", "NODE", "IP", "HOST VETH", "EGRESS LIMIT"]);
    for pod in &inventory.pods {
        pods.add_row([
            pod.name.clone(),
            pod.node.clone(),
            pod.ip.to_string(),
            pod.host_veth.clone(),
            pod.egress_bits_per_second
                .map(|bits| format!("{} Mbit/s", bits as f64 / 1e6))
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut text = format!(
        "{}\n\n{}\n",
        output::trim_lines(&nodes),
        output::trim_lines(&pods)
    );
    if !inventory.services.is_empty() {
        let mut services = output::table(&["SERVICE", "CLUSTER-IP", "PORT", "ENDPOINTS"]);
        for service in &inventory.services {
            services.add_row([
                service.name.clone(),
                service.cluster_ip.to_string(),
                format!(
                    "{}->{}/{}",
                    service.port, service.target_port, service.protocol
                ),
                service.endpoints.join(","),
            ]);
        }
        text.push('\n');
        text.push_str(&output::trim_lines(&services));
        text.push('\n');
    }
    text
}
