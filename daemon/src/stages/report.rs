//! What a finished trace reports, and the merge of two reports of one run on one node (a
//! Service with several server pods here).

use super::{collect::Collected, hooks::ProgramCost};

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
