//! Where the time goes: per-stage kernel latency, connect times and retransmits of exactly a
//! run's own packets.
//!
//! A side of a run asks the [`Tracer`] for a [`RunTrace`]: its flows go into the kernel's flow
//! map, the stage classifiers are attached (as TCX links) to the pod's veth and the node's
//! uplink, and the socket tracepoints are attached while any run is traced. Events come back
//! through one ring buffer, read by one thread and handed to the run's [`Collector`] by flow
//! number. Dropping the trace (or the daemon, however it dies) releases everything: links are
//! owned by this process and never pinned.
//!
//! # Layout
//! - [`collect`]: events to per-packet stamps to stage latencies (pure).
//! - [`hooks`]: the programs, loaded once, attached while someone needs them.
//! - [`windows`]: when a sampled stream is stamped (a tenth of each second).

pub mod collect;
pub mod cost;
pub mod drops;
pub mod events;
pub mod hooks;
pub mod stats;
pub mod windows;

use std::{
    collections::HashMap,
    io::Write as _,
    net::IpAddr,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::net::UnixStream,
    },
    sync::{Arc, Mutex, MutexGuard, Weak},
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use events::EventReader;
use sonde_common::{
    maps,
    stages::{
        CONF_DROP_REASON_OFFSET, FlowInfo, FlowKey, LOST_EVENTS, MAX_FLOWS, MAX_SAMPLE_SHIFT,
    },
};

use crate::{Error, Result, generators::measure::monotonic_ns, object::EbpfObject};
use collect::{Collected, Collector};
use drops::DropFormat;
use hooks::{Hooks, ProgramCost};

/// What one side of a run asks to trace on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSpec {
    /// The run's flows as packets on this node carry them.
    pub flows: Vec<TracedFlow>,
    /// Host side of the run's pod veth, when the side is in a pod on this node.
    pub pod_interface: Option<String>,
    /// The node's uplink, when the other side is on another node.
    pub uplink_interface: Option<String>,
    /// Packets are followed 1 in 2^`sample_shift`.
    pub sample_shift: u8,
    /// Which way the followed packets go.
    pub ways: Ways,
    /// The run's UDP datagrams are DNS messages: a packet is known by its DNS message ID.
    pub dns_ids: bool,
}

/// Which way a run's followed packets go: a one-way stream's uplinks need only the classifier
/// its data passes (the other way carries only ACKs, never stamped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ways {
    /// Both ways.
    #[default]
    Both,
    /// Client to server only.
    ToServer,
    /// Server to client only.
    ToClient,
}

impl Ways {
    /// Which of a node's two directions carry followed packets, for a node holding `sides`.
    pub fn on_node(self, sides: u8) -> hooks::Passes {
        use sonde_common::stages::side::{CLIENT, SERVER};
        let (sender, receiver) = match self {
            Self::Both => {
                return hooks::Passes {
                    leaving: true,
                    arriving: true,
                };
            }
            Self::ToServer => (CLIENT, SERVER),
            Self::ToClient => (SERVER, CLIENT),
        };
        hooks::Passes {
            leaving: sides & sender != 0,
            arriving: sides & receiver != 0,
        }
    }
}

/// A flow by its server endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracedFlow {
    /// The client's address.
    pub client: IpAddr,
    /// The server's address as packets carry it on this node.
    pub server: IpAddr,
    /// The server's port.
    pub server_port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
}

impl TracedFlow {
    fn key(&self) -> FlowKey {
        FlowKey {
            client: mapped(self.client),
            server: mapped(self.server),
            server_port: self.server_port,
            protocol: self.protocol,
            pad: 0,
        }
    }
}

/// What a finished trace reports.
#[derive(Debug, Default)]
pub struct TraceReport {
    /// Stages, uplink stamps, connect times, retransmits.
    pub collected: Collected,
    /// Events the kernel could not deliver while the run was traced (all runs').
    pub events_lost: u64,
    /// What each program cost meanwhile.
    pub programs: Vec<ProgramCost>,
    /// Hooks in use.
    pub hooks: Vec<String>,
    /// What could not be traced, and why.
    pub notes: Vec<String>,
    /// The kernel's boot ID.
    pub boot_id: String,
    /// Followed packets dropped, by the kernel's reason (named) and last point.
    pub drops: Vec<NamedDrops>,
}

/// Drops of one reason after one point, the reason named as this kernel names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDrops {
    /// `NETFILTER_DROP`, `SOCKET_RCVBUFF`, ...
    pub reason: String,
    /// The last point the packets were stamped at.
    pub point: u8,
    /// Packets dropped.
    pub count: u64,
    /// Their packet keys (the first ones), to count a drop two daemons saw once.
    pub keys: Vec<u64>,
}

/// How often the events reader looks while runs are traced, and while none is.
const TRACING_POLL_MS: i32 = 100;
const IDLE_POLL_MS: i32 = 1000;

/// Collectors by flow number: where the reader thread hands each event.
type Dispatch = HashMap<u32, Vec<Arc<Mutex<Collector>>>>;

/// The daemon's tracing: maps, programs and the events reader.
pub struct Tracer {
    hooks: Mutex<Hooks>,
    registry: Mutex<Registry>,
    events: Mutex<EventReader>,
    dispatch: Mutex<Dispatch>,
    boot_id: String,
    /// This kernel's drop reasons; `None` when the tracepoint's format could not be read.
    drop_format: Option<DropFormat>,
    /// Opens and closes the stamping windows while any run is traced. Locked before `hooks`
    /// wherever both are, and never dropped under `hooks` (its thread takes that lock).
    windows: Mutex<Option<windows::Windows>>,
    /// The events reader thread, and the socket whose byte stops it (see [`Tracer::stop`]).
    reader: Mutex<Option<(JoinHandle<()>, UnixStream)>>,
}

/// Reads events until [`Tracer::stop`] writes to `stopped` (or the tracer is gone); wakes only
/// when the kernel has some.
fn read_events(tracer: &Weak<Tracer>, stopped: &UnixStream) {
    loop {
        let Some(tracer) = tracer.upgrade() else {
            return;
        };
        let ring = lock(&tracer.events).ring().as_fd().as_raw_fd();
        let mut fds = [
            libc::pollfd {
                fd: ring,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stopped.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // The kernel wakes us only when the buffer is a quarter full (see the programs):
        // poll often while runs are traced, rarely when idle.
        let tracing = !lock(&tracer.dispatch).is_empty();
        let timeout_ms = if tracing {
            TRACING_POLL_MS
        } else {
            IDLE_POLL_MS
        };
        // SAFETY: two valid pollfds; the ring buffer (and its fd) lives as long as `tracer`,
        // which this holds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            tracing::error!("polling the events ring buffer failed: tracing stops");
            return;
        }
        if fds[1].revents != 0 {
            tracer.drain(Drain::RingOnly);
            return;
        }
        // Idle when it went to sleep, only the buffer is emptied: flushing costs an
        // interrupt per CPU. A run that started meanwhile gets its events at the next
        // read, flushed and in order.
        tracer.drain(if tracing {
            Drain::Window
        } else {
            Drain::RingOnly
        });
    }
}

/// One trace's use of a flow key: the sides it holds here and how it samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Use {
    sides: u8,
    sample_shift: u8,
    dns_ids: bool,
}

/// The flows traced now, as the kernel's maps hold them.
struct Registry {
    flows: BpfHashMap<MapData, FlowKey, FlowInfo>,
    ports: Array<MapData, u8>,
    lost: PerCpuArray<MapData, u64>,
    /// Per key: its flow number and each trace's use of it.
    keys: HashMap<FlowKey, (u32, Vec<Use>)>,
    /// Users of each server port.
    /// The sample shift of each user of each server port.
    port_users: HashMap<u16, Vec<(u8, bool)>>,
    /// Flow numbers handed out and returned.
    next_flow: u32,
    free_flows: Vec<u32>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("hooks", &self.hooks)
            .field("boot_id", &self.boot_id)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, taking over a poisoned one: every value guarded here stays consistent
/// between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn take_map(object: &mut EbpfObject, name: &'static str) -> Result<aya::maps::Map> {
    object.take_map(name).ok_or(Error::MissingMap { name })
}

impl Tracer {
    /// Takes the stage maps out of `probes`, loads the stage programs (the BTF tracepoint needs
    /// the kernel's BTF, so this runs at start while it is parsed) and starts the events reader.
    pub fn new(object: Arc<Mutex<EbpfObject>>, btf: Option<&aya::Btf>) -> Result<Arc<Self>> {
        let drop_format = DropFormat::read();
        let (registry, events, conf) = {
            let mut guard = lock(&object);
            let map_error = |name| move |source| Error::Map { name, source };
            let flows = BpfHashMap::try_from(take_map(&mut guard, maps::FLOWS)?)
                .map_err(map_error(maps::FLOWS))?;
            let ports = Array::try_from(take_map(&mut guard, maps::SERVER_PORTS)?)
                .map_err(map_error(maps::SERVER_PORTS))?;
            let lost = PerCpuArray::try_from(take_map(&mut guard, maps::STAGE_COUNTERS)?)
                .map_err(map_error(maps::STAGE_COUNTERS))?;
            let events = RingBuf::try_from(take_map(&mut guard, maps::EVENTS)?)
                .map_err(map_error(maps::EVENTS))?;
            let mut conf: Array<MapData, u32> =
                Array::try_from(take_map(&mut guard, maps::TRACEPOINT_CONF)?)
                    .map_err(map_error(maps::TRACEPOINT_CONF))?;
            if let Some(format) = &drop_format {
                conf.set(CONF_DROP_REASON_OFFSET, format.reason_offset, 0)
                    .map_err(map_error(maps::TRACEPOINT_CONF))?;
            }
            let registry = Registry {
                flows,
                ports,
                lost,
                keys: HashMap::new(),
                port_users: HashMap::new(),
                next_flow: 0,
                free_flows: Vec::new(),
            };
            (registry, events, conf)
        };
        let hooks = Hooks::load(object, btf, conf)?;
        let tracer = Arc::new(Self {
            hooks: Mutex::new(hooks),
            registry: Mutex::new(registry),
            events: Mutex::new(EventReader::new(events)),
            dispatch: Mutex::new(HashMap::new()),
            boot_id: boot_id(),
            drop_format,
            windows: Mutex::new(None),
            reader: Mutex::new(None),
        });
        let thread_error = |source| Error::Bind {
            addr: "events reader thread".to_owned(),
            source,
        };
        let (stop, stopped) = UnixStream::pair().map_err(thread_error)?;
        // The reader holds the tracer only while it reads: dropped, the tracer unloads.
        let reader = Arc::downgrade(&tracer);
        let thread = std::thread::Builder::new()
            .name("sonde-events".to_owned())
            .spawn(move || read_events(&reader, &stopped))
            .map_err(thread_error)?;
        *lock(&tracer.reader) = Some((thread, stop));
        Ok(tracer)
    }

    /// Stops the events reader (handing on what the kernel still has) and waits for it: the
    /// daemon's shutdown, after which the last holder's drop unloads the programs.
    pub fn stop(&self) {
        let Some((thread, mut stop)) = lock(&self.reader).take() else {
            return;
        };
        let _ = stop.write_all(&[1]);
        if thread.join().is_err() {
            tracing::error!("the events reader panicked");
        }
    }

    /// Lets the pods' packet counters stamp traced pods' packets, one program per packet on
    /// those hooks instead of two (see `hooks::Hooks::attach_tc`).
    pub fn use_pod_counters(&self, pods: Arc<crate::pods::PodMap>) {
        lock(&self.hooks).use_pod_counters(pods);
    }

    /// Starts tracing one side of a run: `sides` are the [`side`] bits this node holds, and
    /// events before `from_ns` (CLOCK_MONOTONIC) are the warm-up's.
    pub fn trace(self: &Arc<Self>, spec: &TraceSpec, sides: u8, from_ns: u64) -> Result<RunTrace> {
        let mut trace = RunTrace::empty(self, from_ns, sides);
        let mut windows = lock(&self.windows);
        // Interfaces first: a wrong name is refused before anything is registered.
        let mut hooks = lock(&self.hooks);
        let passes = spec.ways.on_node(sides);
        for (iface, role) in [
            (&spec.pod_interface, hooks::Role::Pod),
            (&spec.uplink_interface, hooks::Role::Uplink),
        ] {
            if let Some(iface) = iface {
                let used = hooks.attach_tc(iface, role, passes)?;
                let how = match role {
                    _ if used.iter().any(hooks::TcUse::in_counter) => {
                        " (in the packet counter's links)"
                    }
                    hooks::Role::Uplink => passes.uplink_note(),
                    hooks::Role::Pod => "",
                };
                trace.hooks.push(format!("tc:{} {iface}{how}", role.name()));
                trace.attached.extend(used);
            }
        }
        // A sampled stream's sends are not stamped (see `hooks::SEND_HOOK`).
        let stamp_sends = spec.sample_shift == 0;
        let (sockets, notes) = hooks.attach_sockets(stamp_sends);
        trace.sockets = Some(stamp_sends);
        trace.hooks.extend(sockets);
        trace.notes.extend(notes);
        if self.drop_format.is_none() {
            // The format gives the reasons' names, and the classic tracepoint's reason offset.
            trace.notes.push(if hooks.drops_by_classic_tracepoint() {
                "drops not followed: the skb:kfree_skb tracepoint's format could not be read"
            } else {
                "drop reasons are numbers: the skb:kfree_skb tracepoint's format could not be read"
            }
            .to_owned());
        }
        trace.baseline = hooks.costs();
        trace.windows_before = hooks.windows();
        drop(hooks);
        if windows.is_none() {
            match windows::Windows::start(Arc::downgrade(self)) {
                Ok(started) => {
                    if let Some(reason) = &started.stats_unavailable {
                        trace
                            .notes
                            .push(format!("program times unavailable: {reason}"));
                    }
                    if let Some(reason) = &started.not_prompt {
                        trace.notes.push(format!(
                            "stamping windows kept at an ordinary priority ({reason}): on a \
                             busy node they may open late"
                        ));
                    }
                    *windows = Some(started);
                }
                Err(err) => trace.notes.push(format!(
                    "stamping windows not kept (stamping throughout): {err}"
                )),
            }
        }
        drop(windows);
        if spec.sample_shift > 0 {
            trace.notes.push(format!(
                "1 packet in {} followed (sampled by packet id, the same ones on every node)",
                1_u32 << spec.sample_shift
            ));
        }
        let used = Use {
            sides,
            sample_shift: spec.sample_shift,
            dns_ids: spec.dns_ids,
        };
        self.register(&mut trace, &spec.flows, used)?;
        Ok(trace)
    }

    /// Registers `flows` without attaching anything, so that packets handed to the classifiers
    /// by [`Tracer::test_run`] are stamped (1 in 2^`sample_shift`, as a run samples them): for
    /// parser tests and cost measurements.
    pub fn follow(
        self: &Arc<Self>,
        flows: &[TracedFlow],
        sides: u8,
        sample_shift: u8,
    ) -> Result<RunTrace> {
        let mut trace = RunTrace::empty(self, 0, sides);
        let used = Use {
            sides,
            sample_shift: sample_shift.min(MAX_SAMPLE_SHIFT),
            dns_ids: false,
        };
        self.register(&mut trace, flows, used)?;
        Ok(trace)
    }

    /// Runs the stage classifier `program` on `packet` in the kernel, `repeat` times.
    pub fn test_run(
        &self,
        program: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult> {
        lock(&self.hooks).test_run(program, packet, repeat)
    }

    /// Puts `flows` in the kernel's flow map and routes their events to `trace`.
    fn register(&self, trace: &mut RunTrace, flows: &[TracedFlow], used: Use) -> Result<()> {
        let mut registry = lock(&self.registry);
        trace.lost_before = registry.lost_total();
        for flow in flows {
            let key = flow.key();
            let number = registry.add(key, used)?;
            trace.keys.push((key, used));
            if !trace.flows.contains(&number) {
                trace.flows.push(number);
            }
        }
        drop(registry);
        let mut dispatch = lock(&self.dispatch);
        for number in &trace.flows {
            dispatch
                .entry(*number)
                .or_default()
                .push(Arc::clone(&trace.collector));
        }
        Ok(())
    }

    /// Hands the events the kernel has to their collectors, in time order (see [`events`]).
    fn drain(&self, how: Drain) {
        let before_ns = match how {
            // Nothing is handed on without a flush: a run that started meanwhile would get
            // one CPU's stamps before another's earlier ones. (With no run traced the
            // programs write nothing; this only empties the buffer around a run's start.)
            Drain::RingOnly => Some(0),
            Drain::Window | Drain::Final => {
                // The programs' clock (`bpf_ktime_get_ns` is CLOCK_MONOTONIC).
                let now = monotonic_ns();
                let rounds = if how == Drain::Final {
                    FINAL_FLUSHES
                } else {
                    1
                };
                let mut flushed = false;
                for round in 0..rounds {
                    if round > 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    flushed = lock(&self.hooks).flush_batches();
                    if flushed {
                        break;
                    }
                }
                // A CPU whose batch stayed busy may hold a stamp older than `now`, whose
                // packet's later stamps are read already: then nothing is handed on until a
                // read that flushes every CPU (at the end of a run, what there is goes).
                Some(if flushed || how == Drain::Final {
                    now
                } else {
                    0
                })
            }
        };
        let mut events = lock(&self.events);
        let ready = events.read(before_ns);
        let dispatch = lock(&self.dispatch);
        for event in &ready {
            if let Some(collectors) = dispatch.get(&event.flow) {
                for collector in collectors {
                    lock(collector).record(event);
                }
            }
        }
    }
}

/// How much of the kernel's events a read takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Empties the ring buffer into the waiting events, without flushing the CPUs' batches
    /// and without handing anything on (no run was traced when the reader went to sleep).
    RingOnly,
    /// Every CPU's events stamped before the read began; later ones wait for the next read,
    /// in case a stamp of the same packet is still on its way from another CPU.
    Window,
    /// The same at the end of a run, flushing harder: the events stamped after the read
    /// began are of packets still in flight as tracing stopped, whose stamps are partial.
    Final,
}

/// Flushes tried, 1 ms apart, at the end of a run while a CPU's batch is busy.
const FINAL_FLUSHES: u32 = 10;

impl Registry {
    fn add(&mut self, key: FlowKey, used: Use) -> Result<u32> {
        let map_error = |source| Error::Map {
            name: maps::FLOWS,
            source,
        };
        let number = match self.keys.get(&key) {
            Some((number, _)) => *number,
            None => match self.free_flows.pop() {
                Some(number) => number,
                None if self.next_flow < MAX_FLOWS => {
                    self.next_flow += 1;
                    self.next_flow - 1
                }
                None => return Err(Error::TooManyFlows { max: MAX_FLOWS }),
            },
        };
        let users = &mut self.keys.entry(key).or_insert((number, Vec::new())).1;
        users.push(used);
        self.flows
            .insert(key, flow_info(number, users), 0)
            .map_err(map_error)?;
        self.port_users
            .entry(key.server_port)
            .or_default()
            .push((used.sample_shift, used.dns_ids));
        self.set_port(key.server_port)
            .map_err(|source| Error::Map {
                name: maps::SERVER_PORTS,
                source,
            })?;
        Ok(number)
    }

    fn remove(&mut self, key: &FlowKey, used: Use) {
        if let Some((number, users)) = self.keys.get_mut(key) {
            if let Some(at) = users.iter().position(|u| *u == used) {
                users.remove(at);
            }
            let number = *number;
            if users.is_empty() {
                self.keys.remove(key);
                let _ = self.flows.remove(key);
                self.free_flows.push(number);
            } else {
                let _ = self.flows.insert(key, flow_info(number, users), 0);
            }
        }
        if let Some(users) = self.port_users.get_mut(&key.server_port) {
            if let Some(at) = users
                .iter()
                .position(|user| *user == (used.sample_shift, used.dns_ids))
            {
                users.remove(at);
            }
            if users.is_empty() {
                self.port_users.remove(&key.server_port);
            }
        }
        let _ = self.set_port(key.server_port);
    }

    /// Writes a server port's entry: 0 when no traced flow uses it, else the densest sample
    /// shift of its users plus one (the probes drop a packet outside every user's sample
    /// before any flow lookup).
    fn set_port(&mut self, port: u16) -> Result<(), aya::maps::MapError> {
        let users = self.port_users.get(&port);
        let shift = users
            .and_then(|users| users.iter().map(|(shift, _)| *shift).min())
            .map_or(0, |shift| shift + 1);
        let dns = users.is_some_and(|users| users.iter().any(|(_, dns)| *dns));
        let value = shift | if dns { maps::PORT_DNS_IDS } else { 0 };
        self.ports.set(u32::from(port), value, 0)
    }

    fn lost_total(&self) -> u64 {
        self.lost
            .get(&LOST_EVENTS, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// One side of a run being traced; dropping it stops the tracing.
#[derive(Debug)]
pub struct RunTrace {
    tracer: Arc<Tracer>,
    keys: Vec<(FlowKey, Use)>,
    collector: Arc<Mutex<Collector>>,
    flows: Vec<u32>,
    attached: Vec<hooks::TcUse>,
    baseline: Vec<ProgramCost>,
    lost_before: u64,
    hooks: Vec<String>,
    notes: Vec<String>,
    /// Whether this trace holds the socket hooks (one of their users), and if so whether it
    /// holds the send hook too.
    sockets: Option<bool>,
    /// The stamping windows' counts when the trace began.
    windows_before: hooks::WindowCounts,
}

impl RunTrace {
    /// A trace holding nothing yet, whose collector takes events from `from_ns`.
    fn empty(tracer: &Arc<Tracer>, from_ns: u64, sides: u8) -> Self {
        Self {
            tracer: Arc::clone(tracer),
            keys: Vec::new(),
            collector: Arc::new(Mutex::new(Collector::new(from_ns, sides))),
            flows: Vec::new(),
            attached: Vec::new(),
            baseline: Vec::new(),
            lost_before: 0,
            hooks: Vec::new(),
            notes: Vec::new(),
            sockets: None,
            windows_before: hooks::WindowCounts::default(),
        }
    }

    /// Stops tracing and reports what was seen.
    pub fn finish(mut self) -> TraceReport {
        self.tracer.drain(Drain::Final);
        let collector = std::mem::replace(&mut *lock(&self.collector), Collector::new(0, 0));
        let (costs, windows) = {
            let hooks = lock(&self.tracer.hooks);
            (hooks.costs(), hooks.windows())
        };
        let programs = hooks::since(&costs, &self.baseline);
        let events_lost = lock(&self.tracer.registry)
            .lost_total()
            .saturating_sub(self.lost_before);
        let mut notes = std::mem::take(&mut self.notes);
        if events_lost > 0 {
            notes.push(format!(
                "{events_lost} events lost (the ring buffer was full): stages are from a sample"
            ));
        }
        if windows.closed > self.windows_before.closed {
            notes.push(format!(
                "stamped in windows, {} ms of every {} s on the wall clock (the same on every \
                 node); between them the uplinks' classifiers and the skb hooks were detached \
                 and the pods' counters only counted",
                windows::OPEN.as_millis(),
                windows::PERIOD.as_secs()
            ));
        }
        if windows.late > self.windows_before.late {
            notes.push(format!(
                "{} windows opened more than {} ms late (the node was busy): their first \
                 packets were not stamped",
                windows.late - self.windows_before.late,
                windows::LATE.as_millis()
            ));
        }
        if windows.failed > self.windows_before.failed {
            notes.push(format!(
                "{} attachments or switches failed as windows opened or closed (see the \
                 daemon's log): those windows miss some stamps",
                windows.failed - self.windows_before.failed
            ));
        }
        let mut collected = collector.finish();
        let drops = std::mem::take(&mut collected.drops)
            .into_iter()
            .map(|drops| NamedDrops {
                reason: self
                    .tracer
                    .drop_format
                    .as_ref()
                    .map_or_else(|| drops.reason.to_string(), |f| f.name(drops.reason)),
                point: drops.point,
                count: drops.count,
                keys: drops.keys,
            })
            .collect();
        if collected.packets_over_cap > 0 {
            notes.push(format!(
                "{} packets beyond the first {} were not followed",
                collected.packets_over_cap,
                collect::MAX_PACKETS
            ));
        }
        if let Some(thinned) = collected.uplink.iter().map(|stamps| stamps.thinned).max()
            && thinned > 0
        {
            notes.push(format!(
                "uplink stamps for the wire stage: 1 followed packet in {} kept, the same ones \
                 on every node (a long run's, spread over all of it)",
                1_u64 << thinned
            ));
        }
        TraceReport {
            collected,
            events_lost,
            programs,
            hooks: std::mem::take(&mut self.hooks),
            notes,
            boot_id: self.tracer.boot_id.clone(),
            drops,
        }
    }
}

impl Drop for RunTrace {
    fn drop(&mut self) {
        {
            let mut dispatch = lock(&self.tracer.dispatch);
            for number in &self.flows {
                if let Some(collectors) = dispatch.get_mut(number) {
                    collectors.retain(|c| !Arc::ptr_eq(c, &self.collector));
                    if collectors.is_empty() {
                        dispatch.remove(number);
                    }
                }
            }
        }
        {
            let mut registry = lock(&self.tracer.registry);
            for (key, used) in &self.keys {
                registry.remove(key, *used);
            }
        }
        let mut windows = lock(&self.tracer.windows);
        let idle = {
            let mut hooks = lock(&self.tracer.hooks);
            for used in self.attached.drain(..) {
                hooks.release_tc(used);
            }
            if let Some(stamp_sends) = self.sockets {
                hooks.release_sockets(stamp_sends);
            }
            hooks.idle()
        };
        if idle {
            // Joins the windows' thread: `hooks` is not held here.
            windows.take();
        }
    }
}

/// The flow map's value for a key: its number, every side its users hold on this node, and
/// the densest sampling any of them asked for.
fn flow_info(number: u32, users: &[Use]) -> FlowInfo {
    FlowInfo {
        flow: number,
        sides: users.iter().fold(0, |all, used| all | used.sides),
        sample_shift: users
            .iter()
            .map(|used| used.sample_shift)
            .min()
            .unwrap_or(0),
        pad: [0; 2],
    }
}

/// An address as IPv4-mapped IPv6 when it is IPv4, the form the flow map stores.
fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The kernel's boot ID: two daemons with the same one share a kernel, and so a clock.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}

/// Most flows one side may ask to trace.
pub const MAX_TRACED_FLOWS: usize = 16;

impl TraceReport {
    /// Folds another report of the same run on this node (a Service with several server pods
    /// here) into this one.
    pub fn merge(&mut self, other: TraceReport) {
        let mine = &mut self.collected;
        let theirs = other.collected;
        for stage in theirs.stages {
            match mine
                .stages
                .iter_mut()
                .find(|s| (s.direction, s.from, s.to) == (stage.direction, stage.from, stage.to))
            {
                Some(same) => {
                    let _ = same.latency.add(&stage.latency);
                    same.sum_ns += stage.sum_ns;
                }
                None => mine.stages.push(stage),
            }
        }
        for stamps in theirs.uplink {
            match mine
                .uplink
                .iter_mut()
                .find(|s| (s.direction, s.point) == (stamps.direction, stamps.point))
            {
                Some(same) => {
                    same.keys.extend(stamps.keys);
                    same.ts_ns.extend(stamps.ts_ns);
                }
                None => mine.uplink.push(stamps),
            }
        }
        match (&mut mine.connect, theirs.connect) {
            (Some(connect), Some(more)) => {
                let _ = connect.add(&more);
            }
            (connect @ None, more) => *connect = more,
            (Some(_), None) => {}
        }
        mine.retransmits += theirs.retransmits;
        for drops in other.drops {
            match self
                .drops
                .iter_mut()
                .find(|d| (&d.reason, d.point) == (&drops.reason, drops.point))
            {
                Some(same) => {
                    same.count += drops.count;
                    same.keys.extend(drops.keys);
                }
                None => self.drops.push(drops),
            }
        }
        mine.packets += theirs.packets;
        mine.packets_over_cap += theirs.packets_over_cap;
        mine.events += theirs.events;
        self.events_lost = self.events_lost.max(other.events_lost);
        for note in other.notes {
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
        }
    }
}
