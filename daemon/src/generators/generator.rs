//! The interface every generator implements, and the one table that picks a generator for a
//! kind. A new kind is a module implementing [`Generator`], a row in sonde's table of kinds
//! (`sonde_proto::kinds`) and an arm in [`of`].

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Target, dns, http, local,
    measure::{Counters, Stop, ThreadResult},
    stream, tcp, udp,
    wire::Token,
};
use crate::runs::spec::{Kind, RunSpec};

/// What a generator's server side listens on, which [`super::Server::start`] binds (in the
/// run's network namespace) before the generator takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// A TCP port.
    Tcp,
    /// A UDP port.
    Udp,
    /// A Unix socket in the run's private directory (intra-pod).
    UnixSocket,
    /// The run's private directory itself (intra-pod, files).
    Directory,
}

/// A bound server endpoint, as [`Listen`] asked.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A UDP socket.
    Udp(UdpSocket),
    /// A Unix socket listener.
    UnixSocket(UnixListener),
    /// A shared directory.
    Directory(PathBuf),
}

/// A server side's run, as its generator gets it.
#[derive(Debug)]
pub struct ServerRun {
    /// What the run is.
    pub spec: RunSpec,
    /// The run's token, which clients present.
    pub token: Token,
    /// Set to stop serving.
    pub stop: Stop,
}

/// A client side's run, as its generator gets it.
#[derive(Debug, Clone, Copy)]
pub struct ClientRun<'a> {
    /// What the run is.
    pub spec: &'a RunSpec,
    /// The namespace it sends from (`None`: the daemon's).
    pub netns: Option<&'a Path>,
    /// The server side's token.
    pub token: Token,
    /// Set to stop early.
    pub stop: &'a Stop,
    /// Bytes and messages so far, for progress.
    pub counters: &'a Arc<Counters>,
}

/// A generator: the two sides of its kinds.
pub trait Generator: Sync {
    /// What its server side listens on.
    fn listen(&self) -> Listen;

    /// Serves a run on `listener` until it is stopped; returns every serving thread's result.
    fn serve(&self, listener: Listener, run: ServerRun) -> Vec<ThreadResult>;

    /// Runs a client side to `target` for the run's warm-up and duration, or until it is
    /// stopped; returns every flow's result.
    fn client(&self, target: &Target, run: ClientRun<'_>) -> Vec<ThreadResult>;
}

/// The generator of `kind`.
pub fn of(kind: Kind) -> &'static dyn Generator {
    match kind {
        Kind::TcpStream => &stream::Stream,
        // No run spec has the unspecified kind (validation refuses it).
        Kind::TcpRr | Kind::TcpCrr | Kind::Unspecified => &tcp::RequestResponse,
        Kind::UdpStream | Kind::UdpRr => &udp::Datagrams,
        Kind::UnixStream | Kind::UnixRr => &local::UnixSocket,
        Kind::FsRr => &local::Files,
        Kind::Http | Kind::HttpCrr => &http::Http,
        Kind::Dns => &dns::Dns,
    }
}

/// Implements [`Generator`] for a network generator whose module has the usual pair
/// `serve(listener, run)` and `client(addr, run)`,
/// listening on `$listen` (`Tcp` or `Udp`): one adapter, not one per module.
macro_rules! network_generator {
    ($name:ident, $listen:ident) => {
        impl $crate::generators::generator::Generator for $name {
            fn listen(&self) -> $crate::generators::generator::Listen {
                $crate::generators::generator::Listen::$listen
            }

            fn serve(
                &self,
                listener: $crate::generators::generator::Listener,
                run: $crate::generators::generator::ServerRun,
            ) -> Vec<$crate::generators::measure::ThreadResult> {
                match listener {
                    $crate::generators::generator::Listener::$listen(bound) => serve(bound, run),
                    _ => $crate::generators::generator::mismatch("a listener it does not serve on"),
                }
            }

            fn client(
                &self,
                target: &$crate::generators::Target,
                run: $crate::generators::generator::ClientRun<'_>,
            ) -> Vec<$crate::generators::measure::ThreadResult> {
                match $crate::generators::generator::addr_of(target) {
                    Some(addr) => client(addr, run),
                    None => $crate::generators::generator::mismatch("a path to connect to"),
                }
            }
        }
    };
}
pub(crate) use network_generator;

/// The result of a side handed what its generator cannot use (a bug, not an input).
pub(crate) fn mismatch(what: &str) -> Vec<ThreadResult> {
    let mut result = ThreadResult::new();
    result.error(format!("internal: the generator was handed {what}"));
    vec![result]
}

/// The address of a network kind's target.
pub(crate) fn addr_of(target: &Target) -> Option<SocketAddr> {
    match target {
        Target::Addr(addr) => Some(*addr),
        Target::Path(_) => None,
    }
}
