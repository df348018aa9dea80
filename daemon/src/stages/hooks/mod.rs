//! The stage programs: loaded once at start, attached only while some run is traced.
//!
//! TC classifiers are attached per interface and shared by the runs that use it (an
//! [`TcAttachment`] each holds; the last one's drop detaches it, so two runs through one
//! uplink do not attach it twice). Socket tracepoints are global:
//! attached with the first traced run and detached with the last, so an idle daemon costs
//! nothing in the kernel's hot paths. While every traced run samples, the classifiers and the
//! skb hooks come and go with the stamping windows (`super::windows`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use aya::programs::{Program, TestRun as _, TestRunOptions, TestRunResult};

use aya::maps::{Array, MapData};
use sonde_common::{
    maps,
    stages::{CONF_BATCH_EVENTS, CONF_HELD_BACK, CONF_WINDOW, runs},
};

mod catalog;
mod cost;
mod held;

pub use catalog::{CLASSIC_DROP_HOOK, FLOOR_PROGRAM, Passes, Role, TC_PROGRAMS};
use catalog::{
    FLUSH_PROGRAM, FLUSH_TRIES, SEND_HOOK, SOCKET_HOOKS, SocketHook, SocketLink,
    WINDOWED_SOCKET_PROGRAMS, attach_socket, describe, flush_on, load_flush, load_socket,
    stage_classifiers,
};
pub use cost::{ProgramCost, since};
pub use held::{SocketUse, TcAttachment};
use held::{TcHold, TcUse};

use super::{lock, windows::Phase};
use crate::{Error, Result, error::chain, object::EbpfObject, pods::PodMap, tc_counter};

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
    /// Each classifier in use, held by its users (dead entries are swept at the next attach).
    tc: HashMap<TcUse, Weak<TcAttachment>>,
    /// This set itself, for the socket hooks' uses to come back to.
    me: Weak<Mutex<Hooks>>,
    /// The pods' counters, which stamp a traced pod's packets themselves when they can.
    pods: Option<Arc<PodMap>>,
    sockets: Vec<(&'static str, SocketLink)>,
    /// Live [`SocketUse`]s.
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
    /// The send hook was detached by the pause (a windowed run stamps sends).
    send_detached: bool,
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
    ) -> Result<Arc<Mutex<Self>>> {
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
        let hooks = Self {
            object,
            me: Weak::new(),
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
        };
        Ok(Arc::new_cyclic(|me| {
            Mutex::new(Self {
                me: me.clone(),
                ..hooks
            })
        }))
    }

    /// The classifier `used` while someone holds it.
    fn live(&self, used: &TcUse) -> Option<Arc<TcAttachment>> {
        self.tc.get(used).and_then(Weak::upgrade)
    }

    /// Every classifier held now.
    fn held(&self) -> Vec<Arc<TcAttachment>> {
        self.tc.values().filter_map(Weak::upgrade).collect()
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
    pub fn attach_tc(
        &mut self,
        iface: &str,
        role: Role,
        passes: Passes,
    ) -> Result<Vec<Arc<TcAttachment>>> {
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(Error::NoSuchInterface {
                name: iface.to_owned(),
            });
        }
        self.tc.retain(|_, held| held.strong_count() > 0);
        if role == Role::Pod
            && let Some(used) = self.stage_in_counter(iface)
        {
            return Ok(vec![used]);
        }
        // On an error, those attached already are let go as `used` drops.
        let mut used = Vec::new();
        let wanted = [passes.leaving, passes.arriving].map(|pass| pass || role == Role::Pod);
        for ((program, attach_type), _) in role.programs().into_iter().zip(wanted).filter(|p| p.1) {
            let key = TcUse {
                iface: iface.to_owned(),
                program,
            };
            if let Some(held) = self.live(&key) {
                used.push(held);
                continue;
            }
            let hold = if self.windows.paused {
                // Attached when the next window opens.
                None
            } else {
                let mut object = lock(&self.object);
                let link = tc_counter::attach_tcx(&mut object, program, iface, attach_type)?;
                Some(TcHold::Link(link))
            };
            let held = TcAttachment::new(key.clone(), hold);
            self.tc.insert(key, Arc::downgrade(&held));
            used.push(held);
        }
        Ok(used)
    }

    /// Has the counter on `iface` stamp as well (or shares it with the runs that do): `None`
    /// when there is no counter there, or the stage classifiers serve the interface already.
    fn stage_in_counter(&mut self, iface: &str) -> Option<Arc<TcAttachment>> {
        let key = TcUse {
            iface: iface.to_owned(),
            program: tc_counter::COUNTED_STAGE_PROGRAMS[0],
        };
        if let Some(held) = self.live(&key) {
            return Some(held);
        }
        let own = TcUse {
            iface: iface.to_owned(),
            program: Role::Pod.programs()[0].0,
        };
        if self.live(&own).is_some() {
            return None;
        }
        let pods = self.pods.as_ref()?;
        let hold = if self.windows.paused {
            // Swapped when the next window opens.
            pods.counts(iface).then_some(None)?
        } else {
            Some(TcHold::Counter(pods.stage(iface)?))
        };
        let held = TcAttachment::new(key.clone(), hold);
        self.tc.insert(key, Arc::downgrade(&held));
        Some(held)
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
        for held in self.held() {
            *lock(&held.hold) = None;
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
        // A run stamped in windows that stamps sends: its sends pay nothing between windows
        // either. (A send stamped in one window is never handed to a segment of the next:
        // the programs tag it with its window.)
        if self.send.take().is_some() {
            self.windows.send_detached = true;
        }
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
        if std::mem::take(&mut self.windows.send_detached)
            && let Some((name, hook)) = self.socket_loaded.iter().find(|(n, _)| *n == SEND_HOOK)
        {
            match attach_socket(&mut lock(&self.object), name, *hook) {
                Ok(link) => self.send = Some(link),
                Err(reason) => {
                    tracing::warn!("{}: not attached again: {reason}", describe(*hook));
                    self.windows.failed += 1;
                }
            }
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
        for held in self.held() {
            let mut slot = lock(&held.hold);
            if slot.is_some() {
                continue;
            }
            match self.reattach_tc(&held.used) {
                Ok(hold) => *slot = Some(hold),
                Err(reason) => {
                    tracing::warn!(
                        iface = held.used.iface,
                        "{}: not attached again: {reason}",
                        held.used.program
                    );
                    self.windows.failed += 1;
                }
            }
        }
    }

    /// Attaches the socket hooks (or shares them), the send hook only when `stamp_sends`;
    /// returns the use (dropping it lets them go), the hooks in use and notes on those
    /// missing. A `continuous` run stamps throughout, and every other run with it; while
    /// there is none, stamping is kept to the windows (`super::windows`).
    pub fn attach_sockets(
        &mut self,
        stamp_sends: bool,
        continuous: bool,
    ) -> (SocketUse, Vec<String>, Vec<String>) {
        let mut notes = self.load_notes.clone();
        if continuous {
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
            if self.send_users == 0 && self.windows.paused {
                // Attached when the next window opens.
                self.windows.send_detached = true;
            } else if self.send_users == 0 {
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
        let used = SocketUse {
            hooks: self.me.clone(),
            stamp_sends,
            continuous,
        };
        (used, hooks, notes)
    }

    /// Drops one use of the socket hooks (`stamp_sends` and `continuous` as it attached
    /// them); the last one detaches them.
    fn release_sockets(&mut self, stamp_sends: bool, continuous: bool) {
        if continuous {
            self.continuous_users = self.continuous_users.saturating_sub(1);
        }
        if stamp_sends && self.send_users > 0 {
            self.send_users -= 1;
            if self.send_users == 0 {
                self.send = None;
                self.windows.send_detached = false;
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
