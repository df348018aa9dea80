//! Scenarios: many measurements over a fleet of nodes, described in one file, expanded into
//! measurements, packed into rounds that never load a node twice at once, run through the
//! engine, and reported as one document (`docs/schema/run-set.v1.json`).
//!
//! # Layout
//! - [`spec`]: the file: nodes, topology, placement classes, paths, tests; checked.
//! - [`fleet`]: the nodes, pods and Services a scenario can use (a lab's or a cluster's).
//! - [`expand`]: measurements from a scenario and a fleet, and the rounds they run in.
//! - [`execute`]: running the rounds on a session; the run-set document.
//! - [`render`]: the run-set as tables: node x node matrices and a summary by placement and
//!   path.

pub mod execute;
pub mod expand;
pub mod fleet;
pub mod render;
pub mod spec;

pub use expand::{Expansion, Planned, expand};
pub use fleet::Fleet;
pub use spec::{Scenario, ScenarioError};

/// FNV-1a, 64 bits: a hash that is the same in every sondectl and on every machine (the
/// standard library's is seeded per process), for the ring of `mesh: {peers: K}` and the
/// scenario hash of a run-set.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A duration as seconds in JSON.
pub(crate) fn seconds<S: serde::Serializer>(
    duration: &std::time::Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}
