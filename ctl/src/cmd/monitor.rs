//! `sondectl monitor`: rounds of a scenario's tests over a rotating set of pairs, with
//! Prometheus metrics, under a Lease when replicas share one (see [`crate::monitor`]).

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use crate::{
    cli::KubernetesArgs,
    engine::{self, Session},
    monitor::{leader, metrics, rotation},
    scenario::{
        Scenario,
        execute::{self, Pace, Status},
        expand,
        spec::{Class, PairSpec, Topology},
    },
};

/// Flags of `sondectl monitor`.
#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    /// The scenario whose nodes, placement classes, paths and tests are measured (its
    /// topology is replaced by the rotation).
    #[arg(long)]
    pub scenario: PathBuf,

    /// The lab whose nodes are measured (unless --kubeconfig).
    #[arg(long, env = "SONDE_LAB", default_value = "lab")]
    pub lab: String,

    /// The cluster whose nodes are measured.
    #[command(flatten)]
    pub cluster: KubernetesArgs,

    /// The length of a round.
    #[arg(long, default_value = "60s", value_parser = crate::cli::parse_duration)]
    pub every: Duration,

    /// Peers measuring each node in each round (K).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub peers: u64,

    /// Heavy (exclusive) tests run every this many rounds (M).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub heavy_every: u64,

    /// Serve Prometheus metrics at this address (HOST:PORT).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,

    /// Send each round's figures to Graphite's plaintext port (HOST:PORT).
    #[arg(long)]
    pub graphite: Option<String>,

    /// Append each round's run-set to this file, one JSON document a line.
    #[arg(long)]
    pub log: Option<PathBuf>,

    /// Stop after this many rounds (0: run until stopped).
    #[arg(long, default_value_t = 0)]
    pub rounds: u64,

    /// Measure only while holding this coordination.k8s.io Lease (in sonde's namespace, made
    /// if missing): of several monitors given the same Lease, one measures and the others
    /// wait to take over.
    #[arg(long, requires = "cluster_config")]
    pub lease: Option<String>,

    /// This monitor's identity in the Lease (default: $POD_NAME, else host name and PID).
    #[arg(long, requires = "lease")]
    pub lease_identity: Option<String>,

    /// How long the Lease holds after each renewal: how soon a standby takes over from a
    /// monitor that died.
    #[arg(long, default_value = "15s", requires = "lease", value_parser = crate::cli::parse_duration)]
    pub lease_duration: Duration,

    /// How long to wait for a daemon to answer a call.
    #[arg(long, default_value = "5s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Runs `sondectl monitor`.
pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario)
        .with_context(|| format!("{} is not a valid scenario", args.scenario.display()))?;
    let mut leadership = match &args.lease {
        Some(name) => {
            let client = crate::cluster::client(args.cluster.kubeconfig.as_deref()).await?;
            let identity = args
                .lease_identity
                .clone()
                .unwrap_or_else(leader::default_identity);
            let joined = leader::Leadership::join(
                client,
                &args.cluster.namespace,
                name,
                &identity,
                args.lease_duration,
            )
            .await?;
            eprintln!(
                "sondectl monitor: {identity} joined the election for Lease {}",
                joined.lease
            );
            Some(joined)
        }
        None => None,
    };
    let (fleet, target, kubernetes) =
        crate::cmd::scenario::fleet(&scenario, &args.lab, &args.cluster).await?;
    let (nodes, ring) = {
        let selected = expand::select(&scenario, &fleet)?;
        let names: Vec<String> = selected.iter().map(|node| node.name.clone()).collect();
        (names, expand::hash_ring(&selected))
    };
    let n = nodes.len();
    if n < 2 {
        bail!(
            "a monitor needs at least 2 nodes; scenario {} selects {n}",
            scenario.name
        );
    }
    let k = usize::try_from(args.peers).unwrap_or(usize::MAX).min(n - 1);
    let rotation = rotation::rotation(n, k);
    let tests = scenario.tests()?;
    let heavy: Vec<bool> = tests.iter().map(|t| t.class == Class::Exclusive).collect();
    let metrics = Arc::new(metrics::MonitorMetrics::new());
    let server = match args.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?;
            eprintln!(
                "sondectl monitor: metrics at http://{}/metrics",
                listener.local_addr()?
            );
            Some(tokio::spawn(metrics::serve(listener, Arc::clone(&metrics))))
        }
        None => None,
    };
    let mut log = match &args.log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening --log {}", path.display()))?,
        ),
        None => None,
    };
    let session = Arc::new(
        Session::new(args.timeout)
            .for_scenario(&scenario.name)
            .with_max_wait(args.every),
    );
    let ctrl_c = engine::cancel_on_ctrl_c(&session);
    eprintln!(
        "sondectl monitor: {n} nodes, {k} peers each per round ({} measurements a round against {} for a full mesh), every pair within {rotation} rounds of {:?}",
        n * k * tests.len().max(1),
        n * (n - 1) * tests.len().max(1),
        args.every
    );
    let every_ms = u64::try_from(args.every.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut last_round = None;
    let mut done = 0;
    metrics.set_leader(leadership.as_ref().is_none_or(leader::Leadership::leads));
    while !session.is_cancelled() && (args.rounds == 0 || done < args.rounds) {
        if let Some(election) = leadership.as_mut()
            && !election.leads()
        {
            metrics.set_leader(false);
            eprintln!(
                "sondectl monitor: {} waits: another monitor holds Lease {}",
                election.identity, election.lease
            );
            if !election.wait(&session.cancellation()).await {
                break;
            }
            metrics.set_leader(true);
            eprintln!(
                "sondectl monitor: {} holds Lease {}: measuring",
                election.identity, election.lease
            );
            // Rounds go on from the wall clock's, as after a restart.
            last_round = None;
        }
        // The first round is the period of the wall clock we are in (a restarted monitor goes
        // on where it was); then one after the other, each at the start of its period, or at
        // once when the last one ran over: no round is skipped, so a rotation covers every
        // pair.
        let round = match last_round {
            None => u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX) / every_ms,
            Some(last) => last + 1,
        };
        let at = Duration::from_millis(round.saturating_mul(every_ms));
        let wait = at.saturating_sub(unix_now());
        if !wait.is_zero() {
            let cancellation = session.cancellation();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancellation.cancelled() => break,
            }
        }
        if leadership
            .as_ref()
            .is_some_and(|election| !election.leads())
        {
            // Lost the Lease while waiting for the round: the new holder measures it.
            continue;
        }
        last_round = Some(round);
        let with_heavy = round % args.heavy_every == 0;
        let mut this = scenario.clone();
        this.topology = Topology::Pairs(
            rotation::pairs(&ring, k, round)
                .into_iter()
                .map(|(from, to)| PairSpec {
                    from: nodes[from].clone(),
                    to: nodes[to].clone(),
                })
                .collect(),
        );
        this.tests = scenario
            .tests
            .iter()
            .zip(&heavy)
            .filter(|(_, heavy)| with_heavy || !**heavy)
            .map(|(test, _)| test.clone())
            .collect();
        if this.tests.is_empty() {
            done += 1;
            continue;
        }
        let expansion = expand(&this, &fleet, kubernetes)?;
        let slots = u32::try_from(expansion.rounds.len().max(1)).unwrap_or(u32::MAX);
        let pace = Pace {
            slot: args.every / slots,
        };
        let mut set = execute::run(
            &session,
            &target,
            &this,
            &expansion,
            None,
            false,
            Some(pace),
        )
        .await;
        set.origin = fleet.origin.clone();
        metrics.round(&set, rotation, n);
        let complete = set
            .measurements
            .iter()
            .filter(|m| m.status == Status::Complete)
            .count();
        eprintln!(
            "sondectl monitor: round {round}: {complete} of {} measurements complete{} in {:.1}s",
            set.measurements.len(),
            if with_heavy { " (heavy tests too)" } else { "" },
            execute::wall(&set).as_secs_f64()
        );
        if let Some(addr) = &args.graphite
            && let Err(err) =
                crate::export::graphite(addr, &scenario.name, &crate::export::of_set(&set)).await
        {
            eprintln!(
                "sondectl monitor: round {round}: {}",
                crate::error::chain(&err)
            );
        }
        if let Some(file) = log.as_mut() {
            let line = serde_json::json!({ "round": round, "set": set });
            writeln!(file, "{line}").context("writing the monitor's log")?;
        }
        done += 1;
    }
    ctrl_c.abort();
    if let Some(election) = leadership {
        election.leave().await;
    }
    if let Some(server) = server {
        server.abort();
    }
    Ok(())
}
