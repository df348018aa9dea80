//! `sonded`, sonde's per-node agent, as a library: the binary in `main.rs` only parses its
//! configuration, sets up logging and signals, and calls [`daemon::Daemon::start`].
//!
//! # Layout
//! - [`config`]: flags and `SONDE_*` environment variables.
//! - [`object`]: the embedded eBPF object, loaded once; programs and maps the daemon holds.
//!   ("Probe" means one thing in sonde: a stage program at one hook of the datapath.)
//! - [`capabilities`]: what this kernel allows, tried for real at start.
//! - [`tc_counter`]: per-interface packet counters on TCX links.
//! - [`memory`]: what an idle daemon holds: freed heap handed back, its own code paged out.
//! - [`mounts`]: tracefs in a private mount namespace when the host has none.
//! - [`netns`]: running a piece of work inside another network namespace.
//! - [`pods`]: which host-side veth is which pod's, kept current; counters on each.
//! - [`stages`]: per-stage kernel latency, connect times and retransmits of a run's flows.
//! - [`facts`]: the node's identity and what it found, as served by `GetNodeFacts`.
//! - [`conntrack`]: the node's conntrack table through ctnetlink, and the capacity model.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`generators`]: native traffic generators (TCP stream/RR/CRR, UDP stream/RR).
//! - [`reservations`]: who holds this node in which class, so measurements never collide.
//! - [`runs`]: the runs a daemon holds, their limits, leases and target policy.
//! - [`grpc`]: the thin `sonde.v1` adapter over the above.
//! - [`server`]: binds, serves, and shuts down within a deadline.
//! - [`daemon`]: all of the above wired into one daemon, with one shutdown.

pub mod capabilities;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod delay_line;
pub mod error;
pub mod facts;
pub mod generators;
pub mod grpc;
pub mod memory;
pub mod metrics;
pub mod mounts;
pub mod netlink;
pub mod netns;
pub mod object;
pub mod pods;
pub mod reservations;
pub mod runs;
pub mod server;
pub mod stages;
pub mod tc_counter;
pub mod tls;

pub use error::{Error, Result};
