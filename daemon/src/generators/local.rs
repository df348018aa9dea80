//! Intra-pod baselines: what moving the same payloads costs with no network in between, so
//! that a sweep shows the network's marginal cost next to it.
//!
//! - `unix-stream`, `unix-rr`: a Unix domain socket, with the same hello, loops and
//!   measurements as the TCP kinds.
//! - `fs-rr`: a shared directory (a volume two containers of a pod mount). The client writes
//!   the request to a temporary file and renames it to `req-<flow>-<seq>`; the server, woken by
//!   inotify, reads it and answers with `ack-<flow>-<seq>` the same way; the client, woken by
//!   inotify, reads the answer. One round trip per transaction.
//!
//! The server side's socket or directory lives in a fresh private directory under
//! [`RUN_ROOT`], removed when the server side finishes.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    os::{fd::AsFd, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};

use super::{
    Target,
    generator::{ClientRun, Generator, Listen, Listener, ServerRun, mismatch},
};
use super::{
    flows::run_flows,
    io::Pacer,
    measure::{Counters, POLL, Stop, ThreadResult, Window, join_all},
    tcp::{Ctx, respond, rr},
    wire::{self, Role, Token},
};
use crate::runs::spec::{Kind, RunSpec};

/// Where intra-pod server sides keep their sockets and shared directories.
pub const RUN_ROOT: &str = "/run/sonde/runs";
/// How long an `fs-rr` transaction may wait for its answer.
const FS_TIMEOUT: Duration = Duration::from_secs(2);

/// A fresh private directory for one server side.
pub fn run_dir() -> io::Result<PathBuf> {
    fs::create_dir_all(RUN_ROOT)?;
    let token = wire::new_token();
    let name: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let dir = Path::new(RUN_ROOT).join(name);
    fs::create_dir(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Whether `path` is inside [`RUN_ROOT`] (a client may only be pointed at sonde's own).
pub fn is_run_path(path: &Path) -> bool {
    path.starts_with(RUN_ROOT) && !path.components().any(|c| c.as_os_str() == "..")
}

/// `unix-stream` and `unix-rr`: a Unix socket inside one pod.
#[derive(Debug)]
pub struct UnixSocket;

impl Generator for UnixSocket {
    fn listen(&self) -> Listen {
        Listen::UnixSocket
    }

    fn serve(&self, listener: Listener, run: ServerRun) -> Vec<ThreadResult> {
        match listener {
            Listener::UnixSocket(bound) => serve_unix(bound, run),
            _ => mismatch("a listener it does not serve on"),
        }
    }

    fn client(&self, target: &Target, run: ClientRun<'_>) -> Vec<ThreadResult> {
        match target {
            Target::Path(path) => client_unix(path, run),
            Target::Addr(_) => mismatch("an address, not a path"),
        }
    }
}

/// `fs-rr`: files in a shared directory, watched with inotify.
#[derive(Debug)]
pub struct Files;

impl Generator for Files {
    fn listen(&self) -> Listen {
        Listen::Directory
    }

    fn serve(&self, listener: Listener, run: ServerRun) -> Vec<ThreadResult> {
        match listener {
            Listener::Directory(bound) => serve_fs(bound, run),
            _ => mismatch("a listener it does not serve on"),
        }
    }

    fn client(&self, target: &Target, run: ClientRun<'_>) -> Vec<ThreadResult> {
        match target {
            Target::Path(path) => client_fs(path, run),
            Target::Addr(_) => mismatch("an address, not a path"),
        }
    }
}

/// Serves a Unix socket: one thread per connection (intra-pod runs are small).
pub fn serve_unix(listener: UnixListener, run: ServerRun) -> Vec<ThreadResult> {
    let ServerRun { spec, token, stop } = run;
    let mut acceptor = ThreadResult::new();
    if let Err(err) = socket2::SockRef::from(&listener).set_read_timeout(Some(POLL)) {
        acceptor.error(format!("listener timeout: {err}"));
    }
    let mut workers: Vec<JoinHandle<ThreadResult>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let spec = spec.clone();
                let stop = Arc::clone(&stop);
                workers.push(std::thread::spawn(move || {
                    serve_connection(stream, &spec, &token, &stop)
                }));
            }
            Err(err) if wire::is_timeout(&err) => {}
            Err(err) => {
                acceptor.error(format!("accept: {err}"));
                std::thread::sleep(POLL);
            }
        }
    }
    let mut results = join_all(workers, "server worker");
    results.push(acceptor);
    results
}

fn serve_connection(
    mut stream: UnixStream,
    spec: &RunSpec,
    token: &Token,
    stop: &Stop,
) -> ThreadResult {
    let mut result = ThreadResult::new();
    let prepared = stream
        .set_read_timeout(Some(POLL))
        .and_then(|()| stream.set_write_timeout(Some(POLL)))
        .and_then(|()| wire::server_handshake(&mut stream, token, true));
    if let Err(err) = prepared {
        result.error(format!("handshake: {err}"));
        return result;
    }
    result.connections = 1;
    result.io("unix");
    if spec.kind == Kind::UnixRr {
        let mut first = None;
        respond(&mut stream, spec, stop, &mut result, u64::MAX, &mut first);
    } else {
        let mut buf = vec![0_u8; 256 * 1024];
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
                Err(_) => break,
            }
        }
        if let (Some(first), Some(last)) = (first, last) {
            result.measured = last.saturating_duration_since(first + spec.warmup);
        }
    }
    result.stop_cpu();
    result
}

/// The client side of `unix-stream` and `unix-rr`: `parallel` connections, one thread each.
pub fn client_unix(path: &Path, run: ClientRun<'_>) -> Vec<ThreadResult> {
    let ClientRun {
        spec,
        token,
        stop,
        counters,
        ..
    } = run;
    let rate = spec.rate.map(|rate| rate / f64::from(spec.parallel));
    let (owned, path, stop, counters) = (
        spec.clone(),
        path.to_path_buf(),
        Arc::clone(stop),
        Arc::clone(counters),
    );
    run_flows(
        spec,
        None,
        spec.parallel,
        move |_| {
            UnixStream::connect(&path)
                .and_then(|mut stream| {
                    stream.set_read_timeout(Some(POLL))?;
                    stream.set_write_timeout(Some(POLL))?;
                    wire::client_handshake(&mut stream, &token, Role::ClientSends)?;
                    Ok(stream)
                })
                .map_err(|err| format!("connect to {}: {err}", path.display()))
        },
        move |mut stream, window, result| {
            result.connections = 1;
            result.io("unix");
            let ctx = Ctx {
                spec: &owned,
                window,
                stop: &stop,
                counters: &counters,
            };
            if owned.kind == Kind::UnixRr {
                rr(&ctx, &mut stream, rate, result);
            } else {
                send_stream(&ctx, &mut stream, result);
            }
        },
    )
}

fn send_stream(ctx: &Ctx<'_>, stream: &mut UnixStream, result: &mut ThreadResult) {
    let buf = vec![0x5d_u8; ctx.spec.request_size];
    result.follow(ctx.counters, &ctx.window);
    loop {
        let now = Instant::now();
        if now >= ctx.window.end || ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        result.cpu_starts_if(ctx.window.measuring(now));
        match super::io::write_all(stream, &buf, ctx.stop, ctx.window.end + POLL) {
            Ok(()) => {
                ctx.counters.add(buf.len() as u64, 1);
                if ctx.window.measuring(now) {
                    result.counted(now, buf.len() as u64, 0, 1);
                }
            }
            Err(super::io::Interrupted::Stopped) => break,
            Err(other) => {
                result.error(format!("send: {other:?}"));
                break;
            }
        }
    }
    result.measured = ctx.window.end - ctx.window.measure_from;
    // Let the server read everything before FinishServer: close our side, wait for its.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut byte = [0_u8; 1];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if wire::is_timeout(&err) => {}
            Err(_) => break,
        }
    }
}

/// Waits for inotify to report files moved into the watched directory; their names.
fn moved_in(inotify: &Inotify, timeout: Duration) -> io::Result<Vec<String>> {
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, timeout)? == 0 {
        return Ok(Vec::new());
    }
    match inotify.read_events() {
        Ok(events) => Ok(events
            .into_iter()
            .filter_map(|event| event.name?.into_string().ok())
            .collect()),
        Err(nix::errno::Errno::EAGAIN) => Ok(Vec::new()),
        Err(errno) => Err(errno.into()),
    }
}

fn watch(dir: &Path) -> io::Result<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(dir, AddWatchFlags::IN_MOVED_TO)?;
    Ok(inotify)
}

/// Writes `bytes` to a temporary file in `dir` and renames it to `name` (readers never see a
/// half-written file).
fn hand_over(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    fs::File::create(&temporary)?.write_all(bytes)?;
    fs::rename(&temporary, dir.join(name))
}

/// Serves `fs-rr` in `dir` until stopped.
pub fn serve_fs(dir: PathBuf, run: ServerRun) -> Vec<ThreadResult> {
    let ServerRun { spec, stop, .. } = run;
    let mut result = ThreadResult::new();
    let inotify = match watch(&dir) {
        Ok(inotify) => inotify,
        Err(err) => {
            result.error(format!("inotify on {}: {err}", dir.display()));
            return vec![result];
        }
    };
    result.io("file+inotify");
    let response = vec![0xa5_u8; spec.response_size];
    let mut first: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let names = match moved_in(&inotify, POLL) {
            Ok(names) => names,
            Err(err) => {
                result.error(format!("inotify: {err}"));
                break;
            }
        };
        for name in names.iter().filter_map(|name| name.strip_prefix("req-")) {
            let now = Instant::now();
            let began = *first.get_or_insert(now);
            result.cpu_starts_if(now >= began + spec.warmup);
            let request = dir.join(format!("req-{name}"));
            let answered = fs::read(&request).and_then(|bytes| {
                let _ = fs::remove_file(&request);
                hand_over(&dir, &format!("ack-{name}"), &response).map(|()| bytes.len())
            });
            match answered {
                Ok(len) => {
                    result.messages += 1;
                    result.bytes_received += len as u64;
                    result.bytes_sent += response.len() as u64;
                }
                Err(err) => result.error(format!("answering {name}: {err}")),
            }
        }
    }
    result.stop_cpu();
    vec![result]
}

/// The client side of `fs-rr`: `parallel` flows, each with its own names and inotify watch.
pub fn client_fs(dir: &Path, run: ClientRun<'_>) -> Vec<ThreadResult> {
    let ClientRun {
        spec,
        stop,
        counters,
        ..
    } = run;
    let rate = spec.rate.map(|rate| rate / f64::from(spec.parallel));
    let (owned, stop, counters) = (spec.clone(), Arc::clone(stop), Arc::clone(counters));
    let (ready_dir, dir) = (dir.to_path_buf(), dir.to_path_buf());
    run_flows(
        spec,
        None,
        spec.parallel,
        move |flow| {
            watch(&ready_dir)
                .map(|inotify| (flow, inotify))
                .map_err(|err| format!("inotify on {}: {err}", ready_dir.display()))
        },
        move |(flow, inotify), window, result| {
            result.io("file+inotify");
            let flow = FsFlow {
                spec: &owned,
                dir: &dir,
                flow,
                inotify: &inotify,
            };
            flow.transactions(window, rate, &stop, &counters, result);
            result.measured = window.end - window.measure_from;
        },
    )
}

/// One `fs-rr` flow: its names are `req-<flow>-<seq>` and `ack-<flow>-<seq>`.
struct FsFlow<'a> {
    spec: &'a RunSpec,
    dir: &'a Path,
    flow: u32,
    inotify: &'a Inotify,
}

impl FsFlow<'_> {
    fn transactions(
        &self,
        window: Window,
        rate: Option<f64>,
        stop: &Stop,
        counters: &Counters,
        result: &mut ThreadResult,
    ) {
        let (spec, dir, flow, inotify) = (self.spec, self.dir, self.flow, self.inotify);
        let request = vec![0x5d_u8; spec.request_size];
        let mut pacer = Pacer::new(rate, window.start);
        let mut seq = 0_u64;
        result.follow(counters, &window);
        while !stop.load(Ordering::Relaxed) {
            let intended = pacer.wait_turn();
            if intended >= window.end {
                break;
            }
            result.cpu_starts_if(window.measuring(intended));
            let name = format!("{flow}-{seq}");
            let ack = format!("ack-{name}");
            if let Err(err) = hand_over(dir, &format!("req-{name}"), &request) {
                result.error(format!("writing the request: {err}"));
                break;
            }
            let deadline = Instant::now() + FS_TIMEOUT;
            let mut answered = false;
            while !answered && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                match moved_in(inotify, POLL) {
                    Ok(names) => answered = names.contains(&ack),
                    Err(err) => {
                        result.error(format!("inotify: {err}"));
                        return;
                    }
                }
            }
            if !answered {
                result.error(format!("no answer to {name} within {FS_TIMEOUT:?}"));
                break;
            }
            let response = fs::read(dir.join(&ack)).unwrap_or_default();
            let _ = fs::remove_file(dir.join(&ack));
            let done = Instant::now();
            counters.add((request.len() + response.len()) as u64, 1);
            if window.measuring(intended) {
                result.record_at(intended, done - intended);
                result.counted(intended, request.len() as u64, response.len() as u64, 1);
            }
            seq += 1;
        }
    }
}
