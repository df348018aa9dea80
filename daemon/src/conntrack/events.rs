//! Counting the table's new and destroyed entries from ctnetlink's event groups, on a thread
//! of its own that sleeps in `recv` while nothing changes.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner,
    conntrack::{ConntrackMessage, ConntrackMessageType},
};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::{Class, netlink::describe};

/// `NFNLGRP_CONNTRACK_NEW`, `NFNLGRP_CONNTRACK_DESTROY`.
const GROUP_NEW: u32 = 1;
const GROUP_DESTROY: u32 = 3;
/// Events queue here while the thread is not scheduled: at 100k new entries a second and
/// ~200 bytes an event, a quarter of a second.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Running totals since the listener started.
#[derive(Debug, Default)]
pub struct EventCounts {
    created: [AtomicU64; Class::ALL.len()],
    destroyed: AtomicU64,
    /// Times the kernel could not queue events for us (`ENOBUFS`): counts are low from then on.
    overflows: AtomicU64,
}

/// A copy of [`EventCounts`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventTotals {
    /// New entries by class ([`Class::ALL`] order).
    pub created: [u64; Class::ALL.len()],
    /// Entries removed (timed out, closed, evicted, flushed).
    pub destroyed: u64,
    /// Receive-buffer overflows: events were lost.
    pub overflows: u64,
}

impl EventTotals {
    /// All new entries, whatever their class.
    pub fn created_total(&self) -> u64 {
        self.created.iter().sum()
    }
}

impl EventCounts {
    /// The totals now.
    pub fn totals(&self) -> EventTotals {
        EventTotals {
            created: std::array::from_fn(|i| self.created[i].load(Ordering::Relaxed)),
            destroyed: self.destroyed.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
        }
    }
}

/// Subscribes to new and destroy events in the calling thread's network namespace and counts
/// them on a background thread for the life of the process.
pub fn listen() -> io::Result<Arc<EventCounts>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    // SAFETY: the descriptor is owned by `socket`, alive for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    // The forced size needs CAP_NET_ADMIN, which sonded has; the plain one is the fallback.
    if nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &RECEIVE_BUFFER)
        .is_err()
    {
        socket.set_rx_buf_sz(RECEIVE_BUFFER)?;
    }
    socket.add_membership(GROUP_NEW)?;
    socket.add_membership(GROUP_DESTROY)?;
    let counts = Arc::new(EventCounts::default());
    let shared = Arc::clone(&counts);
    std::thread::Builder::new()
        .name("conntrack-events".into())
        .spawn(move || receive(&socket, &shared))?;
    Ok(counts)
}

fn receive(socket: &Socket, counts: &EventCounts) {
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let length = match socket.recv(&mut &mut buffer[..], 0) {
            Ok(length) => length.min(buffer.len()),
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                counts.overflows.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(%err, "conntrack events: receive failed; new/destroyed rates stop");
                return;
            }
        };
        // A decoder's panic on a malformed datagram must not end the counting.
        let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            count_frames(&buffer[..length], counts);
        }));
        if counted.is_err() {
            tracing::warn!(
                length,
                "conntrack events: a datagram that does not decode was skipped"
            );
        }
    }
}

/// nfnetlink's conntrack subsystem (`NFNL_SUBSYS_CTNETLINK`), the high byte of a message type.
const SUBSYS_CTNETLINK: u16 = 1;

/// Counts the conntrack events of one datagram from the kernel: netlink frames back to
/// back, each padded to 4 bytes; what does not parse is skipped (a fuzz target feeds it
/// anything).
pub fn count_frames(datagram: &[u8], counts: &EventCounts) {
    let mut offset = 0;
    while offset < datagram.len() {
        let Ok(frame) = NetlinkBuffer::new_checked(&datagram[offset..]) else {
            break;
        };
        let frame_length = (frame.length() as usize).next_multiple_of(4).max(16);
        count(&datagram[offset..], counts);
        offset = offset.saturating_add(frame_length);
    }
}

fn count(frame: &[u8], counts: &EventCounts) {
    // Only conntrack's messages reach the parser: netlink-packet-netfilter 0.4 decodes other
    // subsystems too, and its nftables decoder panics on a short attribute (found by fuzzing).
    let Ok(header) = NetlinkBuffer::new_checked(frame) else {
        return;
    };
    if header.message_type() >> 8 != SUBSYS_CTNETLINK {
        return;
    }
    let Ok(message) = NetlinkMessage::<NetfilterMessage>::deserialize(frame) else {
        return;
    };
    let NetlinkPayload::InnerMessage(message) = message.payload else {
        return;
    };
    let NetfilterMessageInner::Conntrack(message) = message.inner else {
        return;
    };
    match message {
        ConntrackMessage::New(attributes) => {
            let class = Class::of(describe(&attributes).protocol);
            counts.created[class as usize].fetch_add(1, Ordering::Relaxed);
        }
        ConntrackMessage::Delete(_) => {
            counts.destroyed.fetch_add(1, Ordering::Relaxed);
        }
        other if other.message_type() == ConntrackMessageType::Delete => {
            counts.destroyed.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_events_are_counted_and_other_subsystems_skipped() {
        let counts = EventCounts::default();
        // Captured from the kernel's conntrack groups: a new TCP entry and its updates.
        count_frames(
            include_bytes!("../../../fuzz/seeds/ctnetlink/event-0.bin"),
            &counts,
        );
        let new_or_destroyed = counts.totals().created_total() + counts.totals().destroyed;
        assert_eq!(new_or_destroyed, 1);
        // An nftables set message with a short attribute: its decoder panicked on it (fuzz
        // target ctnetlink); it is not conntrack's, so it is not decoded.
        count_frames(
            include_bytes!("../../../fuzz/seeds/ctnetlink/regression-nftables-short-attribute.bin"),
            &counts,
        );
        assert_eq!(
            counts.totals().created_total() + counts.totals().destroyed,
            new_or_destroyed
        );
    }
}
