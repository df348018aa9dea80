//! Serving: the gRPC API and the standard gRPC health service on one listener, with a drain
//! deadline when asked to stop.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{Error, Result, facts::FactsSource, grpc::AgentService};

/// Serves `sonde.v1.Agent` and `grpc.health.v1.Health` on `listener` until `shutdown`
/// completes, then lets in-flight calls finish for at most `drain`.
pub async fn run<S: FactsSource>(
    listener: TcpListener,
    source: Arc<S>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    let serve_error = |source: tonic::transport::Error| Error::Serve {
        addr: addr.clone(),
        source: Box::new(source),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    let agent = AgentService::server(source);
    health
        .set_serving::<sonde_proto::v1::agent_server::AgentServer<AgentService<S>>>()
        .await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(agent)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tracing::info!(%addr, "serving gRPC (sonde.v1.Agent, grpc.health.v1.Health)");

    tokio::select! {
        result = &mut server => return result.map_err(serve_error),
        () = shutdown => {}
    }
    tracing::info!(
        drain_seconds = drain.as_secs_f64(),
        "stopping: draining in-flight calls"
    );
    health
        .set_not_serving::<sonde_proto::v1::agent_server::AgentServer<AgentService<S>>>()
        .await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result.map_err(serve_error),
        Err(_) => {
            tracing::warn!("drain deadline passed with calls still in flight; stopping anyway");
            Ok(())
        }
    }
}
