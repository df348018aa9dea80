//! The `sonde.v1.Agent` service: a thin adapter that validates requests, calls the library and
//! turns its results and errors into messages and status codes.
//!
//! `convert` holds the conversions between messages and the library's types, and the
//! library's errors as statuses.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use sonde_common::stages::side;
use sonde_proto::kinds::{MAX_EXTERNAL_DNS_RATE, Transport};
use sonde_proto::v1::{
    self as pb,
    agent_server::{Agent, AgentServer},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

mod conntrack;
mod convert;

use convert::{
    class_message, class_of, holder_message, holder_of, side_result, spec_of, trace_spec_of,
};

use crate::{
    conntrack::Watcher,
    facts::FactsSource,
    generators::{self, Target, measure::monotonic_ns, wire::Token},
    pods::{PodInterface, resolve},
    reservations::{self, Reservations},
    runs::{
        RunError, Runs,
        client::{self, ClientEvent, ClientSide},
        policy::TargetPolicy,
        samples::{ConntrackSamples, Span},
        spec::{self, RunSpec},
    },
    stages::{RunTrace, Tracer},
};

/// Serves `sonde.v1.Agent` from a [`FactsSource`] and the daemon's [`Runs`].
#[derive(Debug)]
pub struct AgentService<S> {
    /// Shared with the rest of the daemon, which keeps the eBPF object alive.
    source: Arc<S>,
    /// The runs this daemon holds.
    runs: Arc<Runs>,
    /// Where its generators may send.
    policy: Arc<TargetPolicy>,
    /// Per-stage kernel tracing, when the daemon has it.
    tracer: Option<Arc<Tracer>>,
    /// This node's conntrack table, or why it cannot be read.
    conntrack: Result<Arc<Watcher>, String>,
    /// The table around each run, for its result's delta.
    samples: Arc<ConntrackSamples>,
    /// Who holds this node, so that measurements never collide on it.
    reservations: Arc<Reservations>,
}

impl<S: FactsSource> AgentService<S> {
    /// A service over `source`, `runs` and `policy`.
    pub fn new(source: Arc<S>, runs: Arc<Runs>, policy: TargetPolicy) -> Self {
        Self {
            source,
            runs,
            policy: Arc::new(policy),
            tracer: None,
            conntrack: Err("not watched by this daemon".to_owned()),
            samples: Arc::new(ConntrackSamples::new(None)),
            reservations: Arc::default(),
        }
    }

    /// This daemon's reservations (shared with whatever else reports them).
    pub fn reservations(&self) -> Arc<Reservations> {
        Arc::clone(&self.reservations)
    }

    /// Lets the service read the node's conntrack table (or say why it cannot).
    pub fn with_conntrack(mut self, conntrack: Result<Arc<Watcher>, String>) -> Self {
        self.samples = Arc::new(ConntrackSamples::new(conntrack.as_ref().ok().cloned()));
        self.conntrack = conntrack;
        self
    }

    /// The namespace a request names, and the pod when it names one by `pod-ip:`.
    fn netns_of(
        &self,
        text: &str,
    ) -> Result<(Option<std::path::PathBuf>, Option<PodInterface>), Status> {
        let side = resolve::namespace("netns", text, self.source.pod_interfaces())?;
        Ok((side.netns, side.pod))
    }

    /// A trace request with the interfaces the caller left to this daemon: the veth of `pod`
    /// (named by `pod-ip:`), and the uplink toward `uplink_toward` (`ip route get` in the
    /// daemon's namespace, the node's). A Kubernetes caller knows neither.
    fn with_interfaces(
        pod: Option<PodInterface>,
        trace: Option<pb::TraceRequest>,
    ) -> Result<Option<pb::TraceRequest>, Status> {
        let Some(mut trace) = trace else {
            return Ok(None);
        };
        if trace.pod_interface.is_empty()
            && let Some(pod) = pod
        {
            trace.pod_interface = pod.host_interface;
        }
        if trace.uplink_interface.is_empty() && !trace.uplink_toward.is_empty() {
            let toward: std::net::IpAddr = trace.uplink_toward.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "trace.uplink_toward: {:?} is not an IP address",
                    trace.uplink_toward
                ))
            })?;
            let device = resolve::uplink_toward(toward)
                .map_err(|err| Status::internal(format!("routing {toward}: {err}")))?;
            // No route out (the other side is local after all): no uplink stage.
            trace.uplink_interface = device.unwrap_or_default();
        }
        Ok(Some(trace))
    }

    /// Admits one side of a run against this node's reservations: under the one it names, or
    /// with its kind's class against everyone's.
    fn admit(
        &self,
        run_id: &str,
        side: &'static str,
        spec: Option<&pb::RunSpec>,
        reservation_id: &str,
    ) -> Result<reservations::HoldGuard, Status> {
        let kind = spec
            .and_then(|spec| pb::RunKind::try_from(spec.kind).ok())
            .unwrap_or_default();
        let class = class_of(kind.reservation_class() as i32)?;
        Ok(self
            .reservations
            .admit(run_id, side, kind.name(), reservation_id, class)
            .map_err(RunError::from)?)
    }

    /// Lets runs ask for per-stage kernel tracing.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The tonic server for it.
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self)
    }
}

/// Starts tracing one side of a run, when its request asks for it.
fn start_trace(
    tracer: Option<&Arc<Tracer>>,
    request: Option<&pb::TraceRequest>,
    default_port: u16,
    sides: u8,
    warmup: Duration,
    dns: bool,
) -> Result<Option<RunTrace>, RunError> {
    let Some(request) = request else {
        return Ok(None);
    };
    let mut spec = trace_spec_of(request, default_port)?;
    spec.dns_ids = dns;
    let tracer = tracer.ok_or(RunError::NoTracing)?;
    let from_ns = monotonic_ns() + u64::try_from(warmup.as_nanos()).unwrap_or(u64::MAX);
    tracer
        .trace(&spec, sides, from_ns)
        .map(Some)
        .map_err(|source| RunError::Trace { source })
}

fn blocking_failed(err: tokio::task::JoinError) -> Status {
    Status::internal(format!("the run's worker failed: {err}"))
}

#[tonic::async_trait]
impl<S: FactsSource> Agent for AgentService<S> {
    async fn get_node_facts(
        &self,
        _request: Request<pb::GetNodeFactsRequest>,
    ) -> Result<Response<pb::GetNodeFactsResponse>, Status> {
        let source = Arc::clone(&self.source);
        // Reading program info is a few syscalls under a mutex: keep it off the async workers.
        let facts = tokio::task::spawn_blocking(move || source.node_facts())
            .await
            .map_err(|err| Status::internal(format!("reading node facts: {err}")))?;
        Ok(Response::new(pb::GetNodeFactsResponse {
            facts: Some(facts.into()),
        }))
    }

    async fn prepare_server(
        &self,
        request: Request<pb::PrepareServerRequest>,
    ) -> Result<Response<pb::PrepareServerResponse>, Status> {
        let mut request = request.into_inner();
        let spec = spec_of(request.spec.as_ref())?;
        let (netns, pod) = self.netns_of(&request.netns)?;
        request.trace = Self::with_interfaces(pod, request.trace.take())?;
        let port = u16::try_from(request.port)
            .map_err(|_| Status::invalid_argument("port: must be 0 to 65535"))?;
        let lease = (request.lease_ms > 0).then(|| Duration::from_millis(request.lease_ms));
        let token: Option<Token> =
            match request.token.len() {
                0 => None,
                _ => {
                    Some(request.token.as_slice().try_into().map_err(|_| {
                        Status::invalid_argument("token: must be empty or 16 bytes")
                    })?)
                }
            };
        if let Some(trace) = &request.trace {
            // Checked before anything is bound; the port is filled in once known.
            trace_spec_of(trace, 1)?;
        }
        spec::check_run_id(&request.run_id).map_err(RunError::from)?;
        let hold = self.admit(
            &request.run_id,
            "server",
            request.spec.as_ref(),
            &request.reservation_id,
        )?;
        let runs = Arc::clone(&self.runs);
        let tracer = self.tracer.clone();
        let run_id = request.run_id.clone();
        let (port, path, token) = tokio::task::spawn_blocking(move || {
            let (warmup, dns) = (spec.warmup, spec.kind == spec::Kind::Dns);
            runs.prepare(
                &request.run_id,
                &spec,
                netns.as_deref(),
                port,
                lease,
                token,
                Some(hold),
                |port| {
                    start_trace(
                        tracer.as_ref(),
                        request.trace.as_ref(),
                        port,
                        side::SERVER,
                        warmup,
                        dns,
                    )
                },
            )
        })
        .await
        .map_err(blocking_failed)??;
        self.samples.server_prepared(run_id).await;
        Ok(Response::new(pb::PrepareServerResponse {
            port: u32::from(port),
            path: path.map(|p| p.display().to_string()).unwrap_or_default(),
            token: token.to_vec(),
        }))
    }

    type StartClientStream = Pin<Box<dyn Stream<Item = Result<pb::ClientEvent, Status>> + Send>>;

    async fn start_client(
        &self,
        request: Request<pb::StartClientRequest>,
    ) -> Result<Response<Self::StartClientStream>, Status> {
        let mut request = request.into_inner();
        let spec = spec_of(request.spec.as_ref())?;
        let (netns, pod) = self.netns_of(&request.netns)?;
        request.trace = Self::with_interfaces(pod, request.trace.take())?;
        let target = if spec.is_intra_pod() {
            let path = std::path::PathBuf::from(&request.target_path);
            if !(generators::local::is_run_path(&path) && path.exists()) {
                return Err(Status::invalid_argument(format!(
                    "target_path: {:?} is not a path PrepareServer returned (under {})",
                    request.target_path,
                    generators::local::RUN_ROOT
                )));
            }
            Target::Path(path)
        } else {
            let ip: std::net::IpAddr = request.target_ip.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "target_ip: {:?} is not an IP address",
                    request.target_ip
                ))
            })?;
            let port = u16::try_from(request.target_port)
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| Status::invalid_argument("target_port: must be 1 to 65535"))?;
            if !self.policy.allows(ip) {
                return Err(RunError::TargetNotAllowed {
                    ip,
                    allowed: self.policy.describe(),
                }
                .into());
            }
            Target::Addr(SocketAddr::new(ip, port))
        };
        let token: Token = if request.token.is_empty() {
            check_external_dns(&spec)?;
            [0; 16]
        } else {
            request.token.as_slice().try_into().map_err(|_| {
                Status::invalid_argument("token: must be the 16 bytes PrepareServer returned")
            })?
        };
        let guard = self.runs.client(&request.run_id, spec.total())?;
        let budget = self.runs.budget();
        if spec.rules.transport != Transport::Local {
            budget
                .admit(u64::from(spec.parallel))
                .map_err(crate::runs::limits::Refusal::from)
                .map_err(RunError::from)?;
        }
        let hold = self.admit(
            &request.run_id,
            "client",
            request.spec.as_ref(),
            &request.reservation_id,
        )?;
        let trace = start_trace(
            self.tracer.as_ref(),
            request.trace.as_ref(),
            0,
            side::CLIENT,
            spec.warmup,
            spec.kind == spec::Kind::Dns,
        )?;
        tracing::info!(run_id = request.run_id, target = ?target, traced = trace.is_some(), "client side started");
        let (tx, rx) = mpsc::channel(16);
        let side = ClientSide {
            guard,
            spec,
            netns,
            target,
            token,
            trace,
            hold,
            budget,
        };
        tokio::spawn(client::drive(side, Arc::clone(&self.samples), tx));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(client_event),
        )))
    }

    async fn finish_server(
        &self,
        request: Request<pb::FinishServerRequest>,
    ) -> Result<Response<pb::FinishServerResponse>, Status> {
        let run_id = request.into_inner().run_id;
        let (side, trace) = self.runs.finish_servers(&run_id).await?;
        let mut result = side_result(side, trace);
        result.conntrack = self
            .samples
            .server_finished(&run_id)
            .await
            .map(|span| conntrack::delta(&span.start, &span.end));
        Ok(Response::new(pb::FinishServerResponse {
            result: Some(result),
        }))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let run_id = request.into_inner().run_id;
        self.samples.forget(&run_id);
        let found = self.runs.cancel(&run_id);
        Ok(Response::new(pb::CancelRunResponse { found }))
    }

    async fn get_clock(
        &self,
        _request: Request<pb::GetClockRequest>,
    ) -> Result<Response<pb::GetClockResponse>, Status> {
        Ok(Response::new(pb::GetClockResponse {
            monotonic_ns: monotonic_ns(),
            boot_id: crate::stages::boot_id(),
        }))
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let request = request.into_inner();
        let holder = holder_of(request.holder.as_ref())?;
        let class = class_of(request.class)?;
        let lease = Duration::from_millis(request.lease_ms);
        if lease.is_zero() || lease > reservations::MAX_LEASE {
            return Err(Status::invalid_argument(format!(
                "lease_ms: must be 1 to {} (milliseconds), got {}",
                reservations::MAX_LEASE.as_millis(),
                request.lease_ms
            )));
        }
        if request.purpose.len() > 256 {
            return Err(Status::invalid_argument(
                "purpose: at most 256 bytes of words",
            ));
        }
        let granted = self
            .reservations
            .reserve(holder, class, lease, request.purpose)
            .map_err(RunError::from)?;
        Ok(Response::new(pb::ReserveResponse {
            reservation_id: granted.id,
            expires_at_unix_ms: granted.expires_at_unix_ms,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let found = self
            .reservations
            .release(&request.into_inner().reservation_id);
        Ok(Response::new(pb::ReleaseResponse { found }))
    }

    async fn list_reservations(
        &self,
        _request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let (held, runs) = self.reservations.list();
        Ok(Response::new(pb::ListReservationsResponse {
            held: held
                .into_iter()
                .map(|r| pb::Reservation {
                    reservation_id: r.id,
                    holder: Some(holder_message(r.holder)),
                    class: class_message(r.class) as i32,
                    purpose: r.purpose,
                    granted_at_unix_ms: r.granted_at_unix_ms,
                    expires_at_unix_ms: r.expires_at_unix_ms,
                })
                .collect(),
            runs: runs
                .into_iter()
                .map(|run| pb::RunHold {
                    run_id: run.run_id,
                    side: run.side.to_owned(),
                    holder: Some(holder_message(run.holder)),
                    class: class_message(run.class) as i32,
                    started_at_unix_ms: run.started_at_unix_ms,
                    ended_at_unix_ms: run.ended_at_unix_ms,
                    kind: run.kind,
                })
                .collect(),
        }))
    }

    type WatchConntrackStream = ReceiverStream<Result<pb::ConntrackSample, Status>>;

    async fn watch_conntrack(
        &self,
        request: Request<pb::WatchConntrackRequest>,
    ) -> Result<Response<Self::WatchConntrackStream>, Status> {
        let request = request.into_inner();
        if !(100..=60_000).contains(&request.interval_ms) {
            return Err(Status::invalid_argument(format!(
                "interval_ms: must be 100 to 60000 (milliseconds), got {}",
                request.interval_ms
            )));
        }
        let watcher = match &self.conntrack {
            Ok(watcher) => Arc::clone(watcher),
            Err(reason) => {
                return Err(Status::failed_precondition(format!(
                    "conntrack cannot be read on this node: {reason}"
                )));
            }
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(watch_conntrack(watcher, request, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Streams samples until `count` is reached or the controller goes away.
async fn watch_conntrack(
    watcher: Arc<Watcher>,
    request: pb::WatchConntrackRequest,
    tx: mpsc::Sender<Result<pb::ConntrackSample, Status>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(request.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<crate::conntrack::Sample> = None;
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
        }
        let reader = Arc::clone(&watcher);
        let census = request.census;
        let sample = match tokio::task::spawn_blocking(move || reader.sample(census)).await {
            Ok(Ok(sample)) => sample,
            Ok(Err(err)) => {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "reading conntrack: {err}"
                    ))))
                    .await;
                return;
            }
            Err(err) => {
                let _ = tx.send(Err(blocking_failed(err))).await;
                return;
            }
        };
        let message = conntrack::sample(&sample, previous.as_ref(), watcher.events_unavailable());
        if tx.send(Ok(message)).await.is_err() {
            return;
        }
        previous = Some(sample);
        sent += 1;
        if request.count != 0 && sent >= request.count {
            return;
        }
    }
}

/// A client side's event as a message.
fn client_event(event: ClientEvent) -> Result<pb::ClientEvent, Status> {
    let event = match event {
        ClientEvent::Progress(progress) => pb::client_event::Event::Progress(pb::Progress {
            elapsed_ms: u64::try_from(progress.elapsed.as_millis()).unwrap_or(u64::MAX),
            warmup: progress.warmup,
            bytes: progress.bytes,
            messages: progress.messages,
            interval_ms: u64::try_from(progress.interval.as_millis()).unwrap_or(u64::MAX),
        }),
        ClientEvent::Finished(Ok(finished)) => {
            let mut result = side_result(finished.side, finished.trace);
            result.conntrack = finished
                .conntrack
                .map(|Span { start, end }| conntrack::delta(&start, &end));
            pb::client_event::Event::Result(result)
        }
        ClientEvent::Finished(Err(reason)) => return Err(Status::internal(reason)),
    };
    Ok(pb::ClientEvent { event: Some(event) })
}

/// A client side with no token sends to a server that is not sonde's: only a `dns` run may,
/// asking a name it was given, paced at most [`MAX_EXTERNAL_DNS_RATE`] queries a second (the
/// target itself was checked against the allowed ranges like any other).
fn check_external_dns(spec: &RunSpec) -> Result<(), Status> {
    if spec.kind != spec::Kind::Dns {
        return Err(Status::invalid_argument(
            "token: must be the 16 bytes PrepareServer returned (only dns runs may go to a server that is not sonde's)",
        ));
    }
    if spec.dns_name.is_none() {
        return Err(Status::invalid_argument(
            "spec.dns_name: required for a dns run to a server that is not sonde's",
        ));
    }
    if !spec.rate.is_some_and(|rate| rate <= MAX_EXTERNAL_DNS_RATE) {
        return Err(Status::invalid_argument(format!(
            "spec.rate: a dns run to a server that is not sonde's is paced at most {MAX_EXTERNAL_DNS_RATE} queries a second (got {})",
            spec.rate
                .map_or_else(|| "as fast as possible".to_owned(), |rate| rate.to_string())
        )));
    }
    Ok(())
}
