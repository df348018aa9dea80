//! The few rtnetlink requests the pod mapping needs, in the namespace the socket was opened
//! in: links (name, kind, peer), addresses, the id a namespace has here, and the interface a
//! destination is routed out of.

use std::{io, net::IpAddr, os::fd::AsRawFd};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use crate::netlink::Requester;

/// `RTNLGRP_LINK`: links created, changed, removed.
pub const GROUP_LINK: u32 = 1;

/// One network interface of the socket's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Whether it is one end of a veth pair.
    pub veth: bool,
    /// The peer's index, in the peer's namespace (`IFLA_LINK`).
    pub peer_index: Option<u32>,
    /// The peer's namespace, as an id of this namespace's (`IFLA_LINK_NETNSID`); `None` when
    /// the peer is here too.
    pub peer_netnsid: Option<i32>,
}

/// An rtnetlink socket in the namespace of the thread that opened it.
#[derive(Debug)]
pub struct Rtnl {
    requests: Requester,
}

impl Rtnl {
    /// Opens a socket for requests in the calling thread's namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            requests: Requester::open(NETLINK_ROUTE)?,
        })
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut links = Vec::new();
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.requests
            .request(request, NLM_F_REQUEST | NLM_F_DUMP, |message| {
                if let RouteNetlinkMessage::NewLink(link) = message {
                    links.push(link_of(&link));
                }
            })?;
        Ok(links)
    }

    /// Every address, with the index of its interface.
    pub fn addresses(&mut self) -> io::Result<Vec<(u32, IpAddr)>> {
        let mut addresses = Vec::new();
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        self.requests
            .request(request, NLM_F_REQUEST | NLM_F_DUMP, |message| {
                if let RouteNetlinkMessage::NewAddress(address) = message {
                    for attribute in &address.attributes {
                        if let AddressAttribute::Address(ip) = attribute {
                            addresses.push((address.header.index, *ip));
                        }
                    }
                }
            })?;
        Ok(addresses)
    }

    /// The name of the interface this namespace routes packets for `to` out of (`ip route get`):
    /// a node's uplink toward another node's pods. `None` for a local address or no route.
    pub fn route_device(&mut self, to: IpAddr) -> io::Result<Option<String>> {
        let mut message = RouteMessage::default();
        message.header.address_family = match to {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.destination_prefix_length = if to.is_ipv4() { 32 } else { 128 };
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(to)));
        let mut index = None;
        let answered = self.requests.request(
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_REQUEST,
            |reply| {
                if let RouteNetlinkMessage::NewRoute(route) = reply {
                    index = route
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            RouteAttribute::Oif(index) => Some(*index),
                            _ => None,
                        });
                }
            },
        );
        match answered {
            Ok(()) => {}
            // No route to it: nothing to name.
            Err(err) if err.raw_os_error() == Some(libc::ENETUNREACH) => return Ok(None),
            Err(err) => return Err(err),
        }
        let Some(index) = index else {
            return Ok(None);
        };
        let name = self
            .links()?
            .into_iter()
            .find(|link| link.index == index)
            .map(|link| link.name);
        Ok(name.filter(|name| name != "lo"))
    }

    /// The id this namespace gives the namespace `fd` refers to, if it has given it one.
    pub fn nsid_of(&mut self, fd: &impl AsRawFd) -> io::Result<Option<i32>> {
        let mut found = None;
        let mut message = NsidMessage::default();
        let fd = u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?;
        message.attributes.push(NsidAttribute::Fd(fd));
        self.requests.request(
            RouteNetlinkMessage::GetNsId(message),
            NLM_F_REQUEST,
            |reply| {
                if let RouteNetlinkMessage::NewNsId(reply) = reply {
                    for attribute in &reply.attributes {
                        if let NsidAttribute::Id(id) = attribute {
                            found = (*id >= 0).then_some(*id);
                        }
                    }
                }
            },
        )?;
        Ok(found)
    }
}

/// A socket that receives link events (new, changed, removed) in the calling thread's
/// namespace; `recv` on it blocks until one comes.
pub fn link_events() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.add_membership(GROUP_LINK)?;
    Ok(socket)
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        veth: false,
        peer_index: None,
        peer_netnsid: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Link(index) => link.peer_index = Some(*index),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos
                    .iter()
                    .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    link
}
