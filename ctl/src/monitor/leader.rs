//! Leadership of a monitor's replicas (`deploy --monitor` runs two): one measures, the others
//! wait, through a coordination.k8s.io Lease. The holder renews it; a holder that dies stops
//! renewing, and another replica takes it once it has expired (its duration), so a lost node
//! costs the monitor one lease duration, and two replicas never measure at once.

use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::error::Context as _;

/// A replica's part in the election: whether it leads now, and a way to wait until it does.
#[derive(Debug)]
pub struct Leadership {
    leads: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    /// `NAMESPACE/NAME` of the Lease, for messages.
    pub lease: String,
    /// This replica's identity in the Lease.
    pub identity: String,
}

/// The identity of this replica: the pod's name in a cluster (`POD_NAME`, set by the
/// Deployment), else the host's name and the process ID.
pub fn default_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| "sondectl".to_owned());
            format!("{host}-{}", std::process::id())
        })
}

impl Leadership {
    /// Joins the election for Lease `namespace/name` (made if missing), held `duration` after
    /// each renewal. Renewals and takeovers run in the background from here on.
    pub async fn join(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> crate::Result<Self> {
        let seconds = duration.as_secs().max(2);
        // Renew a third of the duration before it runs out: one missed renewal is survived.
        let grace = (seconds / 3).max(1);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(seconds)
            .with_grace(grace)
            .build()
            .await
            .with_context(|| format!("the monitor's Lease {namespace}/{name}"))?;
        let (leads, task) = manager.watch().await;
        Ok(Self {
            leads,
            task,
            lease: format!("{namespace}/{name}"),
            identity: identity.to_owned(),
        })
    }

    /// Whether this replica holds the Lease now.
    pub fn leads(&self) -> bool {
        *self.leads.borrow()
    }

    /// Waits until this replica holds the Lease; false when cancelled first, or when the
    /// election ended (its task failed).
    pub async fn wait(&mut self, cancellation: &CancellationToken) -> bool {
        tokio::select! {
            held = self.leads.wait_for(|leads| *leads) => held.is_ok(),
            () = cancellation.cancelled() => false,
        }
    }

    /// Leaves the election, releasing the Lease if held (so a standby takes over at once,
    /// not after the duration).
    pub async fn leave(self) {
        drop(self.leads);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(err))) => eprintln!("sondectl monitor: releasing the Lease: {err}"),
            Ok(Err(err)) => eprintln!("sondectl monitor: releasing the Lease: {err}"),
            Err(_) => eprintln!("sondectl monitor: releasing the Lease timed out"),
        }
    }
}
