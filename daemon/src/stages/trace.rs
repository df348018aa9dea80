//! One side of a run being traced: what it holds (flows, attachments, its collector), its
//! report when it finishes, and everything released when it is dropped.

use std::sync::{Arc, Mutex};

use sonde_common::stages::FlowKey;

use super::{
    Drain, Tracer,
    collect::{self, Collector},
    hooks::{self, ProgramCost},
    lock,
    registry::Use,
    report::{NamedDrops, TraceReport},
    windows,
};

/// One side of a run being traced; dropping it stops the tracing.
#[derive(Debug)]
pub struct RunTrace {
    pub(super) tracer: Arc<Tracer>,
    pub(super) keys: Vec<(FlowKey, Use)>,
    pub(super) collector: Arc<Mutex<Collector>>,
    pub(super) flows: Vec<u32>,
    pub(super) attached: Vec<Arc<hooks::TcAttachment>>,
    pub(super) baseline: Vec<ProgramCost>,
    pub(super) lost_before: u64,
    pub(super) hooks: Vec<String>,
    pub(super) notes: Vec<String>,
    /// Its use of the socket hooks, when it holds them.
    pub(super) sockets: Option<hooks::SocketUse>,
    /// The stamping windows' counts when the trace began.
    pub(super) windows_before: hooks::WindowCounts,
}

impl RunTrace {
    /// A trace holding nothing yet, whose collector takes events from `from_ns`.
    pub(super) fn empty(tracer: &Arc<Tracer>, from_ns: u64, sides: u8) -> Self {
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
                 node); between them the uplinks' classifiers and the hooks that follow packets (skb, send) were detached \
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
        // Let go before asking whether anyone still traces: the last user's drop detaches.
        self.attached.clear();
        self.sockets.take();
        let idle = lock(&self.tracer.hooks).idle();
        if idle {
            // Joins the windows' thread: `hooks` is not held here.
            windows.take();
        }
    }
}
