//! `http` and `http-crr`: HTTP/1.1 GET requests answered with `response_size` bytes, on
//! keep-alive connections or with a new connection per request: hyper serves, and the client
//! writes one prepared request per exchange and parses the answer itself ([`connection`]).
//!
//! Each side runs one current-thread async runtime per OS thread (as many threads as cores,
//! at most one per connection), on threads placed in the endpoint's network namespace. The
//! server answers only requests that carry the run's token in `x-sonde-token`; the client
//! stops a connection at the first answer that is not a sonde server's 200.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;

use super::{
    flows::shared_window,
    generator::{ClientRun, ServerRun},
    measure::{Counters, CpuTime, POLL, Stop, ThreadResult, Window, join_all},
    wire::Token,
};
use crate::runs::spec::{Kind, RunSpec};

mod connection;

use connection::Connection;
pub use connection::parse_head as parse_response_head;

/// The header that carries the run's token.
pub const TOKEN_HEADER: &str = "x-sonde-token";

/// The token as the header carries it (hex).
pub fn token_hex(token: &Token) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// What the server counts, shared by its connections' tasks (all on one thread).
#[derive(Debug, Default)]
pub struct Served {
    requests: AtomicU64,
    bytes: AtomicU64,
    refused: AtomicU64,
    first: Mutex<Option<Instant>>,
}

impl Served {
    /// Requests served with the run's token, past the warm-up.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// `http` and `http-crr` (hyper, HTTP/1.1).
#[derive(Debug)]
pub struct Http;

super::generator::network_generator!(Http, Tcp);

/// Serves a prepared listener until stopped.
pub fn serve(listener: TcpListener, run: ServerRun) -> Vec<ThreadResult> {
    let ServerRun { spec, token, stop } = run;
    let mut result = ThreadResult::new();
    result.io("http1");
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(err) => {
            result.error(format!("async runtime: {err}"));
            return vec![result];
        }
    };
    let served = Arc::new(Served::default());
    let body = Bytes::from(vec![0xa5_u8; spec.response_size]);
    let expected = token_hex(&token);
    runtime.block_on(async {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(err) => {
                result.error(format!("listener: {err}"));
                return;
            }
        };
        let mut tick = tokio::time::interval(POLL);
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let (served, body, expected) = (Arc::clone(&served), body.clone(), expected.clone());
                        let warmup = spec.warmup;
                        tokio::spawn(serve_connection(stream, served, body, expected, warmup));
                        result.connections += 1;
                    }
                    Err(err) => result.error(format!("accept: {err}")),
                },
                _ = tick.tick() => {
                    let began = served.first.lock().ok().and_then(|first| *first);
                    result.cpu_starts_if(began.is_some_and(|at| Instant::now() >= at + spec.warmup));
                }
            }
        }
    });
    result.messages = served.requests.load(Ordering::Relaxed);
    result.bytes_sent = served.bytes.load(Ordering::Relaxed);
    let refused = served.refused.load(Ordering::Relaxed);
    if refused > 0 {
        result.error(format!(
            "{refused} requests without this run's token refused"
        ));
    }
    result.stop_cpu();
    vec![result]
}

/// Serves one HTTP/1.1 connection: a request bearing the run's token (`expected`, hex) gets
/// `body`, counted once `warmup` has passed since the first; one without it gets 403.
pub async fn serve_connection<IO>(
    io: IO,
    served: Arc<Served>,
    body: Bytes,
    expected: String,
    warmup: Duration,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let (served, body) = (Arc::clone(&served), body.clone());
        let authorised = request
            .headers()
            .get(TOKEN_HEADER)
            .is_some_and(|value| value.as_bytes() == expected.as_bytes());
        async move {
            if !authorised {
                served.refused.fetch_add(1, Ordering::Relaxed);
                let mut refused = Response::new(Full::new(Bytes::new()));
                *refused.status_mut() = StatusCode::FORBIDDEN;
                return Ok::<_, Infallible>(refused);
            }
            // Counted after the warm-up, which starts with the first request.
            let now = Instant::now();
            let first = served
                .first
                .lock()
                .map(|mut first| *first.get_or_insert(now))
                .unwrap_or(now);
            if now >= first + warmup {
                served.requests.fetch_add(1, Ordering::Relaxed);
                served.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            Ok(Response::new(Full::new(body)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The client side: `parallel` connections spread over one thread per core, each thread with
/// its own runtime, all started together on the shared clock.
pub fn client(target: SocketAddr, run: ClientRun<'_>) -> Vec<ThreadResult> {
    let spec = run.spec;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = (spec.parallel as usize).clamp(1, cores);
    let mut per_thread = vec![0_u32; threads];
    for i in 0..spec.parallel as usize {
        per_thread[i % threads] += 1;
    }
    let barrier = Arc::new(Barrier::new(threads));
    let clock = Arc::new(Mutex::new(None));
    let rate = spec.rate.map(|rate| rate / f64::from(spec.parallel));
    let handles: Vec<JoinHandle<ThreadResult>> = per_thread
        .into_iter()
        .map(|connections| {
            let (spec, netns) = (spec.clone(), run.netns.map(Path::to_path_buf));
            let (barrier, clock) = (Arc::clone(&barrier), Arc::clone(&clock));
            let (stop, counters, token) =
                (Arc::clone(run.stop), Arc::clone(run.counters), run.token);
            std::thread::spawn(move || {
                let ready = netns
                    .as_deref()
                    .map_or(Ok(()), crate::netns::enter)
                    .map_err(|err| crate::error::chain(&err))
                    .and_then(|()| runtime().map_err(|err| err.to_string()));
                barrier.wait();
                let runtime = match ready {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let mut result = ThreadResult::new();
                        result.error(err);
                        return result;
                    }
                };
                let window = shared_window(&clock, &spec);
                let header = token_hex(&token);
                // One CPU clock per thread (its flows share it), started by a marker task
                // when the measured part begins.
                let cpu_from = std::cell::Cell::new(None);
                let flows = (0..connections).map(|_| {
                    Flow {
                        spec: &spec,
                        window,
                        target,
                        token: &header,
                        stop: &stop,
                        counters: &counters,
                        rate,
                    }
                    .run()
                });
                let marker = async {
                    tokio::time::sleep_until(window.measure_from.into()).await;
                    cpu_from.set(Some(CpuTime::thread_now()));
                };
                let (results, ()) = runtime
                    .block_on(async { tokio::join!(futures::future::join_all(flows), marker) });
                let mut merged = super::measure::merge(results);
                merged.io("http1");
                merged.measured = window.end - window.measure_from;
                if let Some(from) = cpu_from.get() {
                    merged.cpu = CpuTime::thread_now().since(from);
                }
                merged
            })
        })
        .collect();
    join_all(handles, "client")
}

/// One keep-alive connection's loop, or (`http-crr`) one flow of short connections.
struct Flow<'a> {
    spec: &'a RunSpec,
    window: Window,
    target: SocketAddr,
    token: &'a str,
    stop: &'a Stop,
    counters: &'a Counters,
    rate: Option<f64>,
}

impl Flow<'_> {
    async fn run(self) -> ThreadResult {
        let mut result = ThreadResult::new();
        let keep_alive = self.spec.kind == Kind::Http;
        let mut kept = None;
        if keep_alive {
            match Connection::open(self.target).await {
                Ok(connection) => kept = Some(connection),
                Err(err) => {
                    result.error(err);
                    return result;
                }
            }
            result.connections = 1;
        }
        let request = connection::request(&self.target.to_string(), TOKEN_HEADER, self.token);
        // An exchange the server never answers ends with the run, not after it.
        let deadline = self.window.end + POLL * 10;
        let interval = self.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
        let mut next = self.window.start;
        result.follow(self.counters, &self.window);
        while !self.stop.load(Ordering::Relaxed) {
            // Intended send times, as the other generators' Pacer, without blocking the runtime.
            let intended = match interval {
                Some(interval) => {
                    let at = next;
                    next += interval;
                    tokio::time::sleep_until(at.into()).await;
                    at
                }
                None => Instant::now(),
            };
            if intended >= self.window.end {
                break;
            }
            let measuring = self.window.measuring(intended);
            // A fresh connection per request (`http-crr`), or again after a kept one broke (a
            // server gone in a rollout): as a client behind a Service would.
            let mut fresh = None;
            if !keep_alive || kept.is_none() {
                let opened =
                    tokio::time::timeout_at(deadline.into(), Connection::open(self.target))
                        .await
                        .unwrap_or_else(|_| Err("no connection before the run's end".to_owned()));
                match opened {
                    Ok(connection) => {
                        if measuring {
                            result.connections += 1;
                        }
                        if keep_alive {
                            kept = Some(connection);
                        } else {
                            fresh = Some(connection);
                        }
                    }
                    Err(err) => {
                        result.failed_at(intended, true, err);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
            let Some(connection) = fresh.as_mut().or(kept.as_mut()) else {
                continue;
            };
            let outcome = tokio::time::timeout_at(deadline.into(), connection.exchange(&request))
                .await
                .unwrap_or_else(|_| Err("no answer before the run's end".to_owned()));
            let done = Instant::now();
            match outcome {
                Ok(bytes) => {
                    self.counters.add(bytes, 1);
                    if measuring {
                        result.record_at(intended, done - intended);
                        result.counted(intended, 0, bytes, 1);
                    }
                }
                Err(err) => {
                    result.failed_at(intended, false, err);
                    // The next request opens a new connection.
                    kept = None;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        result
    }
}
