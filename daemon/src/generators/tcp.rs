//! TCP generators: `tcp-stream`, `tcp-rr` and `tcp-crr`, client and server sides.
//!
//! Blocking sockets on dedicated threads, one per connection, as iperf3 and netperf work: the
//! simplest way to keep a core busy moving bytes and to time each transaction without a
//! scheduler in between. Every socket has a short timeout so the threads notice a stop.

use std::{
    io::{self, Read as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Barrier, Mutex, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    io::{Interrupted, read_exact, sleep_until, write_all},
    measure::{Counters, POLL, Stop, TcpFacts, ThreadResult, Window},
    wire::{self, Role, Token},
};
use crate::runs::spec::{Direction, Kind, RunSpec};

/// Buffer for bulk receives.
const RECV_BUFFER: usize = 256 * 1024;
/// How long a client waits for a connection to be set up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves a prepared listener until stopped: an acceptor hands connections to a pool of
/// workers (as many as the run has connections), which return their results when stopped.
pub fn serve(listener: TcpListener, spec: RunSpec, token: Token, stop: Stop) -> Vec<ThreadResult> {
    let workers = match spec.kind {
        Kind::TcpStream if spec.direction == Direction::Both => spec.parallel * 2,
        _ => spec.parallel,
    };
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    let pool: Vec<JoinHandle<ThreadResult>> = (0..workers)
        .map(|_| {
            let rx = Arc::clone(&rx);
            let spec = spec.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve_connections(&rx, &spec, &token, &stop))
        })
        .collect();
    let mut accept_errors = ThreadResult::new();
    if let Err(err) = set_accept_timeout(&listener) {
        accept_errors.error(format!("listener timeout: {err}"));
    }
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = tx.send(stream);
            }
            Err(err) if wire::is_timeout(&err) => {}
            Err(err) => {
                accept_errors.error(format!("accept: {err}"));
                std::thread::sleep(POLL);
            }
        }
    }
    drop(tx);
    let mut results: Vec<ThreadResult> = pool
        .into_iter()
        .map(|worker| worker.join().unwrap_or_else(|_| panicked("server worker")))
        .collect();
    results.push(accept_errors);
    results
}

fn set_accept_timeout(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener).set_read_timeout(Some(POLL))
}

fn panicked(what: &str) -> ThreadResult {
    let mut result = ThreadResult::new();
    result.error(format!("{what} thread panicked"));
    result
}

/// One server worker: takes connections from the acceptor until it stops.
fn serve_connections(
    rx: &Mutex<mpsc::Receiver<TcpStream>>,
    spec: &RunSpec,
    token: &Token,
    stop: &Stop,
) -> ThreadResult {
    let mut result = ThreadResult::new();
    let mut first_request = None;
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv_timeout(POLL),
            Err(_) => break,
        };
        let mut stream = match next {
            Ok(stream) => stream,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Err(err) = prepare(&stream, spec.kind != Kind::TcpStream) {
            result.error(format!("socket options: {err}"));
            continue;
        }
        let role = match wire::server_handshake(&mut stream, token, spec.kind != Kind::TcpCrr) {
            Ok(role) => role,
            Err(err) => {
                result.error(format!("handshake: {err}"));
                continue;
            }
        };
        result.connections += 1;
        match (spec.kind, role) {
            (Kind::TcpStream, Role::ClientSends) => sink(&mut stream, spec, stop, &mut result),
            (Kind::TcpStream, Role::ServerSends) => source(&mut stream, spec, stop, &mut result),
            (Kind::TcpCrr, _) => {
                respond(&mut stream, spec, stop, &mut result, 1, &mut first_request);
                drain_until_closed(&mut stream, stop);
            }
            _ => respond(
                &mut stream,
                spec,
                stop,
                &mut result,
                u64::MAX,
                &mut first_request,
            ),
        }
        result.tcp.add(TcpFacts::of(&stream));
    }
    result.stop_cpu();
    result
}

/// Timeouts for stop-polling, and Nagle off for request/response kinds.
fn prepare(stream: &TcpStream, nodelay: bool) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(POLL))?;
    if nodelay {
        stream.set_nodelay(true)?;
    }
    Ok(())
}

/// Receives a stream until the peer closes it; counts what arrives after the warm-up (which
/// starts with the first byte).
fn sink(stream: &mut TcpStream, spec: &RunSpec, stop: &Stop, result: &mut ThreadResult) {
    let mut buf = vec![0_u8; RECV_BUFFER];
    let mut first: Option<Instant> = None;
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                let start = *first.get_or_insert(now);
                result.cpu_starts_if(now >= start + spec.warmup);
                if now >= start + spec.warmup {
                    result.bytes_received += n as u64;
                    last = Some(now);
                }
            }
            Err(err) if wire::is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if super::io::closed(&err) => break,
            Err(err) => {
                result.error(format!("receive: {err}"));
                break;
            }
        }
    }
    if let (Some(first), Some(last)) = (first, last) {
        result.measured = result
            .measured
            .max(last.saturating_duration_since(first + spec.warmup));
    }
}

/// Sends a stream (reverse direction) until the peer closes the connection.
fn source(stream: &mut TcpStream, spec: &RunSpec, stop: &Stop, result: &mut ThreadResult) {
    let buf = vec![0x5d_u8; spec.request_size];
    let start = Instant::now();
    let far = start + spec.total() + Duration::from_secs(10);
    loop {
        match write_all(stream, &buf, stop, far) {
            Ok(()) => {
                let now = Instant::now();
                result.cpu_starts_if(now >= start + spec.warmup);
                if now >= start + spec.warmup {
                    result.bytes_sent += buf.len() as u64;
                    result.messages += 1;
                    result.measured = now - (start + spec.warmup);
                }
            }
            Err(Interrupted::Failed(err)) => {
                result.error(format!("send: {err}"));
                break;
            }
            Err(_) => break,
        }
    }
}

/// Answers up to `limit` requests: read `request_size` bytes, write `response_size` bytes.
/// `first_request` is when this worker saw its first request (the start of its warm-up).
fn respond(
    stream: &mut TcpStream,
    spec: &RunSpec,
    stop: &Stop,
    result: &mut ThreadResult,
    limit: u64,
    first_request: &mut Option<Instant>,
) {
    let mut request = vec![0_u8; spec.request_size];
    let response = vec![0xa5_u8; spec.response_size];
    let far = Instant::now() + spec.total() + Duration::from_secs(60);
    let mut served = 0;
    while served < limit {
        match read_exact(stream, &mut request, stop, far) {
            Ok(()) => {
                let now = Instant::now();
                let first = *first_request.get_or_insert(now);
                result.cpu_starts_if(now >= first + spec.warmup);
            }
            Err(Interrupted::Failed(err)) => {
                result.error(format!("read request: {err}"));
                return;
            }
            Err(_) => return,
        }
        if let Err(err) = write_all(stream, &response, stop, far) {
            if let Interrupted::Failed(err) = err {
                result.error(format!("write response: {err}"));
            }
            return;
        }
        served += 1;
        result.messages += 1;
        result.bytes_received += request.len() as u64;
        result.bytes_sent += response.len() as u64;
    }
}

/// Waits (briefly) for the client to close first, so the client holds the TIME_WAIT, as
/// netperf's TCP_CRR does.
fn drain_until_closed(stream: &mut TcpStream, stop: &Stop) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0_u8; 64];
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if wire::is_timeout(&err) => {}
            Err(_) => return,
        }
    }
}

/// The client side: `parallel` threads (twice that for a bidirectional stream), each in the
/// run's network namespace, connected and handshaken before the shared clock starts.
pub fn client(
    spec: &RunSpec,
    netns: Option<&std::path::Path>,
    target: SocketAddr,
    token: Token,
    stop: &Stop,
    counters: &Arc<Counters>,
) -> Vec<ThreadResult> {
    let roles: Vec<Role> = match (spec.kind, spec.direction) {
        (Kind::TcpStream, Direction::Reverse) => vec![Role::ServerSends; spec.parallel as usize],
        (Kind::TcpStream, Direction::Both) => {
            let mut roles = vec![Role::ClientSends; spec.parallel as usize];
            roles.extend(vec![Role::ServerSends; spec.parallel as usize]);
            roles
        }
        _ => vec![Role::ClientSends; spec.parallel as usize],
    };
    let barrier = Arc::new(Barrier::new(roles.len()));
    let clock: Arc<Mutex<Option<Window>>> = Arc::new(Mutex::new(None));
    let per_connection_rate = spec.rate.map(|rate| rate / spec.parallel as f64);
    let threads: Vec<JoinHandle<ThreadResult>> = roles
        .into_iter()
        .map(|role| {
            let spec = spec.clone();
            let netns = netns.map(std::path::Path::to_path_buf);
            let barrier = Arc::clone(&barrier);
            let clock = Arc::clone(&clock);
            let stop = Arc::clone(stop);
            let counters = Arc::clone(counters);
            std::thread::spawn(move || {
                let mut result = ThreadResult::new();
                if let Some(netns) = &netns
                    && let Err(err) = crate::netns::enter(netns)
                {
                    result.error(crate::error::chain(&err));
                    barrier.wait();
                    return result;
                }
                let stream = if spec.kind == Kind::TcpCrr {
                    None
                } else {
                    match connect(target, spec.kind != Kind::TcpStream).and_then(|mut stream| {
                        wire::client_handshake(&mut stream, &token, role).map(|()| stream)
                    }) {
                        Ok(stream) => Some(stream),
                        Err(err) => {
                            result.error(format!("connect to {target}: {err}"));
                            barrier.wait();
                            return result;
                        }
                    }
                };
                barrier.wait();
                let window = shared_window(&clock, &spec);
                let ctx = Ctx {
                    spec: &spec,
                    window,
                    stop: &stop,
                    counters: &counters,
                };
                match (spec.kind, stream) {
                    (Kind::TcpCrr, _) => {
                        crr(&ctx, target, &token, per_connection_rate, &mut result);
                    }
                    (Kind::TcpStream, Some(mut stream)) => {
                        result.connections = 1;
                        if role == Role::ClientSends {
                            send_stream(&ctx, &mut stream, &mut result);
                        } else {
                            receive_stream(&ctx, &mut stream, &mut result);
                        }
                        result.tcp = TcpFacts::of(&stream);
                    }
                    (_, Some(mut stream)) => {
                        result.connections = 1;
                        rr(&ctx, &mut stream, per_connection_rate, &mut result);
                        result.tcp = TcpFacts::of(&stream);
                    }
                    (_, None) => {}
                }
                result.stop_cpu();
                result
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().unwrap_or_else(|_| panicked("client")))
        .collect()
}

/// What every client loop needs.
struct Ctx<'a> {
    spec: &'a RunSpec,
    window: Window,
    stop: &'a Stop,
    counters: &'a Counters,
}

/// The first thread past the barrier starts the clock; the others read it.
fn shared_window(clock: &Mutex<Option<Window>>, spec: &RunSpec) -> Window {
    let mut clock = match clock.lock() {
        Ok(clock) => clock,
        Err(poisoned) => poisoned.into_inner(),
    };
    *clock.get_or_insert_with(|| Window::starting_at(Instant::now(), spec.warmup, spec.duration))
}

fn connect(target: SocketAddr, nodelay: bool) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    prepare(&stream, nodelay)?;
    Ok(stream)
}

fn send_stream(ctx: &Ctx<'_>, stream: &mut TcpStream, result: &mut ThreadResult) {
    let buf = vec![0x5d_u8; ctx.spec.request_size];
    loop {
        let now = Instant::now();
        if now >= ctx.window.end || ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        result.cpu_starts_if(ctx.window.measuring(now));
        match write_all(stream, &buf, ctx.stop, ctx.window.end) {
            Ok(()) => {
                ctx.counters.add(buf.len() as u64, 1);
                if ctx.window.measuring(now) {
                    result.bytes_sent += buf.len() as u64;
                    result.messages += 1;
                }
            }
            Err(Interrupted::Stopped) => break,
            Err(Interrupted::Closed) => {
                result.error("the server closed the connection");
                break;
            }
            Err(Interrupted::Failed(err)) => {
                result.error(format!("send: {err}"));
                break;
            }
        }
    }
    result.measured = ctx.window.end - ctx.window.measure_from;
    // Tell the server we are done, and wait for it to have read everything.
    let _ = stream.shutdown(Shutdown::Write);
    let mut buf = [0_u8; 64];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if wire::is_timeout(&err) => {}
            Err(_) => break,
        }
    }
}

fn receive_stream(ctx: &Ctx<'_>, stream: &mut TcpStream, result: &mut ThreadResult) {
    let mut buf = vec![0_u8; RECV_BUFFER];
    loop {
        let now = Instant::now();
        if now >= ctx.window.end || ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        result.cpu_starts_if(ctx.window.measuring(now));
        match stream.read(&mut buf) {
            Ok(0) => {
                result.error("the server closed the connection");
                break;
            }
            Ok(n) => {
                ctx.counters.add(n as u64, 0);
                if ctx.window.measuring(Instant::now()) {
                    result.bytes_received += n as u64;
                }
            }
            Err(err) if wire::is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                result.error(format!("receive: {err}"));
                break;
            }
        }
    }
    result.measured = ctx.window.end - ctx.window.measure_from;
    let _ = stream.shutdown(Shutdown::Both);
}

/// Request/response on one connection, as fast as possible or paced at `rate` per second.
fn rr(ctx: &Ctx<'_>, stream: &mut TcpStream, rate: Option<f64>, result: &mut ThreadResult) {
    let request = vec![0x5d_u8; ctx.spec.request_size];
    let mut response = vec![0_u8; ctx.spec.response_size];
    let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut next = ctx.window.start;
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = match interval {
            Some(interval) => {
                let intended = next;
                next += interval;
                sleep_until(intended);
                intended
            }
            None => Instant::now(),
        };
        if intended >= ctx.window.end {
            break;
        }
        result.cpu_starts_if(ctx.window.measuring(intended));
        let transaction = write_all(stream, &request, ctx.stop, ctx.window.end + POLL * 10)
            .and_then(|()| read_exact(stream, &mut response, ctx.stop, ctx.window.end + POLL * 10));
        let done = Instant::now();
        match transaction {
            Ok(()) => {
                ctx.counters.add((request.len() + response.len()) as u64, 1);
                if ctx.window.measuring(intended) {
                    result.record(done - intended);
                    result.messages += 1;
                    result.bytes_sent += request.len() as u64;
                    result.bytes_received += response.len() as u64;
                }
            }
            Err(Interrupted::Stopped) => break,
            Err(Interrupted::Closed) => {
                result.error("the server closed the connection");
                break;
            }
            Err(Interrupted::Failed(err)) => {
                result.error(format!("transaction: {err}"));
                break;
            }
        }
    }
    result.measured = ctx.window.end - ctx.window.measure_from;
}

/// A new connection per request/response; the latency includes the connection set-up.
fn crr(
    ctx: &Ctx<'_>,
    target: SocketAddr,
    token: &Token,
    rate: Option<f64>,
    result: &mut ThreadResult,
) {
    let mut request = wire::hello(token, Role::ClientSends).to_vec();
    request.extend(std::iter::repeat_n(0x5d_u8, ctx.spec.request_size));
    let mut response = vec![0_u8; ctx.spec.response_size];
    let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut next = ctx.window.start;
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = match interval {
            Some(interval) => {
                let intended = next;
                next += interval;
                sleep_until(intended);
                intended
            }
            None => Instant::now(),
        };
        if intended >= ctx.window.end {
            break;
        }
        result.cpu_starts_if(ctx.window.measuring(intended));
        let far = ctx.window.end + POLL * 10;
        let outcome = connect(target, true)
            .map_err(Interrupted::Failed)
            .and_then(|mut stream| {
                write_all(&mut stream, &request, ctx.stop, far)?;
                read_exact(&mut stream, &mut response, ctx.stop, far)?;
                Ok(stream)
            });
        let done = Instant::now();
        match outcome {
            Ok(stream) => {
                ctx.counters
                    .add((ctx.spec.request_size + response.len()) as u64, 1);
                if ctx.window.measuring(intended) {
                    result.record(done - intended);
                    result.messages += 1;
                    result.connections += 1;
                    result.bytes_sent += ctx.spec.request_size as u64;
                    result.bytes_received += response.len() as u64;
                    result.tcp.retransmits += TcpFacts::of(&stream).retransmits;
                }
                drop(stream);
            }
            Err(Interrupted::Stopped) => break,
            Err(Interrupted::Closed) => result.error("the server closed the connection early"),
            Err(Interrupted::Failed(err)) => {
                result.error(format!("connection to {target}: {err}"));
                // Do not spin on a dead target.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    result.measured = ctx.window.end - ctx.window.measure_from;
}
