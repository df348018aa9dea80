//! `sondectl scenario validate|plan|run FILE`: a scenario file checked, expanded into
//! measurements and rounds, or run.

use std::{io::IsTerminal as _, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    cli::KubernetesArgs,
    engine::{self, Session},
    lab::Inventory,
    output::OutputFormat,
    scenario::{
        Expansion, Fleet, Scenario,
        execute::{self, RunSet, Target},
        render,
    },
};

/// `sondectl scenario` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ScenarioCommand {
    /// Check a scenario file (docs/schema/scenario.v1.json) without reaching any node.
    Validate(ValidateArgs),
    /// Print the measurements a scenario expands to and the rounds they run in; runs nothing.
    Plan(ScenarioArgs),
    /// Run a scenario: its rounds one after the other, the measurements of a round at once.
    Run(RunArgs),
}

/// Flags of `sondectl scenario validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The scenario file (YAML or JSON).
    pub file: PathBuf,
}

/// Where a scenario runs, and how it is printed.
#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// The scenario file (YAML or JSON).
    pub file: PathBuf,

    /// The lab whose nodes the scenario uses (unless --kubeconfig).
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// The cluster whose nodes the scenario uses.
    #[command(flatten)]
    pub cluster: KubernetesArgs,

    /// Output format (json: the plan, or the run-set document docs/schema/run-set.v1.json).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
}

/// Flags of `sondectl scenario run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scenario, where it runs, and the output.
    #[command(flatten)]
    pub scenario: ScenarioArgs,

    /// An earlier run-set of this scenario (`-o json`): its complete measurements are kept as
    /// they are, and only the others run.
    #[arg(long)]
    pub resume: Option<PathBuf>,

    /// One measurement at a time (each its own round), as tools without a scheduler run a
    /// fleet: for comparing, and when nothing may run beside a measurement.
    #[arg(long)]
    pub serial: bool,

    /// How long a measurement waits for nodes someone else's measurement holds before it is
    /// recorded as failed, naming the holder.
    #[arg(long, default_value = "10m", value_parser = crate::cli::parse_duration)]
    pub wait: Duration,

    /// Also write the run-set document (as `-o json` prints it) to this file; into a
    /// directory (one that exists, or a path ending in `/`), as SCENARIO-TIME.json.
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,

    /// Where the results go besides the output.
    #[command(flatten)]
    pub export: crate::export::ExportArgs,

    /// The results store the run-set is recorded in.
    #[command(flatten)]
    pub record: crate::cmd::results::RecordArgs,
}

/// Runs `sondectl scenario ...`.
pub async fn run(command: ScenarioCommand) -> anyhow::Result<()> {
    match command {
        ScenarioCommand::Validate(args) => {
            let scenario = Scenario::load(&args.file)
                .with_context(|| format!("{} is not a valid scenario", args.file.display()))?;
            let tests = scenario.tests()?;
            println!(
                "{}: scenario {} is valid ({} test{})",
                args.file.display(),
                scenario.name,
                tests.len(),
                if tests.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
        ScenarioCommand::Plan(args) => {
            let (scenario, expansion, _) = prepare(&args).await?;
            match args.output {
                OutputFormat::Json => {
                    let plan = serde_json::json!({
                        "scenario": scenario,
                        "expansion": expansion,
                    });
                    println!("{}", serde_json::to_string_pretty(&plan)?);
                }
                OutputFormat::Table => print!("{}", render::plan_table(&scenario.name, &expansion)),
            }
            Ok(())
        }
        ScenarioCommand::Run(args) => run_scenario(args).await,
    }
}

/// The scenario, its expansion over the fleet the flags name, and where to resolve its ends.
async fn prepare(args: &ScenarioArgs) -> anyhow::Result<(Scenario, Expansion, Target)> {
    let scenario = Scenario::load(&args.file)
        .with_context(|| format!("{} is not a valid scenario", args.file.display()))?;
    let (fleet, target, kubernetes) = fleet(&scenario, &args.lab, &args.cluster).await?;
    let expansion = crate::scenario::expand(&scenario, &fleet, kubernetes)?;
    Ok((scenario, expansion, target))
}

/// The fleet a scenario runs over: the cluster's when a kubeconfig is given, else the lab's;
/// where its ends are resolved; and whether it is a cluster.
pub async fn fleet(
    scenario: &Scenario,
    lab: &str,
    cluster: &KubernetesArgs,
) -> anyhow::Result<(Fleet, Target, bool)> {
    Ok(if cluster.given() {
        let cluster = crate::cluster::endpoints::Cluster::connect(cluster).await?;
        let endpoints = cluster.endpoint_pods().await?;
        let fleet = Fleet::from_cluster(cluster.daemons(), &endpoints);
        (fleet, Target::Cluster(Box::new(cluster)), true)
    } else {
        let inventory = Inventory::load(lab).with_context(|| {
                format!(
                    "scenario {} runs in a lab or a cluster: no lab {lab:?} is up (`sondectl lab up`, or --kubeconfig)",
                    scenario.name
                )
            })?;
        (Fleet::from_lab(&inventory), Target::Lab(inventory), false)
    })
}

async fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    if args.export.push_delete {
        let scenario = Scenario::load(&args.scenario.file)
            .with_context(|| format!("{} is not a valid scenario", args.scenario.file.display()))?;
        let gateway = args.export.push_gateway.as_deref().unwrap_or_default();
        crate::export::push_delete(
            gateway,
            crate::export::Group::of(&scenario.name, &args.export),
        )
        .await?;
        println!(
            "scenario {}: its group removed from {gateway}",
            scenario.name
        );
        return Ok(());
    }
    let (scenario, mut expansion, target) = prepare(&args.scenario).await?;
    if args.serial {
        expansion.serialize_rounds();
    }
    if expansion.measurements.is_empty() {
        bail!(
            "scenario {} expands to no measurement here ({} skipped; `sondectl scenario plan` says why)",
            scenario.name,
            expansion.skipped.len()
        );
    }
    let resume_from: Option<RunSet> = match &args.resume {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let earlier: RunSet = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a run-set document (sondectl scenario run -o json)",
                    path.display()
                )
            })?;
            if earlier.scenario.name != scenario.name {
                bail!(
                    "{} is a run of scenario {}, not {}",
                    path.display(),
                    earlier.scenario.name,
                    scenario.name
                );
            }
            Some(earlier)
        }
        None => None,
    };
    let session = Arc::new(
        Session::new(args.scenario.timeout)
            .for_scenario(&scenario.name)
            .with_max_wait(args.wait),
    );
    let ctrl_c = engine::cancel_on_ctrl_c(&session);
    let progress = args.scenario.output == OutputFormat::Table && std::io::stderr().is_terminal();
    let mut set = execute::run(
        &session,
        &target,
        &scenario,
        &expansion,
        resume_from.as_ref(),
        progress,
        None,
    )
    .await;
    ctrl_c.abort();
    set.origin = match &target {
        Target::Lab(lab) => format!("lab {}", lab.name),
        Target::Cluster(_) => "cluster".to_owned(),
    };
    match args.scenario.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&set)?),
        OutputFormat::Table => print!("{}", render::table(&set)),
    }
    // Written, recorded and pushed before any of them fails the command: nothing is lost.
    let saved = args.save.as_deref().map(|path| save(path, &set));
    args.record.record(serde_json::to_value(&set)?);
    crate::export::send(&args.export, &scenario.name, &crate::export::of_set(&set)).await?;
    if let Some(saved) = saved {
        eprintln!("sondectl: run-set written to {}", saved?.display());
    }
    if !set.complete {
        let failed = set
            .measurements
            .iter()
            .filter(|r| r.status != execute::Status::Complete)
            .count();
        bail!(
            "scenario {}: {failed} of {} measurements did not complete; {}",
            scenario.name,
            set.measurements.len(),
            set.errors.first().cloned().unwrap_or_default()
        );
    }
    Ok(())
}

/// Writes `set` as JSON at `path` (a file, or a directory to name one in); returns the file.
fn save(path: &std::path::Path, set: &RunSet) -> anyhow::Result<PathBuf> {
    let into_directory = path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/');
    let file = if into_directory {
        let started = i64::try_from(set.started_at_unix_ms / 1000).unwrap_or(0);
        let time = jiff::Timestamp::from_second(started)
            .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_else(|_| started.to_string());
        let name: String = set
            .scenario
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        path.join(format!("{name}-{time}.json"))
    } else {
        path.to_owned()
    };
    let text = serde_json::to_string_pretty(set)?;
    std::fs::write(&file, text + "\n")
        .with_context(|| format!("--save: writing {}", file.display()))?;
    Ok(file)
}
