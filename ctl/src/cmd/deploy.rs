//! `sondectl deploy` and `sondectl undeploy`.

use anyhow::Context as _;

use crate::{
    cli::{DeployArgs, DeployOutput, UndeployArgs},
    cluster::{self, apply, manifests},
    scenario::Scenario,
};

/// Runs `sondectl deploy`.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let options = manifests::Options {
        namespace: Some(args.cluster.namespace.clone()),
        image: args.image.clone(),
        node_selector: args.node_selector.clone(),
        endpoints: args.endpoints,
        monitor: monitor(&args)?,
    };
    let objects = manifests::objects(&options)?;
    if args.dry_run {
        match args.output {
            DeployOutput::Yaml => print!("{}", manifests::to_yaml(&objects)?),
            DeployOutput::Table => {
                for object in &objects {
                    println!("{} (dry run)", apply::describe(object));
                }
            }
        }
        return Ok(());
    }
    let client = cluster::client(args.cluster.kubeconfig.as_deref()).await?;
    let applied = apply::apply(&client, &objects).await?;
    match args.output {
        DeployOutput::Yaml => print!("{}", manifests::to_yaml(&objects)?),
        DeployOutput::Table => {
            for object in applied {
                println!("{object} applied");
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
