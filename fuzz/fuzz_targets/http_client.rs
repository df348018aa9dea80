//! The http client's reading of a response head (httparse, then sonde's own checks of the
//! status and content-length), on whatever a server answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_daemon::generators::http::parse_response_head;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, _length))) = parse_response_head(data) {
        assert!(head <= data.len(), "a head longer than the bytes read");
    }
});
