//! What a side of a run asks to trace: its flows, the interfaces on its path, how it samples
//! and which way its followed packets go.

use std::net::IpAddr;

use sonde_common::stages::FlowKey;

use super::hooks;

/// Most flows one side may ask to trace.
pub const MAX_TRACED_FLOWS: usize = 16;

/// What one side of a run asks to trace on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSpec {
    /// The run's flows as packets on this node carry them.
    pub flows: Vec<TracedFlow>,
    /// Host side of the run's pod veth, when the side is in a pod on this node.
    pub pod_interface: Option<String>,
    /// The node's uplink, when the other side is on another node.
    pub uplink_interface: Option<String>,
    /// Packets are followed 1 in 2^`sample_shift`.
    pub sample_shift: u8,
    /// Which way the followed packets go.
    pub ways: Ways,
    /// The run's UDP datagrams are DNS messages: a packet is known by its DNS message ID.
    pub dns_ids: bool,
    /// Stamp only in the stamping windows even though every packet is followed: a
    /// request/response run's rate then moves with the probes a tenth as much.
    pub windowed: bool,
}

/// Which way a run's followed packets go: a one-way stream's uplinks need only the classifier
/// its data passes (the other way carries only ACKs, never stamped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ways {
    /// Both ways.
    #[default]
    Both,
    /// Client to server only.
    ToServer,
    /// Server to client only.
    ToClient,
}

impl Ways {
    /// Which of a node's two directions carry followed packets, for a node holding `sides`.
    pub fn on_node(self, sides: u8) -> hooks::Passes {
        use sonde_common::stages::side::{CLIENT, SERVER};
        let (sender, receiver) = match self {
            Self::Both => {
                return hooks::Passes {
                    leaving: true,
                    arriving: true,
                };
            }
            Self::ToServer => (CLIENT, SERVER),
            Self::ToClient => (SERVER, CLIENT),
        };
        hooks::Passes {
            leaving: sides & sender != 0,
            arriving: sides & receiver != 0,
        }
    }
}

/// A flow by its server endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracedFlow {
    /// The client's address.
    pub client: IpAddr,
    /// The server's address as packets carry it on this node.
    pub server: IpAddr,
    /// The server's port.
    pub server_port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
}

impl TracedFlow {
    pub(super) fn key(&self) -> FlowKey {
        FlowKey {
            client: mapped(self.client),
            server: mapped(self.server),
            server_port: self.server_port,
            protocol: self.protocol,
            pad: 0,
        }
    }
}

/// An address as IPv4-mapped IPv6 when it is IPv4, the form the flow map stores.
fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}
