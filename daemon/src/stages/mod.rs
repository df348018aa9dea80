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
//! - [`spec`]: what a side asks to trace.
//! - [`registry`]: the traced flows in the kernel's maps.
//! - [`trace`]: one side's trace, its report, its release on drop.
//! - [`report`]: what a finished trace reports, and the merge of two.
//! - [`collect`]: events to per-packet stamps to stage latencies (pure).
//! - [`hooks`]: the program set, loaded once, attached while someone needs them.
//! - [`windows`]: when a sampled stream is stamped (a tenth of each second).

pub mod collect;
pub mod cost;
pub mod drops;
pub mod events;
pub mod hooks;
pub mod registry;
pub mod report;
pub mod spec;
pub mod stats;
pub mod trace;
pub mod windows;

pub use report::{NamedDrops, TraceReport};
pub use spec::{MAX_TRACED_FLOWS, TraceSpec, TracedFlow, Ways};
pub use trace::RunTrace;

use std::{
    collections::HashMap,
    io::Write as _,
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
    stages::{CONF_DROP_REASON_OFFSET, MAX_SAMPLE_SHIFT},
};

use crate::{Error, Result, generators::measure::monotonic_ns, object::EbpfObject};
use collect::Collector;
use drops::DropFormat;
use hooks::Hooks;
use registry::{Registry, Use};

/// How often the events reader looks while runs are traced, and while none is.
const TRACING_POLL_MS: i32 = 100;
const IDLE_POLL_MS: i32 = 1000;

/// Collectors by flow number: where the reader thread hands each event.
type Dispatch = HashMap<u32, Vec<Arc<Mutex<Collector>>>>;

/// The daemon's tracing: maps, programs and the events reader.
pub struct Tracer {
    hooks: Arc<Mutex<Hooks>>,
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
            let flows4 = BpfHashMap::try_from(take_map(&mut guard, maps::FLOWS4)?)
                .map_err(map_error(maps::FLOWS4))?;
            let port_flows = Array::try_from(take_map(&mut guard, maps::PORT_FLOWS)?)
                .map_err(map_error(maps::PORT_FLOWS))?;
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
                flows4,
                port_flows,
                slot_owners: HashMap::new(),
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
            hooks,
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
                    _ if used.iter().any(|held| held.in_counter()) => {
                        " (in the packet counter's links)"
                    }
                    hooks::Role::Uplink => passes.uplink_note(),
                    hooks::Role::Pod => "",
                };
                trace.hooks.push(format!("tc:{} {iface}{how}", role.name()));
                trace.attached.extend(used);
            }
        }
        // A sampled stream's sends are not stamped (see `hooks::SEND_HOOK`). A run that
        // follows every packet stamps throughout, unless it asked for the windows.
        let stamp_sends = spec.sample_shift == 0;
        let continuous = stamp_sends && !spec.windowed;
        let (used, sockets, notes) = hooks.attach_sockets(stamp_sends, continuous);
        trace.sockets = Some(used);
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
pub(super) enum Drain {
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

/// The kernel's boot ID: two daemons with the same one share a kernel, and so a clock.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
}
