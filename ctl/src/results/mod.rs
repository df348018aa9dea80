//! Results that last: every run and run-set kept in a store, and compared.
//!
//! # Layout
//! - [`document`]: result documents read back (a run, a run-set) and the facts that make
//!   them comparable.
//! - [`store`]: the SQLite store, its schema versions and migrations.
//! - [`samples`]: a document's figures by measurement and metric, one sample per repetition.
//! - [`compare`]: two sets of samples compared: changes with intervals, tests and verdicts.
//! - [`resolve`]: what `compare` and `results` name (an ID, a file, `scenario:NAME@last-N`).

pub mod compare;
pub mod document;
pub mod resolve;
pub mod samples;
pub mod store;

pub use document::{Document, Facts, Shape};
pub use store::Store;
