//! The lab's delay line: a known one-way delay on the underlay, to check that the kernel
//! breakdown puts it in the wire stage (this kernel has no netem).
//!
//! A classifier on an underlay port redirects the frames it is told to (IP frames to one
//! node's MAC) into a TAP device; a userspace relay holds each frame for the delay and writes
//! it into a second TAP device, whose classifier redirects it out of the destination node's
//! underlay port. Nothing is bridged twice: the frame leaves the underlay exactly once.

/// What the redirect classifier does with the frames arriving on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    /// Where matching frames go out (ifindex).
    pub to_ifindex: u32,
    /// Only frames to this destination MAC, when `match_mac` is 1.
    pub mac: [u8; 6],
    /// 1: match `mac`; 0: every IP frame.
    pub match_mac: u8,
    /// Zero.
    pub pad: u8,
}

const _: () = assert!(size_of::<Redirect>() == 12);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]`, explicit padding, integer fields only.
    unsafe impl aya::Pod for super::Redirect {}
}
