//! Reaching the daemons from outside the cluster: every gRPC connection to a daemon is a
//! port-forward through the API server (the kubelet connects to the daemon's port inside its
//! pod, as `kubectl port-forward` does), so sondectl needs nothing but its kubeconfig.
//!
//! One port-forward carries one TCP connection. tonic opens one HTTP/2 connection per daemon
//! and reconnects through a fresh port-forward if it breaks. The API server hop adds its own
//! round trip to every call, so the clock offset between two nodes is estimated with a wider
//! uncertainty than from inside the cluster; the run's own traffic is unaffected (it flows
//! between the pods).

use std::{sync::OnceLock, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tokio::io::AsyncReadExt as _;
use tonic::transport::{Channel, Endpoint};

use crate::{error::Context as _, tls::Credentials};

/// How sondectl reaches the daemons of a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Reach {
    /// Port-forward when sondectl runs outside the cluster, the pod IP inside it.
    #[default]
    Auto,
    /// Dial each daemon at its pod IP (the node's address: the DaemonSet uses host networking).
    PodIp,
    /// Through the API server's port-forward of each daemon's pod.
    PortForward,
}

impl Reach {
    /// `Auto` decided: inside a pod (the API server's address is in the environment, as
    /// Kubernetes sets it in every container) the pod IPs are reachable; outside, they may not
    /// be.
    pub fn resolved(self) -> Self {
        match self {
            Self::Auto if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Self::PodIp,
            Self::Auto => Self::PortForward,
            other => other,
        }
    }
}

/// The client port-forwards go through, set once per sondectl process by whoever resolved the
/// cluster's daemons.
static CLIENT: OnceLock<Client> = OnceLock::new();

/// Makes `client` the one port-forwarded daemons are reached through.
pub fn use_client(client: &Client) {
    // A second cluster in one process is not a thing sondectl does: keep the first.
    let _ = CLIENT.set(client.clone());
}

/// A gRPC channel to port `port` of pod `namespace/pod`, each connection a fresh port-forward.
pub async fn channel(
    namespace: &str,
    pod: &str,
    port: u16,
    timeout: Duration,
    credentials: Credentials,
) -> crate::Result<Channel> {
    let client = CLIENT
        .get()
        .context("a port-forwarded daemon needs the cluster's kubeconfig (--kubeconfig)")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let target = format!("{namespace}/{pod}");
    let pod = pod.to_owned();
    // The URI is required by HTTP/2 but unused: the connector asks the API server.
    Endpoint::from_static("http://sonded.port-forward")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (pods, pod, credentials) = (pods.clone(), pod.clone(), credentials.clone());
            async move { forward(&pods, &pod, port, &credentials).await }
        }))
        .await
        .map_err(|err| {
            crate::Error::Refused(format!(
                "no port-forward to {target}:{port} through the API server: {}",
                crate::error::chain(&err)
            ))
        })
}

/// One port-forwarded connection, up once the daemon has spoken: over TLS it answers the
/// handshake, in plaintext a gRPC server sends its HTTP/2 settings as soon as it accepts. So
/// a kubelet that could not reach the daemon (its reason arrives on the port's error channel)
/// fails the connection with that reason rather than a bare broken pipe later.
async fn forward(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
    credentials: &Credentials,
) -> std::io::Result<hyper_util::rt::TokioIo<Box<dyn crate::tls::Io>>> {
    let mut forwarder = pods
        .portforward(pod, &[port])
        .await
        .map_err(std::io::Error::other)?;
    let mut stream = forwarder
        .take_stream(port)
        .ok_or_else(|| std::io::Error::other("the port-forward has no stream for the port"))?;
    let error = forwarder
        .take_error(port)
        .ok_or_else(|| std::io::Error::other("the port-forward has no error channel"))?;
    // The forwarder's task carries the bytes until either end closes; it needs no handle.
    drop(forwarder);
    let kubelet = |reason: String| std::io::Error::other(format!("kubelet: {reason}"));
    tokio::pin!(error);
    if let Credentials::MutualTls(_) = credentials {
        let handshake = crate::tls::secure(credentials, stream);
        tokio::pin!(handshake);
        let mut error_open = true;
        let secured = loop {
            tokio::select! {
                secured = &mut handshake => break secured,
                reason = &mut error, if error_open => match reason {
                    Some(reason) => return Err(kubelet(reason)),
                    None => error_open = false,
                },
            }
        };
        return match secured {
            Ok(stream) => Ok(hyper_util::rt::TokioIo::new(stream)),
            // The kubelet's reason, if it has one, says more than the broken handshake.
            Err(err) if error_open => {
                match tokio::time::timeout(Duration::from_secs(1), &mut error).await {
                    Ok(Some(reason)) => Err(kubelet(reason)),
                    _ => Err(err),
                }
            }
            Err(err) => Err(err),
        };
    }
    let mut first = vec![0u8; 16 * 1024];
    let mut error_open = true;
    let read = loop {
        tokio::select! {
            read = stream.read(&mut first) => break read?,
            reason = &mut error, if error_open => match reason {
                Some(reason) => return Err(kubelet(reason)),
                None => error_open = false,
            },
        }
    };
    if read == 0 {
        // Closed before a word: the reason, if the kubelet gave one, is on its way. Our end
        // goes first, so that the forwarder finishes (and the error channel answers, if only
        // with nothing) rather than waiting for us.
        drop(stream);
        return Err(match error_open {
            true => error.await.map(kubelet),
            false => None,
        }
        .unwrap_or_else(|| std::io::Error::other("the port-forward closed at once")));
    }
    first.truncate(read);
    Ok(hyper_util::rt::TokioIo::new(Box::new(
        crate::tls::Replayed::new(first, stream),
    )))
}
