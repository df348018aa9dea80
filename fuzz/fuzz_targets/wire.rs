//! The generators' wire: the TCP hello that binds a connection to its run (and its token
//! check), the UDP hello and the UDP data header, read from whatever a peer sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_daemon::generators::wire::{self, HELLO_LEN, Token, udp};

fuzz_target!(|data: &[u8]| {
    if data.len() >= HELLO_LEN + 16 {
        let hello: [u8; HELLO_LEN] = data[..HELLO_LEN].try_into().expect("length checked");
        let token: Token = data[HELLO_LEN..HELLO_LEN + 16]
            .try_into()
            .expect("length checked");
        // A hello accepted for a token is the hello a client of that run sends (but for the
        // two reserved bytes, which a reader ignores).
        if let Some(role) = wire::parse_hello(&hello, &token) {
            let sent = wire::hello(&token, role);
            assert_eq!((&sent[..6], &sent[8..]), (&hello[..6], &hello[8..]));
        }
        if udp::is_hello(&data[HELLO_LEN + 16..], udp::HELLO, &token) {
            assert_eq!(&data[HELLO_LEN + 16..], udp::hello(udp::HELLO, &token));
        }
    }
    for with_time in [true, false] {
        if let Some(header) = udp::Header::read(data, with_time) {
            // What was read writes back to the same bytes.
            let len = if with_time {
                udp::HEADER_LEN
            } else {
                udp::RR_HEADER_LEN
            };
            let mut again = vec![0_u8; len];
            header.write(&mut again, with_time);
            assert_eq!(&again[..], &data[..len]);
        }
    }
});
