//! sonde's native traffic generators, client and server sides.
//!
//! Each side runs on dedicated threads placed in the endpoint's network namespace (a pod's,
//! a node's, or the daemon's own), with blocking sockets; the daemon's async runtime only
//! starts them, samples their progress and collects their results.
//!
//! # Layout
//! - [`generator`]: the interface every generator implements, and which one a kind uses.
//! - [`stream`]: `tcp-stream`, connections multiplexed over one thread per core.
//! - [`tcp`]: `tcp-rr`, `tcp-crr`.
//! - [`http`]: `http`, `http-crr` (hyper, HTTP/1.1).
//! - [`udp`]: `udp-stream`, `udp-rr`.
//! - [`dns`]: `dns`, queries over UDP and sonde's own responder (hickory-proto).
//! - [`local`]: intra-pod baselines: `unix-stream`, `unix-rr`, `fs-rr`.
//! - [`flows`]: client flows on one clock (threads, barrier, window).
//! - [`wire`]: the hello that binds a connection to its run; UDP headers.
//! - [`io`]: blocking I/O that stops when the run does.
//! - [`measure`]: windows, per-thread results and their merge, CPU, TCP_INFO.
//! - [`zerocopy`]: `sendfile`/`splice` for stream payload.

pub mod dns;
pub mod flows;
pub mod generator;
pub mod http;
pub mod io;
pub mod local;
pub mod measure;
pub mod stream;
pub mod tcp;
pub mod timeline;
pub mod udp;
pub mod wire;
pub mod zerocopy;

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::Duration,
};

use measure::{SideResult, Stop, ThreadResult, merge};
use wire::Token;

use crate::runs::spec::RunSpec;
use generator::{ClientRun, Listen, Listener, ServerRun};

/// Where a client side sends: an address (network kinds) or a path (intra-pod kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket address.
    Addr(SocketAddr),
    /// A Unix socket or shared directory under [`local::RUN_ROOT`].
    Path(PathBuf),
}

/// A prepared server side: listening, serving the run's connections until finished.
#[derive(Debug)]
pub struct Server {
    /// The port it listens on (network kinds; 0 otherwise).
    pub port: u16,
    /// Where it listens (intra-pod kinds): a Unix socket or a shared directory.
    pub path: Option<PathBuf>,
    /// Its private directory, removed when it finishes (intra-pod kinds).
    run_dir: Option<PathBuf>,
    /// The run's token.
    pub token: Token,
    /// Whether the run's kind is TCP (the others drain in-flight datagrams before stopping).
    tcp: bool,
    /// Stops the serving threads.
    stop: Stop,
    /// The acceptor (TCP) or receiver (UDP) thread, which returns every worker's result.
    thread: JoinHandle<Vec<ThreadResult>>,
    /// Node CPU jiffies when it started.
    node_cpu_before: (u64, u64),
    /// The address it listens on.
    local_ip: String,
}

impl Server {
    /// Binds `port` (0 for any) in `netns` (or the daemon's own) and starts serving the run
    /// with `token` (a fresh one when `None`).
    pub fn start(
        spec: &RunSpec,
        netns: Option<&Path>,
        port: u16,
        token: Option<Token>,
    ) -> crate::Result<Self> {
        let stop: Stop = Arc::default();
        let token = token.unwrap_or_else(wire::new_token);
        let bind = SocketAddr::from(([0, 0, 0, 0], port));
        let bind_error = |source: std::io::Error| crate::Error::Bind {
            addr: bind.to_string(),
            source,
        };
        let in_netns = |work: &(dyn Fn() -> std::io::Result<Listener> + Sync)| match netns {
            Some(path) => crate::netns::run_in(path, work)?.map_err(bind_error),
            None => work().map_err(bind_error),
        };
        let generator = generator::of(spec.kind);
        let listen = generator.listen();
        let run_dir = if matches!(listen, Listen::UnixSocket | Listen::Directory) {
            Some(local::run_dir().map_err(|source| crate::Error::Bind {
                addr: local::RUN_ROOT.to_owned(),
                source,
            })?)
        } else {
            None
        };
        let bound = match (&run_dir, listen) {
            (Some(dir), Listen::Directory) => Listener::Directory(dir.clone()),
            (Some(dir), _) => {
                let socket = dir.join("sock");
                Listener::UnixSocket(std::os::unix::net::UnixListener::bind(&socket).map_err(
                    |source| crate::Error::Bind {
                        addr: socket.display().to_string(),
                        source,
                    },
                )?)
            }
            (None, Listen::Tcp) => in_netns(&|| TcpListener::bind(bind).map(Listener::Tcp))?,
            (None, _) => in_netns(&|| UdpSocket::bind(bind).map(Listener::Udp))?,
        };
        let (port, path, local_ip) = match &bound {
            Listener::Tcp(_) | Listener::Udp(_) => {
                let local = local_addr(&bound).map_err(bind_error)?;
                (local.port(), None, local.ip().to_string())
            }
            Listener::UnixSocket(_) => (
                0,
                run_dir.as_ref().map(|dir| dir.join("sock")),
                String::new(),
            ),
            Listener::Directory(dir) => (0, Some(dir.clone()), String::new()),
        };
        let thread = {
            let spec = spec.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || generator.serve(bound, ServerRun { spec, token, stop }))
        };
        Ok(Self {
            port,
            path,
            run_dir,
            token,
            tcp: spec.is_tcp(),
            stop,
            thread,
            node_cpu_before: measure::node_cpu_jiffies(),
            local_ip,
        })
    }

    /// Stops serving and returns what the server side measured (blocks until its threads end).
    pub fn finish(self) -> SideResult {
        if !self.tcp {
            // Datagrams still in flight when the client finished belong to the run.
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop.store(true, Ordering::Relaxed);
        let results = self.thread.join().unwrap_or_else(|_| {
            let mut result = ThreadResult::new();
            result.error("server thread panicked");
            vec![result]
        });
        if let Some(dir) = &self.run_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        SideResult {
            totals: merge(results),
            node_cpu_busy: measure::node_cpu_busy(
                self.node_cpu_before,
                measure::node_cpu_jiffies(),
            ),
            daemon_rss_bytes: measure::rss_bytes(),
            local_ip: self.local_ip,
            mtu: 0,
            // Server sides have no timeline: the client's intervals are the run's.
            timeline: Vec::new(),
            timeline_start_unix_ms: 0,
        }
    }

    /// Asks the serving threads to stop, without waiting for them.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Merges the results of several server sides of one run (a Service's pods on one node).
pub fn merge_sides(sides: impl IntoIterator<Item = SideResult>) -> SideResult {
    let mut node_cpu_busy: f64 = 0.0;
    let mut daemon_rss_bytes = 0;
    let mut local_ips: Vec<String> = Vec::new();
    let totals = merge(sides.into_iter().map(|side| {
        node_cpu_busy = node_cpu_busy.max(side.node_cpu_busy);
        daemon_rss_bytes = daemon_rss_bytes.max(side.daemon_rss_bytes);
        if !local_ips.contains(&side.local_ip) {
            local_ips.push(side.local_ip);
        }
        side.totals
    }));
    SideResult {
        totals,
        node_cpu_busy,
        daemon_rss_bytes,
        local_ip: local_ips.join(","),
        mtu: 0,
        timeline: Vec::new(),
        timeline_start_unix_ms: 0,
    }
}

/// Where a network listener is bound.
fn local_addr(listener: &Listener) -> std::io::Result<SocketAddr> {
    match listener {
        Listener::Tcp(listener) => listener.local_addr(),
        Listener::Udp(socket) => socket.local_addr(),
        Listener::UnixSocket(_) | Listener::Directory(_) => Ok(SocketAddr::from(([0, 0, 0, 0], 0))),
    }
}

/// Runs a client side to completion (blocking): connects from the run's namespace to
/// `target`, runs the generator for warm-up plus duration, and returns what it measured.
pub fn run_client(target: &Target, run: ClientRun<'_>) -> SideResult {
    let before = measure::node_cpu_jiffies();
    let timeline = Arc::clone(&run.counters.timeline);
    let results = generator::of(run.spec.kind).client(target, run);
    let (local_ip, mtu) = match target {
        Target::Addr(addr) => local_end(run.netns, *addr),
        Target::Path(_) => (String::new(), 0),
    };
    // Merged, the threads' results are dropped: each has handed its last interval over.
    let totals = merge(results);
    SideResult {
        totals,
        node_cpu_busy: measure::node_cpu_busy(before, measure::node_cpu_jiffies()),
        daemon_rss_bytes: measure::rss_bytes(),
        local_ip,
        mtu,
        timeline: timeline.intervals(),
        timeline_start_unix_ms: timeline.start_unix_ms(),
    }
}

/// The source address the kernel picks towards `target` in `netns`, and the MTU of the route
/// there (a connected UDP socket sends nothing; IP_MTU reads the route's MTU, which is the
/// interface's unless a smaller path MTU was learnt). Unknown: empty, 0.
fn local_end(netns: Option<&Path>, target: SocketAddr) -> (String, u32) {
    let probe = || {
        let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        socket.connect(target)?;
        let mtu = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::IpMtu)
            .ok()
            .and_then(|mtu| u32::try_from(mtu).ok())
            .unwrap_or(0);
        Ok::<_, std::io::Error>((socket.local_addr()?, mtu))
    };
    let local = match netns {
        Some(path) => crate::netns::run_in(path, probe).ok().and_then(Result::ok),
        None => probe().ok(),
    };
    local.map_or((String::new(), 0), |(addr, mtu)| {
        (addr.ip().to_string(), mtu)
    })
}
