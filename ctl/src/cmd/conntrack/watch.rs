//! `sondectl conntrack watch`: every node's table, a line (or a JSON object) per node and
//! sample, as the daemons stream them.

use std::time::Duration;

use anyhow::bail;
use futures::StreamExt as _;
use serde_json::json;
use sonde_proto::v1 as pb;

use crate::{
    agent::{self, AgentAddr},
    cli::{KubernetesArgs, parse_duration},
    lab::Inventory,
    output::OutputFormat,
};

/// Flags of `sondectl conntrack watch`.
#[derive(Debug, clap::Args)]
pub struct ConntrackWatchArgs {
    /// Daemons to watch, as HOST:PORT or unix:PATH. Without it, the lab's daemons (or the
    /// cluster's, with --kubeconfig).
    #[arg(
        long,
        env = "SONDE_AGENTS",
        value_delimiter = ',',
        conflicts_with = "kubeconfig"
    )]
    pub agents: Vec<AgentAddr>,

    /// Only these nodes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// Watch the nodes of a Kubernetes cluster instead.
    #[command(flatten)]
    pub cluster: KubernetesArgs,

    /// Between samples (100ms to 60s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Stop after this many samples per node (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub count: u64,

    /// Skip the per-state census (the table dump costs 2.4 µs an entry: 0.64 s when full).
    #[arg(long)]
    pub no_census: bool,

    /// The lab whose daemons to watch when no --agents are given.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// Output: a line per node and sample, or JSON lines (one object per node and sample).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for a daemon to answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A daemon to watch, by the node name to print.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The node's name (the lab's), or the daemon's address.
    pub node: String,
    /// Where its daemon listens.
    pub agent: AgentAddr,
}

/// The daemons `--agents` names, else the lab's (restricted to `--nodes`).
pub fn targets(agents: &[AgentAddr], nodes: &[String], lab: &str) -> anyhow::Result<Vec<Watched>> {
    if !agents.is_empty() {
        return Ok(agents
            .iter()
            .map(|agent| Watched {
                node: agent.to_string(),
                agent: agent.clone(),
            })
            .collect());
    }
    let inventory = Inventory::load(lab).map_err(|err| {
        anyhow::anyhow!(
            "no agents given (--agents HOST:PORT,...) and {}",
            crate::error::chain(&err)
        )
    })?;
    for name in nodes {
        if inventory.node(name).is_none() {
            bail!("lab {lab} has no node {name:?}");
        }
    }
    inventory
        .nodes
        .iter()
        .filter(|node| nodes.is_empty() || nodes.contains(&node.name))
        .map(|node| {
            Ok(Watched {
                node: node.name.clone(),
                agent: node.agent.parse().map_err(anyhow::Error::msg)?,
            })
        })
        .collect()
}

/// The ready daemons of a Kubernetes cluster (restricted to `nodes`).
async fn cluster_targets(
    cluster: &KubernetesArgs,
    nodes: &[String],
) -> anyhow::Result<Vec<Watched>> {
    let agents = crate::cluster::endpoints::Cluster::connect(cluster)
        .await?
        .agents()?;
    for name in nodes {
        if !agents.iter().any(|(node, _)| node == name) {
            bail!("no ready sonde daemon on node {name:?}");
        }
    }
    Ok(agents
        .into_iter()
        .filter(|(node, _)| nodes.is_empty() || nodes.contains(node))
        .map(|(node, agent)| Watched { node, agent })
        .collect())
}

/// Runs `sondectl conntrack watch`.
pub async fn run(args: ConntrackWatchArgs) -> anyhow::Result<()> {
    let interval_ms = u64::try_from(args.interval.as_millis()).unwrap_or(u64::MAX);
    if !(100..=60_000).contains(&interval_ms) {
        bail!("--interval must be 100ms to 60s");
    }
    let watched = if args.cluster.given() {
        cluster_targets(&args.cluster, &args.nodes).await?
    } else {
        targets(&args.agents, &args.nodes, &args.lab)?
    };
    let request = pb::WatchConntrackRequest {
        interval_ms,
        count: args.count,
        census: !args.no_census,
    };
    let mut streams = Vec::new();
    let mut failed = 0usize;
    for target in &watched {
        match open(target, &request, args.timeout).await {
            Ok(stream) => {
                let node = target.node.clone();
                streams.push(stream.map(move |item| (node.clone(), item)).boxed());
            }
            Err(err) => {
                failed += 1;
                eprintln!(
                    "sondectl: {}: {}",
                    target.node,
                    crate::error::chain(err.as_ref())
                );
            }
        }
    }
    if args.output == OutputFormat::Table && !streams.is_empty() {
        println!("{}", header());
    }
    let mut all = futures::stream::select_all(streams);
    while let Some((node, item)) = all.next().await {
        match item {
            Ok(sample) => match args.output {
                OutputFormat::Json => println!("{}", to_json(&node, &sample)),
                OutputFormat::Table => println!("{}", line(&node, &sample)),
            },
            Err(status) => {
                failed += 1;
                eprintln!("sondectl: {node}: {}", agent::status_text(&status));
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => bail!(
            "{n} of {} daemons could not be watched to the end",
            watched.len()
        ),
    }
}

/// Opens one daemon's sample stream.
pub async fn open(
    target: &Watched,
    request: &pb::WatchConntrackRequest,
    timeout: Duration,
) -> anyhow::Result<tonic::Streaming<pb::ConntrackSample>> {
    let mut client = agent::connect(&target.agent, timeout).await?;
    let stream = client
        .watch_conntrack(*request)
        .await
        .map_err(|status| anyhow::anyhow!("{}", agent::status_text(&status)))?;
    Ok(stream.into_inner())
}

fn header() -> String {
    format!(
        "{:<8} {:<10} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>9} {:<8} {:>6}  STATES",
        "TIME",
        "NODE",
        "ENTRIES",
        "MAX",
        "FULL",
        "NEW/s",
        "GONE/s",
        "GROW/s",
        "FAILED",
        "DROPS",
        "EVICTED",
        "TO-FULL",
        "LEVEL",
        "DNAT"
    )
}

fn line(node: &str, sample: &pb::ConntrackSample) -> String {
    let time = clock(sample.unix_ms);
    let fill = if sample.max > 0 {
        format!("{:.1}%", 100.0 * sample.entries as f64 / sample.max as f64)
    } else {
        "-".to_owned()
    };
    let rate = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let count = |value: Option<u64>| value.map_or("-".to_owned(), |v| v.to_string());
    let rates = sample.rates.as_ref();
    let projection = sample.projection.as_ref();
    let to_full = match projection {
        None => "-".to_owned(),
        Some(p) => p
            .seconds_to_full
            .map_or("never".to_owned(), |seconds| format!("{seconds:.1}s")),
    };
    let states = sample.census.as_ref().map_or(String::new(), |census| {
        let mut states: Vec<_> = census.states.iter().collect();
        states.sort_by_key(|state| std::cmp::Reverse(state.entries));
        states
            .iter()
            .take(4)
            .map(|state| match state.state.as_str() {
                "" => format!("{} {}", state.protocol, state.entries),
                name => format!("{name} {}", state.entries),
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    format!(
        "{time:<8} {node:<10} {:>8} {:>8} {fill:>6} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {to_full:>9} {:<8} {:>6}  {states}",
        sample.entries,
        sample.max,
        rate(rates.map(|r| r.created_per_s)),
        rate(rates.map(|r| r.destroyed_per_s)),
        rate(rates.map(|r| r.growth_per_s)),
        count(rates.map(|r| r.insert_failed)),
        count(rates.map(|r| r.drop)),
        count(rates.map(|r| r.early_drop)),
        projection.map_or("-", |p| p.level.as_str()),
        sample
            .census
            .as_ref()
            .map_or("-".to_owned(), |census| census.dnat.to_string()),
    )
}

/// HH:MM:SS (UTC) of a Unix time in milliseconds.
fn clock(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// One JSON line: the sample as the daemon sent it, with the node's name.
pub fn to_json(node: &str, sample: &pb::ConntrackSample) -> serde_json::Value {
    let counters = sample.counters.unwrap_or_default();
    json!({
        "node": node,
        "unix_ms": sample.unix_ms,
        "entries": sample.entries,
        "max": sample.max,
        "fill_ratio": if sample.max > 0 { sample.entries as f64 / sample.max as f64 } else { 0.0 },
        "counters": {
            "found": counters.found,
            "invalid": counters.invalid,
            "insert": counters.insert,
            "insert_failed": counters.insert_failed,
            "drop": counters.drop,
            "early_drop": counters.early_drop,
            "error": counters.error,
            "search_restart": counters.search_restart,
            "clash_resolve": counters.clash_resolve,
            "chain_toolong": counters.chain_toolong,
        },
        "events": sample.events.as_ref().map(|events| json!({
            "created": {
                "tcp": events.created_tcp,
                "udp": events.created_udp,
                "icmp": events.created_icmp,
                "other": events.created_other,
            },
            "destroyed": events.destroyed,
            "overflows": events.overflows,
        })),
        "events_unavailable": (!sample.events_unavailable.is_empty()).then_some(&sample.events_unavailable),
        "rates": sample.rates.as_ref().map(|rates| json!({
            "interval_s": rates.interval_s,
            "created_per_s": rates.created_per_s,
            "destroyed_per_s": rates.destroyed_per_s,
            "growth_per_s": rates.growth_per_s,
            "insert_failed": rates.insert_failed,
            "drop": rates.drop,
            "early_drop": rates.early_drop,
            "events_lost": rates.events_lost,
        })),
        "projection": sample.projection.as_ref().map(|projection| json!({
            "steady_entries": projection.steady_entries,
            "seconds_to_full": projection.seconds_to_full,
            "level": projection.level,
        })),
        "census": sample.census.as_ref().map(|census| json!({
            "states": census.states.iter().map(|state| json!({
                "protocol": state.protocol,
                "state": (!state.state.is_empty()).then_some(&state.state),
                "entries": state.entries,
            })).collect::<Vec<_>>(),
            "dnat": census.dnat,
            "assured": census.assured,
            "took_us": census.took_us,
        })),
        "timeouts": {
            "tcp_time_wait_s": sample.timeout_tcp_time_wait_s,
            "udp_s": sample.timeout_udp_s,
        },
    })
}
