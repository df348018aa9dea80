//! The `sonde.v1` gRPC API, generated from `proto/sonde/v1/*.proto`.
//!
//! One crate so that sonded (server) and sondectl (client) can never disagree on a message.
//!
//! # Layout
//! - [`v1`]: messages, the `Agent` client and server traits.
//! - [`kinds`]: every rule of a run kind, in one table both sides read.

/// The `sonde.v1` package.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, unused_qualifications)]
    tonic::include_proto!("sonde.v1");
}

pub mod kinds;
