//! `sondectl nodes`: what each daemon's node is and what its kernel allows.
//!
//! Every daemon is asked at once. A daemon that cannot be reached does not hide the others:
//! their facts are printed, the failures are reported one line each on stderr, and the command
//! exits non-zero.
//!
//! JSON schema (`-o json`): `{"nodes": [NodeReport], "errors": [{"agent", "error"}]}` where a
//! `NodeReport` is `{agent, node_name, kernel_release, daemon_version, pid, started_at_unix_ns,
//! capabilities: [{name, available, detail}], programs: [{name, program_type, kernel_id}],
//! pod_interfaces: [{host_interface, netns, ips, packets_from_pod, packets_to_pod, pod?}],
//! reservations: [{class, user, session, scenario, purpose, expires_at_unix_ms}]}`.

use std::{path::PathBuf, time::Duration};

use serde::Serialize;
use sonde_proto::v1 as pb;

use crate::{
    agent::{self, AgentAddr},
    cli::parse_duration,
    lab::Inventory,
    output::{self, OutputFormat},
};

/// Flags of `sondectl nodes`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// Daemons to ask, as HOST:PORT or unix:PATH (comma-separated or repeated). Without it,
    /// the daemons of the lab named by --lab.
    #[arg(long, env = "SONDE_AGENTS", value_delimiter = ',')]
    pub agents: Vec<AgentAddr>,

    /// The lab whose daemons to list when no --agents are given.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// List the daemons of a Kubernetes cluster instead (found by label through the API
    /// server): node, zone, labels, pod IP, readiness.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// The namespace sonde was deployed to (with --kubeconfig).
    #[arg(long, default_value = crate::cluster::manifests::DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Only nodes matching this label selector (with --kubeconfig), e.g. agenttype=client.
    #[arg(long, default_value = "")]
    pub node_selector: String,

    /// Also pick a client and a server node placed this way (with --kubeconfig), or say why
    /// there is no such pair.
    #[arg(long, value_enum)]
    pub pick: Option<crate::cluster::placement::Placement>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for each daemon to answer, e.g. "3s" or "500ms".
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// One daemon's answer, in sondectl's documented JSON shape.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// The address it was reached at.
    pub agent: String,
    /// Its node's name.
    pub node_name: String,
    /// The node's kernel release.
    pub kernel_release: String,
    /// sonded's version.
    pub daemon_version: String,
    /// sonded's process ID on the node.
    pub pid: u32,
    /// When sonded started (ns since the Unix epoch).
    pub started_at_unix_ns: u64,
    /// What the kernel allows.
    pub capabilities: Vec<CapabilityReport>,
    /// What sonded holds loaded.
    pub programs: Vec<ProgramReport>,
    /// The pods sonded found behind the node's veths (packet counters attached to each).
    pub pod_interfaces: Vec<PodReport>,
    /// Reservations of the node held now (empty from a daemon without reservations).
    pub reservations: Vec<ReservationReport>,
}

/// A reservation a daemon holds.
#[derive(Debug, Serialize)]
pub struct ReservationReport {
    /// `exclusive`, `normal` or `background`.
    pub class: String,
    /// Who: `user@host`.
    pub user: String,
    /// The holder's session.
    pub session: String,
    /// Its scenario, if any.
    pub scenario: String,
    /// What for.
    pub purpose: String,
    /// When it ends unless released, ms since the Unix epoch.
    pub expires_at_unix_ms: u64,
}

/// A pod's interface as its node's daemon mapped it.
#[derive(Debug, Serialize)]
pub struct PodReport {
    /// The host-side veth.
    pub host_interface: String,
    /// The pod's network namespace.
    pub netns: String,
    /// The pod's addresses.
    pub ips: Vec<String>,
    /// Packets from the pod (the veth's ingress) since the counters were attached.
    pub packets_from_pod: u64,
    /// Packets to the pod (the veth's egress).
    pub packets_to_pod: u64,
    /// The pod's `NAMESPACE/NAME`, when its daemon watches the API server (`sonded
    /// --kubernetes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One capability of a node.
#[derive(Debug, Serialize)]
pub struct CapabilityReport {
    /// Short stable name ("tcx", "fentry", ...).
    pub name: String,
    /// Whether it worked when tried.
    pub available: bool,
    /// What was done, or the kernel's error.
    pub detail: String,
}

/// One eBPF program loaded by a daemon.
#[derive(Debug, Serialize)]
pub struct ProgramReport {
    /// Name in sonde's object.
    pub name: String,
    /// Kernel program type.
    pub program_type: String,
    /// Kernel program ID.
    pub kernel_id: u32,
}

/// A daemon that could not be asked, and why.
#[derive(Debug, Serialize)]
pub struct AgentFailure {
    /// The address tried.
    pub agent: String,
    /// What went wrong, on one line.
    pub error: String,
}

#[derive(Debug, Serialize)]
struct Report {
    nodes: Vec<NodeReport>,
    errors: Vec<AgentFailure>,
}

/// Runs `sondectl nodes`.
pub async fn run(args: NodesArgs) -> anyhow::Result<()> {
    if args.kubeconfig.is_some() || args.pick.is_some() {
        return cluster(&args).await;
    }
    let agents = if args.agents.is_empty() {
        lab_agents(&args.lab)?
    } else {
        args.agents.clone()
    };
    let asks = agents.iter().map(|addr| ask(addr, args.timeout));
    let mut report = Report {
        nodes: Vec::new(),
        errors: Vec::new(),
    };
    for (addr, answer) in agents.iter().zip(futures::future::join_all(asks).await) {
        match answer {
            Ok(node) => report.nodes.push(node),
            Err(err) => report.errors.push(AgentFailure {
                agent: addr.to_string(),
                error: crate::error::chain(err.as_ref()),
            }),
        }
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Table => {
            if !report.nodes.is_empty() {
                print!("{}", render_table(&report.nodes));
            }
        }
    }
    for failure in &report.errors {
        eprintln!("sondectl: agent {}: {}", failure.agent, failure.error);
    }
    match report.errors.len() {
        0 => Ok(()),
        failed => anyhow::bail!("{failed} of {} agents did not answer", agents.len()),
    }
}

/// The daemons of the lab `name`, when no agents were given.
fn lab_agents(name: &str) -> anyhow::Result<Vec<AgentAddr>> {
    let inventory = Inventory::load(name).map_err(|err| {
        anyhow::anyhow!(
            "no agents given (--agents HOST:PORT,...) and {}",
            crate::error::chain(&err)
        )
    })?;
    inventory
        .nodes
        .iter()
        .map(|node| node.agent.parse().map_err(anyhow::Error::msg))
        .collect()
}

async fn ask(addr: &AgentAddr, timeout: Duration) -> anyhow::Result<NodeReport> {
    let mut client = agent::connect(addr, timeout).await?;
    let response = client
        .get_node_facts(pb::GetNodeFactsRequest {})
        .await
        .map_err(|status| {
            anyhow::anyhow!("GetNodeFacts failed: {}", agent::status_text(&status))
        })?;
    let facts = response
        .into_inner()
        .facts
        .ok_or_else(|| anyhow::anyhow!("GetNodeFacts answered without facts"))?;
    let mut report = NodeReport::new(addr, facts);
    // An older daemon has no reservations: it answers Unimplemented, and shows none.
    if let Ok(list) = client
        .list_reservations(pb::ListReservationsRequest {})
        .await
    {
        report.reservations = list
            .into_inner()
            .held
            .into_iter()
            .map(|held| {
                let holder = held.holder.unwrap_or_default();
                ReservationReport {
                    class: pb::ReservationClass::try_from(held.class)
                        .map(|class| {
                            class
                                .as_str_name()
                                .trim_start_matches("RESERVATION_CLASS_")
                                .to_lowercase()
                        })
                        .unwrap_or_default(),
                    user: holder.user,
                    session: holder.session,
                    scenario: holder.scenario,
                    purpose: held.purpose,
                    expires_at_unix_ms: held.expires_at_unix_ms,
                }
            })
            .collect();
    }
    Ok(report)
}

impl NodeReport {
    fn new(addr: &AgentAddr, facts: pb::NodeFacts) -> Self {
        Self {
            agent: addr.to_string(),
            node_name: facts.node_name,
            kernel_release: facts.kernel_release,
            daemon_version: facts.daemon_version,
            pid: facts.pid,
            started_at_unix_ns: facts.started_at_unix_ns,
            capabilities: facts
                .capabilities
                .into_iter()
                .map(|capability| CapabilityReport {
                    name: capability.name,
                    available: capability.available,
                    detail: capability.detail,
                })
                .collect(),
            programs: facts
                .programs
                .into_iter()
                .map(|program| ProgramReport {
                    name: program.name,
                    program_type: program.program_type,
                    kernel_id: program.kernel_id,
                })
                .collect(),
            pod_interfaces: facts
                .pod_interfaces
                .into_iter()
                .map(|pod| PodReport {
                    host_interface: pod.host_interface,
                    netns: pod.netns,
                    ips: pod.ips,
                    packets_from_pod: pod.packets_from_pod,
                    packets_to_pod: pod.packets_to_pod,
                    pod: (!pod.pod.is_empty()).then_some(pod.pod),
                })
                .collect(),
            reservations: Vec::new(),
        }
    }
}

/// The nodes table, then a capability matrix (a column per node), then the reason for every
/// capability that is missing somewhere.
fn render_table(nodes: &[NodeReport]) -> String {
    let mut summary = output::table(&["NODE", "AGENT", "KERNEL", "SONDED", "PID", "PROGRAMS"]);
    for node in nodes {
        let programs: Vec<&str> = node.programs.iter().map(|p| p.name.as_str()).collect();
        summary.add_row([
            node.node_name.clone(),
            node.agent.clone(),
            node.kernel_release.clone(),
            node.daemon_version.clone(),
            node.pid.to_string(),
            programs.join(","),
        ]);
    }

    let mut header = vec!["CAPABILITY"];
    header.extend(nodes.iter().map(|node| node.node_name.as_str()));
    let mut matrix = output::table(&header);
    let names = nodes
        .first()
        .map(|node| &node.capabilities[..])
        .unwrap_or_default();
    for capability in names {
        let mut row = vec![capability.name.clone()];
        for node in nodes {
            let cell = match node.capabilities.iter().find(|c| c.name == capability.name) {
                Some(c) if c.available => "yes",
                Some(_) => "no",
                None => "?",
            };
            row.push(cell.to_owned());
        }
        matrix.add_row(row);
    }

    let mut text = format!(
        "{}\n\n{}\n",
        output::trim_lines(&summary),
        output::trim_lines(&matrix)
    );
    let missing: Vec<String> = nodes
        .iter()
        .flat_map(|node| {
            node.capabilities
                .iter()
                .filter(|c| !c.available)
                .map(move |c| format!("{}: {} unavailable: {}", node.node_name, c.name, c.detail))
        })
        .collect();
    if !missing.is_empty() {
        text.push('\n');
        for line in missing {
            text.push_str(&line);
            text.push('\n');
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut reservations = output::table(&[
        "NODE", "RESERVED", "BY", "SESSION", "SCENARIO", "FOR", "LEFT",
    ]);
    let mut any = false;
    for node in nodes {
        for held in &node.reservations {
            any = true;
            reservations.add_row([
                node.node_name.clone(),
                held.class.clone(),
                held.user.clone(),
                held.session.clone(),
                held.scenario.clone(),
                held.purpose.clone(),
                format!(
                    "{:.0}s",
                    held.expires_at_unix_ms.saturating_sub(now_ms) as f64 / 1000.0
                ),
            ]);
        }
    }
    if any {
        text.push('\n');
        text.push_str(&output::trim_lines(&reservations));
        text.push('\n');
    }
    text
}

/// What `sondectl nodes --kubeconfig -o json` prints.
#[derive(Debug, Serialize)]
struct ClusterReport {
    daemons: Vec<crate::cluster::discover::Daemon>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pick: Option<Pick>,
}

/// A placement pick.
#[derive(Debug, Serialize)]
struct Pick {
    placement: crate::cluster::placement::Placement,
    client: String,
    server: String,
}

/// `sondectl nodes --kubeconfig`: the daemons as the API server sees them.
async fn cluster(args: &NodesArgs) -> anyhow::Result<()> {
    use crate::cluster::{self, discover, placement};
    let client = cluster::client(args.kubeconfig.as_deref()).await?;
    let daemons = discover::daemons(&client, &args.namespace, &args.node_selector).await?;
    let pick = match args.pick {
        Some(wanted) => {
            let (client, server) = placement::pick(wanted, &daemons)?;
            Some(Pick {
                placement: wanted,
                client: client.node,
                server: server.node,
            })
        }
        None => None,
    };
    if daemons.is_empty() {
        anyhow::bail!(
            "no sonde daemons in namespace {} (deploy them with `sondectl deploy`)",
            args.namespace
        );
    }
    match args.output {
        OutputFormat::Json => {
            let report = ClusterReport { daemons, pick };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        OutputFormat::Table => {
            let mut table = output::table(&["NODE", "ZONE", "POD", "POD IP", "READY", "LABELS"]);
            for daemon in &daemons {
                table.add_row(vec![
                    daemon.node.clone(),
                    daemon.zone.clone().unwrap_or_else(|| "-".to_owned()),
                    daemon.pod.clone(),
                    daemon.pod_ip.clone().unwrap_or_else(|| "-".to_owned()),
                    if daemon.ready { "yes" } else { "no" }.to_owned(),
                    daemon
                        .node_labels
                        .iter()
                        .filter(|(key, _)| !key.starts_with("kubernetes.io/"))
                        .map(|(key, value)| format!("{key}={value}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
            }
            println!("{}", output::trim_lines(&table));
            if let Some(pick) = &pick {
                println!(
                    "\npick ({:?}): client on {}, server on {}",
                    pick.placement, pick.client, pick.server
                );
            }
        }
    }
    Ok(())
}
