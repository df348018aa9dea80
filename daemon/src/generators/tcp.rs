//! TCP request/response generators, `tcp-rr` and `tcp-crr`, client and server sides (and the
//! entry points that hand `tcp-stream` to [`super::stream`]).
//!
//! Blocking sockets on dedicated threads, one per connection, as netperf works: the simplest
//! way to time each transaction without a scheduler in between. Every socket has a short
//! timeout so the threads notice a stop.

use std::{
    io::{self, Read as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    flows::run_flows,
    generator::{ClientRun, ServerRun},
    io::{Interrupted, Pacer, read_exact, write_all},
    measure::{Counters, POLL, Stop, TcpFacts, ThreadResult, Window, join_all},
    wire::{self, Role, Token},
};
use crate::runs::spec::{Kind, RunSpec};

/// `tcp-rr` and `tcp-crr`.
#[derive(Debug)]
pub struct RequestResponse;

super::generator::network_generator!(RequestResponse, Tcp);

/// How long a client waits for a connection to be set up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves a prepared listener until stopped: an acceptor hands connections to a pool of
/// workers (as many as the run has connections), which return their results when stopped.
pub fn serve(listener: TcpListener, run: ServerRun) -> Vec<ThreadResult> {
    let ServerRun { spec, token, stop } = run;
    let workers = spec.parallel;
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
    let mut results = join_all(pool, "server worker");
    results.push(accept_errors);
    results
}

pub(super) fn set_accept_timeout(listener: &TcpListener) -> io::Result<()> {
    socket2::SockRef::from(listener).set_read_timeout(Some(POLL))
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
        let _ = role;
        match spec.kind {
            Kind::TcpCrr => {
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
pub(super) fn prepare(stream: &TcpStream, nodelay: bool) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(POLL))?;
    if nodelay {
        stream.set_nodelay(true)?;
    }
    Ok(())
}

/// Answers up to `limit` requests: read `request_size` bytes, write `response_size` bytes.
/// `first_request` is when this worker saw its first request (the start of its warm-up).
pub(super) fn respond(
    stream: &mut (impl io::Read + io::Write),
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
            // The clock is read only until the warm-up is over.
            Ok(()) if !result.cpu_running() => {
                let now = Instant::now();
                let first = *first_request.get_or_insert(now);
                result.cpu_starts_if(now >= first + spec.warmup);
            }
            Ok(()) => {}
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
pub fn client(target: SocketAddr, run: ClientRun<'_>) -> Vec<ThreadResult> {
    let ClientRun { spec, token, .. } = run;
    let crr_kind = spec.kind == Kind::TcpCrr;
    let rate = spec.rate.map(|rate| rate / f64::from(spec.parallel));
    let (owned, stop, counters) = (spec.clone(), Arc::clone(run.stop), Arc::clone(run.counters));
    run_flows(
        spec,
        run.netns,
        spec.parallel,
        move |_| {
            if crr_kind {
                return Ok(None);
            }
            connect(target, true)
                .and_then(|mut stream| {
                    wire::client_handshake(&mut stream, &token, Role::ClientSends)?;
                    Ok(Some(stream))
                })
                .map_err(|err| format!("connect to {target}: {err}"))
        },
        move |stream, window, result| {
            let ctx = Ctx {
                spec: &owned,
                window,
                stop: &stop,
                counters: &counters,
            };
            match stream {
                None => crr(&ctx, target, &token, rate, result),
                Some(mut stream) => {
                    result.connections = 1;
                    rr(&ctx, &mut stream, rate, result);
                    result.tcp = TcpFacts::of(&stream);
                }
            }
        },
    )
}

/// What every client loop needs.
pub(super) struct Ctx<'a> {
    /// The run.
    pub spec: &'a RunSpec,
    /// Its clock.
    pub window: Window,
    /// Its stop flag.
    pub stop: &'a Stop,
    /// Live counters for progress.
    pub counters: &'a Counters,
}

pub(super) fn connect(target: SocketAddr, nodelay: bool) -> io::Result<TcpStream> {
    connect_within(target, nodelay, CONNECT_TIMEOUT)
}

/// As [`connect`], giving up after `timeout` (more than zero).
fn connect_within(target: SocketAddr, nodelay: bool, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    prepare(&stream, nodelay)?;
    Ok(stream)
}

/// Request/response on one connection, as fast as possible or paced at `rate` per second.
pub(super) fn rr(
    ctx: &Ctx<'_>,
    stream: &mut (impl io::Read + io::Write),
    rate: Option<f64>,
    result: &mut ThreadResult,
) {
    let request = vec![0x5d_u8; ctx.spec.request_size];
    let mut response = vec![0_u8; ctx.spec.response_size];
    let mut pacer = Pacer::new(rate, ctx.window.start);
    result.follow(ctx.counters, &ctx.window);
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = pacer.wait_turn();
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
                    result.record_at(intended, done - intended);
                    result.counted(intended, request.len() as u64, response.len() as u64, 1);
                }
            }
            Err(Interrupted::Stopped) => break,
            Err(Interrupted::Closed) => {
                result.failed_at(intended, false, "the server closed the connection");
                break;
            }
            Err(Interrupted::Failed(err)) => {
                result.failed_at(intended, false, format!("transaction: {err}"));
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
    let mut pacer = Pacer::new(rate, ctx.window.start);
    result.follow(ctx.counters, &ctx.window);
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let intended = pacer.wait_turn();
        if intended >= ctx.window.end {
            break;
        }
        result.cpu_starts_if(ctx.window.measuring(intended));
        let far = ctx.window.end + POLL * 10;
        // A connect waits no longer than the run has left (plus the grace above): a SYN the
        // path drops must not hold the run for the kernel's retransmissions.
        let Some(left) = far
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
        else {
            break;
        };
        let mut stream = match connect_within(target, true, left.min(CONNECT_TIMEOUT)) {
            Ok(stream) => stream,
            Err(err) => {
                result.failed_at(intended, true, format!("connection to {target}: {err}"));
                // Do not spin on a dead target.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let outcome = write_all(&mut stream, &request, ctx.stop, far)
            .and_then(|()| read_exact(&mut stream, &mut response, ctx.stop, far));
        let done = Instant::now();
        match outcome {
            Ok(()) => {
                ctx.counters
                    .add((ctx.spec.request_size + response.len()) as u64, 1);
                if ctx.window.measuring(intended) {
                    result.record_at(intended, done - intended);
                    result.counted(
                        intended,
                        ctx.spec.request_size as u64,
                        response.len() as u64,
                        1,
                    );
                    result.connections += 1;
                    result.tcp.retransmits += TcpFacts::of(&stream).retransmits;
                }
                drop(stream);
            }
            Err(Interrupted::Stopped) => break,
            Err(Interrupted::Closed) => {
                result.failed_at(intended, false, "the server closed the connection early");
            }
            Err(Interrupted::Failed(err)) => {
                result.failed_at(intended, false, format!("connection to {target}: {err}"));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    result.measured = ctx.window.end - ctx.window.measure_from;
}
