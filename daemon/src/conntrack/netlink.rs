//! ctnetlink requests: the table's size, the kernel's per-CPU counters and a census of the
//! entries, read over a `NETLINK_NETFILTER` socket of the namespace the socket was opened in.
//!
//! Messages are built and parsed with `netlink-packet-netfilter`; the statistics messages it
//! does not name (`IPCTNL_MSG_CT_GET_STATS{,_CPU}`) come back as its `Other` variant, whose
//! attributes are the kernel's big-endian u32 counters.

use std::{io, time::Instant};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, Nla as _};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple},
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::{Census, KernelCounters, TableSize};
use crate::netlink::Requester;

/// `IPCTNL_MSG_CT_GET_STATS_CPU`: one message per CPU with its counters.
const GET_STATS_CPU: u8 = 4;
/// `IPCTNL_MSG_CT_GET_STATS`: the table's entries and maximum.
const GET_STATS: u8 = 5;
/// `CTA_STATS_GLOBAL_ENTRIES`, `CTA_STATS_GLOBAL_MAX_ENTRIES`.
const GLOBAL_ENTRIES: u16 = 1;
const GLOBAL_MAX_ENTRIES: u16 = 2;
/// `enum ctattr_stats_cpu` (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const STATS_FOUND: u16 = 2;
const STATS_INVALID: u16 = 4;
const STATS_INSERT: u16 = 8;
const STATS_INSERT_FAILED: u16 = 9;
const STATS_DROP: u16 = 10;
const STATS_EARLY_DROP: u16 = 11;
const STATS_ERROR: u16 = 12;
const STATS_SEARCH_RESTART: u16 = 13;
const STATS_CLASH_RESOLVE: u16 = 14;
const STATS_CHAIN_TOOLONG: u16 = 15;

/// A ctnetlink socket bound to the network namespace it was opened in (a socket keeps its
/// namespace for life, whichever namespace the thread using it is in later).
#[derive(Debug)]
pub struct Ctnetlink {
    requests: Requester,
}

impl Ctnetlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            requests: Requester::open(NETLINK_NETFILTER)?,
        })
    }

    /// The number of entries and the limit they are checked against.
    pub fn table_size(&mut self) -> io::Result<TableSize> {
        let mut size = TableSize::default();
        self.request(GET_STATS, NLM_F_REQUEST, |message| {
            for (kind, value) in stats_attributes(&message) {
                match kind {
                    GLOBAL_ENTRIES => size.entries = u64::from(value),
                    GLOBAL_MAX_ENTRIES => size.max = u64::from(value),
                    _ => {}
                }
            }
        })?;
        Ok(size)
    }

    /// The kernel's per-CPU conntrack counters, summed over CPUs.
    pub fn counters(&mut self) -> io::Result<KernelCounters> {
        let mut total = KernelCounters::default();
        self.request(GET_STATS_CPU, NLM_F_REQUEST | NLM_F_DUMP, |message| {
            for (kind, value) in stats_attributes(&message) {
                let value = u64::from(value);
                let slot = match kind {
                    STATS_FOUND => &mut total.found,
                    STATS_INVALID => &mut total.invalid,
                    STATS_INSERT => &mut total.insert,
                    STATS_INSERT_FAILED => &mut total.insert_failed,
                    STATS_DROP => &mut total.drop,
                    STATS_EARLY_DROP => &mut total.early_drop,
                    STATS_ERROR => &mut total.error,
                    STATS_SEARCH_RESTART => &mut total.search_restart,
                    STATS_CLASH_RESOLVE => &mut total.clash_resolve,
                    STATS_CHAIN_TOOLONG => &mut total.chain_toolong,
                    _ => continue,
                };
                *slot += value;
            }
        })?;
        Ok(total)
    }

    /// Every entry, counted by protocol and TCP state, with how many are translated.
    pub fn census(&mut self) -> io::Result<Census> {
        let started = Instant::now();
        let mut census = Census::default();
        let get = u8::from(netlink_packet_netfilter::conntrack::ConntrackMessageType::Get);
        self.request(get, NLM_F_REQUEST | NLM_F_DUMP, |message| {
            // The kernel answers a dump with IPCTNL_MSG_CT_NEW messages.
            if let NetfilterMessageInner::Conntrack(
                ConntrackMessage::New(attributes) | ConntrackMessage::Get(attributes),
            ) = message.inner
            {
                census.add(&describe(&attributes));
            }
        })?;
        census.took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        Ok(census)
    }

    /// Sends one of ctnetlink's requests (no attributes) and hands every answer to `each`.
    fn request(
        &mut self,
        message_type: u8,
        flags: u16,
        each: impl FnMut(NetfilterMessage),
    ) -> io::Result<()> {
        let inner = ConntrackMessage::Other {
            message_type,
            attributes: Vec::new(),
        };
        let body = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            inner,
        );
        self.requests.request(body, flags, each)
    }
}

/// The u32 attributes of a statistics message.
fn stats_attributes(message: &NetfilterMessage) -> Vec<(u16, u32)> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::Other { attributes, .. }) =
        &message.inner
    else {
        return Vec::new();
    };
    attributes
        .iter()
        .filter_map(|nla| {
            let mut value = [0u8; 4];
            if nla.value_len() != 4 {
                return None;
            }
            nla.emit_value(&mut value);
            Some((nla.kind(), u32::from_be_bytes(value)))
        })
        .collect()
}

/// What the census needs of one entry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EntryFacts {
    /// IP protocol number of the original direction.
    pub protocol: u8,
    /// TCP state (`enum tcp_conntrack`), for TCP entries.
    pub tcp_state: Option<u8>,
    /// The destination was translated (a Service's DNAT).
    pub dnat: bool,
    /// The kernel will not evict it early (`IPS_ASSURED`).
    pub assured: bool,
}

/// Reads an entry's protocol, TCP state and status bits.
pub fn describe(attributes: &[ConntrackAttribute]) -> EntryFacts {
    use netlink_packet_netfilter::conntrack::{Protocol, Status};
    let mut facts = EntryFacts::default();
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuples) => {
                for tuple in tuples {
                    if let Tuple::Proto(parts) = tuple {
                        for part in parts {
                            if let ProtoTuple::Protocol(protocol) = part {
                                facts.protocol = match protocol {
                                    Protocol::Icmp => 1,
                                    Protocol::Tcp => 6,
                                    Protocol::Udp => 17,
                                    Protocol::Ipv6Icmp => 58,
                                    Protocol::Sctp => 132,
                                    Protocol::Other(number) => *number,
                                    _ => 255,
                                };
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for info in infos {
                    if let ProtoInfo::TCP(parts) = info {
                        for part in parts {
                            if let ProtoInfoTCP::State(state) = part {
                                facts.tcp_state = Some(*state);
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::CtaStatus(status) => {
                facts.dnat = status.contains(Status::DstNat);
                facts.assured = status.contains(Status::Assured);
            }
            _ => {}
        }
    }
    facts
}
