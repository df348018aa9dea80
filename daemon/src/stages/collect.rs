//! Joins one run's kernel events into per-packet stamps, and the stamps into stage latencies.
//!
//! Pure: fed [`Event`]s, it knows nothing of maps or programs, so it is tested on made-up
//! events.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::generators::measure::new_histogram;
use sonde_common::stages::{Event, event_kind, point, side};

/// Packets of one run a collector follows at once (a packet is let go as soon as it reached
/// the last point this node can see); beyond that, new ones are counted, not followed.
pub const MAX_PACKETS: usize = 100_000;
/// Uplink stamps kept per direction and point, for the cross-node join; once full, they are
/// thinned by half (see [`UplinkStamps::keeps`]), so a long run's are spread over all of it.
pub const MAX_UPLINK_STAMPS: usize = 50_000;
/// The longest a packet may take between two points on one node. A longer gap is not a kernel
/// stage but a stale match (an skb address reused after its packet was merged away).
const MAX_STAGE_NS: u64 = 1_000_000_000;
/// A packet stamped again at a point it already passed, this long after its latest stamp, is
/// another packet with the same name: a TCP sequence number comes back every 4 GiB (every
/// 1.7 s at 20 Gbit/s). Nearer, it is the same packet passing again (a fast retransmission),
/// and its first pass stands.
const NEW_PASS_NS: u64 = 100_000_000;
/// How often, in event time, packets that can no longer make a stage are let go.
const SWEEP_EVERY_NS: u64 = 250_000_000;

/// A packet's latest stamp.
fn latest(stamps: &[u64; point::COUNT]) -> u64 {
    stamps.iter().copied().max().unwrap_or(0)
}

/// The key naming one packet on every node: direction, client port, packet id.
pub fn packet_key(direction: u8, client_port: u16, id: u32) -> u64 {
    (u64::from(direction) << 48) | (u64::from(client_port) << 32) | u64::from(id)
}

/// One stage on one node: the time between two consecutive points a packet was stamped at.
#[derive(Debug, Clone)]
pub struct Stage {
    /// [`sonde_common::stages::direction`].
    pub direction: u8,
    /// [`point`] the stage starts at.
    pub from: u8,
    /// [`point`] it ends at.
    pub to: u8,
    /// Samples, in ns.
    pub latency: Histogram<u64>,
    /// Sum of the samples, in ns (means add up across stages; histograms do not).
    pub sum_ns: u64,
}

/// Stamps of one uplink point, for joining with the other node's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkStamps {
    /// [`sonde_common::stages::direction`].
    pub direction: u8,
    /// [`point::NODE_OUT`] or [`point::NODE_IN`].
    pub point: u8,
    /// `(client port << 32) | id` of each packet.
    pub keys: Vec<u64>,
    /// When each was stamped (CLOCK_MONOTONIC, ns).
    pub ts_ns: Vec<u64>,
    /// Times the stamps were thinned by half for want of room: 1 packet in 2^`thinned` kept.
    pub thinned: u8,
}

impl UplinkStamps {
    /// Whether the stamp of packet `name` is kept at the current thinning. Decided by a hash
    /// of the name, the same on every node, so that the sending and the receiving node keep
    /// the same packets and the cross-node join still pairs them (the node thinned more keeps
    /// a subset of the other's); independent of the id sampling that chose the packets.
    fn keeps(&self, name: u64) -> bool {
        self.thinned == 0 || mix(name) >> (64 - u32::from(self.thinned.min(63))) == 0
    }

    /// Keeps a stamp if there is room at the current thinning, and thins when full.
    fn keep(&mut self, name: u64, ts_ns: u64) {
        if !self.keeps(name) {
            return;
        }
        self.keys.push(name);
        self.ts_ns.push(ts_ns);
        while self.keys.len() >= MAX_UPLINK_STAMPS && self.thinned < 63 {
            self.thinned += 1;
            let (keys, ts_ns) = self
                .keys
                .iter()
                .zip(&self.ts_ns)
                .filter(|(name, _)| self.keeps(**name))
                .unzip();
            (self.keys, self.ts_ns) = (keys, ts_ns);
        }
    }
}

/// A 64-bit mix (splitmix64's finalizer): every bit of `x` moves every bit of the result.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Drops of one reason, after one point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops {
    /// The kernel's `enum skb_drop_reason` value.
    pub reason: u32,
    /// The last [`point`] the packets were stamped at before they were dropped.
    pub point: u8,
    /// Packets dropped.
    pub count: u64,
    /// Their packet keys ([`packet_key`]), the first [`MAX_DROP_KEYS`]: two daemons sharing a
    /// kernel both see one drop, and the controller counts it once.
    pub keys: Vec<u64>,
}

/// Packet keys kept per drop reason and point.
pub const MAX_DROP_KEYS: usize = 10_000;

/// What a collector made of its events.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// Stages in (direction, from) order.
    pub stages: Vec<Stage>,
    /// Stamps at the uplink points.
    pub uplink: Vec<UplinkStamps>,
    /// TCP connect times, ns; `None` when no connection was seen.
    pub connect: Option<Histogram<u64>>,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// Followed packets the kernel dropped, by reason and last point.
    pub drops: Vec<Drops>,
    /// Packets stamped at least once.
    pub packets: u64,
    /// Packets beyond [`MAX_PACKETS`].
    pub packets_over_cap: u64,
    /// Events taken in (inside the window).
    pub events: u64,
}

/// The events of one side of a run on this node, from the start of its measured window.
#[derive(Debug)]
pub struct Collector {
    /// Events before this time (CLOCK_MONOTONIC, ns) belong to the warm-up.
    from_ns: u64,
    /// Per direction, the last point a packet reaches on this node.
    last_point: [u8; 2],
    /// Per packet still on its way, the time of each point (0: not stamped there).
    packets: HashMap<u64, [u64; point::COUNT]>,
    packets_over_cap: u64,
    /// When, in event time, to let go of packets whose latest stamp is older than a stage.
    next_sweep_ns: u64,
    /// Packets stamped at least once.
    seen: u64,
    stages: HashMap<(u8, u8, u8), Stage>,
    uplink: HashMap<(u8, u8), UplinkStamps>,
    connect: Vec<u64>,
    retransmits: u64,
    drops: HashMap<(u32, u8), Drops>,
    events: u64,
}

impl Collector {
    /// A collector taking events stamped at or after `from_ns`, for a node holding `sides`
    /// ([`side`] bits) of the run.
    pub fn new(from_ns: u64, sides: u8) -> Self {
        // A node that holds the receiving side sees packets until the application reads them;
        // one that only sends sees them until they leave through its uplink.
        let last = |receiver: u8| {
            if sides & receiver != 0 {
                point::SOCKET_READ
            } else {
                point::NODE_OUT
            }
        };
        Self {
            from_ns,
            last_point: [last(side::SERVER), last(side::CLIENT)],
            packets: HashMap::new(),
            packets_over_cap: 0,
            next_sweep_ns: from_ns.saturating_add(SWEEP_EVERY_NS),
            seen: 0,
            stages: HashMap::new(),
            uplink: HashMap::new(),
            connect: Vec::new(),
            retransmits: 0,
            drops: HashMap::new(),
            events: 0,
        }
    }

    /// Takes one event in.
    pub fn record(&mut self, event: &Event) {
        // Connections are made at the start, in the warm-up: their times belong to the run.
        if event.ts_ns < self.from_ns && event.kind != event_kind::CONNECT {
            return;
        }
        self.events += 1;
        match event.kind {
            event_kind::STAMP => {
                if usize::from(event.point) >= point::COUNT {
                    return;
                }
                if event.ts_ns >= self.next_sweep_ns {
                    self.sweep(event.ts_ns);
                }
                let key = packet_key(event.direction, event.client_port, event.id);
                // The record's first point: the earlier one it carries, if any.
                let first_ns = if event.earlier != point::SOCKET_SEND
                    && usize::from(event.earlier) < point::COUNT
                {
                    let earlier_ns = event.ts_ns.saturating_sub(u64::from(event.earlier_ns));
                    self.stamp(key, event.earlier, earlier_ns);
                    earlier_ns
                } else {
                    event.ts_ns
                };
                if event.value != 0 {
                    let sent = first_ns.saturating_sub(u64::from(event.value));
                    self.stamp(key, point::SOCKET_SEND, sent);
                }
                self.stamp(key, event.point, event.ts_ns);
                let last = self.last_point[usize::from(event.direction & 1)];
                if event.point == last
                    && let Some(stamps) = self.packets.remove(&key)
                {
                    self.settle(key, &stamps);
                }
            }
            event_kind::CONNECT => self.connect.push(u64::from(event.value)),
            event_kind::RETRANSMIT => self.retransmits += 1,
            event_kind::DROP => {
                let drops = self
                    .drops
                    .entry((event.value, event.point))
                    .or_insert_with(|| Drops {
                        reason: event.value,
                        point: event.point,
                        ..Drops::default()
                    });
                drops.count += 1;
                if drops.keys.len() < MAX_DROP_KEYS {
                    drops
                        .keys
                        .push(packet_key(event.direction, event.client_port, event.id));
                }
            }
            _ => {}
        }
    }

    /// Settles the packets whose latest stamp is more than a stage's longest before `now_ns`:
    /// no later stamp could join them. Bounds what is held when the last point never comes
    /// (a receiver that splices, whose reads pass no hook).
    fn sweep(&mut self, now_ns: u64) {
        self.next_sweep_ns = now_ns.saturating_add(SWEEP_EVERY_NS);
        let horizon = now_ns.saturating_sub(MAX_STAGE_NS);
        let done: Vec<(u64, [u64; point::COUNT])> = self
            .packets
            .extract_if(|_, stamps| latest(stamps) < horizon)
            .collect();
        for (key, stamps) in done {
            self.settle(key, &stamps);
        }
    }

    /// Notes that packet `key` passed point `at` at `ts_ns`.
    fn stamp(&mut self, key: u64, at: u8, ts_ns: u64) {
        let at = usize::from(at);
        let full = self.packets.len() >= MAX_PACKETS;
        match self.packets.get_mut(&key) {
            Some(stamps)
                if stamps[at..].iter().any(|&ts| ts != 0)
                    && ts_ns.saturating_sub(latest(stamps)) > NEW_PASS_NS =>
            {
                // Another packet by the same name: the one held is done.
                let done = std::mem::replace(stamps, [0; point::COUNT]);
                stamps[at] = ts_ns;
                self.seen += 1;
                self.settle(key, &done);
            }
            Some(stamps) => {
                // The first stamp wins: a retransmitted segment keeps its first pass.
                if stamps[at] == 0 {
                    stamps[at] = ts_ns;
                }
            }
            None if full => self.packets_over_cap += 1,
            None => {
                let mut stamps = [0; point::COUNT];
                stamps[at] = ts_ns;
                self.packets.insert(key, stamps);
                self.seen += 1;
            }
        }
    }

    /// Turns one packet's stamps into stage samples and uplink stamps.
    fn settle(&mut self, key: u64, stamps: &[u64; point::COUNT]) {
        let direction = (key >> 48) as u8;
        let mut previous: Option<(u8, u64)> = None;
        for (at, &ts) in stamps.iter().enumerate() {
            if ts == 0 {
                continue;
            }
            let at = at as u8;
            if let Some((from, from_ts)) = previous
                && ts >= from_ts
                && ts - from_ts <= MAX_STAGE_NS
            {
                let stage = self
                    .stages
                    .entry((direction, from, at))
                    .or_insert_with(|| Stage {
                        direction,
                        from,
                        to: at,
                        latency: new_histogram(),
                        sum_ns: 0,
                    });
                let took = ts - from_ts;
                stage.latency.saturating_record(took);
                stage.sum_ns += took;
            }
            previous = Some((at, ts));
            if at == point::NODE_OUT || at == point::NODE_IN {
                let stamps = self
                    .uplink
                    .entry((direction, at))
                    .or_insert_with(|| UplinkStamps {
                        direction,
                        point: at,
                        ..UplinkStamps::default()
                    });
                stamps.keep(key & 0xffff_ffff_ffff, ts);
            }
        }
    }

    /// The stages and stamps of everything taken in.
    pub fn finish(mut self) -> Collected {
        for (key, stamps) in std::mem::take(&mut self.packets) {
            self.settle(key, &stamps);
        }
        let mut stages: Vec<Stage> = self.stages.into_values().collect();
        stages.sort_by_key(|stage| (stage.direction, stage.from, stage.to));
        let mut uplink: Vec<UplinkStamps> = self.uplink.into_values().collect();
        uplink.sort_by_key(|stamps| (stamps.direction, stamps.point));
        let connect = (!self.connect.is_empty()).then(|| {
            let mut histogram = new_histogram();
            for took in &self.connect {
                histogram.saturating_record(*took);
            }
            histogram
        });
        Collected {
            stages,
            uplink,
            connect,
            retransmits: self.retransmits,
            drops: {
                let mut drops: Vec<Drops> = self.drops.into_values().collect();
                drops.sort_by_key(|drops| (drops.reason, drops.point));
                drops
            },
            packets: self.seen,
            packets_over_cap: self.packets_over_cap,
            events: self.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::stages::direction;

    fn stamp(at: u8, dir: u8, port: u16, id: u32, ts_ns: u64) -> Event {
        Event {
            ts_ns,
            id,
            point: at,
            direction: dir,
            client_port: port,
            kind: event_kind::STAMP,
            ..Event::default()
        }
    }

    /// Each stage as (from, to, samples, sum of its samples in ns).
    fn summary(collected: &Collected) -> Vec<(u8, u8, u64, u64)> {
        collected
            .stages
            .iter()
            .map(|s| (s.from, s.to, s.latency.len(), s.sum_ns))
            .collect()
    }

    #[test]
    fn consecutive_points_make_stages_and_missing_points_are_skipped() {
        let mut collector = Collector::new(1000, side::CLIENT | side::SERVER);
        for (i, id) in [7_u32, 8].into_iter().enumerate() {
            let base = 10_000 * (i as u64 + 1);
            let dir = direction::TO_SERVER;
            // The socket send rides in the first point's record: 100 ns before it.
            collector.record(&Event {
                value: 100,
                ..stamp(point::POD_OUT, dir, 40000, id, base + 100)
            });
            // No NODE_OUT for packet 8: its stage runs from POD_OUT to NODE_IN.
            if id == 7 {
                collector.record(&stamp(point::NODE_OUT, dir, 40000, id, base + 300));
            }
            collector.record(&stamp(point::NODE_IN, dir, 40000, id, base + 1000));
        }
        // Before the window: ignored.
        collector.record(&stamp(point::POD_OUT, 0, 40000, 9, 999));
        let collected = collector.finish();
        assert_eq!(collected.events, 5);
        assert_eq!(collected.packets, 2);
        assert_eq!(
            summary(&collected),
            vec![
                (point::SOCKET_SEND, point::POD_OUT, 2, 200),
                (point::POD_OUT, point::NODE_OUT, 1, 200),
                (point::POD_OUT, point::NODE_IN, 1, 900),
                (point::NODE_OUT, point::NODE_IN, 1, 700),
            ]
        );
        let out = &collected.uplink[0];
        assert_eq!(
            (out.point, out.keys.clone()),
            (point::NODE_OUT, vec![(40000_u64 << 32) | 7])
        );
        assert_eq!(collected.uplink[1].keys.len(), 2);
    }

    #[test]
    fn a_record_carrying_its_earlier_point_gives_both_stamps_and_the_send_before_the_first() {
        let combined = |at, earlier, dir, id, ts_ns, earlier_ns, value| Event {
            earlier,
            earlier_ns,
            value,
            ..stamp(at, dir, 40000, id, ts_ns)
        };
        let mut collector = Collector::new(1000, side::CLIENT | side::SERVER);
        let dir = direction::TO_SERVER;
        // Left the pod at 10_100 (send 100 before), left the node at 10_300: one record.
        collector.record(&combined(
            point::NODE_OUT,
            point::POD_OUT,
            dir,
            7,
            10_300,
            200,
            100,
        ));
        // Reached the node at 11_000, entered the pod at 11_050: one record.
        collector.record(&combined(
            point::POD_IN,
            point::NODE_IN,
            dir,
            7,
            11_050,
            50,
            0,
        ));
        let collected = collector.finish();
        assert_eq!(collected.events, 2);
        assert_eq!(
            summary(&collected),
            vec![
                (point::SOCKET_SEND, point::POD_OUT, 1, 100),
                (point::POD_OUT, point::NODE_OUT, 1, 200),
                (point::NODE_OUT, point::NODE_IN, 1, 700),
                (point::NODE_IN, point::POD_IN, 1, 50),
            ]
        );
    }

    #[test]
    fn first_stamp_wins_and_backwards_or_stale_gaps_are_not_stages() {
        let mut collector = Collector::new(0, side::CLIENT | side::SERVER);
        collector.record(&stamp(point::POD_IN, 1, 5, 1, 5000));
        collector.record(&stamp(point::POD_IN, 1, 5, 1, 6000));
        collector.record(&stamp(point::SOCKET_READ, 1, 5, 1, 5500));
        // A read two seconds later is a stale skb match, not a stage.
        collector.record(&stamp(point::POD_IN, 1, 5, 2, 1_000));
        collector.record(&stamp(point::SOCKET_READ, 1, 5, 2, 2_000_001_000));
        let collected = collector.finish();
        assert_eq!(collected.stages.len(), 1);
        assert_eq!(collected.stages[0].sum_ns, 500);
    }

    #[test]
    fn a_name_that_comes_back_after_a_sequence_wrap_is_another_packet() {
        // A receiver that splices: its last point (the read) never comes.
        let mut collector = Collector::new(0, side::SERVER);
        let dir = direction::TO_SERVER;
        // The same sequence number 1.7 s apart (4 GiB at 20 Gbit/s), and a fast
        // retransmission of the second 50 µs after it.
        for base in [1_000_000, 1_701_000_000] {
            collector.record(&stamp(point::NODE_IN, dir, 7, 42, base));
            collector.record(&stamp(point::POD_IN, dir, 7, 42, base + 800));
        }
        collector.record(&stamp(point::NODE_IN, dir, 7, 42, 1_701_050_000));
        let collected = collector.finish();
        assert_eq!(collected.packets, 2);
        let stage = &collected.stages[0];
        assert_eq!((stage.from, stage.to), (point::NODE_IN, point::POD_IN));
        assert_eq!((stage.latency.len(), stage.sum_ns), (2, 1600));
        assert_eq!(collected.uplink[0].keys.len(), 2);
    }

    #[test]
    fn packets_whose_last_point_never_comes_are_let_go_after_a_stage_s_longest() {
        let mut collector = Collector::new(0, side::SERVER);
        let dir = direction::TO_SERVER;
        // 3 s of packets every 1 ms, each seen at the uplink and the pod, never read.
        for id in 1..=3000_u32 {
            let base = u64::from(id) * 1_000_000;
            collector.record(&stamp(point::NODE_IN, dir, 7, id, base));
            collector.record(&stamp(point::POD_IN, dir, 7, id, base + 500));
            assert!(
                collector.packets.len() <= 1300,
                "{} held at {id}",
                collector.packets.len()
            );
        }
        let collected = collector.finish();
        assert_eq!(collected.packets, 3000);
        assert_eq!(collected.stages[0].latency.len(), 3000);
        assert_eq!(collected.stages[0].sum_ns, 3000 * 500);
    }

    #[test]
    fn a_long_run_s_uplink_stamps_are_thinned_over_all_of_it_alike_on_both_nodes() {
        let dir = direction::TO_SERVER;
        let mut sender = Collector::new(0, side::CLIENT);
        let mut receiver = Collector::new(0, side::SERVER);
        // 3.5 times the room, one packet every 100 us (a second's worth, held until let go,
        // is within what the receiving node follows at once); the receiver misses every 50th.
        let count = (MAX_UPLINK_STAMPS as u32) * 7 / 2;
        for id in 1..=count {
            let ts = u64::from(id) * 100_000;
            sender.record(&stamp(point::NODE_OUT, dir, 7, id, ts));
            if id % 50 != 0 {
                receiver.record(&stamp(point::NODE_IN, dir, 7, id, ts + 2_000));
            }
        }
        let (sent, arrived) = (sender.finish().uplink, receiver.finish().uplink);
        let (sent, arrived) = (&sent[0], &arrived[0]);
        for stamps in [sent, arrived] {
            // Thinned twice: a quarter of 3.5 times the room is left, 0.875 of it.
            assert_eq!(stamps.thinned, 2);
            let kept = stamps.keys.len() as f64 / MAX_UPLINK_STAMPS as f64;
            assert!((0.8..0.95).contains(&kept), "kept {kept}");
            // From all of the run, not its start: a tenth of the stamps in each tenth.
            let end = u64::from(count) * 100_000;
            for tenth in 0..10 {
                let (from, to) = (end * tenth / 10, end * (tenth + 1) / 10);
                let share = stamps
                    .ts_ns
                    .iter()
                    .filter(|ts| (from..to).contains(*ts))
                    .count() as f64
                    / stamps.keys.len() as f64;
                assert!((0.08..0.12).contains(&share), "tenth {tenth}: {share}");
            }
        }
        // The same packets kept on both nodes: every arrival kept was kept as sent too.
        let sent_names: std::collections::HashSet<u64> = sent.keys.iter().copied().collect();
        assert!(arrived.keys.iter().all(|name| sent_names.contains(name)));
        let paired = arrived.keys.len() as f64 / sent.keys.len() as f64;
        assert!((0.97..1.0).contains(&paired), "paired {paired}");
    }

    #[test]
    fn connect_times_and_retransmits_are_counted() {
        let mut collector = Collector::new(0, side::CLIENT | side::SERVER);
        for took in [1000, 3000] {
            collector.record(&Event {
                ts_ns: 10,
                kind: event_kind::CONNECT,
                value: took,
                ..Event::default()
            });
        }
        collector.record(&Event {
            ts_ns: 10,
            kind: event_kind::RETRANSMIT,
            ..Event::default()
        });
        let collected = collector.finish();
        let connect = collected.connect.expect("connect times");
        assert_eq!(connect.len(), 2);
        assert!(connect.max().abs_diff(3000) <= 3, "max {}", connect.max());
        assert_eq!(collected.retransmits, 1);
    }
}
