//! Serving: the gRPC API and the standard gRPC health service on one listener (TCP or a Unix
//! socket), over mutual TLS unless told otherwise, with a drain deadline when asked to stop.

use std::{
    future::Future, os::unix::fs::PermissionsExt as _, path::PathBuf, sync::Arc, time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::server::{Connected, Router};

use crate::{
    Error, Result,
    config::ListenAddr,
    facts::FactsSource,
    grpc::AgentService,
    tls::{self, ServerTls},
};

/// How callers are let in.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS: only clients with a certificate from sonde's CA.
    MutualTls(Arc<ServerTls>),
    /// Plaintext: anyone who reaches the listener (`--insecure`).
    Plaintext,
}

type AgentServer<S> = sonde_proto::v1::agent_server::AgentServer<AgentService<S>>;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket, and its file (removed when the listener goes).
    Unix(UnixListener, SocketFile),
}

/// A Unix socket's file, removed on drop so that a stopped daemon leaves no file behind.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds `addr`. A stale Unix socket file (left by a killed daemon) is replaced.
    pub async fn bind(addr: &ListenAddr) -> Result<Self> {
        let bind_error = |source: std::io::Error| Error::Serve {
            addr: addr.to_string(),
            source: Box::new(source),
        };
        match addr {
            ListenAddr::Tcp(socket) => TcpListener::bind(socket)
                .await
                .map(Self::Tcp)
                .map_err(bind_error),
            ListenAddr::Unix(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => tracing::info!(path = %path.display(), "replaced a stale socket"),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(bind_error(err)),
                }
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                // Root's only: whoever can connect can make the node send traffic.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(bind_error)?;
                Ok(Self::Unix(listener, SocketFile(path.clone())))
            }
        }
    }

    /// The address actually bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> String {
        match self {
            Self::Tcp(listener) => listener
                .local_addr()
                .map(|addr| addr.to_string())
                .unwrap_or_else(|_| "?".to_owned()),
            Self::Unix(_, SocketFile(path)) => format!("unix:{}", path.display()),
        }
    }
}

/// Serves `sonde.v1.Agent` and `grpc.health.v1.Health` on `listener` until `shutdown`
/// completes, then lets in-flight calls finish for at most `drain`.
pub async fn run<S: FactsSource>(
    listener: Listener,
    security: Security,
    agent: AgentService<S>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Result<()> {
    let addr = listener.local_addr();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<S>>().await;
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(agent.into_server());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    let stop = async {
        shutdown.await;
        tracing::info!(
            drain_seconds = drain.as_secs_f64(),
            "stopping: draining in-flight calls"
        );
        health.set_not_serving::<AgentServer<S>>().await;
        let _ = stop_tx.send(());
    };
    match &security {
        Security::MutualTls(_) => tracing::info!(
            %addr,
            "serving gRPC (sonde.v1.Agent, grpc.health.v1.Health) over mutual TLS"
        ),
        Security::Plaintext => tracing::warn!(
            %addr,
            "serving gRPC in PLAINTEXT (--insecure): anyone who reaches this address can make this node send traffic"
        ),
    }
    let result = match (listener, security) {
        (Listener::Tcp(tcp), Security::Plaintext) => {
            serve(router, TcpListenerStream::new(tcp), stopped, stop, drain).await
        }
        (Listener::Tcp(tcp), Security::MutualTls(tls)) => {
            let incoming = tls::secured(TcpListenerStream::new(tcp), tls);
            serve(router, incoming, stopped, stop, drain).await
        }
        (Listener::Unix(unix, _file), Security::Plaintext) => {
            serve(router, UnixListenerStream::new(unix), stopped, stop, drain).await
        }
        (Listener::Unix(unix, _file), Security::MutualTls(tls)) => {
            let incoming = tls::secured(UnixListenerStream::new(unix), tls);
            serve(router, incoming, stopped, stop, drain).await
        }
    };
    result.map_err(|source| Error::Serve {
        addr,
        source: Box::new(source),
    })
}

/// Serves `router` on the connections of `incoming` until `stop` has run and the server has
/// drained, or `drain` has passed since.
async fn serve<IO>(
    router: Router,
    incoming: impl Stream<Item = std::io::Result<IO>> + Send + 'static,
    stopped: impl Future<Output = ()>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) -> Result<(), tonic::transport::Error>
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    drive(
        router.serve_with_incoming_shutdown(incoming, stopped),
        stop,
        drain,
    )
    .await
}

/// Runs `server` until `stop` has run and the server has drained, or `drain` has passed since.
async fn drive(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) -> Result<(), tonic::transport::Error> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = stop => {}
    }
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("drain deadline passed with calls still in flight; stopping anyway");
            Ok(())
        }
    }
}
