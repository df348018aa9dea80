//! Continuous measurement (`sondectl monitor`, whose command is `cmd::monitor`): a scenario's tests measured in rounds, forever, over a rotating set of
//! pairs that covers every ordered pair without an O(n²) bill.
//!
//! Each round measures each node from exactly K peers on a ring that turns every round
//! ([`rotation`]), so every ordered pair is measured within ceil((n-1)/K) rounds; the round
//! number comes from the wall clock, so a restart goes on where it left off. Light tests
//! (request/response: normal or background class) run every round, heavy ones (exclusive)
//! every M rounds. A round's measurements run through the scenario engine, reserving their
//! nodes as every measurement does (so a monitor never collides with another monitor or a
//! hand-run stream), in slots that spread them over the round, each at a random offset in its
//! slot so that the rounds of several monitors never synchronise. The scenario's nodes,
//! placement classes, paths and tests are used; its topology is replaced by the rotation.
//!
//!
//! Several replicas (`sondectl deploy --monitor`) elect one to measure through a Lease
//! (`--lease`); the others wait and take over when it goes.
//!
//! # Layout
//! - [`rotation`]: which pairs a round measures.
//! - [`metrics`]: `/metrics` with O(n·K) per-pair series.
//! - [`leader`]: the replicas' election.

pub mod leader;
pub mod metrics;
pub mod rotation;
