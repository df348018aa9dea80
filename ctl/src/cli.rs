//! The command line: global flags and one subcommand per job.

use std::time::Duration;

use std::path::PathBuf;

use ipnet::Ipv4Net;
use sonde_proto::kinds::{KINDS, KindRules};

use crate::{
    agent::AgentAddr,
    endpoint::EndpointRef,
    lab::spec::{BandwidthSpec, ServiceSpec},
    output::OutputFormat,
};

/// sondectl: measure pod-to-pod networking from inside the kernel.
#[derive(Debug, clap::Parser)]
#[command(name = "sondectl", version)]
pub struct Cli {
    /// The job to do.
    #[command(subcommand)]
    pub command: Command,
}

/// sondectl's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List sonde's daemons: node, kernel, capabilities and loaded eBPF programs.
    Nodes(NodesArgs),
    /// A multi-node cluster of network namespaces on this machine (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Measure between two endpoints with a native generator.
    Run(RunArgs),
    /// Measure a fleet: a scenario file's tests over its nodes, topology, placement classes
    /// and paths, packed into rounds so that no node is loaded twice at once.
    #[command(subcommand)]
    Scenario(crate::cmd::scenario::ScenarioCommand),
    /// Measure a fleet continuously: a scenario's tests in rounds, each node from K peers on
    /// a ring that turns every round, with Prometheus metrics.
    Monitor(crate::monitor::MonitorArgs),
    /// Prepare a server side and keep it serving, for a client of your own (curl, wrk).
    Serve(ServeArgs),
    /// Where the time goes between two endpoints: a light request/response flow, traced in
    /// the kernel; prints only the per-stage breakdown.
    Trace(TraceArgs),
    /// Conntrack pressure: watch every node's table, or find the connection rate it breaks at.
    #[command(subcommand)]
    Conntrack(ConntrackCommand),
    /// Install sonde in a Kubernetes cluster (server-side apply of deploy/kubernetes).
    Deploy(DeployArgs),
    /// Remove what `deploy` installed.
    Undeploy(UndeployArgs),
}

/// Where sonde lives in a cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// The namespace sonde's objects live in.
    #[arg(long, default_value = crate::cluster::manifests::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// How `sondectl deploy` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeployOutput {
    /// What was applied, one object a line.
    Table,
    /// The objects as YAML (with --dry-run: what would be applied).
    Yaml,
}

/// Flags of `sondectl deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The cluster and namespace.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// The daemon's image.
    #[arg(long)]
    pub image: Option<String>,

    /// Run the daemons only on nodes with these labels (KEY=VALUE, repeated or comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = crate::cluster::manifests::parse_label)]
    pub node_selector: Vec<(String, String)>,

    /// Also deploy the measurement endpoints: an unprivileged pod on every node (the sonded
    /// image sleeping), a ClusterIP Service and a headless Service selecting them, so that
    /// scenarios over pod IPs have an end on every node.
    #[arg(long)]
    pub endpoints: bool,

    /// Also deploy the continuous monitor measuring this scenario (`sondectl monitor` in a
    /// Deployment, the scenario in a ConfigMap, one replica leading through a Lease).
    #[arg(long, value_name = "SCENARIO")]
    pub monitor: Option<PathBuf>,

    /// The monitor's replicas: one measures, the others stand by.
    #[arg(long, default_value_t = 2, requires = "monitor")]
    pub monitor_replicas: u32,

    /// The monitor's round length (its --every).
    #[arg(long, requires = "monitor", value_parser = parse_duration)]
    pub monitor_every: Option<Duration>,

    /// Peers measuring each node in each of the monitor's rounds (its --peers).
    #[arg(long, requires = "monitor", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub monitor_peers: Option<u64>,

    /// Heavy tests every this many rounds (its --heavy-every).
    #[arg(long, requires = "monitor", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub monitor_heavy_every: Option<u64>,

    /// Print what would be applied, and apply nothing (no cluster needed).
    #[arg(long)]
    pub dry_run: bool,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = DeployOutput::Table)]
    pub output: DeployOutput,
}

/// Flags of `sondectl undeploy`.
#[derive(Debug, clap::Args)]
pub struct UndeployArgs {
    /// The cluster and namespace.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `sondectl conntrack` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConntrackCommand {
    /// A live view of every node's conntrack table: entries/max, new and destroyed entries a
    /// second, failed inserts, drops, early drops, and the projected time until it is full.
    Watch(ConntrackWatchArgs),
    /// A bounded tcp-crr connection-rate ramp between two endpoints that stops at the first
    /// failed insert, drop or eviction in a conntrack table (or at a ceiling) and reports the
    /// knee. It changes no setting.
    Ramp(ConntrackRampArgs),
}

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

/// What stops a conntrack ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RampStop {
    /// A conntrack insert failed (clash) on a node of the path.
    InsertFailed,
    /// The kernel dropped a packet for lack of a conntrack entry (table full).
    Drop,
    /// The kernel evicted an unassured entry to make room (table full).
    EarlyDrop,
    /// Connections failed (refused, reset, timed out, no local port).
    Errors,
    /// Fewer than 90% of the offered connections were made: the path or the generator
    /// saturated.
    Saturated,
    /// No stop condition: only --ceiling ends the ramp.
    None,
}

/// Flags of `sondectl conntrack ramp`.
#[derive(Debug, clap::Args)]
pub struct ConntrackRampArgs {
    /// Where the connections start: pod/NAME, node/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub from: EndpointRef,

    /// Where they go: pod/NAME, node/NAME, service/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub to: EndpointRef,

    /// The cluster and the placement the ends must have (as for `run`).
    #[command(flatten)]
    pub placement: PlacementArgs,

    /// The first step's rate, connections per second.
    #[arg(long, default_value_t = 250.0, allow_negative_numbers = true)]
    pub start_rate: f64,

    /// Each step's rate is the previous one's times this (more than 1).
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub factor: f64,

    /// How long each step lasts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub step: Duration,

    /// The highest rate to try, connections per second.
    #[arg(long, allow_negative_numbers = true)]
    pub ceiling: Option<f64>,

    /// What stops the ramp (comma-separated; `none` leaves only --ceiling).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "insert-failed,drop,early-drop,errors"
    )]
    pub stop_on: Vec<RampStop>,

    /// At most this many steps, whatever else happens.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub max_steps: u32,

    /// Client threads making connections.
    #[arg(long, default_value_t = 2)]
    pub parallel: u32,

    /// Attach the stage probes to each step, so that the packets the kernel drops are named
    /// with their reason and where they were (costs some of the rate).
    #[arg(long)]
    pub trace: bool,

    /// The lab whose pods, nodes and Services endpoints name.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// Output: a table of steps and the knee, or one JSON document.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Flags of `sondectl trace`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Where the probe flow's client runs: pod/NAME, node/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub from: EndpointRef,

    /// Where its server runs: pod/NAME, node/NAME, service/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub to: EndpointRef,

    /// The cluster and the placement the ends must have (as for `run`).
    #[command(flatten)]
    pub placement: PlacementArgs,

    /// The probe flow's protocol.
    #[arg(long, value_enum, default_value_t = TraceProtocol::Tcp)]
    pub protocol: TraceProtocol,

    /// How long to trace.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Requests per second: light by default, so that the path is measured, not loaded.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Request and response size.
    #[arg(long, default_value = "64", value_parser = crate::run::sizes::parse_size)]
    pub size: u64,

    /// Estimate the clock offset NTP-style even between nodes that share a kernel.
    #[arg(long, hide = true)]
    pub estimate_clock: bool,

    /// The lab whose pods, nodes and Services endpoints name.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// Output format: the breakdown as a table, or as JSON (the run result's `kernel`).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The protocol of `sondectl trace`'s probe flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceProtocol {
    /// TCP request/response on one connection.
    Tcp,
    /// UDP request/response.
    Udp,
}

/// Flags of `sondectl serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The generator whose server side to run.
    #[arg(value_enum)]
    pub kind: RunKindArg,

    /// Where: pod/NAME, node/NAME, or a daemon's HOST:PORT.
    #[arg(long)]
    pub at: EndpointRef,

    /// How long to serve.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Response size (RR kinds and HTTP).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub size: Option<u64>,

    /// Connections it expects.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,

    /// The lab whose pods and nodes `--at` names.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// How long to wait for the daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A run kind as users name it: a row of sonde's one table of kinds
/// ([`sonde_proto::kinds::KINDS`]), read by clap (names and help) and serde (scenario files).
#[derive(Debug, Clone, Copy)]
pub struct RunKindArg(pub &'static KindRules);

/// Every kind, as clap lists them.
static RUN_KINDS: [RunKindArg; KINDS.len()] = {
    let mut all = [RunKindArg(&KINDS[0]); KINDS.len()];
    let mut i = 0;
    while i < KINDS.len() {
        all[i] = RunKindArg(&KINDS[i]);
        i += 1;
    }
    all
};

impl PartialEq for RunKindArg {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind == other.0.kind
    }
}

impl Eq for RunKindArg {}

impl std::hash::Hash for RunKindArg {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.kind.hash(state);
    }
}

impl clap::ValueEnum for RunKindArg {
    fn value_variants<'a>() -> &'a [Self] {
        &RUN_KINDS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name).help(self.0.about))
    }
}

impl serde::Serialize for RunKindArg {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.name)
    }
}

impl<'de> serde::Deserialize<'de> for RunKindArg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        KindRules::by_name(&name).map(Self).ok_or_else(|| {
            let names: Vec<&str> = KINDS.iter().map(|rules| rules.name).collect();
            serde::de::Error::custom(format!(
                "unknown kind `{name}`, expected one of {}",
                names.join(", ")
            ))
        })
    }
}

impl RunKindArg {
    /// The kind in sonde.v1.
    pub fn proto(self) -> sonde_proto::v1::RunKind {
        self.0.kind
    }

    /// The kind's rules.
    pub fn rules(self) -> &'static KindRules {
        self.0
    }

    /// The name users type and reports show.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// Message size when none is given.
    pub fn default_size(self) -> u64 {
        self.0.default_size
    }

    /// Whether it measures transactions (a request and its response).
    pub fn is_request_response(self) -> bool {
        self.0.is_request_response()
    }

    /// Whether both ends must be the same pod.
    pub fn is_intra_pod(self) -> bool {
        self.0.intra_pod
    }
}

/// Stream direction.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionArg {
    /// Client to server.
    Forward,
    /// Server to client.
    Reverse,
    /// Both at once.
    Both,
}

impl DirectionArg {
    /// The direction in sonde.v1.
    pub fn proto(self) -> sonde_proto::v1::Direction {
        use sonde_proto::v1::Direction;
        match self {
            Self::Forward => Direction::ClientToServer,
            Self::Reverse => Direction::ServerToClient,
            Self::Both => Direction::Both,
        }
    }
}

/// Output formats of `sondectl run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunOutput {
    /// A table for people.
    Table,
    /// The result document (schema: docs/schema/run-result.v1.json).
    Json,
    /// One CSV row per measurement.
    Csv,
}

/// A payload sweep: the sizes in bytes (an alias so clap takes it as one value).
pub type Sweep = Vec<u64>;

/// A Kubernetes cluster whose sonde daemons a command works with, and how to reach them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubernetesArgs {
    /// Work with the sonde daemons of this Kubernetes cluster (found by label through the API
    /// server, reached as --reach says); ends are named pod/NAMESPACE/NAME, node/NAME and
    /// service/NAMESPACE/NAME.
    #[arg(long, group = "cluster_config")]
    pub kubeconfig: Option<PathBuf>,

    /// Work with the cluster this process runs in (its pod's service account), as
    /// --kubeconfig does with a file: what `sondectl deploy --monitor` runs.
    #[arg(long, group = "cluster_config")]
    pub in_cluster: bool,

    /// The namespace sonde's daemons run in (with --kubeconfig).
    #[arg(long, default_value = crate::cluster::manifests::DEFAULT_NAMESPACE)]
    pub sonde_namespace: String,

    /// How to reach the daemons (with --kubeconfig): at their pod IPs, or through the API
    /// server's port-forward; auto is the pod IP inside the cluster, port-forward outside.
    #[arg(long, value_enum, default_value_t, requires = "cluster_config")]
    pub reach: crate::cluster::portforward::Reach,

    /// Only nodes matching this label selector (with --kubeconfig), e.g.
    /// node-lifecycle=on-demand: a run's end on another node is refused.
    #[arg(long, default_value = "", requires = "cluster_config")]
    pub node_selector: String,
}

impl KubernetesArgs {
    /// Whether a cluster was named (--kubeconfig or --in-cluster), rather than a lab.
    pub fn given(&self) -> bool {
        self.kubeconfig.is_some() || self.in_cluster
    }
}

/// Where a run's ends must be, and the Kubernetes cluster they are named in.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PlacementArgs {
    /// The cluster, if the ends are named in one.
    #[command(flatten)]
    pub cluster: KubernetesArgs,

    /// Refuse the run unless both ends are on one node.
    #[arg(long, conflicts_with_all = ["cross_node", "cross_zone"])]
    pub same_node: bool,

    /// Refuse the run unless the ends are on two nodes.
    #[arg(long, conflicts_with = "cross_zone")]
    pub cross_node: bool,

    /// Refuse the run unless the ends are in two zones.
    #[arg(long)]
    pub cross_zone: bool,
}

impl PlacementArgs {
    /// The placement asked for, if any.
    pub fn wanted(&self) -> Option<crate::cluster::placement::Placement> {
        use crate::cluster::placement::Placement;
        [
            (self.same_node, Placement::SameNode),
            (self.cross_node, Placement::CrossNode),
            (self.cross_zone, Placement::CrossZone),
        ]
        .into_iter()
        .find_map(|(asked, placement)| asked.then_some(placement))
    }
}

/// Flags of `sondectl run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The generator.
    #[arg(value_enum)]
    pub kind: RunKindArg,

    /// Where the client runs: pod/NAME, node/NAME, or a daemon's HOST:PORT (with
    /// --kubeconfig: pod/NAMESPACE/NAME or node/NAME).
    #[arg(long)]
    pub from: EndpointRef,

    /// Where the server runs: pod/NAME, node/NAME, service/NAME, or a daemon's HOST:PORT (with
    /// --kubeconfig: pod/NAMESPACE/NAME, node/NAME or service/NAMESPACE/NAME).
    #[arg(long)]
    pub to: EndpointRef,

    /// The cluster and the placement the ends must have.
    #[command(flatten)]
    pub placement: PlacementArgs,

    /// Measured part of each measurement (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Warm-up before it, discarded (0 for none).
    #[arg(long, default_value = "1s", value_parser = parse_duration_or_zero)]
    pub warmup: Duration,

    /// Repetitions of each size.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repetitions: u32,

    /// Connections (TCP) or flows (UDP) in parallel.
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,

    /// Target rate in messages per second across all connections; 0 for as fast as possible.
    #[arg(long, default_value = "0", allow_negative_numbers = true)]
    pub rate: f64,

    /// Message size: per write (stream), per datagram (UDP), request and response (RR).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub size: Option<u64>,

    /// RR request size (overrides --size).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub request_size: Option<u64>,

    /// RR response size (overrides --size).
    #[arg(long, value_parser = crate::run::sizes::parse_size)]
    pub response_size: Option<u64>,

    /// A payload sweep instead of one size: sizes and doubling ranges, e.g. 64B..16MiB.
    #[arg(long, value_parser = crate::run::sizes::parse_sweep, conflicts_with = "size")]
    pub sizes: Option<Sweep>,

    /// Stream direction (tcp-stream).
    #[arg(long, value_enum, default_value_t = DirectionArg::Forward)]
    pub direction: DirectionArg,

    /// Move payload with one plain syscall per message (no sendfile, splice, UDP GSO or
    /// batching), as iperf3 does: for like-for-like comparisons and per-packet costs.
    #[arg(long)]
    pub plain_io: bool,

    /// dns: the name to ask (default: the run's own name, which sonde's responder answers;
    /// required with --to dns/ADDRESS).
    #[arg(long)]
    pub dns_name: Option<String>,

    /// dns: the record types to ask, in turn (A, AAAA, SRV; repeated or comma-separated).
    #[arg(long = "dns-type", value_delimiter = ',', default_value = "A")]
    pub dns_types: Vec<String>,

    /// Do not trace the run's packets in the kernel (no per-stage breakdown).
    #[arg(long)]
    pub no_trace: bool,

    /// Estimate the clock offset between the two nodes NTP-style even when they share a
    /// kernel (as lab nodes do), to see the estimator's error against a known zero.
    #[arg(long, hide = true)]
    pub estimate_clock: bool,

    /// The lab whose pods, nodes and Services endpoints name.
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = RunOutput::Table)]
    pub output: RunOutput,

    /// Where the results go besides the output.
    #[command(flatten)]
    pub export: crate::export::ExportArgs,

    /// How long a measurement waits for its nodes when someone else's measurement holds
    /// them (reservations on the daemons), before it gives up naming the holder.
    #[arg(long, default_value = "60s", value_parser = parse_duration_or_zero)]
    pub wait: Duration,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `sondectl lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
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

/// As [`parse_duration`], also accepting zero.
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim().trim_end_matches(['m', 's']).parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// Parses "500ms", "3s", "2m" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 500ms, 3s or 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s or m)"
            ));
        }
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn agents_split_on_commas() {
        let cli = Cli::try_parse_from([
            "sondectl",
            "nodes",
            "--agents",
            "127.0.0.1:7470,node-b:7470",
            "-o",
            "json",
        ])
        .expect("valid command line");
        let Command::Nodes(args) = cli.command else {
            panic!("not the nodes command");
        };
        assert_eq!(args.agents.len(), 2);
        assert_eq!(args.agents[1].to_string(), "node-b:7470");
        assert_eq!(args.output, OutputFormat::Json);
    }

    #[test]
    fn lab_commands_take_the_lab_as_runs_name_it() {
        for line in [
            &["sondectl", "lab", "down", "--lab", "n13"][..],
            &["sondectl", "lab", "down", "--name", "n13"][..],
            &[
                "sondectl", "lab", "delay", "--lab", "n13", "--from", "node1", "--to", "node2",
                "--delay", "5ms",
            ][..],
            &[
                "sondectl",
                "lab",
                "conntrack-fill",
                "--lab",
                "n13",
                "--node",
                "node1",
                "--flows",
                "10",
            ][..],
        ] {
            let cli = Cli::try_parse_from(line).expect("valid command line");
            let Command::Lab(lab) = cli.command else {
                panic!("not a lab command");
            };
            let name = match lab {
                LabCommand::Down(args) | LabCommand::Status(args) => args.name,
                LabCommand::Delay(args) => args.name,
                LabCommand::ConntrackFill(args) => args.name,
                LabCommand::Up(_) => panic!("not lab up"),
            };
            assert_eq!(name, "n13", "{line:?}");
        }
    }

    #[test]
    fn a_bad_agent_address_is_refused_with_its_reason() {
        let err = Cli::try_parse_from(["sondectl", "nodes", "--agents", "127.0.0.1"])
            .expect_err("no port");
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }
}
