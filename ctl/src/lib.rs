//! `sondectl`, sonde's command line, as a library: `main.rs` parses [`cli::Cli`] and calls
//! [`cmd::run`].
//!
//! # Layout
//! - [`cli`]: the commands and flags.
//! - [`agent`]: agent addresses, and connecting to a daemon with deadlines.
//! - [`cmd`]: one module per subcommand.
//! - [`export`]: results to a Pushgateway and to Graphite.
//! - [`lab`]: the lab, a cluster of network namespaces on one machine.
//! - [`cluster`]: Kubernetes: the manifests, deploying them, finding the daemons.
//! - [`endpoint`]: what `--from`/`--to` name, resolved to daemons, namespaces, addresses.
//! - [`engine`]: the run engine: a session of daemon connections, clock offsets and runs in
//!   flight, executing plans.
//! - [`run`]: planning, executing and reporting runs.
//! - [`scenario`]: fleet measurements: scenario files, their expansion into rounds, run-sets.
//! - [`monitor`]: continuous measurement: rotating K-peer rounds and Prometheus metrics.
//! - [`output`]: output formats shared by the subcommands.
//! - [`results`]: the results store, and comparing results.
//! - [`report`]: results as a self-contained HTML report with SVG charts.
//! - [`tls`]: mutual TLS to the daemons: which certificate to present, issuing sonde's.
//! - [`error`]: the library's errors (the commands add their words with anyhow).

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod export;
pub mod lab;
pub mod monitor;
pub mod output;
pub mod report;
pub mod results;
pub mod run;
pub mod scenario;
pub mod tls;
pub use error::{Error, Result};
