//! The names of this node's pods, from the API server: a watch on the pods scheduled to the
//! node (`spec.nodeName`), kept as a local store, so that the veths the kernel mapping finds
//! carry their pods' `NAMESPACE/NAME`. The kernel stays the authority for which veth is whose
//! (a pod's IP joins the two); the API only names them.
//!
//! Every change to the node's pods also asks the kernel mapping to look again: a pod that the
//! API reports running has its veth and address by then.

use std::{net::IpAddr, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};

/// This node's pods as the API server lists them, kept current by a watch.
pub struct PodNames {
    store: reflector::Store<Pod>,
}

impl std::fmt::Debug for PodNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNames")
            .field("pods", &self.store.state().len())
            .finish()
    }
}

impl PodNames {
    /// Starts watching the pods on `node` (on the current tokio runtime); `changed` runs after
    /// each change. Errors (the API server away, say) are logged and retried with backoff.
    pub fn start(client: Client, node: &str, changed: impl Fn() + Send + 'static) -> Arc<Self> {
        let pods: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (store, writer) = reflector::store();
        let stream = watcher(pods, config)
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        let node = node.to_owned();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(pod) => {
                        tracing::debug!(
                            pod = pod.metadata.name.as_deref().unwrap_or_default(),
                            "pod changed"
                        );
                        changed();
                    }
                    Err(err) => tracing::warn!(%err, %node, "watching the node's pods"),
                }
            }
        });
        Arc::new(Self { store })
    }

    /// `NAMESPACE/NAME` of the pod (not host-networked) that has `ip`.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        self.store.state().iter().find_map(|pod| {
            let spec = pod.spec.as_ref()?;
            if spec.host_network == Some(true) {
                return None;
            }
            let status = pod.status.as_ref()?;
            let has_ip = status
                .pod_ips
                .iter()
                .flatten()
                .map(|pod_ip| pod_ip.ip.as_str())
                .chain(status.pod_ip.as_deref())
                .any(|text| text.parse::<IpAddr>() == Ok(ip));
            has_ip.then(|| {
                format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                    pod.metadata.name.as_deref().unwrap_or_default()
                )
            })
        })
    }
}
