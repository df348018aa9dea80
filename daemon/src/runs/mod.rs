//! The daemon's runs: which server sides it holds, until when, and which client sides are
//! running. Several runs share a daemon at once, each on its own port.
//!
//! A server side lives until FinishServer, CancelRun, or its lease runs out (a controller that
//! vanished cannot leak it). A client side lives as long as its StartClient stream; if the
//! controller goes away, the stream drops and the run stops.
//!
//! # Layout
//! - [`spec`]: a run's parameters and their limits.
//! - [`policy`]: where a daemon may send traffic, and from which namespaces.
//! - [`pending`]: per-run values kept from prepare to finish, bounded.
//! - [`samples`]: the node's conntrack table around each run, for its delta.
//! - [`client`]: a running client side, its progress and its result.

pub mod budget;
pub mod client;
pub mod limits;
pub mod pending;
pub mod policy;
pub mod samples;
pub mod spec;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
    time::{Duration, Instant},
};

use crate::{
    generators::{
        self, Server,
        measure::{SideResult, Stop},
        wire::Token,
    },
    reservations::HoldGuard,
    stages::{RunTrace, TraceReport},
};
use spec::RunSpec;

/// Longest a lease may outlast the run it covers.
pub const MAX_LEASE_SLACK: Duration = Duration::from_secs(120);
/// How long after its last run ends a daemon hands back what the runs used.
const RELEASE_AFTER: Duration = Duration::from_secs(2);

/// Lease given when the request asks for none.
pub const DEFAULT_LEASE_SLACK: Duration = Duration::from_secs(30);

/// Why a run request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A field is outside its limits.
    #[error(transparent)]
    Invalid(#[from] spec::InvalidSpec),
    /// The daemon already holds a run with that ID.
    #[error("run {run_id} already exists on this daemon")]
    Exists {
        /// The run ID.
        run_id: String,
    },
    /// The daemon holds no run with that ID.
    #[error("no run {run_id} on this daemon (finished, cancelled, or its lease expired)")]
    NotFound {
        /// The run ID.
        run_id: String,
    },
    /// The target is outside what this daemon may send to.
    #[error(
        "target_ip {ip} is outside the ranges this daemon may send to (--allow-target {allowed})"
    )]
    TargetNotAllowed {
        /// The refused address.
        ip: std::net::IpAddr,
        /// The allowed ranges.
        allowed: String,
    },
    /// Setting the server side up failed.
    #[error("preparing the server side")]
    Prepare {
        /// What failed.
        #[source]
        source: crate::Error,
    },
    /// Tracing was asked for and could not start.
    #[error("starting the kernel tracing of the run")]
    Trace {
        /// What failed.
        #[source]
        source: crate::Error,
    },
    /// Tracing was asked for and this daemon has none.
    #[error("this daemon cannot trace runs: its stage programs did not load (see its log)")]
    NoTracing,
    /// The node is reserved by someone else in a conflicting class, or the run named a
    /// reservation this node does not hold.
    #[error(transparent)]
    Reserved(#[from] crate::reservations::Refusal),
    /// A cap of this daemon's refuses the run (see `limits`).
    #[error(transparent)]
    Limit(#[from] limits::Refusal),
    /// The blocking work of a run failed (a panic in a generator).
    #[error("the run's worker failed: {reason}")]
    Worker {
        /// What the runtime said.
        reason: String,
    },
}

/// A held server side.
#[derive(Debug)]
struct Held {
    server: Server,
    trace: Option<RunTrace>,
    deadline: Instant,
    /// The side's hold of the node, recorded as ended when the side is let go.
    _hold: Option<HoldGuard>,
    /// Its run's place among the runs this daemon allows at once.
    _admission: limits::Admission,
}

/// The daemon's runs.
#[derive(Debug, Default)]
pub struct Runs {
    /// Server sides by run ID (several when a Service has several pods on this node).
    servers: Mutex<HashMap<String, Vec<Held>>>,
    /// Stop flags of running client sides by run ID.
    clients: Mutex<HashMap<String, Stop>>,
    /// The runs admitted under this daemon's caps.
    admissions: limits::Admissions,
}

impl Runs {
    /// Runs under `limits`.
    pub fn with_limits(limits: limits::Limits) -> Self {
        Self {
            admissions: limits::Admissions::new(limits),
            ..Self::default()
        }
    }

    fn servers(&self) -> MutexGuard<'_, HashMap<String, Vec<Held>>> {
        self.servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<String, Stop>> {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When no run is left on this node, hands the heap pages the last ones freed back to
    /// the kernel (a traced run's events and results take megabytes that glibc would
    /// otherwise keep): a daemon between runs holds what an idle one does.
    pub fn release_memory_if_idle(self: &Arc<Self>) {
        if !self.idle() {
            return;
        }
        // Later, not now: the last run's results are still being sent, and the code that
        // sends them still runs. Then, if no run started meanwhile, on a blocking thread.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            crate::memory::release_at_rest();
            return;
        };
        let runs = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(RELEASE_AFTER).await;
            if runs.upgrade().is_some_and(|runs| runs.idle()) {
                let _ = tokio::task::spawn_blocking(crate::memory::release_at_rest).await;
            }
        });
    }

    fn idle(&self) -> bool {
        self.servers().is_empty() && self.clients().is_empty()
    }

    /// Prepares a server side (blocking: binds in a namespace); `trace` starts its kernel
    /// tracing, given the port the server got.
    #[expect(
        clippy::too_many_arguments,
        reason = "a server side's whole request, passed once from the gRPC adapter"
    )]
    pub fn prepare(
        &self,
        run_id: &str,
        spec: &RunSpec,
        netns: Option<&std::path::Path>,
        port: u16,
        lease: Option<Duration>,
        token: Option<Token>,
        hold: Option<HoldGuard>,
        trace: impl FnOnce(u16) -> Result<Option<RunTrace>, RunError>,
    ) -> Result<(u16, Option<PathBuf>, Token), RunError> {
        spec::check_run_id(run_id)?;
        let admission = self.admissions.admit(run_id, spec.total())?;
        let longest = spec.total() + MAX_LEASE_SLACK;
        let lease = match lease {
            None => spec.total() + DEFAULT_LEASE_SLACK,
            Some(lease) if lease <= longest && lease > Duration::ZERO => lease,
            Some(lease) => {
                return Err(spec::InvalidSpec {
                    field: "lease_ms",
                    reason: format!(
                        "must be from 1 to {} (warm-up + duration + {} s), got {}",
                        longest.as_millis(),
                        MAX_LEASE_SLACK.as_secs(),
                        lease.as_millis()
                    ),
                }
                .into());
            }
        };
        let server = Server::start(spec, netns, port, token)
            .map_err(|source| RunError::Prepare { source })?;
        let trace = match trace(server.port) {
            Ok(trace) => trace,
            Err(err) => {
                server.stop();
                return Err(err);
            }
        };
        let answer = (server.port, server.path.clone(), server.token);
        tracing::info!(
            run_id,
            port = server.port,
            lease_ms = lease.as_millis() as u64,
            "server side prepared"
        );
        self.servers()
            .entry(run_id.to_owned())
            .or_default()
            .push(Held {
                server,
                trace,
                deadline: Instant::now() + lease,
                _hold: hold,
                _admission: admission,
            });
        Ok(answer)
    }

    /// Removes a run's server sides and returns them with their traces, to be finished (off
    /// the async runtime).
    pub fn take_servers(&self, run_id: &str) -> Result<Vec<(Server, Option<RunTrace>)>, RunError> {
        self.servers()
            .remove(run_id)
            .map(|held| {
                held.into_iter()
                    .map(|held| (held.server, held.trace))
                    .collect()
            })
            .ok_or_else(|| RunError::NotFound {
                run_id: run_id.to_owned(),
            })
    }

    /// Ends a run's server sides (several when a Service has several pods on this node) and
    /// merges their results and traces, off the async workers.
    pub async fn finish_servers(
        self: &Arc<Self>,
        run_id: &str,
    ) -> Result<(SideResult, Option<TraceReport>), RunError> {
        let servers = self.take_servers(run_id)?;
        let finished = tokio::task::spawn_blocking(move || {
            let (servers, traces): (Vec<_>, Vec<_>) = servers.into_iter().unzip();
            let result = generators::merge_sides(servers.into_iter().map(Server::finish));
            let trace =
                traces
                    .into_iter()
                    .flatten()
                    .map(RunTrace::finish)
                    .reduce(|mut all, more| {
                        all.merge(more);
                        all
                    });
            (result, trace)
        })
        .await
        .map_err(|err| RunError::Worker {
            reason: err.to_string(),
        })?;
        self.release_memory_if_idle();
        Ok(finished)
    }

    /// Registers a running client side lasting `total`; the guard unregisters it.
    pub fn client(
        self: &Arc<Self>,
        run_id: &str,
        total: Duration,
    ) -> Result<ClientGuard, RunError> {
        spec::check_run_id(run_id)?;
        let mut clients = self.clients();
        if clients.contains_key(run_id) {
            return Err(RunError::Exists {
                run_id: run_id.to_owned(),
            });
        }
        let admission = self.admissions.admit(run_id, total)?;
        let stop = Stop::default();
        clients.insert(run_id.to_owned(), Arc::clone(&stop));
        Ok(ClientGuard {
            runs: Arc::clone(self),
            run_id: run_id.to_owned(),
            stop,
            _admission: admission,
        })
    }

    /// The buckets of generated load client sides pay from.
    pub fn budget(&self) -> Arc<budget::Budget> {
        Arc::clone(self.admissions.budget())
    }

    /// Stops whatever this daemon holds of `run_id`; whether it held anything.
    pub fn cancel(&self, run_id: &str) -> bool {
        let server = self.servers().remove(run_id);
        let client = self.clients().get(run_id).cloned();
        for held in server.iter().flatten() {
            held.server.stop();
        }
        if let Some(stop) = &client {
            stop.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            run_id,
            found = server.is_some() || client.is_some(),
            "run cancelled"
        );
        server.is_some() || client.is_some()
    }

    /// Stops server sides whose lease has run out.
    pub fn reap_expired(&self) {
        let now = Instant::now();
        let expired: Vec<(String, Vec<Held>)> = {
            let mut servers = self.servers();
            let ids: Vec<String> = servers
                .iter()
                .filter(|(_, held)| held.iter().any(|h| h.deadline <= now))
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| servers.remove(&id).map(|held| (id, held)))
                .collect()
        };
        for (run_id, held) in expired {
            tracing::warn!(
                run_id,
                "lease expired: the controller stopped talking to us; server side stopped"
            );
            for held in held {
                held.server.stop();
            }
        }
    }

    /// Stops everything (daemon shutdown).
    pub fn stop_all(&self) {
        for (_, held) in self.servers().drain() {
            for held in held {
                held.server.stop();
            }
        }
        for stop in self.clients().values() {
            stop.store(true, Ordering::Relaxed);
        }
    }

    /// Runs held now: (servers, clients).
    pub fn counts(&self) -> (usize, usize) {
        (self.servers().len(), self.clients().len())
    }

    /// Reaps expired leases twice a second until the task is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let runs = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                runs.reap_expired();
            }
        })
    }
}

/// A running client side's registration: its stop flag, removed from the registry on drop.
#[derive(Debug)]
pub struct ClientGuard {
    runs: Arc<Runs>,
    run_id: String,
    /// Set to stop the client side.
    pub stop: Stop,
    /// Its run's place among the runs this daemon allows at once.
    _admission: limits::Admission,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.runs.clients().remove(&self.run_id);
        self.runs.release_memory_if_idle();
    }
}

/// The namespace a request names, checked: empty for the daemon's own, else a named
/// namespace or a process's.
pub fn netns_path(field: &'static str, text: &str) -> Result<Option<PathBuf>, spec::InvalidSpec> {
    if text.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(text);
    let named = path.parent() == Some(std::path::Path::new("/run/netns"));
    let process = text.starts_with("/proc/") && text.ends_with("/ns/net");
    if !(named || process) || text.contains("..") {
        return Err(spec::InvalidSpec {
            field,
            reason: format!("{text:?} is not /run/netns/NAME or /proc/PID/ns/net"),
        });
    }
    if !path.exists() {
        return Err(spec::InvalidSpec {
            field,
            reason: format!("{text} does not exist"),
        });
    }
    Ok(Some(path))
}
