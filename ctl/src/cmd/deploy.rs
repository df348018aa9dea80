//! `sondectl deploy` and `sondectl undeploy`.

use crate::{
    cli::{DeployArgs, DeployOutput, UndeployArgs},
    cluster::{self, apply, manifests},
};

/// Runs `sondectl deploy`.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let options = manifests::Options {
        namespace: Some(args.cluster.namespace.clone()),
        image: args.image.clone(),
        node_selector: args.node_selector.clone(),
        endpoints: args.endpoints,
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

/// Runs `sondectl undeploy`.
pub async fn undeploy(args: UndeployArgs) -> anyhow::Result<()> {
    // The endpoints (`deploy --endpoints`) live in the namespace: deleting it removes them.
    let options = manifests::Options {
        namespace: Some(args.cluster.namespace.clone()),
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
