//! The kernel's events, out of the ring buffer and into time order.
//!
//! The programs gather events per CPU and write them in batches (see
//! `sonde_common::stages::Batch`): records from different CPUs arrive out of time order, and
//! a CPU's last events wait in its batch until the daemon flushes it. The reader therefore
//! flushes every CPU first, then sorts what it read by time and hands on only the events
//! stamped before the flush began; later ones wait for the next read, so that one packet's
//! stamps on two CPUs reach its collector in the order they were made.

use aya::maps::{MapData, RingBuf};
use sonde_common::stages::{BATCH_EVENTS, Batch, Event};

/// Events read from the ring buffer and not yet handed on.
pub struct EventReader {
    ring: RingBuf<MapData>,
    pending: Vec<Event>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl EventReader {
    /// Reads `ring`, the programs' events ring buffer.
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            pending: Vec::new(),
        }
    }

    /// The ring buffer, to poll its fd.
    pub fn ring(&self) -> &RingBuf<MapData> {
        &self.ring
    }

    /// Reads every record in the ring buffer and returns, in time order, the events stamped
    /// before `before_ns` (all of them when `None`); the others wait for the next call.
    pub fn read(&mut self, before_ns: Option<u64>) -> Vec<Event> {
        while let Some(record) = self.ring.next() {
            unpack(&record, &mut self.pending);
        }
        take_ready(&mut self.pending, before_ns)
    }
}

/// Sorts `pending` by time and takes out the events stamped before `before_ns` (all of them
/// when `None`).
fn take_ready(pending: &mut Vec<Event>, before_ns: Option<u64>) -> Vec<Event> {
    pending.sort_by_key(|event| event.ts_ns);
    let ready = before_ns.map_or(pending.len(), |before| {
        pending.partition_point(|event| event.ts_ns < before)
    });
    let rest = pending.split_off(ready);
    std::mem::replace(pending, rest)
}

/// Appends the events of one ring-buffer record: a single [`Event`], or a [`Batch`].
/// Anything else (a record of another size, a batch claiming more than it holds) is skipped.
pub fn unpack(record: &[u8], into: &mut Vec<Event>) {
    if record.len() == size_of::<Event>() {
        // SAFETY: the kernel wrote an `Event` (plain integers, any bit pattern is valid);
        // records are 8-byte aligned but read unaligned to be safe.
        into.push(unsafe { record.as_ptr().cast::<Event>().read_unaligned() });
    } else if record.len() == size_of::<Batch>() {
        // SAFETY: as above, for a `Batch`.
        let batch = unsafe { record.as_ptr().cast::<Batch>().read_unaligned() };
        let count = (batch.count as usize).min(BATCH_EVENTS);
        into.extend_from_slice(&batch.events[..count]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ts_ns: u64, id: u32) -> Event {
        Event {
            ts_ns,
            id,
            ..Event::default()
        }
    }

    fn bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reads the plain-integer struct's own bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn a_single_event_and_a_batch_unpack_to_their_events() {
        let mut events = Vec::new();
        unpack(&bytes(&event(7, 1)), &mut events);
        let mut batch = Batch {
            count: 3,
            ..Batch::default()
        };
        for (slot, ts) in batch.events.iter_mut().zip([10, 11, 12, 99]) {
            *slot = event(ts, 2);
        }
        unpack(&bytes(&batch), &mut events);
        let times: Vec<u64> = events.iter().map(|e| e.ts_ns).collect();
        // The fourth slot is past the batch's count: not an event.
        assert_eq!(times, [7, 10, 11, 12]);
    }

    #[test]
    fn events_come_out_in_time_order_and_later_ones_wait() {
        // Two CPUs' batches: each in order, the two interleaved in time.
        let mut pending = vec![event(10, 0), event(30, 1), event(50, 2), event(20, 3)];
        pending.extend([event(40, 4), event(60, 5)]);
        let ready = take_ready(&mut pending, Some(45));
        let ids: Vec<u32> = ready.iter().map(|e| e.id).collect();
        assert_eq!(ids, [0, 3, 1, 4]);
        pending.push(event(55, 6));
        let rest: Vec<u32> = take_ready(&mut pending, None)
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(rest, [2, 6, 5]);
        assert!(pending.is_empty());
    }

    #[test]
    fn records_of_other_sizes_and_overfull_counts_are_not_misread() {
        let mut events = Vec::new();
        unpack(&[0_u8; 31], &mut events);
        unpack(&[0_u8; 40], &mut events);
        assert!(events.is_empty());
        let batch = Batch {
            count: u32::MAX,
            ..Batch::default()
        };
        unpack(&bytes(&batch), &mut events);
        assert_eq!(events.len(), BATCH_EVENTS);
    }
}
