//! ctnetlink event datagrams: netlink frames back to back, as the kernel's conntrack group
//! sends them (netlink-packet-netfilter decoding, then sonde's counting).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_daemon::conntrack::events::{EventCounts, count_frames};

fuzz_target!(|data: &[u8]| {
    let counts = EventCounts::default();
    count_frames(data, &counts);
    let totals = counts.totals();
    // Each frame is at least 16 bytes: no more events than that.
    assert!(totals.created_total() + totals.destroyed <= (data.len() / 16) as u64);
});
