//! The ring-buffer event decoder: a record of any length and content (a single event, a
//! batch claiming more events than it holds, anything else).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_common::stages::BATCH_EVENTS;
use sonde_daemon::stages::events::unpack;

fuzz_target!(|data: &[u8]| {
    let mut events = Vec::new();
    unpack(data, &mut events);
    assert!(
        events.len() <= BATCH_EVENTS,
        "{} events from one record",
        events.len()
    );
});
