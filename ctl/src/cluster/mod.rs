//! Kubernetes: sonde's manifests, applied and removed with server-side apply, and the daemons
//! found through the API server.
//!
//! - [`manifests`]: the objects in `deploy/kubernetes`, embedded, with the user's options.
//! - [`apply`]: `sondectl deploy` and `undeploy`.
//! - [`discover`]: the daemons, their nodes and zones, for `sondectl nodes --kubeconfig`.
//! - [`endpoints`]: pods, nodes and Services named in a run, resolved through the API.
//! - [`placement`]: same-node, cross-node and cross-zone checks and picks.
//! - [`portforward`]: daemons reached through the API server from outside the cluster.

pub mod apply;
pub mod certificates;
pub mod discover;
pub mod endpoints;
pub mod manifests;
pub mod placement;
pub mod portforward;
pub mod ranges;

use crate::error::Context as _;

/// The field manager sonde's server-side applies are recorded under.
pub const FIELD_MANAGER: &str = "sondectl";

/// A client from `kubeconfig` (a path), else from the environment (`KUBECONFIG`, the default
/// file, or the in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> crate::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given (--kubeconfig) and none found in the environment")?,
    };
    kube::Client::try_from(config).context("making a Kubernetes client")
}
