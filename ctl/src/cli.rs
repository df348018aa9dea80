//! The command line: the subcommands, and the flags several of them share (the cluster, the
//! placement, the kind, durations). Each command's own flags live next to it in [`cmd`].

use std::{path::PathBuf, time::Duration};

use sonde_proto::kinds::{KINDS, KindRules};

use crate::cmd;

/// sondectl: measure pod-to-pod networking from inside the kernel.
#[derive(Debug, clap::Parser)]
#[command(name = "sondectl", version)]
pub struct Cli {
    /// The job to do.
    #[command(subcommand)]
    pub command: Command,

    /// How to authenticate to the daemons.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The certificate sondectl presents to daemons, when not the lab's or the cluster's own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// A client certificate (PEM) signed by the daemons' CA; without it, a lab's daemons are
    /// dialled with the lab's own and a cluster's with its sonde-client-tls Secret.
    #[arg(long, global = true, env = "SONDE_TLS_CERT", requires_all = ["tls_key", "tls_ca"], conflicts_with = "insecure")]
    pub tls_cert: Option<PathBuf>,

    /// The key of --tls-cert (PEM).
    #[arg(long, global = true, env = "SONDE_TLS_KEY", requires_all = ["tls_cert", "tls_ca"], conflicts_with = "insecure")]
    pub tls_key: Option<PathBuf>,

    /// The CA (PEM) the daemons' certificates must chain to (they must name sonded.sonde.svc).
    #[arg(long, global = true, env = "SONDE_TLS_CA", requires_all = ["tls_cert", "tls_key"], conflicts_with = "insecure")]
    pub tls_ca: Option<PathBuf>,

    /// Talk to daemons in plaintext (daemons started with --insecure).
    #[arg(long, global = true, env = "SONDE_INSECURE")]
    pub insecure: bool,
}

impl TlsArgs {
    /// The credentials these flags choose, if they choose any.
    pub fn chosen(&self) -> crate::Result<Option<crate::tls::Credentials>> {
        use crate::tls::{Credentials, Material};
        if self.insecure {
            return Ok(Some(Credentials::Plaintext));
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let material = Material::from_files(cert, key, ca)?;
                Ok(Some(Credentials::MutualTls(material.client_config()?)))
            }
            _ => Ok(None),
        }
    }
}

/// sondectl's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List sonde's daemons: node, kernel, capabilities and loaded eBPF programs.
    Nodes(cmd::nodes::NodesArgs),
    /// A multi-node cluster of network namespaces on this machine (needs root).
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// Measure between two endpoints with a native generator.
    Run(Box<cmd::run::RunArgs>),
    /// Measure a fleet: a scenario file's tests over its nodes, topology, placement classes
    /// and paths, packed into rounds so that no node is loaded twice at once.
    #[command(subcommand)]
    Scenario(cmd::scenario::ScenarioCommand),
    /// Measure a fleet continuously: a scenario's tests in rounds, each node from K peers on
    /// a ring that turns every round, with Prometheus metrics.
    Monitor(cmd::monitor::MonitorArgs),
    /// Prepare a server side and keep it serving, for a client of your own (curl, wrk).
    Serve(cmd::serve::ServeArgs),
    /// Where the time goes between two endpoints: a light request/response flow, traced in
    /// the kernel; prints only the per-stage breakdown.
    Trace(cmd::trace::TraceArgs),
    /// Conntrack pressure: watch every node's table, or find the connection rate it breaks at.
    #[command(subcommand)]
    Conntrack(cmd::conntrack::ConntrackCommand),
    /// The results store: list, show, export, import and prune stored runs and run-sets.
    #[command(subcommand)]
    Results(cmd::results::ResultsCommand),
    /// Compare two results (IDs, files, or scenario:NAME@last-N) metric by metric: exit 1
    /// when a metric regressed beyond the threshold, 2 on bad input.
    Compare(cmd::compare::CompareArgs),
    /// Results as one self-contained HTML file: latency spectra, sweeps, kernel stages,
    /// timelines, node x node heatmaps, and a comparison with a baseline.
    Report(cmd::report::ReportArgs),
    /// Install sonde in a Kubernetes cluster (server-side apply of deploy/kubernetes).
    Deploy(cmd::deploy::DeployArgs),
    /// Remove what `deploy` installed.
    Undeploy(cmd::deploy::UndeployArgs),
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

    /// The namespace sonde's daemons run in (with --kubeconfig); the same flag as
    /// `deploy --namespace` (`--sonde-namespace` is its former name, still accepted).
    #[arg(
        long,
        alias = "sonde-namespace",
        default_value = crate::cluster::manifests::DEFAULT_NAMESPACE
    )]
    pub namespace: String,

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

/// As [`parse_duration`], also accepting zero.
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim().trim_end_matches(['m', 's']).parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// Parses "500ms", "3s", "2m", "6h", "7d" or a bare number of seconds.
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
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m, h or d)"
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
    use clap::Parser as _;

    use super::*;
    use crate::{cmd::lab::LabCommand, output::OutputFormat};

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("3w").is_err());
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
            &[
                "sondectl",
                "lab",
                "rollout",
                "--lab",
                "n13",
                "--service",
                "web",
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
                LabCommand::Rollout(args) => args.name,
                LabCommand::Up(_) => panic!("not lab up"),
            };
            assert_eq!(name, "n13", "{line:?}");
        }
    }

    #[test]
    fn no_store_wins_over_a_store_from_the_environment() {
        let cli = Cli::try_parse_from([
            "sondectl",
            "run",
            "tcp-rr",
            "--from",
            "pod/pod1",
            "--to",
            "pod/pod3",
            "--store",
            "/tmp/x.db",
            "--no-store",
        ])
        .expect("--no-store beside --store (as SONDE_STORE sets it) parses");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert!(args.record.no_store);
    }

    #[test]
    fn a_bad_agent_address_is_refused_with_its_reason() {
        let err = Cli::try_parse_from(["sondectl", "nodes", "--agents", "127.0.0.1"])
            .expect_err("no port");
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }

    #[test]
    fn every_command_names_sondes_namespace_with_one_flag() {
        let namespace_of = |line: &[&str]| match Cli::try_parse_from(line)
            .unwrap_or_else(|err| panic!("{line:?}: {err}"))
            .command
        {
            Command::Deploy(args) => args.cluster.namespace,
            Command::Undeploy(args) => args.cluster.namespace,
            Command::Nodes(args) => args.namespace,
            Command::Run(args) => args.placement.cluster.namespace,
            Command::Monitor(args) => args.cluster.namespace,
            _ => panic!("{line:?}: not a command with a namespace"),
        };
        for line in [
            &["sondectl", "deploy", "--dry-run", "--namespace", "ns1"][..],
            &["sondectl", "undeploy", "--namespace", "ns1"][..],
            &[
                "sondectl",
                "nodes",
                "--kubeconfig",
                "k",
                "--namespace",
                "ns1",
            ][..],
            &[
                "sondectl",
                "run",
                "tcp-rr",
                "--from",
                "pod/a",
                "--to",
                "pod/b",
                "--kubeconfig",
                "k",
                "--namespace",
                "ns1",
            ][..],
            // The former name still works.
            &[
                "sondectl",
                "monitor",
                "--scenario",
                "s.yaml",
                "--kubeconfig",
                "k",
                "--sonde-namespace",
                "ns1",
            ][..],
        ] {
            assert_eq!(namespace_of(line), "ns1", "{line:?}");
        }
    }
}
