//! HdrHistogram V2 (deflate) decoding of a daemon's latency histogram, as sondectl reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_ctl::run::report::derive::decode_histogram;

fuzz_target!(|data: &[u8]| {
    if let Some(histogram) = decode_histogram(data) {
        let _ = histogram.value_at_quantile(0.99);
        let _ = histogram.mean();
    }
});
