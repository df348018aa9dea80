//! Scenario files as users write them: parsed, checked, and expanded into their tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_ctl::scenario::Scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scenario) = Scenario::parse(text) {
        let _ = scenario.tests();
    }
});
