//! [`Session`]: the daemon connections, clock offsets and runs in flight of one controller.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sonde_proto::v1::{self as pb, agent_client::AgentClient};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    agent,
    error::Within as _,
    run::clock::{self, ClockOffset},
};

/// How long an estimated clock offset is trusted before it is estimated again. Clocks of two
/// NTP-disciplined nodes drift apart by tens of µs a minute at most; an estimate costs 64 round
/// trips, which a mesh of short measurements would otherwise pay for every pair every time.
pub const CLOCK_MAX_AGE: Duration = Duration::from_secs(120);

/// How long a measurement waits for nodes someone else holds, unless told otherwise.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);

/// One controller's working state: everything the commands that measure share, so that none
/// of them reconnects, re-estimates a clock or loses track of a run it started.
///
/// A `Session` is used through `&self` from many futures at once: a scenario's round runs its
/// measurements concurrently on one session.
#[derive(Debug)]
pub struct Session {
    /// One connection per daemon address, opened on first use. A cell per address, so that
    /// several measurements asking for one daemon at once dial it once, and a daemon that does
    /// not answer holds up only those that need it.
    agents: Mutex<HashMap<String, Arc<OnceCell<AgentClient<Channel>>>>>,
    /// Clock offsets by (client daemon, server daemon), with when they were estimated.
    clocks: Mutex<HashMap<(String, String), (ClockOffset, Instant)>>,
    /// Deadline for connecting to a daemon and for each unary call.
    timeout: Duration,
    /// Cancelled when the user stops the session (Ctrl-C): every measurement in flight stops
    /// both its sides, and nothing new starts.
    cancel: CancellationToken,
    /// Runs in flight: run ID to the daemons holding a side of it, for cancellation.
    in_flight: Mutex<HashMap<String, Vec<String>>>,
    /// Who this session is, in run IDs and reservations (unique per process).
    id: String,
    /// Run IDs handed out, so that concurrent measurements never share one.
    next_run: AtomicU64,
    /// Who runs this session (`user@host`), named in the reservations it holds.
    user: String,
    /// The scenario the session runs, if any, named in its reservations.
    scenario: String,
    /// How long a measurement waits for nodes others hold before it gives up.
    max_wait: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Session {
    /// A session whose daemon calls wait at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Self {
            agents: Mutex::default(),
            clocks: Mutex::default(),
            timeout,
            cancel: CancellationToken::new(),
            in_flight: Mutex::default(),
            id: format!("s{:x}{:x}", std::process::id(), nanos & 0xffff_ffff),
            next_run: AtomicU64::new(0),
            user: format!(
                "{}@{}",
                std::env::var("USER").unwrap_or_else(|_| "root".to_owned()),
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|name| name.into_string().ok())
                    .unwrap_or_default()
            ),
            scenario: String::new(),
            max_wait: DEFAULT_MAX_WAIT,
        }
    }

    /// The same session, naming `scenario` in its reservations.
    pub fn for_scenario(mut self, scenario: &str) -> Self {
        scenario.clone_into(&mut self.scenario);
        self
    }

    /// The same session, waiting at most `max_wait` for nodes others hold.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How long a measurement waits for its nodes.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// This session as a reservation's holder.
    pub fn holder(&self) -> pb::Holder {
        pb::Holder {
            session: self.id.clone(),
            user: self.user.clone(),
            scenario: self.scenario.clone(),
        }
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This session's identity (run IDs start with it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A run ID no other run of this session has: the session, a sequence number and `tag`
    /// (1 to 64 characters of `[A-Za-z0-9._-]`, as the daemons require).
    pub fn run_id(&self, tag: &str) -> String {
        let seq = self.next_run.fetch_add(1, Ordering::Relaxed);
        let mut id = format!("{}-{seq}-{tag}", self.id);
        id.retain(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        id.truncate(64);
        id
    }

    /// The connection to the daemon at `addr`, dialled on first use.
    pub async fn agent(&self, addr: &str) -> crate::Result<AgentClient<Channel>> {
        let cell = Arc::clone(lock(&self.agents).entry(addr.to_owned()).or_default());
        let client = cell
            .get_or_try_init(|| async {
                let parsed = addr.parse().map_err(crate::Error::refused)?;
                agent::connect(&parsed, self.timeout).await
            })
            .await
            .within_with(|| format!("agent {addr}"))?;
        Ok(client.clone())
    }

    /// The cancellation of this session: cancel it to stop every measurement in flight.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether the session was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stops everything: no new measurement starts, and every daemon holding a side of a run
    /// in flight is asked to cancel it.
    pub async fn cancel(&self) {
        self.cancel.cancel();
        let runs: Vec<(String, Vec<String>)> = lock(&self.in_flight).drain().collect();
        for (run_id, agents) in runs {
            self.cancel_run(&run_id, &agents).await;
        }
    }

    /// Asks each of `agents` to cancel `run_id` (best effort: a daemon that is gone holds it
    /// only until its lease runs out).
    pub(crate) async fn cancel_run(&self, run_id: &str, agents: &[String]) {
        for addr in agents {
            if let Ok(mut client) = self.agent(addr).await {
                let _ = tokio::time::timeout(
                    self.timeout,
                    client.cancel_run(pb::CancelRunRequest {
                        run_id: run_id.to_owned(),
                    }),
                )
                .await;
            }
        }
    }

    /// Records that `agents` hold sides of `run_id` until [`Session::landed`].
    pub(crate) fn in_flight(&self, run_id: &str, agents: Vec<String>) {
        lock(&self.in_flight).insert(run_id.to_owned(), agents);
    }

    /// `run_id` is over (finished, failed or cancelled).
    pub(crate) fn landed(&self, run_id: &str) {
        lock(&self.in_flight).remove(run_id);
    }

    /// Runs in flight now.
    pub fn runs_in_flight(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// The server daemon's clock relative to the client daemon's, from the cache when an
    /// estimate younger than [`CLOCK_MAX_AGE`] is there. `estimate` forces a fresh NTP-style
    /// estimate even on one kernel (to check the estimator against a known zero).
    pub async fn clock(
        &self,
        client: &str,
        server: &str,
        estimate: bool,
    ) -> crate::Result<ClockOffset> {
        let key = (client.to_owned(), server.to_owned());
        if !estimate
            && let Some((offset, at)) = lock(&self.clocks).get(&key)
            && at.elapsed() < CLOCK_MAX_AGE
        {
            return Ok(*offset);
        }
        let offset = clock::offset(self, client, server, estimate).await?;
        if !estimate {
            lock(&self.clocks).insert(key, (offset, Instant::now()));
        }
        Ok(offset)
    }

    /// Clock offsets estimated and still cached.
    pub fn clocks_cached(&self) -> usize {
        lock(&self.clocks).len()
    }

    /// The kernel releases of the daemons at `agents`, each once, best effort.
    pub async fn kernels(&self, agents: &[&str]) -> Vec<String> {
        let mut kernels = Vec::new();
        for addr in agents {
            if let Ok(mut client) = self.agent(addr).await
                && let Ok(Ok(facts)) = tokio::time::timeout(
                    self.timeout,
                    client.get_node_facts(pb::GetNodeFactsRequest {}),
                )
                .await
                && let Some(facts) = facts.into_inner().facts
                && !kernels.contains(&facts.kernel_release)
            {
                kernels.push(facts.kernel_release);
            }
        }
        kernels
    }
}
