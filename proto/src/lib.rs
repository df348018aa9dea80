//! The `sonde.v1` gRPC API, generated from `proto/sonde/v1/*.proto`.
//!
//! One crate so that sonded (server) and sondectl (client) can never disagree on a message.
//!
//! # Layout
//! - [`v1`]: messages, the `Agent` client and server traits.

/// The `sonde.v1` package.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, unused_qualifications)]
    tonic::include_proto!("sonde.v1");
}

/// Rules of the API that sonded and sondectl must apply the same way, written once.
impl v1::RunKind {
    /// The name users type and reports show (`tcp-rr`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::TcpStream => "tcp-stream",
            Self::TcpRr => "tcp-rr",
            Self::TcpCrr => "tcp-crr",
            Self::UdpStream => "udp-stream",
            Self::UdpRr => "udp-rr",
            Self::UnixStream => "unix-stream",
            Self::UnixRr => "unix-rr",
            Self::FsRr => "fs-rr",
            Self::Http => "http",
            Self::HttpCrr => "http-crr",
        }
    }

    /// How a run of the kind loads a node, for reservations (pScheduler's classes):
    /// request/response on persistent connections is normal; streams, connection storms and
    /// the intra-pod baselines (which load the node's CPU) are exclusive.
    pub fn reservation_class(self) -> v1::ReservationClass {
        match self {
            Self::TcpRr | Self::UdpRr | Self::Http => v1::ReservationClass::Normal,
            _ => v1::ReservationClass::Exclusive,
        }
    }
}
