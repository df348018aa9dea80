//! The stage programs: loaded once at start, attached only while some run is traced.
//!
//! TC classifiers are attached per interface and shared by the runs that use it (counted, so
//! that two runs through one uplink do not attach it twice). Socket tracepoints are global:
//! attached with the first traced run and detached with the last, so an idle daemon costs
//! nothing in the kernel's hot paths. While every traced run samples, the classifiers and the
//! skb hooks come and go with the stamping windows (`super::windows`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aya::programs::{
    Program, RawTracePointRunOptions, TcAttachType, TestRun as _, TestRunOptions, TestRunResult,
    tc::SchedClassifierLink, tp_btf::BtfTracePointLink, trace_point::TracePointLink,
};

use aya::maps::{Array, MapData};
use sonde_common::{
    maps,
    stages::{CONF_BATCH_EVENTS, CONF_HELD_BACK, CONF_WINDOW, runs},
};

use super::{lock, windows::Phase};
use crate::{
    Error, Result,
    error::chain,
    object::EbpfObject,
    pods::{CounterStage, PodMap},
    tc_counter,
};

/// What a traced interface is on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host side of a pod's veth.
    Pod,
    /// The node's uplink.
    Uplink,
}

impl Role {
    /// The role's name in hook descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Uplink => "uplink",
        }
    }

    /// (program, attach point) pairs for this role: the one that stamps packets leaving the
    /// node, then the one for packets arriving.
    fn programs(self) -> [(&'static str, TcAttachType); 2] {
        match self {
            Self::Pod => [
                ("sonde_pod_out", TcAttachType::Ingress),
                ("sonde_pod_in", TcAttachType::Egress),
            ],
            Self::Uplink => [
                ("sonde_node_out", TcAttachType::Egress),
                ("sonde_node_in", TcAttachType::Ingress),
            ],
        }
    }
}

/// Which of a node's two directions a run's followed packets take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passes {
    /// Packets leaving the node (its pod's veth ingress, its uplink's egress).
    pub leaving: bool,
    /// Packets arriving (its uplink's ingress, its pod's veth egress).
    pub arriving: bool,
}

impl Passes {
    /// How an uplink classifying only these directions is described in the hook list.
    pub fn uplink_note(self) -> &'static str {
        match (self.leaving, self.arriving) {
            (true, false) => " (egress only: the run's packets leave here)",
            (false, true) => " (ingress only: the run's packets arrive here)",
            _ => "",
        }
    }
}

/// A socket hook: program name and where it attaches.
#[derive(Debug, Clone, Copy)]
enum SocketHook {
    /// A classic tracepoint (category, name).
    Tracepoint(&'static str, &'static str),
    /// A BTF tracepoint on this kernel function's tracepoint.
    Btf(&'static str),
}

/// The hook that stamps a socket's sends. Only runs that follow every packet use it (a
/// sampled stream's send time is socket-buffer queueing), and a stream pays for it on every
/// send: it is attached only while such a run is traced (`bench probes` measured a stream at
/// 0.83 of its untraced throughput with it attached, 0.93 without).
const SEND_HOOK: &str = "sonde_sock_send";

/// The socket hooks, each with the programs that can serve it, best first: a BTF tracepoint
/// runs its program straight from the kernel's tracepoint call, where a classic tracepoint
/// first fills its record (tens of ns on `consume_skb` and `kfree_skb`, which see every skb
/// the node frees). The classic ones serve kernels without BTF.
const SOCKET_HOOKS: [&[(&str, SocketHook)]; 6] = [
    &[(SEND_HOOK, SocketHook::Btf("tcp_sendmsg_locked"))],
    &[
        ("sonde_read", SocketHook::Btf("skb_copy_datagram_iovec")),
        (
            "sonde_read_tp",
            SocketHook::Tracepoint("skb", "skb_copy_datagram_iovec"),
        ),
    ],
    &[(
        "sonde_connect",
        SocketHook::Tracepoint("sock", "inet_sock_set_state"),
    )],
    &[(
        "sonde_retransmit",
        SocketHook::Tracepoint("tcp", "tcp_retransmit_skb"),
    )],
    &[
        ("sonde_drop", SocketHook::Btf("kfree_skb")),
        ("sonde_drop_tp", SocketHook::Tracepoint("skb", "kfree_skb")),
    ],
    &[
        ("sonde_free", SocketHook::Btf("consume_skb")),
        (
            "sonde_free_tp",
            SocketHook::Tracepoint("skb", "consume_skb"),
        ),
    ],
];

/// The socket hooks that follow packets (an application's read, a drop, a free): detached
/// between stamping windows with the classifiers. Connects and retransmits are followed
/// throughout.
const WINDOWED_SOCKET_PROGRAMS: [&str; 6] = [
    "sonde_read",
    "sonde_read_tp",
    "sonde_drop",
    "sonde_drop_tp",
    "sonde_free",
    "sonde_free_tp",
];

/// The drop hook's classic variant, which reads the drop reason at the offset the
/// tracepoint's format gives.
pub const CLASSIC_DROP_HOOK: &str = "sonde_drop_tp";

/// The stage classifiers, in path order.
pub const TC_PROGRAMS: [&str; 4] = [
    "sonde_pod_out",
    "sonde_pod_in",
    "sonde_node_out",
    "sonde_node_in",
];

/// Every stage classifier: those attached on their own, and those a pod's counter runs.
fn stage_classifiers() -> impl Iterator<Item = &'static str> {
    TC_PROGRAMS
        .into_iter()
        .chain(tc_counter::COUNTED_STAGE_PROGRAMS)
}

/// A classifier that does nothing: what any classifier costs, the floor probe costs are read
/// against.
pub const FLOOR_PROGRAM: &str = "sonde_tc_nop";

/// The program that writes a CPU's gathered events to the ring buffer, run on each CPU before
/// the buffer is read (see `sonde_common::stages::Batch`).
const FLUSH_PROGRAM: &str = "sonde_flush";

/// Tries at flushing a CPU whose batch is in use (a program on it is filling it): each try is
/// an interrupt that lands at another moment.
const FLUSH_TRIES: u32 = 3;

/// A use of one classifier on one interface, returned to [`Hooks::release_tc`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcUse {
    iface: String,
    program: &'static str,
}

impl TcUse {
    /// Whether a pod's packet counter does the stamping (see [`Hooks::attach_tc`]).
    pub fn in_counter(&self) -> bool {
        self.program == tc_counter::COUNTED_STAGE_PROGRAMS[0]
    }
}

/// What holds a traced interface's stamping in place; dropping it undoes it.
#[derive(Debug)]
enum TcHold {
    /// A stage classifier's own link.
    Link(#[expect(dead_code, reason = "held for its drop, which detaches")] SchedClassifierLink),
    /// A pod's counter, running the program that counts and stamps.
    Counter(#[expect(dead_code, reason = "held for its drop, which releases")] CounterStage),
}

/// What a program cost: its own run count, and the kernel's BPF statistics over the windows
/// they were on (see `stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCost {
    /// The program's name.
    pub name: &'static str,
    /// Times it ran.
    pub invocations: u64,
    /// Runs the kernel's statistics timed.
    pub timed_invocations: u64,
    /// Total time of the timed runs, ns.
    pub run_time_ns: u64,
}

/// The costs in `now` minus those in `before`, for programs that ran in between.
pub fn since(now: &[ProgramCost], before: &[ProgramCost]) -> Vec<ProgramCost> {
    now.iter()
        .map(|cost| {
            let base = before.iter().find(|b| b.name == cost.name);
            ProgramCost {
                name: cost.name,
                invocations: cost
                    .invocations
                    .saturating_sub(base.map_or(0, |b| b.invocations)),
                timed_invocations: cost
                    .timed_invocations
                    .saturating_sub(base.map_or(0, |b| b.timed_invocations)),
                run_time_ns: cost
                    .run_time_ns
                    .saturating_sub(base.map_or(0, |b| b.run_time_ns)),
            }
        })
        .filter(|cost| cost.invocations > 0)
        .collect()
}

enum SocketLink {
    Tracepoint(#[expect(dead_code, reason = "held for its drop, which detaches")] TracePointLink),
    Btf(#[expect(dead_code, reason = "held for its drop, which detaches")] BtfTracePointLink),
}

impl std::fmt::Debug for SocketLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketLink")
    }
}

/// The programs' configuration (`TRACEPOINT_CONF`).
struct ProgramConf(Array<MapData, u32>);

impl std::fmt::Debug for ProgramConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgramConf")
    }
}

/// The programs' own run counters (`PROGRAM_RUNS`).
struct RunCounters(Array<MapData, u64>);

impl std::fmt::Debug for RunCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunCounters")
    }
}

/// The stage programs and their attachments.
#[derive(Debug)]
pub struct Hooks {
    object: Arc<Mutex<EbpfObject>>,
    /// Socket programs that loaded, and why the others did not.
    socket_loaded: Vec<(&'static str, SocketHook)>,
    load_notes: Vec<String>,
    /// Each classifier in use, what holds it in place (`None` between stamping windows), and
    /// its users.
    tc: HashMap<TcUse, (Option<TcHold>, u32)>,
    /// The pods' counters, which stamp a traced pod's packets themselves when they can.
    pods: Option<Arc<PodMap>>,
    sockets: Vec<(&'static str, SocketLink)>,
    socket_users: u32,
    /// The send hook's link, while `send_users` traced runs stamp sends.
    send: Option<SocketLink>,
    send_users: u32,
    /// Traced runs that follow every packet: while there is one, stamping never pauses.
    continuous_users: u32,
    /// The stamping windows' state (see `super::windows`).
    windows: WindowState,
    /// The programs' configuration, where the window's number is kept (`CONF_WINDOW`).
    conf: ProgramConf,
    /// The programs' own run counters (`PROGRAM_RUNS`); `None` if the map was missing.
    runs: Option<RunCounters>,
    /// Every CPU the kernel may bring up (a per-CPU map's slots), whose event batches are
    /// flushed before each read; empty when the flush program cannot run here (the programs
    /// then write every event directly).
    flush_cpus: Vec<u32>,
}

/// Where the stamping windows stand.
#[derive(Debug, Default)]
struct WindowState {
    /// Between two windows: the classifiers and `WINDOWED_SOCKET_PROGRAMS` are detached.
    paused: bool,
    /// The socket hooks detached by the pause, attached again when the next window opens.
    detached: Vec<&'static str>,
    /// The number of the window open now, as the programs read it.
    number: u32,
    /// Stamping is held back (`CONF_HELD_BACK`): the hooks may be attached, the window is
    /// not open.
    held_back: bool,
    /// Windows closed so far.
    closed: u64,
    /// Attachments that failed at a window's opening (their classifier or hook then misses
    /// the window; the next one tries again).
    failed: u64,
    /// Windows that opened late (see `super::windows::LATE`).
    late: u64,
}

/// What [`Hooks::windows`] reports: how many windows closed, how many re-attachments (or
/// switches of stamping) failed, and how many windows opened late, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowCounts {
    /// Windows closed.
    pub closed: u64,
    /// Re-attachments, or switches of stamping, that failed.
    pub failed: u64,
    /// Windows that opened late.
    pub late: u64,
}

impl Hooks {
    /// Loads every stage program, and keeps `conf`, the programs' configuration (whether
    /// they batch events, the stamping window's number). The classifiers must load; a socket
    /// program that does not (no BTF, a kernel without that tracepoint) becomes a note in
    /// every traced result.
    pub fn load(
        object: Arc<Mutex<EbpfObject>>,
        btf: Option<&aya::Btf>,
        mut conf: Array<MapData, u32>,
    ) -> Result<Self> {
        let mut socket_loaded = Vec::new();
        let mut load_notes = Vec::new();
        {
            let mut guard = lock(&object);
            tc_counter::load_classifiers(&mut guard, &TC_PROGRAMS)?;
            tc_counter::load_classifiers(&mut guard, &tc_counter::COUNTED_STAGE_PROGRAMS)?;
            for choices in SOCKET_HOOKS {
                let mut failed = Vec::new();
                for (name, hook) in choices {
                    match load_socket(&mut guard, name, *hook, btf) {
                        Ok(()) => {
                            socket_loaded.push((*name, *hook));
                            break;
                        }
                        Err(reason) => failed.push(format!("{}: {reason}", describe(*hook))),
                    }
                }
                if failed.len() == choices.len() {
                    load_notes.push(format!("not available: {}", failed.join("; ")));
                } else if !failed.is_empty() {
                    tracing::info!("socket hook fallback: {}", failed.join("; "));
                }
            }
        }
        let runs = lock(&object)
            .take_map(maps::PROGRAM_RUNS)
            .and_then(|map| Array::try_from(map).ok())
            .map(RunCounters);
        let flush_cpus = load_flush(&mut lock(&object)).unwrap_or_else(|reason| {
            tracing::info!("events are written one by one: their flush cannot run here: {reason}");
            Vec::new()
        });
        // The programs gather events in per-CPU batches only where the flush can empty them.
        if !flush_cpus.is_empty() {
            conf.set(CONF_BATCH_EVENTS, 1, 0)
                .map_err(|source| Error::Map {
                    name: maps::TRACEPOINT_CONF,
                    source,
                })?;
        }
        Ok(Self {
            object,
            socket_loaded,
            load_notes,
            flush_cpus,
            runs,
            tc: HashMap::new(),
            pods: None,
            sockets: Vec::new(),
            socket_users: 0,
            send: None,
            send_users: 0,
            continuous_users: 0,
            windows: WindowState::default(),
            conf: ProgramConf(conf),
        })
    }

    /// Lets the pods' packet counters stamp traced pods' packets (see [`Hooks::attach_tc`]).
    pub fn use_pod_counters(&mut self, pods: Arc<PodMap>) {
        self.pods = Some(pods);
    }

    /// Attaches the classifiers of `role` to `iface` (or counts one more user). A pod's veth
    /// with sonde's packet counter gets no classifier of its own: the counter's links run a
    /// program that counts and stamps, while the interface is traced. An uplink gets only the
    /// classifiers of the directions in `passes`; a pod's veth gets both (its counter's two
    /// links are switched together, and a separate classifier must never stamp beside them).
    pub fn attach_tc(&mut self, iface: &str, role: Role, passes: Passes) -> Result<Vec<TcUse>> {
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(Error::NoSuchInterface {
                name: iface.to_owned(),
            });
        }
        if role == Role::Pod
            && let Some(used) = self.stage_in_counter(iface)
        {
            return Ok(vec![used]);
        }
        let mut used = Vec::new();
        let wanted = [passes.leaving, passes.arriving].map(|pass| pass || role == Role::Pod);
        for ((program, attach_type), _) in role.programs().into_iter().zip(wanted).filter(|p| p.1) {
            let key = TcUse {
                iface: iface.to_owned(),
                program,
            };
            if let Some((_, users)) = self.tc.get_mut(&key) {
                *users += 1;
            } else if self.windows.paused {
                // Attached when the next window opens.
                self.tc.insert(key.clone(), (None, 1));
            } else {
                let attached = {
                    let mut object = lock(&self.object);
                    tc_counter::attach_tcx(&mut object, program, iface, attach_type)
                };
                match attached {
                    Ok(link) => {
                        self.tc.insert(key.clone(), (Some(TcHold::Link(link)), 1));
                    }
                    Err(err) => {
                        for used in used {
                            self.release_tc(used);
                        }
                        return Err(err);
                    }
                }
            }
            used.push(key);
        }
        Ok(used)
    }

    /// Has the counter on `iface` stamp as well (or counts one more user of it): `None` when
    /// there is no counter there, or the stage classifiers serve the interface already.
    fn stage_in_counter(&mut self, iface: &str) -> Option<TcUse> {
        let key = TcUse {
            iface: iface.to_owned(),
            program: tc_counter::COUNTED_STAGE_PROGRAMS[0],
        };
        if let Some((_, users)) = self.tc.get_mut(&key) {
            *users += 1;
            return Some(key);
        }
        let own = TcUse {
            iface: iface.to_owned(),
            program: Role::Pod.programs()[0].0,
        };
        if self.tc.contains_key(&own) {
            return None;
        }
        let pods = self.pods.as_ref()?;
        let hold = if self.windows.paused {
            // Swapped when the next window opens.
            pods.counts(iface).then_some(None)?
        } else {
            Some(TcHold::Counter(pods.stage(iface)?))
        };
        self.tc.insert(key.clone(), (hold, 1));
        Some(key)
    }

    /// Holds `used`'s classifier in place again, when a window opens.
    fn reattach_tc(&self, used: &TcUse) -> Result<TcHold, String> {
        if used.in_counter() {
            let pods = self.pods.as_ref().ok_or("no pod counters")?;
            return pods
                .stage(&used.iface)
                .map(TcHold::Counter)
                .ok_or_else(|| "the pod's counter is gone or could not stamp".to_owned());
        }
        let attach_type = [Role::Pod, Role::Uplink]
            .iter()
            .flat_map(|role| role.programs())
            .find(|(program, _)| *program == used.program)
            .map(|(_, attach_type)| attach_type)
            .ok_or("not a stage classifier")?;
        let mut object = lock(&self.object);
        tc_counter::attach_tcx(&mut object, used.program, &used.iface, attach_type)
            .map(TcHold::Link)
            .map_err(|err| chain(&err))
    }

    /// Moves the stamping windows to `phase` (see `super::windows`): the hooks come off
    /// between windows, and stamping is held back until a window opens. Only while every
    /// traced run samples; a run that follows every packet keeps stamping on.
    pub fn set_window(&mut self, phase: Phase) {
        let windowed = self.windowed();
        let attached = !windowed || phase != Phase::Closed;
        let stamping = !windowed || phase == Phase::Open;
        // Stamping stops before the hooks come off, and starts after they are on.
        if !stamping {
            self.hold_back(true);
        }
        if !attached && !self.windows.paused {
            self.pause();
        } else if attached && self.windows.paused {
            self.resume();
        }
        if stamping {
            self.hold_back(false);
        }
    }

    /// Whether the stamping windows apply: every traced run samples.
    fn windowed(&self) -> bool {
        self.socket_users > 0 && self.continuous_users == 0
    }

    /// Counts a window that opened late, if the windows apply.
    pub fn window_late(&mut self) {
        if self.windowed() {
            self.windows.late += 1;
        }
    }

    /// Holds stamping back, or lets it go (`CONF_HELD_BACK`).
    fn hold_back(&mut self, held: bool) {
        if self.windows.held_back == held {
            return;
        }
        match self.conf.0.set(CONF_HELD_BACK, u32::from(held), 0) {
            Ok(()) => self.windows.held_back = held,
            Err(err) => {
                tracing::warn!(
                    "holding stamping back or letting it go failed: {}",
                    chain(&err)
                );
                self.windows.failed += 1;
            }
        }
    }

    /// Windows closed, failures and late openings so far.
    pub fn windows(&self) -> WindowCounts {
        WindowCounts {
            closed: self.windows.closed,
            failed: self.windows.failed,
            late: self.windows.late,
        }
    }

    /// Closes the window: the classifiers come off first (nothing new is followed), then the
    /// skb hooks. A followed skb freed meanwhile leaves its slot behind; the next window's
    /// number voids it.
    fn pause(&mut self) {
        for (hold, _) in self.tc.values_mut() {
            *hold = None;
        }
        let mut detached = Vec::new();
        self.sockets.retain(|(name, _)| {
            let windowed = WINDOWED_SOCKET_PROGRAMS.contains(name);
            if windowed {
                detached.push(*name);
            }
            !windowed
        });
        self.windows.detached = detached;
        self.windows.paused = true;
        self.windows.closed += 1;
    }

    /// Opens the next window: its number first, then the skb hooks (every slot a classifier
    /// fills is watched until its skb ends), then the classifiers.
    fn resume(&mut self) {
        self.windows.paused = false;
        self.windows.number = self.windows.number.wrapping_add(1);
        if let Err(err) = self.conf.0.set(CONF_WINDOW, self.windows.number, 0) {
            // The slots of the last window stay valid: the hooks stay off rather than risk
            // taking an skb for another.
            tracing::warn!("moving the stamping window on failed: {}", chain(&err));
            self.windows.paused = true;
            self.windows.failed += 1;
            return;
        }
        for name in std::mem::take(&mut self.windows.detached) {
            let Some((_, hook)) = self.socket_loaded.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            match attach_socket(&mut lock(&self.object), name, *hook) {
                Ok(link) => self.sockets.push((name, link)),
                Err(reason) => {
                    tracing::warn!("{}: not attached again: {reason}", describe(*hook));
                    self.windows.failed += 1;
                }
            }
        }
        let waiting: Vec<TcUse> = self
            .tc
            .iter()
            .filter(|(_, (hold, _))| hold.is_none())
            .map(|(used, _)| used.clone())
            .collect();
        for used in waiting {
            let hold = self.reattach_tc(&used);
            if let Some((slot, _)) = self.tc.get_mut(&used) {
                match hold {
                    Ok(hold) => *slot = Some(hold),
                    Err(reason) => {
                        tracing::warn!(
                            iface = used.iface,
                            "{}: not attached again: {reason}",
                            used.program
                        );
                        self.windows.failed += 1;
                    }
                }
            }
        }
    }

    /// Drops one user of a classifier; the last one detaches it.
    pub fn release_tc(&mut self, used: TcUse) {
        if let Some((_, users)) = self.tc.get_mut(&used) {
            *users -= 1;
            if *users == 0 {
                self.tc.remove(&used);
            }
        }
    }

    /// Attaches the socket hooks (or counts one more user), the send hook only when
    /// `stamp_sends`; returns the hooks in use and notes on those missing.
    pub fn attach_sockets(&mut self, stamp_sends: bool) -> (Vec<String>, Vec<String>) {
        let mut notes = self.load_notes.clone();
        if stamp_sends {
            self.continuous_users += 1;
            if self.windows.paused {
                self.resume();
            }
            self.hold_back(false);
        }
        let mut object = lock(&self.object);
        if self.socket_users == 0 {
            for (name, hook) in self.socket_loaded.iter().filter(|(n, _)| *n != SEND_HOOK) {
                match attach_socket(&mut object, name, *hook) {
                    Ok(link) => self.sockets.push((name, link)),
                    Err(reason) => {
                        notes.push(format!("{}: not attached: {reason}", describe(*hook)))
                    }
                }
            }
        }
        self.socket_users += 1;
        let send = self.socket_loaded.iter().find(|(n, _)| *n == SEND_HOOK);
        if stamp_sends && let Some((name, hook)) = send {
            if self.send_users == 0 {
                match attach_socket(&mut object, name, *hook) {
                    Ok(link) => self.send = Some(link),
                    Err(reason) => {
                        notes.push(format!("{}: not attached: {reason}", describe(*hook)))
                    }
                }
            }
            self.send_users += 1;
        }
        let hooks = self
            .socket_loaded
            .iter()
            .filter(|(name, _)| stamp_sends || *name != SEND_HOOK)
            .map(|(_, hook)| describe(*hook))
            .collect();
        (hooks, notes)
    }

    /// Drops one user of the socket hooks (`stamp_sends` as it attached them); the last one
    /// detaches them.
    pub fn release_sockets(&mut self, stamp_sends: bool) {
        if stamp_sends {
            self.continuous_users = self.continuous_users.saturating_sub(1);
            if self.send_users > 0 {
                self.send_users -= 1;
                if self.send_users == 0 {
                    self.send = None;
                }
            }
        }
        self.socket_users = self.socket_users.saturating_sub(1);
        if self.socket_users == 0 {
            self.sockets.clear();
            self.windows.detached.clear();
            self.windows.paused = false;
            self.hold_back(false);
        }
    }

    /// Whether no run is traced (the windows can stop).
    pub fn idle(&self) -> bool {
        self.socket_users == 0
    }

    /// Runs a stage classifier on `packet` in the kernel (`BPF_PROG_TEST_RUN`), `repeat` times:
    /// how the parsers and their cost are checked without sending any traffic. The result's
    /// duration is the mean per run.
    pub fn test_run(&self, program: &str, packet: &[u8], repeat: u32) -> Result<TestRunResult> {
        let name = stage_classifiers()
            .chain([FLOOR_PROGRAM])
            .find(|name| *name == program)
            .ok_or(Error::MissingProgram {
                name: "(not a stage classifier)",
            })?;
        let mut object = lock(&self.object);
        // The floor program is loaded only when measured; the others are loaded already.
        tc_counter::load_classifiers(&mut object, &[name])?;
        let Some(Program::SchedClassifier(classifier)) = object.program(name) else {
            return Err(Error::MissingProgram { name });
        };
        classifier
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|source| Error::Program {
                action: "test-run".to_owned(),
                program: name,
                source,
            })
    }

    /// Whether drops are followed by the classic `skb:kfree_skb` tracepoint, whose drop
    /// reason is read at the offset its format gives.
    pub fn drops_by_classic_tracepoint(&self) -> bool {
        self.socket_loaded
            .iter()
            .any(|(name, _)| *name == CLASSIC_DROP_HOOK)
    }

    /// Writes every CPU's gathered events to the ring buffer (runs the flush program on
    /// each). Returns false when a CPU's batch stayed in use through every try: it keeps its
    /// events until the next flush, or until it fills. An offline CPU runs no program and is
    /// passed over; so is one the flush fails on otherwise (logged: waiting for it would stop
    /// every read).
    pub fn flush_batches(&self) -> bool {
        let object = lock(&self.object);
        let Some(Program::RawTracePoint(program)) = object.program(FLUSH_PROGRAM) else {
            return true;
        };
        // Every CPU is flushed, whatever the others did (`fold`, not the short-circuiting
        // `all`).
        self.flush_cpus.iter().fold(true, |all, cpu| {
            let flushed = (0..FLUSH_TRIES).any(|_| match flush_on(program, *cpu) {
                Ok(true) => true,
                Ok(false) => {
                    std::thread::yield_now();
                    false
                }
                Err(err) if err.raw_os_error() == Some(libc::ENXIO) => true,
                Err(err) => {
                    tracing::warn!(cpu, "flushing a CPU's events failed: {err}");
                    true
                }
            });
            all & flushed
        })
    }

    /// Run counts and times of every stage program so far.
    pub fn costs(&self) -> Vec<ProgramCost> {
        let object = lock(&self.object);
        stage_classifiers()
            .chain(
                SOCKET_HOOKS
                    .iter()
                    .flat_map(|choices| choices.iter().map(|(name, _)| *name)),
            )
            .filter_map(|name| {
                let info = object.program(name)?.info().ok()?;
                Some(ProgramCost {
                    name,
                    invocations: self.runs_of(name),
                    timed_invocations: info.run_count(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect()
    }

    /// How often `program` ran on every CPU, by its own counter.
    fn runs_of(&self, program: &str) -> u64 {
        let (Some(runs), Some(slot)) = (&self.runs, runs::slot(program)) else {
            return 0;
        };
        // The map holds `runs::SLOTS` entries for each CPU the daemon sized it for.
        (0..runs.0.len() / runs::SLOTS)
            .filter_map(|cpu| runs.0.get(&runs::index(cpu, slot), 0).ok())
            .sum()
    }
}

fn describe(hook: SocketHook) -> String {
    match hook {
        SocketHook::Tracepoint(category, name) => format!("tracepoint:{category}:{name}"),
        SocketHook::Btf(name) => format!("tp_btf:{name}"),
    }
}

fn load_socket(
    object: &mut EbpfObject,
    name: &'static str,
    hook: SocketHook,
    btf: Option<&aya::Btf>,
) -> Result<(), String> {
    let program = object.program_mut(name).map_err(|err| chain(&err))?;
    let outcome = match (hook, program) {
        (SocketHook::Tracepoint(..), Program::TracePoint(tp)) => tp.load(),
        (SocketHook::Btf(function), Program::BtfTracePoint(tp)) => {
            let btf = btf.ok_or("the kernel has no BTF")?;
            tp.load(function, btf)
        }
        _ => return Err(format!("{name} has an unexpected program type")),
    };
    outcome.map_err(|err| chain(&err))
}

/// Loads the flush program and checks it runs here (`BPF_PROG_TEST_RUN` of raw tracepoint
/// programs on a chosen CPU came with Linux 5.10): the CPUs to flush.
fn load_flush(object: &mut EbpfObject) -> Result<Vec<u32>, String> {
    let cpus = aya::util::nr_cpus().map_err(|(what, err)| format!("{what}: {err}"))?;
    let cpus: Vec<u32> = (0..u32::try_from(cpus).map_err(|err| err.to_string())?).collect();
    let program = object
        .program_mut(FLUSH_PROGRAM)
        .map_err(|err| chain(&err))?;
    let Program::RawTracePoint(program) = program else {
        return Err(format!("{FLUSH_PROGRAM} has an unexpected program type"));
    };
    program.load().map_err(|err| chain(&err))?;
    // CPU 0 is online whenever the machine runs.
    flush_on(program, 0).map_err(|err| err.to_string())?;
    Ok(cpus)
}

/// Runs the flush program on `cpu`: whether the batch was free (and is now written out).
fn flush_on(program: &aya::programs::RawTracePoint, cpu: u32) -> std::io::Result<bool> {
    let options = RawTracePointRunOptions {
        cpu: Some(cpu),
        ..RawTracePointRunOptions::default()
    };
    match program.test_run(options) {
        // 0: the batch was in use.
        Ok(result) => Ok(result.return_value != 0),
        Err(aya::programs::ProgramError::SyscallError(err)) => Err(err.io_error),
        Err(err) => Err(std::io::Error::other(chain(&err))),
    }
}

fn attach_socket(
    object: &mut EbpfObject,
    name: &'static str,
    hook: SocketHook,
) -> Result<SocketLink, String> {
    let program = object.program_mut(name).map_err(|err| chain(&err))?;
    match (hook, program) {
        (SocketHook::Tracepoint(category, event), Program::TracePoint(tp)) => {
            let id = tp.attach(category, event).map_err(|err| chain(&err))?;
            tp.take_link(id)
                .map(SocketLink::Tracepoint)
                .map_err(|err| chain(&err))
        }
        (SocketHook::Btf(_), Program::BtfTracePoint(tp)) => {
            let id = tp.attach().map_err(|err| chain(&err))?;
            tp.take_link(id)
                .map(SocketLink::Btf)
                .map_err(|err| chain(&err))
        }
        _ => Err(format!("{name} has an unexpected program type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_since_a_baseline_keep_only_programs_that_ran() {
        let cost = |name, invocations, run_time_ns| ProgramCost {
            name,
            invocations,
            timed_invocations: invocations / 10,
            run_time_ns,
        };
        let before = [cost("a", 10, 1000), cost("b", 5, 500)];
        let now = [cost("a", 30, 3000), cost("b", 5, 500), cost("c", 20, 90)];
        assert_eq!(
            since(&now, &before),
            vec![cost("a", 20, 2000), cost("c", 20, 90)]
        );
    }
}
