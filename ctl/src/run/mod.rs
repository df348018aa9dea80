//! `sondectl run`: plan a run from the command line, execute it over gRPC, report it.
//!
//! # Layout
//! - [`sizes`]: sizes and sweeps on the command line.
//! - [`execute`]: the two-phase protocol against the daemons, progress, cancellation.
//! - [`follow`]: what a run through a Service sees of it meanwhile (rollout steps, EndpointSlice
//!   changes), for its timeline.
//! - [`report`]: the result document, its table and CSV.
//! - [`clock`]: the offset between two daemons' clocks, with its error bar.
//! - [`breakdown`]: per-stage kernel latency from both nodes' traces.

pub mod breakdown;
pub mod clock;
pub mod execute;
pub mod follow;
pub mod report;
pub mod sizes;
