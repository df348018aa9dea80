//! Conntrack pressure on this node: the table's size and limit, the kernel's counters, the
//! rate of new and destroyed entries, a census by protocol and state, and the capacity model.
//!
//! Everything is read through ctnetlink in the network namespace the daemon started in (a
//! node's, in a cluster or in the lab): [`netlink`] for requests, [`events`] for the new and
//! destroyed entries, [`model`] for where the table is heading.

pub mod events;
pub mod model;
pub mod netlink;

use std::{
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

pub use model::{Class, Level, Observation, Projection, Timeouts};

use self::{
    events::{EventCounts, EventTotals},
    netlink::{Ctnetlink, EntryFacts},
};

/// The table's occupancy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableSize {
    /// Entries now (per network namespace).
    pub entries: u64,
    /// The limit they are checked against (`nf_conntrack_max`, global).
    pub max: u64,
}

/// The kernel's conntrack counters (`/proc/net/stat/nf_conntrack`), summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KernelCounters {
    /// Lookups that found an entry.
    pub found: u64,
    /// Packets conntrack could not track (malformed, out of window).
    pub invalid: u64,
    /// Entries inserted (not counted by recent kernels).
    pub insert: u64,
    /// Inserts that failed: a clash with an entry inserted at the same time.
    pub insert_failed: u64,
    /// Packets dropped because no entry could be made (the table was full).
    pub drop: u64,
    /// Unassured entries evicted to make room for new ones.
    pub early_drop: u64,
    /// ICMP errors that matched no entry.
    pub error: u64,
    /// Lookups restarted because the hash table changed under them.
    pub search_restart: u64,
    /// Insert clashes the kernel resolved.
    pub clash_resolve: u64,
    /// Inserts refused because a hash chain was too long.
    pub chain_toolong: u64,
}

impl KernelCounters {
    /// The counters of table pressure: failed inserts, drops and evictions.
    pub fn pressure(&self) -> u64 {
        self.insert_failed + self.drop + self.early_drop + self.chain_toolong
    }

    /// The growth of every counter since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            found: self.found.saturating_sub(earlier.found),
            invalid: self.invalid.saturating_sub(earlier.invalid),
            insert: self.insert.saturating_sub(earlier.insert),
            insert_failed: self.insert_failed.saturating_sub(earlier.insert_failed),
            drop: self.drop.saturating_sub(earlier.drop),
            early_drop: self.early_drop.saturating_sub(earlier.early_drop),
            error: self.error.saturating_sub(earlier.error),
            search_restart: self.search_restart.saturating_sub(earlier.search_restart),
            clash_resolve: self.clash_resolve.saturating_sub(earlier.clash_resolve),
            chain_toolong: self.chain_toolong.saturating_sub(earlier.chain_toolong),
        }
    }
}

/// TCP conntrack states, by `enum tcp_conntrack` value.
pub const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// The entries counted by protocol and state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    /// TCP entries by state ([`TCP_STATES`] order).
    pub tcp: [u64; TCP_STATES.len()],
    /// Entries of the other classes ([`Class::ALL`] order; the TCP slot stays 0).
    pub by_class: [u64; Class::ALL.len()],
    /// Entries whose destination was translated (Services).
    pub dnat: u64,
    /// Entries the kernel will not evict early.
    pub assured: u64,
    /// How long the dump took, in microseconds.
    pub took_us: u64,
}

impl Census {
    fn add(&mut self, facts: &EntryFacts) {
        match (Class::of(facts.protocol), facts.tcp_state) {
            (Class::Tcp, state) => {
                let slot = usize::from(state.unwrap_or(0)).min(TCP_STATES.len() - 1);
                self.tcp[slot] += 1;
            }
            (class, _) => self.by_class[class as usize] += 1,
        }
        self.dnat += u64::from(facts.dnat);
        self.assured += u64::from(facts.assured);
    }

    /// Every entry counted.
    pub fn total(&self) -> u64 {
        self.tcp.iter().sum::<u64>() + self.by_class.iter().sum::<u64>()
    }
}

/// One reading of the table.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken (monotonic, for rates).
    pub at: Instant,
    /// When it was taken (wall clock, for output).
    pub unix_ms: u64,
    /// Entries and maximum.
    pub size: TableSize,
    /// The kernel's counters.
    pub counters: KernelCounters,
    /// New and destroyed entries counted since the daemon started, if events are available.
    pub events: Option<EventTotals>,
    /// The census, when asked for.
    pub census: Option<Census>,
    /// The kernel's timeouts at the time.
    pub timeouts: Timeouts,
}

/// What happened between two samples.
pub fn observe(before: &Sample, after: &Sample) -> Observation {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let per_second = |count: u64| count as f64 / seconds;
    let (created_per_s, destroyed_per_s, events_lost) = match (&before.events, &after.events) {
        (Some(earlier), Some(later)) => (
            std::array::from_fn(|i| {
                per_second(later.created[i].saturating_sub(earlier.created[i]))
            }),
            per_second(later.destroyed.saturating_sub(earlier.destroyed)),
            later.overflows > earlier.overflows,
        ),
        _ => ([0.0; 4], 0.0, true),
    };
    Observation {
        entries: after.size.entries as f64,
        max: after.size.max as f64,
        growth_per_s: (after.size.entries as f64 - before.size.entries as f64) / seconds,
        created_per_s,
        destroyed_per_s,
        events_lost,
        established: after
            .census
            .as_ref()
            .map_or(0.0, |census| census.tcp[3] as f64),
        pressure_events: after.counters.since(&before.counters).pressure(),
    }
}

/// The node's conntrack watcher: one ctnetlink socket for requests and, when the kernel lets
/// us subscribe, an event listener, both in the namespace the daemon started in.
#[derive(Debug)]
pub struct Watcher {
    requests: Mutex<Ctnetlink>,
    events: Result<Arc<EventCounts>, String>,
}

impl Watcher {
    /// Opens the watcher in the calling thread's network namespace and reads once, so that a
    /// kernel without ctnetlink is found out now.
    pub fn open() -> std::io::Result<Self> {
        let mut requests = Ctnetlink::open()?;
        requests.table_size()?;
        let events = events::listen().map_err(|err| err.to_string());
        if let Err(reason) = &events {
            tracing::warn!(%reason, "conntrack events unavailable: no new/destroyed rates");
        }
        Ok(Self {
            requests: Mutex::new(requests),
            events,
        })
    }

    /// Why new and destroyed entries are not counted, if they are not.
    pub fn events_unavailable(&self) -> Option<&str> {
        self.events.as_ref().err().map(String::as_str)
    }

    /// Reads the table now; with `census`, also dumps and counts every entry (costly on a big
    /// table: 2.4 µs an entry here, 0.64 s for 262144).
    pub fn sample(&self, census: bool) -> std::io::Result<Sample> {
        let mut requests = self
            .requests
            .lock()
            .map_err(|_| std::io::Error::other("conntrack socket poisoned"))?;
        let at = Instant::now();
        let size = requests.table_size()?;
        let counters = requests.counters()?;
        let events = self.events.as_ref().ok().map(|counts| counts.totals());
        let census = if census {
            Some(requests.census()?)
        } else {
            None
        };
        Ok(Sample {
            at,
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(0)),
            size,
            counters,
            events,
            census,
            timeouts: Timeouts::read(),
        })
    }
}
