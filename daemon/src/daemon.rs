//! The daemon as one value: [`Daemon::start`] binds its listeners, loads and attaches its
//! programs, opens the conntrack watcher and wires the service; [`Daemon::serve`] serves
//! until the one shutdown future completes, then stops every run, the events reader and the
//! programs, in that order.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use crate::{
    Error, Result,
    config::Config,
    conntrack::Watcher,
    facts::Node,
    grpc::AgentService,
    metrics,
    runs::{Runs, policy::TargetPolicy},
    server::{self, Listener, Security},
    tls::ServerTls,
};

/// A started daemon, not yet serving.
#[derive(Debug)]
pub struct Daemon {
    listener: Listener,
    security: Security,
    drain: Duration,
    node: Arc<Node>,
    runs: Arc<Runs>,
    agent: AgentService<Node>,
    /// The lease reaper of server sides.
    reaper: JoinHandle<()>,
    /// The Prometheus endpoint, when asked for.
    metrics: Option<JoinHandle<()>>,
}

/// How a daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its programs are unloaded and its links released.
    Unloaded,
    /// Something still holds the programs: they go when the process does.
    ProgramsStillHeld,
}

impl Daemon {
    /// Binds, loads and wires everything `config` asks for (within a Tokio runtime).
    pub async fn start(config: &Config) -> Result<Self> {
        let security = match config.tls_files() {
            Some(files) => Security::MutualTls(Arc::new(
                ServerTls::load(files).map_err(|reason| Error::Tls { reason })?,
            )),
            None if config.insecure => Security::Plaintext,
            None => {
                return Err(Error::Tls {
                    reason: "sonded serves its API over mutual TLS: give --tls-cert, --tls-key \
                             and --tls-ca (the DaemonSet mounts them from the sonde-daemon-tls \
                             Secret), or --insecure to serve it in plaintext"
                        .to_owned(),
                });
            }
        };
        let listener = Listener::bind(&config.listen).await?;
        let metrics_listener = match &config.metrics_listen {
            Some(addr) => Some(Listener::bind(addr).await?),
            None => None,
        };
        let node = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Node::start(&config))
                .await
                .map_err(|err| worker("starting the node", &err))??
        };
        let node = Arc::new(node);
        if config.kubernetes {
            let client = kube::Client::try_default()
                .await
                .map_err(|source| Error::Kubernetes { source })?;
            node.name_pods(client);
            tracing::info!(node = config.node_name(), "naming pods from the API server");
        }
        // In the daemon's own network namespace: the node's.
        let conntrack = tokio::task::spawn_blocking(Watcher::open)
            .await
            .map_err(|err| worker("opening the conntrack watcher", &err))?
            .map(Arc::new)
            .map_err(|err| format!("ctnetlink: {err}"));
        match &conntrack {
            Ok(_) => tracing::info!("watching conntrack through ctnetlink"),
            Err(reason) => tracing::warn!(%reason, "conntrack cannot be watched"),
        }
        let runs = Arc::new(Runs::with_limits(crate::runs::limits::Limits {
            max_runs: usize::from(config.max_runs),
            longest: Duration::from_secs(config.max_run_seconds),
            bytes_per_minute: config.budget(config.max_bytes_per_minute),
            connections_per_minute: config.budget(config.max_connections_per_minute),
        }));
        let reaper = runs.spawn_reaper();
        let agent = AgentService::new(
            Arc::clone(&node),
            Arc::clone(&runs),
            TargetPolicy::new(&config.allow_targets),
        )
        .with_tracer(node.tracer.clone())
        .with_conntrack(conntrack.clone());
        let metrics = metrics_listener.map(|listener| {
            tracing::info!(addr = listener.local_addr(), "serving Prometheus metrics");
            tokio::spawn(metrics::serve(
                listener,
                conntrack.ok(),
                agent.reservations(),
            ))
        });
        // Started: what starting touched is not needed at rest.
        crate::memory::release_at_rest();
        Ok(Self {
            listener,
            security,
            drain: Duration::from_secs(config.drain_seconds),
            node,
            runs,
            agent,
            reaper,
            metrics,
        })
    }

    /// The address the API is served on (the port the kernel chose for port 0).
    pub fn local_addr(&self) -> String {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, lets calls in flight drain, then stops every run,
    /// the kernel events reader and the programs.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<Stopped> {
        let Self {
            listener,
            security,
            drain,
            node,
            runs,
            agent,
            reaper,
            metrics,
        } = self;
        let served = server::run(listener, security, agent, shutdown, drain).await;
        reaper.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        runs.stop_all();
        // The events reader holds the tracer while it reads: stopped first, so that dropping
        // the node really unloads the programs (the kernel would release them with the
        // process anyway; this says when).
        if let Some(tracer) = &node.tracer {
            tracer.stop();
        }
        let tracer = node.tracer.as_ref().map(Arc::downgrade);
        drop(node);
        served?;
        Ok(if tracer.is_some_and(|tracer| tracer.strong_count() > 0) {
            Stopped::ProgramsStillHeld
        } else {
            Stopped::Unloaded
        })
    }
}

fn worker(what: &'static str, err: &tokio::task::JoinError) -> Error {
    Error::Worker {
        what,
        reason: err.to_string(),
    }
}
