//! The daemon library's errors, one variant per thing that can go wrong, with what was being
//! attempted in named fields.

use std::path::PathBuf;

/// Errors of the daemon library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded eBPF object could not be loaded (usually: not root, or no CAP_BPF).
    #[error("loading sonde's eBPF object (needs root or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON)")]
    LoadObject {
        /// What aya reported.
        #[source]
        source: aya::EbpfError,
    },
    /// A program expected in the embedded object is missing or has another type.
    #[error("eBPF program {name} is missing from sonde's object or has the wrong type")]
    MissingProgram {
        /// The program's name.
        name: &'static str,
    },
    /// A map expected in the embedded object is missing or has another type.
    #[error("eBPF map {name} is missing from sonde's object or has the wrong type")]
    MissingMap {
        /// The map's name.
        name: &'static str,
    },
    /// Loading, attaching or detaching a program failed.
    #[error("{action} program {program}")]
    Program {
        /// What was attempted ("load", "attach to eth0 ingress", ...).
        action: String,
        /// The program's name.
        program: &'static str,
        /// What the kernel or aya reported.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Reading a map failed.
    #[error("reading map {name}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What the kernel or aya reported.
        #[source]
        source: aya::maps::MapError,
    },
    /// An interface name does not exist in the namespace it was looked up in.
    #[error("no interface named {name:?} in this network namespace")]
    NoSuchInterface {
        /// The interface name asked for.
        name: String,
    },
    /// The counter is not attached to that interface, so it cannot be detached.
    #[error("the packet counter is not attached to {name:?}")]
    NotAttached {
        /// The interface name asked for.
        name: String,
    },
    /// The daemon follows as many flows as its flow map holds.
    #[error("this daemon already traces {max} flows; wait for runs to finish")]
    TooManyFlows {
        /// The limit.
        max: u32,
    },
    /// Setting up the lab's delay line failed (a TAP device, a link).
    #[error("delay line: {what}")]
    DelayLine {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Entering a network namespace failed.
    #[error("entering network namespace {path}")]
    Netns {
        /// The namespace file (e.g. /run/netns/NAME).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Binding a generator's socket failed (a port in use, a namespace without that address).
    #[error("binding {addr}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The API cannot be served as configured: TLS files missing or unusable.
    #[error("TLS: {reason}")]
    Tls {
        /// What is wrong with the TLS settings or files.
        reason: String,
    },
    /// Binding or serving the gRPC listener failed.
    #[error("gRPC server on {addr}")]
    Serve {
        /// The listen address.
        addr: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `--kubernetes` was given and no API server can be reached.
    #[error("--kubernetes: no in-cluster service account and no usable kubeconfig")]
    Kubernetes {
        /// What kube said.
        #[source]
        source: kube::Error,
    },
    /// A blocking step of the start panicked or was cancelled.
    #[error("{what} failed: {reason}")]
    Worker {
        /// The step.
        what: &'static str,
        /// What the runtime said.
        reason: String,
    },
}

/// Result with the daemon library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders an error and its sources on one line (`a: b: c`), the way the kernel's reasons are
/// shown to users in capability reports and logs.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // aya repeats its source in some messages; do not print the same words twice.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
