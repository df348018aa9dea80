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
