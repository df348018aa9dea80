//! UDP generators: `udp-stream` (loss, reordering, jitter from the receiver's view of sequence
//! numbers and send times) and `udp-rr` (request/response, a late response counts as lost).
//!
//! A flow is one connected client socket. It starts with a hello carrying the run's token,
//! repeated until the server answers; only then does load follow. The server answers and
//! measures only flows that said hello.
//!
//! As fast as possible, datagrams go out up to 64 per UDP GSO send (32 per `sendmmsg` where
//! GSO is unavailable) and come in up to 32 per `recvmmsg` (arrival times are read per
//! datagram as it is processed, so a batch's datagrams carry arrival times microseconds apart
//! at most).

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};

use super::{
    flows::run_flows,
    generator::{ClientRun, ServerRun},
    io::Pacer,
    measure::{Counters, POLL, Stop, ThreadResult, Window, monotonic_ns},
    wire::{self, Token, udp},
};
use crate::runs::spec::{Kind, RunSpec};

/// How long an RR request waits for its response before it counts as lost.
pub const RR_TIMEOUT: Duration = Duration::from_millis(500);
/// Hello attempts before a flow gives up.
const HELLO_TRIES: u32 = 20;

/// Per-flow receiver state.
#[derive(Debug, Default)]
struct Flow {
    /// Highest sequence number seen.
    highest: Option<u64>,
    /// Sequence numbers below `highest` seen recently (bit i: highest - 1 - i), for duplicates.
    recent: u128,
    /// Last transit time (arrival - send), for jitter.
    last_transit: Option<i128>,
    /// RFC 3550 jitter estimate, ns (x16 fixed point to keep precision).
    jitter16: i128,
    received: u64,
    reordered: u64,
    duplicates: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Flow {
    fn receive(&mut self, header: udp::Header, bytes: usize, arrival_ns: u64, now: Instant) {
        match self.highest {
            None => self.highest = Some(header.seq),
            Some(highest) if header.seq > highest => {
                let shift = header.seq - highest;
                self.recent = if shift >= 128 {
                    0
                } else {
                    (self.recent << shift) | (1 << (shift - 1))
                };
                self.highest = Some(header.seq);
            }
            Some(highest) if header.seq == highest => {
                self.duplicates += 1;
                return;
            }
            Some(highest) => {
                let back = highest - header.seq - 1;
                if back < 128 {
                    if self.recent & (1 << back) != 0 {
                        self.duplicates += 1;
                        return;
                    }
                    self.recent |= 1 << back;
                }
                self.reordered += 1;
            }
        }
        self.received += 1;
        self.bytes += bytes as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
        let transit = i128::from(arrival_ns) - i128::from(header.send_ns);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // J += (|D| - J) / 16, kept as 16 * J.
            self.jitter16 += d - (self.jitter16 + 8) / 16;
        }
        self.last_transit = Some(transit);
    }
}

/// `udp-stream` and `udp-rr`.
#[derive(Debug)]
pub struct Datagrams;

super::generator::network_generator!(Datagrams, Udp);

/// Serves a bound socket until stopped.
pub fn serve(socket: UdpSocket, run: ServerRun) -> Vec<ThreadResult> {
    let ServerRun { spec, token, stop } = run;
    let mut result = ThreadResult::new();
    enlarge_receive_buffer(&socket);
    let mut first_request: Option<Instant> = None;
    if let Err(err) = socket.set_read_timeout(Some(POLL)) {
        result.error(format!("socket timeout: {err}"));
    }
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut response = vec![0xa5_u8; spec.response_size.max(udp::RR_HEADER_LEN)];
    response.truncate(spec.response_size.max(udp::RR_HEADER_LEN));
    let batch = if spec.plain_io { 1 } else { BATCH };
    result.io(if batch == 1 { "recv" } else { "recvmmsg" });
    let mut buffers = vec![vec![0_u8; spec.request_size.max(64) + 1]; batch];
    while !stop.load(Ordering::Relaxed) {
        let batch = match receive_batch(&socket, &mut buffers) {
            Ok(batch) => batch,
            Err(err) if wire::is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {
                continue;
            }
            Err(err) => {
                result.error(format!("receive: {err}"));
                continue;
            }
        };
        for (i, (len, peer)) in batch.into_iter().enumerate() {
            let Some(peer) = peer else { continue };
            let datagram = &buffers[i][..len];
            if udp::is_hello(datagram, udp::HELLO, &token) {
                flows.entry(peer).or_default();
                let _ = socket.send_to(&udp::hello(udp::HELLO_ACK, &token), peer);
                continue;
            }
            let Some(flow) = flows.get_mut(&peer) else {
                continue; // not one of this run's flows
            };
            match spec.kind {
                Kind::UdpRr => {
                    let Some(header) = udp::Header::read(datagram, false) else {
                        continue;
                    };
                    let now = Instant::now();
                    let first = *first_request.get_or_insert(now);
                    result.cpu_starts_if(now >= first + spec.warmup);
                    header.write(&mut response, false);
                    if socket.send_to(&response, peer).is_ok() {
                        result.messages += 1;
                        result.bytes_received += len as u64;
                        result.bytes_sent += response.len() as u64;
                    }
                }
                _ => {
                    let arrival_ns = monotonic_ns();
                    let Some(header) = udp::Header::read(datagram, true) else {
                        continue;
                    };
                    if header.flags & udp::FLAG_WARMUP == 0 {
                        result.cpu_starts_if(true);
                        flow.receive(header, len, arrival_ns, Instant::now());
                    }
                }
            }
        }
    }
    let mut results: Vec<ThreadResult> = flows
        .into_values()
        .filter(|flow| flow.received > 0)
        .map(|flow| {
            let mut flow_result = ThreadResult::new();
            flow_result.udp.received = flow.received;
            flow_result.udp.reordered = flow.reordered;
            flow_result.udp.duplicates = flow.duplicates;
            flow_result.udp.jitter_ns = u64::try_from(flow.jitter16 / 16).unwrap_or(0);
            flow_result.bytes_received = flow.bytes;
            flow_result.messages = flow.received;
            if let (Some(first), Some(last)) = (flow.first, flow.last) {
                flow_result.measured = last - first;
            }
            flow_result
        })
        .collect();
    result.stop_cpu();
    results.push(result);
    results
}

/// Receive buffer the server asks for: a receiver thread that is not scheduled for a few
/// milliseconds must not turn into "loss on the path" (the default, 212 KB, holds 9 ms of
/// 1200-byte datagrams at 20,000/s).
const RECEIVE_BUFFER: usize = 8 << 20;

/// Asks for [`RECEIVE_BUFFER`]: past the system's limit when privileged (SO_RCVBUFFORCE),
/// else up to it.
fn enlarge_receive_buffer(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
}

/// The client side: `parallel` flows, each on its own thread and socket.
pub fn client(target: SocketAddr, run: ClientRun<'_>) -> Vec<ThreadResult> {
    let ClientRun { spec, token, .. } = run;
    let rate = spec.rate.map(|rate| rate / f64::from(spec.parallel));
    let (owned, counters) = (spec.clone(), Arc::clone(run.counters));
    let (ready_stop, stop) = (Arc::clone(run.stop), Arc::clone(run.stop));
    run_flows(
        spec,
        run.netns,
        spec.parallel,
        move |_| {
            open_flow(target, &token, &ready_stop).map_err(|err| format!("flow to {target}: {err}"))
        },
        move |socket, window, result| {
            if owned.kind == Kind::UdpRr {
                rr(&socket, &owned, window, rate, &stop, &counters, result);
            } else {
                stream(&socket, &owned, window, rate, &stop, &counters, result);
            }
            result.measured = window.end - window.measure_from;
        },
    )
}

/// A UDP socket of `target`'s family connected to it, its reads timing out after `poll`.
pub(super) fn connected(target: SocketAddr, poll: Duration) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0_u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(poll))?;
    Ok(socket)
}

/// Waits until `deadline` (or `stop`) for the answer to a request sent on `socket`: the first
/// datagram `answer` accepts (a late answer to an earlier request is skipped), when it came,
/// its length and what `answer` read of it. ICMP port unreachable is waited through.
pub(super) fn await_answer<T>(
    socket: &UdpSocket,
    buf: &mut [u8],
    deadline: Instant,
    stop: &Stop,
    answer: impl Fn(&[u8]) -> Option<T>,
) -> io::Result<Option<(Instant, usize, T)>> {
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        match socket.recv(buf) {
            Ok(len) => {
                if let Some(read) = answer(&buf[..len]) {
                    return Ok(Some((Instant::now(), len, read)));
                }
            }
            Err(err) if wire::is_timeout(&err) => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

/// A connected socket whose hello the server has answered.
fn open_flow(target: SocketAddr, token: &Token, stop: &Stop) -> io::Result<UdpSocket> {
    let socket = connected(target, Duration::from_millis(100))?;
    let hello = udp::hello(udp::HELLO, token);
    let mut buf = [0_u8; 64];
    for _ in 0..HELLO_TRIES {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        socket.send(&hello)?;
        match socket.recv(&mut buf) {
            Ok(len) if udp::is_hello(&buf[..len], udp::HELLO_ACK, token) => return Ok(socket),
            Ok(_) => {}
            Err(err) if wire::is_timeout(&err) => {}
            // ICMP port unreachable arrives as ECONNREFUSED on a connected socket: retry.
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no sonde server answered the flow's hello",
    ))
}

fn stream(
    socket: &UdpSocket,
    spec: &RunSpec,
    window: Window,
    rate: Option<f64>,
    stop: &Stop,
    counters: &Counters,
    result: &mut ThreadResult,
) {
    // As fast as possible: a batch of datagrams per call, as one GSO send when the kernel
    // allows (UDP_SEGMENT: the batch crosses the stack as one packet and is split into
    // datagrams on delivery), else as one sendmmsg. Paced: one at a time, each leaving at its
    // own intended time.
    let size = spec.request_size;
    let fast = rate.is_none() && !spec.plain_io;
    let gso = fast && enable_gso(socket, size);
    let batch = match (fast, gso) {
        (false, _) => 1,
        (true, true) => (GSO_MAX_BYTES / size).clamp(1, GSO_MAX_SEGMENTS),
        (true, false) => BATCH,
    };
    result.io(match (gso, batch) {
        (true, _) => "udp-gso",
        (false, 1) => "send",
        (false, _) => "sendmmsg",
    });
    let mut datagrams = vec![vec![0x5d_u8; size]; if gso { 1 } else { batch }];
    let mut gso_buffer = vec![0x5d_u8; if gso { size * batch } else { 0 }];
    let mut pacer = Pacer::new(rate, window.start);
    let mut seq = 0_u64;
    let mut stop_check = 0_u32;
    result.follow(counters, &window);
    loop {
        pacer.wait_turn();
        let now = Instant::now();
        if now >= window.end {
            break;
        }
        stop_check = stop_check.wrapping_add(1);
        if stop_check.is_multiple_of(64) && stop.load(Ordering::Relaxed) {
            break;
        }
        let measuring = now >= window.measure_from;
        result.cpu_starts_if(measuring);
        let send_ns = monotonic_ns();
        let flags = if measuring { 0 } else { udp::FLAG_WARMUP };
        let outcome = if gso {
            for (i, datagram) in gso_buffer.chunks_mut(size).enumerate() {
                udp::Header {
                    flags,
                    seq: seq + i as u64,
                    send_ns,
                }
                .write(datagram, true);
            }
            socket.send(&gso_buffer).map(|bytes| bytes / size)
        } else {
            for (i, datagram) in datagrams.iter_mut().enumerate() {
                udp::Header {
                    flags,
                    seq: seq + i as u64,
                    send_ns,
                }
                .write(datagram, true);
            }
            send_batch(socket, &datagrams)
        };
        match outcome {
            Ok(sent) => {
                seq += sent as u64;
                let bytes = (sent * spec.request_size) as u64;
                counters.add(bytes, sent as u64);
                if measuring {
                    result.udp.sent += sent as u64;
                    result.counted(now, bytes, 0, sent as u64);
                }
            }
            // The local queue is full (ENOBUFS) or the peer said port unreachable: not sent.
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(err) => {
                result.error(format!("send: {err}"));
                break;
            }
        }
    }
}

/// Datagrams per `sendmmsg`/`recvmmsg` call when going as fast as possible.
const BATCH: usize = 32;
/// Most segments one UDP GSO send may carry (UDP_MAX_SEGMENTS in the kernel).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one UDP GSO send may carry (an IPv4 datagram's payload limit, rounded down).
const GSO_MAX_BYTES: usize = 65_000;

/// Asks the kernel to split every send on `socket` into datagrams of `size` bytes; whether it
/// agreed.
fn enable_gso(socket: &UdpSocket, size: usize) -> bool {
    let Ok(size) = i32::try_from(size) else {
        return false;
    };
    size * 2 <= GSO_MAX_BYTES as i32
        && nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGsoSegment, &size)
            .is_ok()
}

/// Sends `datagrams` on a connected socket: the number sent.
fn send_batch(socket: &UdpSocket, datagrams: &[Vec<u8>]) -> io::Result<usize> {
    if let [datagram] = datagrams {
        return socket.send(datagram).map(|_| 1);
    }
    let slices: Vec<[io::IoSlice<'_>; 1]> =
        datagrams.iter().map(|d| [io::IoSlice::new(d)]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(datagrams.len(), None);
    let no_addresses: Vec<Option<SockaddrStorage>> = vec![None; datagrams.len()];
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &slices,
        &no_addresses,
        [] as [ControlMessage<'_>; 0],
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

/// Receives up to `buffers.len()` datagrams (at least one, or the socket's timeout):
/// (length, sender) of each, in order; the payloads are in `buffers`.
fn receive_batch(
    socket: &UdpSocket,
    buffers: &mut [Vec<u8>],
) -> io::Result<Vec<(usize, Option<SocketAddr>)>> {
    if let [buffer] = buffers {
        return socket
            .recv_from(buffer)
            .map(|(len, peer)| vec![(len, Some(peer))]);
    }
    let mut slices: Vec<[io::IoSliceMut<'_>; 1]> = buffers
        .iter_mut()
        .map(|b| [io::IoSliceMut::new(b)])
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let received = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )
    .map_err(io::Error::from)?;
    Ok(received
        .map(|message| {
            let peer = message.address.and_then(|address: SockaddrStorage| {
                address
                    .as_sockaddr_in()
                    .map(|v4| SocketAddr::V4((*v4).into()))
                    .or_else(|| {
                        address
                            .as_sockaddr_in6()
                            .map(|v6| SocketAddr::V6((*v6).into()))
                    })
            });
            (message.bytes, peer)
        })
        .collect())
}

fn rr(
    socket: &UdpSocket,
    spec: &RunSpec,
    window: Window,
    rate: Option<f64>,
    stop: &Stop,
    counters: &Counters,
    result: &mut ThreadResult,
) {
    let mut request = vec![0x5d_u8; spec.request_size];
    let mut buf = vec![0_u8; 65_536];
    let mut pacer = Pacer::new(rate, window.start);
    let mut seq = 0_u64;
    let _ = socket.set_read_timeout(Some(Duration::from_millis(20)));
    result.follow(counters, &window);
    while !stop.load(Ordering::Relaxed) {
        let intended = pacer.wait_turn();
        if intended >= window.end {
            break;
        }
        let measuring = window.measuring(intended);
        result.cpu_starts_if(measuring);
        udp::Header {
            flags: 0,
            seq,
            send_ns: 0,
        }
        .write(&mut request, false);
        if let Err(err) = socket.send(&request)
            && err.kind() != io::ErrorKind::ConnectionRefused
        {
            result.error(format!("send: {err}"));
        }
        let deadline = Instant::now() + RR_TIMEOUT;
        let got = await_answer(socket, &mut buf, deadline, stop, |datagram| {
            udp::Header::read(datagram, false).filter(|h| h.seq == seq)
        })
        .unwrap_or_else(|err| {
            result.error(format!("receive: {err}"));
            None
        });
        let answered = got.is_some();
        if let Some((done, len, _)) = got {
            counters.add((request.len() + len) as u64, 1);
            if measuring {
                result.record_at(intended, done - intended);
                result.counted(intended, request.len() as u64, len as u64, 1);
                result.udp.received += 1;
            }
        }
        if measuring {
            result.udp.sent += 1;
            if !answered {
                result.udp.timeouts += 1;
                result.missed_at(intended);
            }
        }
        seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, send_ns: u64) -> udp::Header {
        udp::Header {
            flags: 0,
            seq,
            send_ns,
        }
    }

    #[test]
    fn in_order_flow_has_no_reordering_and_constant_transit_no_jitter() {
        let mut flow = Flow::default();
        let now = Instant::now();
        for seq in 0..100 {
            flow.receive(header(seq, seq * 1000), 64, seq * 1000 + 500, now);
        }
        assert_eq!(
            (flow.received, flow.reordered, flow.duplicates),
            (100, 0, 0)
        );
        assert_eq!(flow.jitter16 / 16, 0);
    }

    #[test]
    fn reordering_duplicates_and_jitter_are_counted() {
        let mut flow = Flow::default();
        let now = Instant::now();
        flow.receive(header(0, 0), 64, 100, now);
        flow.receive(header(2, 0), 64, 100, now);
        flow.receive(header(1, 0), 64, 100, now); // late: reordered
        flow.receive(header(1, 0), 64, 100, now); // again: duplicate
        flow.receive(header(2, 0), 64, 100, now); // duplicate of the highest
        assert_eq!((flow.received, flow.reordered, flow.duplicates), (3, 1, 2));

        // Transit alternating 0 and 1600 ns: |D| = 1600 each time, J converges to 1600.
        let mut flow = Flow::default();
        for seq in 0..2000_u64 {
            let transit = if seq % 2 == 0 { 0 } else { 1600 };
            flow.receive(header(seq, seq * 10_000), 64, seq * 10_000 + transit, now);
        }
        let jitter = flow.jitter16 / 16;
        assert!((1590..=1600).contains(&jitter), "{jitter}");
    }
}
