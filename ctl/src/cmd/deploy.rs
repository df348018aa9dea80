//! `sondectl deploy` and `sondectl undeploy`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use crate::{
    cli::{ClusterArgs, parse_duration},
    cluster::{self, apply, manifests},
    scenario::Scenario,
    tls,
};

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

    /// Where the daemons may send generated traffic (CIDRs, comma separated or repeated);
    /// without it, the cluster's own pod, node and Service ranges, read from the API server
    /// (with --dry-run: the manifest's 10.0.0.0/8).
    #[arg(long = "allow-target", value_delimiter = ',')]
    pub allow_targets: Vec<ipnet::IpNet>,

    /// Issue new daemon and client certificates from the sonde-ca Secret (the daemons load
    /// theirs when the kubelet updates the mounted Secret, without a restart).
    #[arg(long)]
    pub rotate_certs: bool,

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

/// Runs `sondectl deploy`.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let mut options = manifests::Options {
        namespace: Some(args.cluster.namespace.clone()),
        image: args.image.clone(),
        node_selector: args.node_selector.clone(),
        endpoints: args.endpoints,
        monitor: monitor(&args)?,
        allow_targets: (!args.allow_targets.is_empty()).then(|| args.allow_targets.clone()),
    };
    if args.dry_run {
        let objects = manifests::objects(&options)?;
        match args.output {
            DeployOutput::Yaml => print!("{}", manifests::to_yaml(&objects)?),
            DeployOutput::Table => {
                for object in &objects {
                    println!("{} (dry run)", apply::describe(object));
                }
                for secret in [tls::CA_SECRET, tls::DAEMON_SECRET, tls::CLIENT_SECRET] {
                    println!(
                        "Secret {}/{secret} (dry run: issued unless present)",
                        args.cluster.namespace
                    );
                }
            }
        }
        return Ok(());
    }
    let client = cluster::client(args.cluster.kubeconfig.as_deref()).await?;
    if options.allow_targets.is_none() {
        let ranges = cluster::ranges::read(&client).await?;
        for note in &ranges.notes {
            eprintln!("sondectl: {note}");
        }
        options.allow_targets = Some(ranges.allowed());
    }
    let objects = manifests::objects(&options)?;
    let applied = apply::apply(&client, &objects).await?;
    // After the namespace exists; the daemons' pods wait for their Secret to be mounted.
    let secrets =
        cluster::certificates::ensure(&client, &args.cluster.namespace, args.rotate_certs).await?;
    match args.output {
        DeployOutput::Yaml => print!("{}", manifests::to_yaml(&objects)?),
        DeployOutput::Table => {
            for object in applied {
                println!("{object} applied");
            }
            for secret in secrets {
                println!("{secret}");
            }
        }
    }
    Ok(())
}

/// The monitor of `--monitor FILE`: the scenario checked here, so that a typo fails the
/// deploy rather than a pod in the cluster.
fn monitor(args: &DeployArgs) -> anyhow::Result<Option<manifests::Monitor>> {
    let Some(path) = &args.monitor else {
        return Ok(None);
    };
    let scenario = std::fs::read_to_string(path)
        .with_context(|| format!("reading --monitor {}", path.display()))?;
    Scenario::parse(&scenario)
        .with_context(|| format!("--monitor {} is not a valid scenario", path.display()))?
        .tests()
        .with_context(|| format!("--monitor {}", path.display()))?;
    let mut extra = Vec::new();
    if let Some(every) = args.monitor_every {
        extra.extend(["--every".to_owned(), format!("{}ms", every.as_millis())]);
    }
    if let Some(peers) = args.monitor_peers {
        extra.extend(["--peers".to_owned(), peers.to_string()]);
    }
    if let Some(heavy) = args.monitor_heavy_every {
        extra.extend(["--heavy-every".to_owned(), heavy.to_string()]);
    }
    Ok(Some(manifests::Monitor {
        scenario,
        replicas: args.monitor_replicas,
        args: extra,
    }))
}

/// Runs `sondectl undeploy`.
pub async fn undeploy(args: UndeployArgs) -> anyhow::Result<()> {
    // The endpoints (`deploy --endpoints`) live in the namespace: deleting it removes them;
    // the monitor's too, but for its binding to the cluster's reader role, deleted here.
    let options = manifests::Options {
        namespace: Some(args.cluster.namespace.clone()),
        monitor: Some(manifests::Monitor {
            replicas: 1,
            ..manifests::Monitor::default()
        }),
        ..manifests::Options::default()
    };
    let objects = manifests::objects(&options)?;
    let client = cluster::client(args.cluster.kubeconfig.as_deref()).await?;
    let deleted = apply::delete(&client, &objects).await?;
    if deleted.is_empty() {
        println!("nothing to remove in namespace {}", args.cluster.namespace);
    }
    for object in deleted {
        println!("{object} deleted");
    }
    Ok(())
}
