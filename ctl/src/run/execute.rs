//! Executes a planned run: for each size and repetition, prepare the server side(s), stream
//! the client side, finish the server side(s). Whatever was measured is kept when something
//! fails half-way, and the failure is reported with the side it happened on.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sonde_proto::{
    kinds::{KindRules, Pattern, Transport},
    v1 as pb,
};

use super::{
    breakdown, clock, follow,
    report::{self, Measurement, Shape},
};
use crate::{
    agent,
    endpoint::{Destination, FollowedService, Place},
    engine::{
        Session,
        reserve::{ReserveError, Reserved},
    },
    error::refuse,
    scenario::spec::Class,
};

/// Everything a run needs, resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The generator: its row of sonde's table of kinds.
    pub kind: &'static KindRules,
    /// The client end as the user named it (`pod/pod1`), for the report.
    pub from: String,
    /// The server end as the user named it.
    pub to: String,
    /// How traffic gets from one end to the other.
    pub path: crate::endpoint::PathKind,
    /// Measured part per measurement.
    pub duration: Duration,
    /// Warm-up per measurement.
    pub warmup: Duration,
    /// Connections or flows.
    pub parallel: u32,
    /// Target rate (0: as fast as possible).
    pub rate: f64,
    /// Stream direction.
    pub direction: pb::Direction,
    /// One plain syscall per message.
    pub plain_io: bool,
    /// Each size: (request or message size, response size for RR kinds).
    pub sizes: Vec<(u64, Option<u64>)>,
    /// Repetitions of each size.
    pub repetitions: u32,
    /// Where the client runs.
    pub source: Place,
    /// Where the servers run and where traffic goes.
    pub destination: Destination,
    /// Deadline for connecting to a daemon and for each unary call.
    pub timeout: Duration,
    /// Show a progress bar (stderr is a terminal and the output is not machine-read).
    pub progress: bool,
    /// Trace the run's packets in the kernel (network kinds).
    pub trace: bool,
    /// Trace only in the daemons' stamping windows (`TraceRequest.windowed`).
    pub trace_windows: bool,
    /// Estimate the clock offset even when both daemons share a kernel.
    pub estimate_clock: bool,
    /// How it loads its nodes, for their reservations.
    pub class: Class,
    /// DNS: the name asked (empty: the run's own, answered by sonde's responder).
    pub dns_name: String,
    /// DNS: the record types asked, in turn (empty: A).
    pub dns_types: Vec<String>,
    /// The timeline's interval (`None`: 1 s, or longer for a run of more than an hour).
    pub interval: Option<Duration>,
}

impl Plan {
    /// The timeline interval a run asks its client for, in ms: as set, or 1 s, or what keeps a
    /// long run within the daemon's 3,600 intervals.
    pub fn interval_ms(&self) -> u64 {
        let duration_ms = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX);
        match self.interval {
            Some(interval) => u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            None => duration_ms.div_ceil(3600).max(1000),
        }
    }
}

/// The two ends of a run, resolved, with how users named them.
#[derive(Debug, Clone)]
pub struct Ends {
    /// The client end as the user named it (`pod/pod1`).
    pub from: String,
    /// The server end as the user named it.
    pub to: String,
    /// Where the client runs.
    pub source: Place,
    /// Where the servers run and where traffic goes.
    pub destination: Destination,
    /// How traffic gets from one to the other.
    pub path: crate::endpoint::PathKind,
}

impl Plan {
    /// One measurement of `kind` between `ends` with the defaults of `sondectl run` (10 s, 1 s
    /// of warm-up, one connection, as fast as possible, the kind's default size, traced); the
    /// caller changes what it needs. Refuses an intra-pod kind between two places.
    pub fn between(
        kind: crate::cli::RunKindArg,
        ends: Ends,
        timeout: Duration,
    ) -> crate::Result<Self> {
        if kind.is_intra_pod()
            && !(ends.destination.servers.len() == 1 && ends.destination.servers[0] == ends.source)
        {
            refuse!(
                "{} is an intra-pod baseline: --from and --to must be the same pod (or node)",
                kind.name()
            );
        }
        let size = kind.default_size();
        Ok(Self {
            kind: kind.rules(),
            from: ends.from,
            to: ends.to,
            path: ends.path,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            parallel: 1,
            rate: 0.0,
            direction: pb::Direction::ClientToServer,
            plain_io: false,
            sizes: vec![(size, kind.is_request_response().then_some(size))],
            repetitions: 1,
            source: ends.source,
            destination: ends.destination,
            timeout,
            progress: false,
            trace: true,
            trace_windows: false,
            estimate_clock: false,
            class: Class::of_kind(kind),
            dns_name: String::new(),
            dns_types: Vec::new(),
            interval: None,
        })
    }

    /// Whether the run's packets are traced: asked for, and a kind that crosses the network.
    fn traced(&self) -> bool {
        // A server that is not sonde's has no daemon to stamp its side.
        self.trace && self.kind.transport != Transport::Local && !self.destination.is_external()
    }

    fn protocol(&self) -> &'static str {
        match self.kind.transport {
            Transport::Udp => "udp",
            _ => "tcp",
        }
    }

    /// What the daemon of `server` traces: the flow from the client to it, at its pod's veth
    /// and, when the client is elsewhere, at its node's uplink.
    fn server_trace(&self, server: &Place) -> Option<pb::TraceRequest> {
        let (client_ip, server_ip) = (self.source.ip?, server.ip?);
        let flow = |client_ip: std::net::IpAddr| pb::TracedFlow {
            client_ip: client_ip.to_string(),
            server_ip: server_ip.to_string(),
            server_port: 0,
            protocol: self.protocol().to_owned(),
        };
        let mut flows = vec![flow(client_ip)];
        if let Some(masqueraded) = self.hairpin(server) {
            flows.push(flow(masqueraded));
        }
        Some(pb::TraceRequest {
            flows,
            pod_interface: server.host_interface.clone().unwrap_or_default(),
            uplink_interface: if server.agent == self.source.agent {
                String::new()
            } else {
                server.uplink.clone().unwrap_or_default()
            },
            uplink_toward: uplink_toward(server, server.agent != self.source.agent, client_ip),
            sample_one_in: self.kind.trace_sampling,
            ways: self.traced_ways() as i32,
            windowed: self.trace_windows,
        })
    }

    /// What the client's daemon traces: the flow to the target (a ClusterIP before DNAT) and
    /// to every server behind it.
    fn client_trace(
        &self,
        target_port: u16,
        servers: &[(&Place, u16)],
    ) -> Option<pb::TraceRequest> {
        let client_ip = self.source.ip?.to_string();
        let flow = |ip: std::net::IpAddr, port: u16| pb::TracedFlow {
            client_ip: client_ip.clone(),
            server_ip: ip.to_string(),
            server_port: u32::from(port),
            protocol: self.protocol().to_owned(),
        };
        let mut flows = vec![flow(self.destination.ip, target_port)];
        for (server, port) in servers {
            if let Some(ip) = server.ip
                && (ip, *port) != (self.destination.ip, target_port)
            {
                flows.push(flow(ip, *port));
                if let Some(masqueraded) = self.hairpin(server) {
                    flows.push(pb::TracedFlow {
                        client_ip: masqueraded.to_string(),
                        ..flow(ip, *port)
                    });
                }
            }
        }
        let remote = servers.iter().find(|(s, _)| s.agent != self.source.agent);
        Some(pb::TraceRequest {
            flows,
            pod_interface: self.source.host_interface.clone().unwrap_or_default(),
            uplink_interface: if remote.is_some() {
                self.source.uplink.clone().unwrap_or_default()
            } else {
                String::new()
            },
            uplink_toward: match remote.and_then(|(server, _)| server.ip) {
                Some(ip) => uplink_toward(&self.source, true, ip),
                None => String::new(),
            },
            sample_one_in: self.kind.trace_sampling,
            ways: self.traced_ways() as i32,
            windowed: self.trace_windows,
        })
    }

    /// The address the client's packets to `server` carry after masquerade, when the run goes
    /// through a Service from a pod to itself (hairpin).
    fn hairpin(&self, server: &Place) -> Option<std::net::IpAddr> {
        let through_service =
            self.destination.servers.len() > 1 || self.destination.ip != server.ip?;
        (through_service && server == &self.source)
            .then_some(self.source.hairpin_source)
            .flatten()
    }

    /// Which way the followed packets go: a one-way stream's ACKs are never stamped, so the
    /// uplinks need only the classifier its data passes.
    fn traced_ways(&self) -> pb::TracedWays {
        match (self.kind.pattern, self.direction) {
            (Pattern::Stream, pb::Direction::ClientToServer) => pb::TracedWays::ToServer,
            (Pattern::Stream, pb::Direction::ServerToClient) => pb::TracedWays::ToClient,
            _ => pb::TracedWays::Both,
        }
    }

    /// How the kind and direction shape the figures.
    pub fn shape(&self) -> Shape {
        match (self.kind.pattern, self.kind.transport, self.direction) {
            (Pattern::RequestResponse, ..) => Shape::RequestResponse,
            (Pattern::Stream, Transport::Udp, _) => Shape::Datagrams,
            (Pattern::Stream, _, pb::Direction::ServerToClient) => Shape::StreamReverse,
            (Pattern::Stream, _, pb::Direction::Both) => Shape::StreamBoth,
            (Pattern::Stream, ..) => Shape::StreamForward,
        }
    }

    /// How measurement `repetition` of size `size_index` is read into a report.
    fn sample(&self, size_index: usize, repetition: u32) -> report::Sample {
        let (size, response_size) = self.sizes[size_index];
        report::Sample {
            shape: self.shape(),
            transport: self.kind.transport,
            size,
            response_size,
            repetition,
            server_side: !self.destination.is_external(),
        }
    }
}

/// One measurement, and how long it waited for its nodes.
#[derive(Debug)]
pub struct Measured {
    /// What it measured (or why it could not).
    pub measurement: Measurement,
    /// Time spent waiting for nodes others held.
    pub waited: Duration,
    /// Whom it waited for.
    pub waits: Vec<String>,
}

/// Runs one measurement under a reservation of its nodes, or returns `None` if the session is
/// cancelled meanwhile (both sides are then asked to stop). Never fails otherwise: failures
/// are recorded in the measurement.
pub async fn measure(
    plan: &Plan,
    session: &Session,
    size_index: usize,
    repetition: u32,
) -> Option<Measured> {
    if session.is_cancelled() {
        return None;
    }
    let run_id = session.run_id(&format!("{size_index}-{repetition}"));
    let agents: Vec<String> = plan
        .destination
        .servers
        .iter()
        .map(|s| s.agent.clone())
        .chain([plan.source.agent.clone()])
        .collect();
    let lease = plan.warmup + plan.duration + plan.timeout * 4 + Duration::from_secs(30);
    let purpose = format!("{} {} -> {}", plan.kind.name, plan.from, plan.to);
    let reserved = match session.reserve(&agents, plan.class, lease, &purpose).await {
        Ok(reserved) => reserved,
        Err(ReserveError::Cancelled) => return None,
        Err(err) => {
            let (waited, waits) = match &err {
                ReserveError::Refused { why, waited } => (*waited, vec![why.clone()]),
                _ => (Duration::ZERO, Vec::new()),
            };
            let measurement = report::measurement(
                &plan.sample(size_index, repetition),
                None,
                None,
                &report::LiveCounts::default(),
                vec![err.to_string()],
            );
            return Some(Measured {
                measurement,
                waited,
                waits,
            });
        }
    };
    session.in_flight(&run_id, agents.clone());
    let cancellation = session.cancellation();
    let measurement = tokio::select! {
        measurement = measure_run(plan, session, &run_id, &reserved, size_index, repetition) => Some(measurement),
        () = cancellation.cancelled() => None,
    };
    if measurement.is_none() {
        session.cancel_run(&run_id, &agents).await;
    }
    session.landed(&run_id);
    session.release(&reserved).await;
    measurement.map(|measurement| Measured {
        measurement,
        waited: reserved.waited,
        waits: reserved.waits.clone(),
    })
}

/// How often a run through a lab Service looks for pods that joined it.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Asks `server`'s daemon for a server side.
async fn prepare_at(
    session: &Session,
    server: &Place,
    request: pb::PrepareServerRequest,
) -> crate::Result<pb::PrepareServerResponse> {
    let mut client = session.agent(&server.agent).await?;
    client
        .prepare_server(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| {
            crate::Error::Daemon(format!(
                "{} refused the server side: {}",
                place_name(server),
                agent::status_text(&status)
            ))
        })
}

/// The three phases of one measurement under `run_id`.
async fn measure_run(
    plan: &Plan,
    session: &Session,
    run_id: &str,
    reserved: &Reserved,
    size_index: usize,
    repetition: u32,
) -> Measurement {
    let run_id = run_id.to_owned();
    let (size, response_size) = plan.sizes[size_index];
    let spec = pb::RunSpec {
        kind: plan.kind.kind as i32,
        duration_ms: u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX),
        warmup_ms: u64::try_from(plan.warmup.as_millis()).unwrap_or(u64::MAX),
        parallel: plan.parallel,
        request_size: size,
        response_size: response_size.unwrap_or(0),
        rate: plan.rate,
        direction: plan.direction as i32,
        plain_io: plan.plain_io,
        dns_name: plan.dns_name.clone(),
        dns_types: plan.dns_types.clone(),
        interval_ms: plan.interval_ms(),
    };
    let mut errors = Vec::new();

    // Phase 1: every server side. A server that is not sonde's has none, and no token.
    let token: Vec<u8> = if plan.destination.is_external() {
        Vec::new()
    } else {
        let mut token = vec![0_u8; 16];
        let _ = getrandom::fill(&mut token);
        token
    };
    let lease_ms =
        u64::try_from((plan.warmup + plan.duration + Duration::from_secs(30)).as_millis())
            .unwrap_or(u64::MAX);
    let request_for = |server: &Place, trace: Option<pb::TraceRequest>| pb::PrepareServerRequest {
        run_id: run_id.clone(),
        spec: Some(spec.clone()),
        netns: server.netns.clone(),
        port: u32::from(plan.destination.server_port.unwrap_or(0)),
        lease_ms,
        token: token.clone(),
        trace,
        reservation_id: reserved.id_at(&server.agent),
    };
    let mut prepared = Vec::new();
    for server in &plan.destination.servers {
        let trace = if plan.traced() {
            plan.server_trace(server)
        } else {
            None
        };
        match prepare_at(session, server, request_for(server, trace)).await {
            Ok(answer) => prepared.push((server, answer)),
            Err(err) => errors.push(crate::error::chain(&err)),
        }
    }
    let port = plan.destination.port.or_else(|| {
        prepared
            .first()
            .and_then(|(_, a)| u16::try_from(a.port).ok())
    });
    let target_path = prepared
        .first()
        .map(|(_, a)| a.path.clone())
        .unwrap_or_default();

    // Phase 2: the client side, if every server is ready; through a lab Service, servers on
    // the pods that join it meanwhile; through a cluster's, a watch of its EndpointSlices.
    let mut joined: Vec<Place> = Vec::new();
    let slices = match &plan.destination.follow {
        Some(FollowedService::Cluster {
            client,
            namespace,
            service,
        }) => Some(follow::SliceWatch::start(
            client.clone(),
            namespace,
            service,
        )),
        _ => None,
    };
    let mut client_result = None;
    let mut live = report::LiveCounts::default();
    if errors.is_empty()
        && let Some(port) = port
    {
        let servers: Vec<(&Place, u16)> = prepared
            .iter()
            .filter_map(|(place, answer)| Some((*place, u16::try_from(answer.port).ok()?)))
            .collect();
        let request = pb::StartClientRequest {
            run_id: run_id.clone(),
            spec: Some(spec.clone()),
            netns: plan.source.netns.clone(),
            target_ip: plan.destination.ip.to_string(),
            target_port: u32::from(port),
            token: token.clone(),
            target_path,
            trace: if plan.traced() {
                plan.client_trace(port, &servers)
            } else {
                None
            },
            reservation_id: reserved.id_at(&plan.source.agent),
        };
        let client = run_client(plan, session, request, size, &mut live);
        let outcome = match &plan.destination.follow {
            None | Some(FollowedService::Cluster { .. }) => client.await,
            Some(FollowedService::Lab { lab, service }) => {
                let known = plan.destination.servers.iter();
                let mut known: Vec<String> = known.filter_map(|p| p.pod.clone()).collect();
                tokio::pin!(client);
                let mut tick = tokio::time::interval(FOLLOW_EVERY);
                loop {
                    tokio::select! {
                        outcome = &mut client => break outcome,
                        _ = tick.tick() => {
                            // A pod that joined the Service (ready or not) gets its server side.
                            let Ok(pods) = crate::endpoint::service_pods(lab, service) else {
                                continue;
                            };
                            for place in pods {
                                let Some(pod) = place.pod.clone() else { continue };
                                if known.contains(&pod) {
                                    continue;
                                }
                                known.push(pod);
                                match prepare_at(session, &place, request_for(&place, None)).await {
                                    Ok(_) => joined.push(place),
                                    Err(err) => errors.push(format!(
                                        "a pod that joined the Service: {}",
                                        crate::error::chain(&err)
                                    )),
                                }
                            }
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(result) => client_result = Some(result),
            Err(err) => errors.push(format!(
                "client side on {}: {}",
                place_name(&plan.source),
                crate::error::chain(&err)
            )),
        }
    }

    // Phase 3: every daemon holding a server side returns what it measured (once per daemon:
    // it merges the sides it holds).
    let mut server_results = Vec::new();
    let mut server_agents = Vec::new();
    let mut finished_agents: Vec<&str> = Vec::new();
    let servers = prepared.iter().map(|(server, _)| *server).chain(&joined);
    for server in servers {
        if finished_agents.contains(&server.agent.as_str()) {
            continue;
        }
        finished_agents.push(&server.agent);
        let finished = match session.agent(&server.agent).await {
            Ok(mut client) => client
                .finish_server(pb::FinishServerRequest {
                    run_id: run_id.clone(),
                })
                .await
                .map_err(|status| crate::Error::Daemon(agent::status_text(&status))),
            Err(err) => Err(err),
        };
        match finished {
            Ok(answer) => {
                if let Some(result) = answer.into_inner().result {
                    server_results.push(result);
                    server_agents.push(server.agent.clone());
                }
            }
            Err(err) => errors.push(format!(
                "server side on {}: {}",
                place_name(server),
                crate::error::chain(&err)
            )),
        }
    }
    let server = report::merge_sides(&server_results);
    let sample = plan.sample(size_index, repetition);
    let mut measurement = report::measurement(
        &sample,
        client_result.as_ref(),
        server.as_ref(),
        &live,
        errors,
    );
    if let Some(timeline) = measurement.timeline.as_mut() {
        let start = timeline.started_at_unix_ms;
        let (seen, source) = match (&plan.destination.follow, slices) {
            (_, Some(watch)) => (watch.stop(), "endpoint-slice"),
            (Some(FollowedService::Lab { lab, service }), None) => {
                let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                let from = start.saturating_sub(ms(plan.warmup));
                let seen = follow::lab_events(lab, service, from, start + ms(plan.duration));
                (seen, "lab-rollout")
            }
            _ => (Vec::new(), ""),
        };
        timeline.events = follow::on_timeline(seen, source, start, plan.warmup, plan.duration);
    }
    // Each node's table once: the client's node first (its side spans the whole run).
    let sides = client_result
        .iter()
        .map(|result| (node_label(&plan.source), result))
        .chain(
            server_agents
                .iter()
                .zip(&server_results)
                .map(|(agent, result)| (node_of(plan, agent), result)),
        );
    for (node, result) in sides {
        if let Some(delta) = &result.conntrack
            && !measurement.conntrack.iter().any(|seen| seen.node == node)
        {
            measurement
                .conntrack
                .push(report::ConntrackReport::new(node, delta));
        }
    }
    if let Some(client) = client_result.as_ref().and_then(|c| c.trace.as_ref()) {
        let remote: Vec<(String, &pb::TraceResult)> = server_agents
            .iter()
            .zip(&server_results)
            .filter(|(agent, _)| **agent != plan.source.agent)
            .filter_map(|(agent, result)| Some((node_of(plan, agent), result.trace.as_ref()?)))
            .collect();
        let clock = match server_agents.iter().find(|a| **a != plan.source.agent) {
            Some(server_agent) => {
                session
                    .clock(&plan.source.agent, server_agent, plan.estimate_clock)
                    .await
            }
            None => Ok(clock::ClockOffset::SAME_KERNEL),
        };
        match clock {
            Ok(clock) => {
                let client_node = node_label(&plan.source);
                let servers: Vec<breakdown::SideTrace<'_>> = remote
                    .iter()
                    .map(|(node, trace)| breakdown::SideTrace { node, trace })
                    .collect();
                measurement.kernel = Some(breakdown::build(
                    breakdown::SideTrace {
                        node: &client_node,
                        trace: client,
                    },
                    &servers,
                    clock,
                    measurement.latency.as_ref().map(|l| l.mean_ns),
                ));
            }
            Err(err) => measurement.errors.push(format!(
                "kernel breakdown: the clocks could not be compared: {}",
                crate::error::chain(&err)
            )),
        }
    }
    measurement
}

/// The other side's address, for a daemon to find its uplink by, when the side's place does
/// not name the uplink (a Kubernetes node, whose interfaces only its daemon knows).
fn uplink_toward(place: &Place, remote: bool, other: std::net::IpAddr) -> String {
    if remote && place.uplink.is_none() {
        other.to_string()
    } else {
        String::new()
    }
}

/// The node name of a server daemon, for reports.
fn node_of(plan: &Plan, agent: &str) -> String {
    plan.destination
        .servers
        .iter()
        .find(|s| s.agent == agent)
        .map(node_label)
        .unwrap_or_else(|| agent.to_owned())
}

/// The node a place is on, or its daemon's address when the node is not known.
fn node_label(place: &Place) -> String {
    place.node.clone().unwrap_or_else(|| place.agent.clone())
}

/// Streams a client side: progress to the bar and into `live` (what is left of the
/// measurement if the side fails), then its result.
async fn run_client(
    plan: &Plan,
    session: &Session,
    request: pb::StartClientRequest,
    size: u64,
    live: &mut report::LiveCounts,
) -> crate::Result<pb::SideResult> {
    let mut client = session.agent(&plan.source.agent).await?;
    let total = plan.warmup + plan.duration;
    // No deadline of the channel's on a stream that lasts the run: give it the run's length.
    let mut call = tonic::Request::new(request);
    call.set_timeout(total + plan.timeout + Duration::from_secs(10));
    let mut stream = client
        .start_client(call)
        .await
        .map_err(|status| {
            crate::Error::Daemon(format!("refused: {}", agent::status_text(&status)))
        })?
        .into_inner();
    let bar = progress_bar(plan, size, total);
    let result = loop {
        let event = stream.message().await.map_err(|status| {
            crate::Error::Daemon(format!("the stream broke: {}", agent::status_text(&status)))
        })?;
        match event.and_then(|e| e.event) {
            Some(pb::client_event::Event::Progress(progress)) => {
                live.add(&progress, plan.warmup);
                if let Some(bar) = &bar {
                    let seconds = progress.interval_ms.max(1) as f64 / 1000.0;
                    bar.set_position(progress.elapsed_ms.min(total.as_millis() as u64));
                    bar.set_message(format!(
                        "{}{}  {:.0} msg/s",
                        if progress.warmup { "warm-up  " } else { "" },
                        report::bits(progress.bytes as f64 * 8.0 / seconds),
                        progress.messages as f64 / seconds
                    ));
                }
            }
            Some(pb::client_event::Event::Result(result)) => break result,
            None => refuse!("the stream ended without a result"),
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result)
}

fn progress_bar(plan: &Plan, size: u64, total: Duration) -> Option<ProgressBar> {
    if !plan.progress {
        return None;
    }
    let bar = ProgressBar::new(total.as_millis() as u64);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(super::sizes::human(size));
    Some(bar)
}

fn place_name(place: &Place) -> String {
    match (&place.pod, &place.node) {
        (Some(pod), _) => format!("pod/{pod}"),
        (None, Some(node)) => format!("node/{node}"),
        (None, None) => place.agent.clone(),
    }
}
