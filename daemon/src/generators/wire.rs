//! What sonde's generators put on the wire besides payload: the hello that binds a connection
//! or flow to its run, and the header of UDP datagrams.
//!
//! The hello carries the run's token, a secret PrepareServer handed to the controller: a server
//! serves nothing to a connection without it, and a client sends no load until the server has
//! answered (TCP stream and RR) or answered the first request (CRR), so a daemon cannot be
//! pointed at a service that is not a sonde server.

use std::{
    io::{self, Read, Write},
    time::{Duration, Instant},
};

/// A run's secret.
pub type Token = [u8; 16];

/// A fresh random token.
pub fn new_token() -> Token {
    let mut token = [0_u8; 16];
    // getrandom only fails without any OS entropy source; a zero token still works (it is
    // only as secret as the controller keeps it).
    let _ = getrandom::fill(&mut token);
    token
}

/// Length of a TCP hello: magic, version, role, reserved, token.
pub const HELLO_LEN: usize = 24;
const HELLO_MAGIC: &[u8; 4] = b"SNDE";
const ACK: &[u8; 4] = b"SNDK";
const VERSION: u8 = 1;

/// What the client side does on a TCP connection after the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client writes (forward stream, RR requests).
    ClientSends = 0,
    /// The server writes (reverse stream).
    ServerSends = 1,
}

/// The hello bytes for `token` and `role`.
pub fn hello(token: &Token, role: Role) -> [u8; HELLO_LEN] {
    let mut bytes = [0_u8; HELLO_LEN];
    bytes[..4].copy_from_slice(HELLO_MAGIC);
    bytes[4] = VERSION;
    bytes[5] = role as u8;
    bytes[8..].copy_from_slice(token);
    bytes
}

/// Parses a hello; `None` if it is not one for `token`.
pub fn parse_hello(bytes: &[u8; HELLO_LEN], token: &Token) -> Option<Role> {
    if &bytes[..4] != HELLO_MAGIC || bytes[4] != VERSION || &bytes[8..] != token {
        return None;
    }
    match bytes[5] {
        0 => Some(Role::ClientSends),
        1 => Some(Role::ServerSends),
        _ => None,
    }
}

/// Client side: sends the hello and waits for the server's acknowledgement.
pub fn client_handshake(
    stream: &mut (impl Read + Write),
    token: &Token,
    role: Role,
) -> io::Result<()> {
    stream.write_all(&hello(token, role))?;
    let mut ack = [0_u8; 4];
    read_exact_by(stream, &mut ack, Instant::now() + Duration::from_secs(5))?;
    if &ack != ACK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer is not a sonde server for this run",
        ));
    }
    Ok(())
}

/// Server side: reads a hello for `token` (within a deadline) and acknowledges it unless
/// `ack` is false (CRR, where the response is the acknowledgement).
pub fn server_handshake(
    stream: &mut (impl Read + Write),
    token: &Token,
    ack: bool,
) -> io::Result<Role> {
    let mut bytes = [0_u8; HELLO_LEN];
    read_exact_by(stream, &mut bytes, Instant::now() + Duration::from_secs(5))?;
    let role = parse_hello(&bytes, token).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "connection without this run's token",
        )
    })?;
    if ack {
        stream.write_all(ACK)?;
    }
    Ok(role)
}

/// `read_exact` that tolerates the socket's poll timeout until `deadline`.
pub fn read_exact_by(stream: &mut impl Read, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if is_timeout(&err) && Instant::now() < deadline => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Whether an I/O error is a socket timeout (SO_RCVTIMEO/SO_SNDTIMEO), not a failure.
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// UDP: the hello a flow starts with, and the server's answer.
pub mod udp {
    use super::Token;

    /// Magic of a UDP hello.
    pub const HELLO: &[u8; 4] = b"SNDU";
    /// Magic of the server's answer.
    pub const HELLO_ACK: &[u8; 4] = b"SNDA";
    /// Magic of a data datagram.
    pub const DATA: &[u8; 4] = b"SNDD";
    /// Length of hello and answer: magic and token.
    pub const HELLO_LEN: usize = 20;
    /// Header of a data datagram: magic, flags, sequence, send time (ns, CLOCK_MONOTONIC).
    pub const HEADER_LEN: usize = 24;
    /// RR datagrams carry no send time.
    pub const RR_HEADER_LEN: usize = 16;
    /// Flag: sent during the warm-up (receivers leave it out of their statistics).
    pub const FLAG_WARMUP: u32 = 1;

    /// A hello (or its answer, with `magic` = [`HELLO_ACK`]).
    pub fn hello(magic: &[u8; 4], token: &Token) -> [u8; HELLO_LEN] {
        let mut bytes = [0_u8; HELLO_LEN];
        bytes[..4].copy_from_slice(magic);
        bytes[4..].copy_from_slice(token);
        bytes
    }

    /// Whether `datagram` is a hello (or answer) with `magic` for `token`.
    pub fn is_hello(datagram: &[u8], magic: &[u8; 4], token: &Token) -> bool {
        datagram.len() == HELLO_LEN && &datagram[..4] == magic && &datagram[4..] == token
    }

    /// A data header.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Header {
        /// [`FLAG_WARMUP`] or 0.
        pub flags: u32,
        /// Per-flow sequence number, from 0.
        pub seq: u64,
        /// Send time, ns (0 in RR datagrams).
        pub send_ns: u64,
    }

    impl Header {
        /// Writes the header at the start of `buf` (`buf` must hold [`HEADER_LEN`], or
        /// [`RR_HEADER_LEN`] when `with_time` is false).
        pub fn write(&self, buf: &mut [u8], with_time: bool) {
            buf[..4].copy_from_slice(DATA);
            buf[4..8].copy_from_slice(&self.flags.to_be_bytes());
            buf[8..16].copy_from_slice(&self.seq.to_be_bytes());
            if with_time {
                buf[16..24].copy_from_slice(&self.send_ns.to_be_bytes());
            }
        }

        /// Reads a header; `None` if `buf` is not a sonde data datagram.
        pub fn read(buf: &[u8], with_time: bool) -> Option<Self> {
            let len = if with_time { HEADER_LEN } else { RR_HEADER_LEN };
            if buf.len() < len || &buf[..4] != DATA {
                return None;
            }
            let u64_at = |at: usize| {
                let mut bytes = [0_u8; 8];
                bytes.copy_from_slice(&buf[at..at + 8]);
                u64::from_be_bytes(bytes)
            };
            let mut flags = [0_u8; 4];
            flags.copy_from_slice(&buf[4..8]);
            Some(Self {
                flags: u32::from_be_bytes(flags),
                seq: u64_at(8),
                send_ns: if with_time { u64_at(16) } else { 0 },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_other_tokens() {
        let token = new_token();
        let bytes = hello(&token, Role::ServerSends);
        assert_eq!(parse_hello(&bytes, &token), Some(Role::ServerSends));
        let mut other = token;
        other[0] ^= 1;
        assert_eq!(parse_hello(&bytes, &other), None);
        assert_eq!(parse_hello(&[0; HELLO_LEN], &token), None);
    }

    #[test]
    fn udp_headers_round_trip() {
        let header = udp::Header {
            flags: udp::FLAG_WARMUP,
            seq: 42,
            send_ns: 7,
        };
        let mut buf = [0_u8; 64];
        header.write(&mut buf, true);
        assert_eq!(udp::Header::read(&buf, true), Some(header));
        assert_eq!(udp::Header::read(&buf[..10], true), None);
        assert_eq!(udp::Header::read(&[0; 64], true), None);
        let rr = udp::Header {
            flags: 0,
            seq: 9,
            send_ns: 0,
        };
        rr.write(&mut buf, false);
        assert_eq!(udp::Header::read(&buf[..16], false), Some(rr));
    }
}
