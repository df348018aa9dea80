//! `sondectl results import`: a result document from a file, checked, its comparable facts
//! and its samples read as the store and `compare` read them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_ctl::results::{document::Document, samples::Samples};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(document) = Document::parse(text) {
        let facts = document.facts();
        let _ = facts.what(document.shape());
        let _ = facts.started();
        let _ = Samples::of([&document]);
    }
});
