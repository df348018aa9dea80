//! A running client side: its generator on blocking threads, its progress every half second,
//! its result with the kernel trace and the conntrack span, and a stop when the controller
//! goes away.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    ClientGuard,
    budget::Budget,
    samples::{ConntrackSamples, Span},
    spec::RunSpec,
};
use crate::{
    generators::{
        self, Target,
        generator::ClientRun,
        measure::{Counters, SideResult},
        wire::Token,
    },
    reservations::HoldGuard,
    stages::{RunTrace, TraceReport},
};

/// How often a running client side reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// A client side ready to run: what it sends, where, and what watches it.
#[derive(Debug)]
pub struct ClientSide {
    /// Its registration (and stop flag) among the daemon's runs.
    pub guard: ClientGuard,
    /// What it sends.
    pub spec: RunSpec,
    /// The namespace it sends from (`None`: the daemon's).
    pub netns: Option<PathBuf>,
    /// Where it sends.
    pub target: Target,
    /// The server side's token.
    pub token: Token,
    /// The kernel trace of its flows, when asked for.
    pub trace: Option<RunTrace>,
    /// Its hold of the node, ended when the side ends.
    pub hold: HoldGuard,
    /// What it pays for the load it generates.
    pub budget: Arc<Budget>,
}

/// What a client side reports while it runs.
#[derive(Debug)]
pub enum ClientEvent {
    /// Bytes and messages since the last progress.
    Progress(Progress),
    /// The side ended: its result, or why its worker failed.
    Finished(Result<Box<Finished>, String>),
}

/// Counted since the previous progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Since the side started.
    pub elapsed: Duration,
    /// Whether it is still warming up.
    pub warmup: bool,
    /// Bytes moved in the interval.
    pub bytes: u64,
    /// Messages (or transactions) in the interval.
    pub messages: u64,
    /// The interval's length.
    pub interval: Duration,
}

/// A finished client side.
#[derive(Debug)]
pub struct Finished {
    /// What the generator measured.
    pub side: SideResult,
    /// The kernel's view of its flows, when traced.
    pub trace: Option<TraceReport>,
    /// The node's conntrack table at its start and end, when it can be read.
    pub conntrack: Option<Span>,
}

/// Runs `side` and feeds its progress and result to `events`. If the controller goes away
/// (`events` closes), the side is stopped.
pub async fn drive(
    side: ClientSide,
    samples: Arc<ConntrackSamples>,
    events: mpsc::Sender<ClientEvent>,
) {
    let ClientSide {
        guard,
        spec,
        netns,
        target,
        token,
        mut trace,
        hold,
        budget,
    } = side;
    let networked = spec.rules.transport != sonde_proto::kinds::Transport::Local;
    let connect_per_transaction = spec.rules.connect_per_transaction;
    let mut spent = None;
    let conntrack_start = samples.sample().await;
    let counters = Arc::new(Counters::with_interval(spec.interval));
    let work = {
        let (counters, spec, stop) = (Arc::clone(&counters), spec.clone(), Arc::clone(&guard.stop));
        tokio::task::spawn_blocking(move || {
            let run = ClientRun {
                spec: &spec,
                netns: netns.as_deref(),
                token,
                stop: &stop,
                counters: &counters,
            };
            generators::run_client(&target, run)
        })
    };
    tokio::pin!(work);
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut last_tick = started;
    let mut controller_gone = false;
    loop {
        tokio::select! {
            result = &mut work => {
                let trace = match trace.take() {
                    Some(trace) => tokio::task::spawn_blocking(move || trace.finish()).await.ok(),
                    None => None,
                };
                let conntrack = match conntrack_start {
                    Some(start) => samples.sample().await.map(|end| Span { start, end }),
                    None => None,
                };
                let ran = started.elapsed();
                let stopped_early = guard.stop.load(Ordering::Relaxed);
                let finished = result
                    .map(|mut side| {
                        // Stopped (cancelled, its controller gone, its budget spent): its window
                        // is what it measured, not what it was to measure.
                        if stopped_early {
                            let measured = ran.saturating_sub(spec.warmup);
                            side.totals.measured = side.totals.measured.min(measured);
                        }
                        // A stop for lack of budget is the run's to report, with what it measured.
                        if let Some(reason) = spent.take() {
                            side.totals.errors.insert(0, reason);
                        }
                        Box::new(Finished { side, trace, conntrack })
                    })
                    .map_err(|err| format!("the run's worker failed: {err}"));
                let _ = events.send(ClientEvent::Finished(finished)).await;
                break;
            }
            now = tick.tick(), if !controller_gone => {
                let elapsed = now - started;
                let progress = Progress {
                    elapsed,
                    warmup: elapsed < spec.warmup,
                    bytes: counters.bytes.swap(0, Ordering::Relaxed),
                    messages: counters.messages.swap(0, Ordering::Relaxed),
                    interval: now - last_tick,
                };
                last_tick = now;
                let connections = if connect_per_transaction { progress.messages } else { 0 };
                if networked
                    && spent.is_none()
                    && let Err(dry) = budget.charge(progress.bytes, connections)
                {
                    tracing::warn!(%dry, "stopping a client side: its budget ran out");
                    spent = Some(format!(
                        "stopped after {:.1} s: {dry}",
                        elapsed.as_secs_f64()
                    ));
                    guard.stop.store(true, Ordering::Relaxed);
                }
                if events.send(ClientEvent::Progress(progress)).await.is_err() {
                    controller_gone = true;
                }
            }
            () = events.closed(), if !controller_gone => controller_gone = true,
        }
        if controller_gone {
            tracing::warn!("the controller went away: stopping the client side");
            guard.stop.store(true, Ordering::Relaxed);
        }
    }
    drop(guard);
    drop(hold);
}
