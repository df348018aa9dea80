//! `tcp-stream`: bulk transfer over 1..N connections, client and server sides.
//!
//! Connections are multiplexed over as many threads as the machine has cores (non-blocking
//! sockets and `poll`), not one thread each: on a small node, eight busy threads for four
//! streams on two cores lose to context switches what they gain in parallelism. Payload moves
//! with `sendfile` and `splice` where the kernel allows (see [`super::zerocopy`]).

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    path::Path,
    sync::{Arc, Barrier, Mutex, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{
    flows::shared_window,
    generator::{ClientRun, ServerRun},
    io::closed,
    measure::{POLL, Stop, TcpFacts, ThreadResult, join_all},
    tcp::{connect, prepare},
    wire::{self, Role},
    zerocopy::{Discard, FilePayload},
};
use crate::runs::spec::{Direction, RunSpec};

/// Receive buffer when splicing is unavailable.
const RECV_BUFFER: usize = 256 * 1024;
/// Operations per ready socket before polling again (keeps one fast socket from starving
/// the others).
const BURST: usize = 8;

/// Threads to use for `connections` connections.
fn threads_for(connections: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    connections.clamp(1, cores)
}

/// How a side writes messages.
enum Payload {
    File(FilePayload),
    Copy(Vec<u8>),
}

impl Payload {
    fn new(size: usize, plain: bool) -> Self {
        let copy = || Self::Copy(vec![0x5d_u8; size]);
        if plain {
            return copy();
        }
        FilePayload::new(size).map_or_else(|_| copy(), Self::File)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::File(_) => "sendfile",
            Self::Copy(_) => "write",
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::File(payload) => payload.len(),
            Self::Copy(buf) => buf.len(),
        }
    }

    fn send_from(&self, stream: &mut TcpStream, offset: usize) -> io::Result<usize> {
        match self {
            Self::File(payload) => payload.send_from(stream, offset),
            Self::Copy(buf) => stream.write(&buf[offset..]),
        }
    }
}

/// How a side reads and drops data.
enum Sink {
    Splice(Discard),
    Copy(Vec<u8>),
}

impl Sink {
    fn new(plain: bool) -> Self {
        let copy = || Self::Copy(vec![0_u8; RECV_BUFFER]);
        if plain {
            return copy();
        }
        Discard::new().map_or_else(|_| copy(), Self::Splice)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Splice(_) => "splice",
            Self::Copy(_) => "read",
        }
    }

    fn receive(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        match self {
            Self::Splice(discard) => discard.receive(stream),
            Self::Copy(buf) => stream.read(buf),
        }
    }
}

/// One connection driven by a multiplexing thread.
struct Conn {
    stream: TcpStream,
    /// Its own payload pages: connections sharing one memfd contend on the pages' reference
    /// counts across CPUs (measured: 4 streams gained from separate pages).
    payload: Option<Payload>,
    /// This end writes (else it reads).
    sends: bool,
    /// Bytes of the current message already written.
    offset: usize,
    /// Server side: when its data began (the warm-up runs from here).
    began: Option<Instant>,
    open: bool,
}

/// What happened on one socket in one [`pump`].
struct Moved {
    bytes: usize,
    messages: u64,
}

/// Polls the open connections once (up to `POLL`) and moves what is ready, until `deadline`
/// (nothing is sent after it, so every byte sent is inside the measured window); `account` is
/// told of each transfer and its time.
fn pump(
    conns: &mut [Conn],
    sink: &mut Sink,
    result: &mut ThreadResult,
    deadline: Instant,
    mut account: impl FnMut(&mut Conn, &mut ThreadResult, Moved, Instant),
) {
    let ready: Vec<(usize, PollFlags)> = {
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let mut index = Vec::new();
        for (i, conn) in conns.iter().enumerate().filter(|(_, c)| c.open) {
            let events = if conn.sends {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(conn.stream.as_fd(), events));
            index.push(i);
        }
        let timeout = PollTimeout::try_from(POLL).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) | Err(_) => return,
            Ok(_) => fds
                .iter()
                .zip(index)
                .filter_map(|(fd, i)| fd.revents().filter(|r| !r.is_empty()).map(|r| (i, r)))
                .collect(),
        }
    };
    for (i, _) in ready {
        let conn = &mut conns[i];
        for _ in 0..BURST {
            // A transfer belongs to the moment it starts: the same moment the deadline is
            // checked against, so nothing sent goes uncounted.
            let started = Instant::now();
            if started >= deadline {
                return;
            }
            let outcome = if let (true, Some(payload)) = (conn.sends, &conn.payload) {
                payload.send_from(&mut conn.stream, conn.offset).map(|n| {
                    conn.offset += n;
                    let done = conn.offset == payload.len();
                    if done {
                        conn.offset = 0;
                    }
                    Moved {
                        bytes: n,
                        messages: u64::from(done),
                    }
                })
            } else {
                sink.receive(&mut conn.stream).map(|n| Moved {
                    bytes: n,
                    messages: 0,
                })
            };
            match outcome {
                Ok(Moved { bytes: 0, .. }) => {
                    conn.open = false;
                    break;
                }
                Ok(moved) => {
                    result.io(match &conn.payload {
                        Some(payload) if conn.sends => payload.name(),
                        _ => sink.name(),
                    });
                    account(conn, result, moved, started);
                }
                Err(err) if wire::is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {
                    break;
                }
                Err(err) if closed(&err) => {
                    conn.open = false;
                    break;
                }
                Err(err) => {
                    result.error(format!(
                        "{}: {err}",
                        if conn.sends { "send" } else { "receive" }
                    ));
                    conn.open = false;
                    break;
                }
            }
        }
    }
}

/// `tcp-stream`: bulk transfer, connections multiplexed over one thread per core.
#[derive(Debug)]
pub struct Stream;

super::generator::network_generator!(Stream, Tcp);

/// Serves a prepared listener: the acceptor checks each connection's hello and hands it to
/// one of the multiplexing workers.
pub fn serve(listener: TcpListener, run: ServerRun) -> Vec<ThreadResult> {
    let ServerRun { spec, token, stop } = run;
    let expected = match spec.direction {
        Direction::Both => spec.parallel as usize * 2,
        _ => spec.parallel as usize,
    };
    let mut senders = Vec::new();
    let workers: Vec<JoinHandle<ThreadResult>> = (0..threads_for(expected))
        .map(|_| {
            let (tx, rx) = mpsc::channel::<(TcpStream, Role)>();
            senders.push(tx);
            let spec = spec.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve_worker(&rx, &spec, &stop))
        })
        .collect();
    let mut acceptor = ThreadResult::new();
    if let Err(err) = socket2::SockRef::from(&listener).set_read_timeout(Some(POLL)) {
        acceptor.error(format!("listener timeout: {err}"));
    }
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let role = prepare(&stream, false)
                    .and_then(|()| wire::server_handshake(&mut stream, &token, true));
                match role {
                    Ok(role) => {
                        let _ = senders[next % senders.len()].send((stream, role));
                        next += 1;
                    }
                    Err(err) => acceptor.error(format!("handshake: {err}")),
                }
            }
            Err(err) if wire::is_timeout(&err) => {}
            Err(err) => {
                acceptor.error(format!("accept: {err}"));
                std::thread::sleep(POLL);
            }
        }
    }
    drop(senders);
    let mut results = join_all(workers, "server worker");
    results.push(acceptor);
    results
}

fn serve_worker(
    rx: &mpsc::Receiver<(TcpStream, Role)>,
    spec: &RunSpec,
    stop: &Stop,
) -> ThreadResult {
    let mut result = ThreadResult::new();
    let mut sink = Sink::new(spec.plain_io);
    let mut conns: Vec<Conn> = Vec::new();
    let mut accepting = true;
    let mut last_data: Option<Instant> = None;
    let mut measure_from: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        // New connections from the acceptor; wait for one when there is nothing to drive.
        loop {
            let next = if conns.iter().any(|c| c.open) || !accepting {
                rx.try_recv()
                    .map_err(|e| matches!(e, mpsc::TryRecvError::Disconnected))
            } else {
                rx.recv_timeout(POLL)
                    .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected))
            };
            match next {
                Ok((stream, role)) => {
                    if let Err(err) = stream.set_nonblocking(true) {
                        result.error(format!("non-blocking: {err}"));
                        continue;
                    }
                    result.connections += 1;
                    let sends = role == Role::ServerSends;
                    conns.push(Conn {
                        stream,
                        payload: sends.then(|| Payload::new(spec.request_size, spec.plain_io)),
                        sends,
                        offset: 0,
                        began: None,
                        open: true,
                    });
                }
                Err(disconnected) => {
                    accepting &= !disconnected;
                    break;
                }
            }
        }
        if !conns.iter().any(|c| c.open) {
            if !accepting {
                break;
            }
            continue;
        }
        let warmup = spec.warmup;
        let far = Instant::now() + spec.total() + Duration::from_secs(60);
        pump(
            &mut conns,
            &mut sink,
            &mut result,
            far,
            |conn, result, moved, now| {
                let began = *conn.began.get_or_insert(now);
                let measuring = now >= began + warmup;
                result.cpu_starts_if(measuring);
                if measuring {
                    measure_from.get_or_insert(began + warmup);
                    last_data = Some(now);
                    if conn.sends {
                        result.bytes_sent += moved.bytes as u64;
                        result.messages += moved.messages;
                    } else {
                        result.bytes_received += moved.bytes as u64;
                    }
                }
            },
        );
        for conn in conns.iter().filter(|c| !c.open) {
            result.tcp.add(TcpFacts::of(&conn.stream));
        }
        conns.retain(|c| c.open);
    }
    for conn in &conns {
        result.tcp.add(TcpFacts::of(&conn.stream));
    }
    if let (Some(from), Some(last)) = (measure_from, last_data) {
        result.measured = last.saturating_duration_since(from);
    }
    result.stop_cpu();
    result
}

/// The client side: the run's connections (twice `parallel` for both directions) spread over
/// as many threads as there are cores, all connected and handshaken before the clock starts.
pub fn client(target: SocketAddr, run: ClientRun<'_>) -> Vec<ThreadResult> {
    let spec = run.spec;
    let parallel = spec.parallel as usize;
    let roles: Vec<Role> = match spec.direction {
        Direction::Forward => vec![Role::ClientSends; parallel],
        Direction::Reverse => vec![Role::ServerSends; parallel],
        Direction::Both => {
            let mut roles = vec![Role::ClientSends; parallel];
            roles.extend(vec![Role::ServerSends; parallel]);
            roles
        }
    };
    let threads = threads_for(roles.len());
    let mut groups: Vec<Vec<Role>> = vec![Vec::new(); threads];
    for (i, role) in roles.into_iter().enumerate() {
        groups[i % threads].push(role);
    }
    let barrier = Arc::new(Barrier::new(threads));
    let clock = Arc::new(Mutex::new(None));
    let handles: Vec<JoinHandle<ThreadResult>> = groups
        .into_iter()
        .map(|group| {
            let spec = spec.clone();
            let netns = run.netns.map(Path::to_path_buf);
            let barrier = Arc::clone(&barrier);
            let clock = Arc::clone(&clock);
            let stop = Arc::clone(run.stop);
            let counters = Arc::clone(run.counters);
            let token = run.token;
            std::thread::spawn(move || {
                let mut result = ThreadResult::new();
                let mut conns = Vec::new();
                let entered = match &netns {
                    Some(netns) => crate::netns::enter(netns).map_err(|e| crate::error::chain(&e)),
                    None => Ok(()),
                };
                match entered {
                    Ok(()) => {
                        for role in group {
                            let connected = connect(target, false).and_then(|mut stream| {
                                wire::client_handshake(&mut stream, &token, role)?;
                                stream.set_nonblocking(true)?;
                                Ok(stream)
                            });
                            match connected {
                                Ok(stream) => conns.push(Conn {
                                    stream,
                                    payload: (role == Role::ClientSends)
                                        .then(|| Payload::new(spec.request_size, spec.plain_io)),
                                    sends: role == Role::ClientSends,
                                    offset: 0,
                                    began: None,
                                    open: true,
                                }),
                                Err(err) => result.error(format!("connect to {target}: {err}")),
                            }
                        }
                    }
                    Err(err) => result.error(err),
                }
                barrier.wait();
                let window = shared_window(&clock, &spec);
                result.follow(&counters, &window);
                let mut sink = Sink::new(spec.plain_io);
                result.connections = conns.len() as u64;
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < window.end
                    && conns.iter().any(|c| c.open)
                {
                    result.cpu_starts_if(window.measuring(Instant::now()));
                    pump(
                        &mut conns,
                        &mut sink,
                        &mut result,
                        window.end,
                        |conn, result, moved, now| {
                            counters.add(moved.bytes as u64, moved.messages);
                            if window.measuring(now) {
                                if conn.sends {
                                    result.counted(now, moved.bytes as u64, 0, moved.messages);
                                } else {
                                    result.counted(now, 0, moved.bytes as u64, 0);
                                }
                            }
                        },
                    );
                }
                if conns.iter().any(|c| !c.open) && Instant::now() < window.end {
                    result.error("the server closed a connection early");
                }
                result.stop_cpu();
                result.measured = window.end - window.measure_from;
                for conn in &mut conns {
                    result.tcp.add(TcpFacts::of(&conn.stream));
                    finish(conn);
                }
                result
            })
        })
        .collect();
    join_all(handles, "client")
}

/// Ends a client connection: a sender waits (briefly) until the server has read everything
/// and closed, so the server's count is complete before FinishServer.
fn finish(conn: &mut Conn) {
    let _ = conn.stream.set_nonblocking(false);
    let _ = conn.stream.set_read_timeout(Some(POLL));
    if !conn.sends {
        let _ = conn.stream.shutdown(Shutdown::Both);
        return;
    }
    let _ = conn.stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0_u8; 64];
    while Instant::now() < deadline {
        match conn.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if wire::is_timeout(&err) => {}
            Err(_) => break,
        }
    }
}
