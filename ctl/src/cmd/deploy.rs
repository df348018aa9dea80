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

    /// Run this scenario once inside the cluster, as a Job of `sondectl scenario run` with its
    /// own ServiceAccount and client certificate, writing the run-set to the PVC
    /// sonde-results. Applies only the job's objects: deploy the daemons first.
    #[arg(
        long,
        value_name = "SCENARIO",
        conflicts_with_all = ["monitor", "endpoints", "node_selector", "allow_targets", "rotate_certs"]
    )]
    pub job: Option<PathBuf>,

    /// How long a finished job (its Job, pod and ConfigMap) stays before the cluster removes
    /// it (ttlSecondsAfterFinished); its results stay on the claim.
    #[arg(long, default_value = "24h", requires = "job", value_parser = parse_duration)]
    pub job_ttl: Duration,

    /// Also push the job's figures to this Pushgateway (its `--push-gateway`).
    #[arg(long, requires = "job", value_name = "URL")]
    pub job_push_gateway: Option<String>,

    /// The size of the results claim sonde-results, when the job creates it.
    #[arg(long, default_value = "1Gi", requires = "job")]
    pub job_storage: String,

    /// The storage class of the results claim (the cluster's default otherwise).
    #[arg(long, requires = "job")]
    pub job_storage_class: Option<String>,

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
        job: job(&args)?,
    };
    if options.job.is_some() {
        return deploy_job(&args, &options).await;
    }
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
        cluster::certificates::ensure(&client, &args.cluster.namespace, args.rotate_certs, false)
            .await?;
    match args.output {
        DeployOutput::Yaml => print!("{}", manifests::to_yaml(&objects)?),
        DeployOutput::Table => {
            for object in &applied {
                println!("{} applied", apply::describe(object));
            }
            for secret in secrets {
                println!("{secret}");
            }
        }
    }
    Ok(())
}

/// `deploy --job`: the job's client certificate, then its objects over the existing
/// deployment, then the Job made its ConfigMap's owner (so that the cluster removes both when
/// the TTL has passed).
async fn deploy_job(args: &DeployArgs, options: &manifests::Options) -> anyhow::Result<()> {
    let objects = manifests::job_objects(options)?;
    let Some(job) = &options.job else {
        return Ok(());
    };
    let namespace = &args.cluster.namespace;
    if args.dry_run {
        match args.output {
            DeployOutput::Yaml => print!("{}", manifests::to_yaml(&objects)?),
            DeployOutput::Table => {
                for object in &objects {
                    println!("{} (dry run)", apply::describe(object));
                }
                println!(
                    "Secret {namespace}/{} (dry run: issued unless present)",
                    tls::JOB_SECRET
                );
            }
        }
        return Ok(());
    }
    let client = cluster::client(args.cluster.kubeconfig.as_deref()).await?;
    let secrets = cluster::certificates::ensure(&client, namespace, false, true)
        .await
        .with_context(|| {
            format!(
                "deploy --job runs beside the daemons: is sonde deployed in namespace {namespace}?"
            )
        })?;
    let applied = apply::apply(&client, &objects).await?;
    let owned = apply::own_configmap(&client, &applied, &job.name).await?;
    match args.output {
        DeployOutput::Yaml => print!("{}", manifests::to_yaml(&applied)?),
        DeployOutput::Table => {
            for secret in secrets {
                println!("{secret}");
            }
            for object in &applied {
                println!("{} applied", apply::describe(object));
            }
            if owned {
                println!("ConfigMap {namespace}/{} owned by its Job", job.name);
            }
            let (claim, _) = manifests::RESULTS_CLAIM;
            println!(
                "\nJob {namespace}/{name} runs the scenario once; follow it with\n  \
                 kubectl -n {namespace} logs -f job/{name}\n\
                 Its run-set goes to the claim {claim} (read it with \
                 deploy/kubernetes/results-reader.yaml: README, \"In-cluster jobs\").",
                name = job.name
            );
        }
    }
    Ok(())
}

/// The job of `--job FILE`: the scenario checked here, so that a typo fails the deploy rather
/// than a pod in the cluster.
fn job(args: &DeployArgs) -> anyhow::Result<Option<manifests::Job>> {
    let Some(path) = &args.job else {
        return Ok(None);
    };
    let (text, scenario) = checked_scenario(path, "--job")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ttl_seconds = u32::try_from(args.job_ttl.as_secs()).unwrap_or(u32::MAX);
    if let Some(gateway) = &args.job_push_gateway
        && !(gateway.starts_with("http://") || gateway.starts_with("https://"))
    {
        anyhow::bail!("--job-push-gateway {gateway:?} is not an http:// or https:// URL");
    }
    if !is_storage_quantity(&args.job_storage) {
        anyhow::bail!(
            "--job-storage {:?} is not a quantity such as 1Gi or 500Mi",
            args.job_storage
        );
    }
    Ok(Some(manifests::Job {
        name: manifests::Job::name_for(&scenario.name, now.as_secs()),
        scenario: text,
        ttl_seconds,
        push_gateway: args.job_push_gateway.clone(),
        storage: args.job_storage.clone(),
        storage_class: args.job_storage_class.clone(),
    }))
}

/// Whether `text` is a storage quantity the API server takes: a whole number and a binary or
/// decimal suffix (`1Gi`, `500Mi`, `2G`).
fn is_storage_quantity(text: &str) -> bool {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let suffix = &text[digits..];
    digits > 0
        && [
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
        ]
        .contains(&suffix)
}

/// A scenario file given to `flag`, read and checked: its text and what it says.
fn checked_scenario(path: &std::path::Path, flag: &str) -> anyhow::Result<(String, Scenario)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    let scenario = Scenario::parse(&text)
        .with_context(|| format!("{flag} {} is not a valid scenario", path.display()))?;
    scenario
        .tests()
        .with_context(|| format!("{flag} {}", path.display()))?;
    Ok((text, scenario))
}

/// The monitor of `--monitor FILE`: the scenario checked here, so that a typo fails the
/// deploy rather than a pod in the cluster.
fn monitor(args: &DeployArgs) -> anyhow::Result<Option<manifests::Monitor>> {
    let Some(path) = &args.monitor else {
        return Ok(None);
    };
    let (scenario, _) = checked_scenario(path, "--monitor")?;
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
    let mut objects = manifests::objects(&options)?;
    // The jobs' identity (`deploy --job`), deleted (in reverse) just before the namespace.
    let after_namespace = objects
        .iter()
        .position(|o| o.types.as_ref().is_some_and(|t| t.kind == "Namespace"))
        .map_or(0, |at| at + 1);
    objects.splice(
        after_namespace..after_namespace,
        manifests::job_identity(&options)?,
    );
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
