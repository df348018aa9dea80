//! The watcher's readings as `sonde.v1` messages.

use sonde_proto::v1 as pb;

use crate::conntrack::{Census, Class, KernelCounters, Sample, TCP_STATES, model, observe};

/// A sample, with rates and the projection when there is an earlier one to compare with.
pub fn sample(
    now: &Sample,
    previous: Option<&Sample>,
    events_unavailable: Option<&str>,
) -> pb::ConntrackSample {
    let (rates, projection) = match previous {
        Some(before) => {
            let seen = observe(before, now);
            let projected = model::project(&seen, &now.timeouts);
            let window = now.counters.since(&before.counters);
            (
                Some(pb::ConntrackRates {
                    interval_s: now.at.duration_since(before.at).as_secs_f64(),
                    created_per_s: seen.created_per_s.iter().sum(),
                    destroyed_per_s: seen.destroyed_per_s,
                    growth_per_s: seen.growth_per_s,
                    insert_failed: window.insert_failed,
                    drop: window.drop,
                    early_drop: window.early_drop,
                    events_lost: seen.events_lost,
                }),
                Some(pb::ConntrackProjection {
                    steady_entries: projected.steady_entries,
                    seconds_to_full: projected.seconds_to_full,
                    level: projected.level.name().to_owned(),
                }),
            )
        }
        None => (None, None),
    };
    pb::ConntrackSample {
        unix_ms: now.unix_ms,
        entries: now.size.entries,
        max: now.size.max,
        counters: Some(counters(&now.counters)),
        events: now.events.map(|events| pb::ConntrackEvents {
            created_tcp: events.created[Class::Tcp as usize],
            created_udp: events.created[Class::Udp as usize],
            created_icmp: events.created[Class::Icmp as usize],
            created_other: events.created[Class::Other as usize],
            destroyed: events.destroyed,
            overflows: events.overflows,
        }),
        events_unavailable: events_unavailable.unwrap_or_default().to_owned(),
        rates,
        projection,
        census: now.census.as_ref().map(census),
        timeout_tcp_time_wait_s: now.timeouts.tcp_time_wait,
        timeout_udp_s: now.timeouts.udp,
    }
}

/// What the table went through between two samples, for a run side's result.
pub fn delta(start: &Sample, end: &Sample) -> pb::ConntrackDelta {
    let grew = end.counters.since(&start.counters);
    let (created, destroyed, events_lost) = match (start.events, end.events) {
        (Some(before), Some(after)) => (
            after.created_total().saturating_sub(before.created_total()),
            after.destroyed.saturating_sub(before.destroyed),
            after.overflows > before.overflows,
        ),
        _ => (0, 0, true),
    };
    pb::ConntrackDelta {
        entries_start: start.size.entries,
        entries_end: end.size.entries,
        max: end.size.max,
        created,
        destroyed,
        insert_failed: grew.insert_failed,
        drop: grew.drop,
        early_drop: grew.early_drop,
        events_lost,
    }
}

fn counters(counters: &KernelCounters) -> pb::ConntrackCounters {
    pb::ConntrackCounters {
        found: counters.found,
        invalid: counters.invalid,
        insert: counters.insert,
        insert_failed: counters.insert_failed,
        drop: counters.drop,
        early_drop: counters.early_drop,
        error: counters.error,
        search_restart: counters.search_restart,
        clash_resolve: counters.clash_resolve,
        chain_toolong: counters.chain_toolong,
    }
}

fn census(census: &Census) -> pb::ConntrackCensus {
    let tcp = TCP_STATES
        .iter()
        .zip(census.tcp)
        .filter(|(_, entries)| *entries > 0)
        .map(|(state, entries)| pb::ConntrackStateCount {
            protocol: Class::Tcp.name().to_owned(),
            state: (*state).to_owned(),
            entries,
        });
    let others = Class::ALL
        .iter()
        .filter(|class| **class != Class::Tcp)
        .map(|class| (class, census.by_class[*class as usize]))
        .filter(|(_, entries)| *entries > 0)
        .map(|(class, entries)| pb::ConntrackStateCount {
            protocol: class.name().to_owned(),
            state: String::new(),
            entries,
        });
    pb::ConntrackCensus {
        states: tcp.chain(others).collect(),
        dnat: census.dnat,
        assured: census.assured,
        took_us: census.took_us,
    }
}
