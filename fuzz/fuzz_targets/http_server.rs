//! The http server's connection handling (hyper's HTTP/1.1 server and sonde's token check) on
//! whatever a client sends: no panic, no hang, and a request without the run's token is
//! never served.
#![no_main]

use std::{sync::Arc, time::Duration};

use libfuzzer_sys::fuzz_target;
use sonde_daemon::generators::http::{Served, serve_connection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "00112233445566778899aabbccddeeff";

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = Arc::new(Served::default());
        let serving = tokio::spawn(serve_connection(
            server,
            Arc::clone(&served),
            bytes::Bytes::from_static(b"sonde"),
            TOKEN.to_owned(),
            Duration::ZERO,
        ));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut answer));
        let _ = read.await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
        if !contains(data, TOKEN.as_bytes()) {
            assert_eq!(served.requests(), 0, "served without the token");
        }
    });
});

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
