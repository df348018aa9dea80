//! The lab's delay line: a known one-way delay between two underlay ports (this kernel has no
//! netem). See `sonde_common::delay` for the path a frame takes.
//!
//! Everything it sets up belongs to the process: the TAP devices are not persistent and the
//! classifiers are TCX links, so the kernel removes all of it when the process ends, however
//! it ends.
//!
//! Accuracy: the relay sleeps until each frame is due (timer slack 1 ns), so a frame is late
//! by the wake-up latency plus the userspace hop (measured in the lab: see the README).

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::{maps::HashMap as BpfHashMap, programs::TcAttachType};
use sonde_common::{delay::Redirect, maps};

use crate::{Error, Result, object::EbpfObject, tc_counter};

/// The relay's TAP devices: frames to delay come out of `IN`, delayed frames go into `OUT`.
const TAP_IN: &str = "sdl-in";
const TAP_OUT: &str = "sdl-out";
/// The longest frame a TAP hands over (64 KiB GSO frames included).
const MAX_FRAME: usize = 65_550;
const CLASSIFIER: &str = "sonde_redirect";

/// What to delay and for how long.
#[derive(Debug, Clone)]
pub struct DelaySpec {
    /// The underlay port the frames arrive on (the sending node's peer).
    pub from_port: String,
    /// The underlay port they must leave by (the receiving node's peer).
    pub to_port: String,
    /// The receiving node's MAC: only frames to it are delayed.
    pub to_mac: [u8; 6],
    /// The added one-way delay.
    pub delay: Duration,
    /// How long the line stays up.
    pub duration: Duration,
}

/// What the line carried.
#[derive(Debug, Clone, Copy, Default)]
pub struct Carried {
    /// Frames relayed.
    pub frames: u64,
    /// Mean lateness of a write against its due time, µs (the relay's own error).
    pub mean_late_us: f64,
}

/// Sets the line up, calls `ready`, relays for `spec.duration` and returns what it carried.
pub fn run(spec: &DelaySpec, ready: impl FnOnce()) -> Result<Carried> {
    let tap_in = open_tap(TAP_IN)?;
    let mut tap_out = open_tap(TAP_OUT)?;
    for tap in [TAP_IN, TAP_OUT] {
        link_up(tap)?;
    }
    let mut object = EbpfObject::load()?;
    tc_counter::load_classifiers(&mut object, &[CLASSIFIER])?;
    let mut rules: BpfHashMap<_, u32, Redirect> =
        BpfHashMap::try_from(object.take_map(maps::REDIRECTS).ok_or(Error::MissingMap {
            name: maps::REDIRECTS,
        })?)
        .map_err(|source| Error::Map {
            name: maps::REDIRECTS,
            source,
        })?;
    let index = |name: &str| {
        nix::net::if_::if_nametoindex(name).map_err(|_| Error::NoSuchInterface {
            name: name.to_owned(),
        })
    };
    let map_error = |source| Error::Map {
        name: maps::REDIRECTS,
        source,
    };
    rules
        .insert(
            index(&spec.from_port)?,
            Redirect {
                to_ifindex: index(TAP_IN)?,
                mac: spec.to_mac,
                match_mac: 1,
                pad: 0,
            },
            0,
        )
        .map_err(map_error)?;
    rules
        .insert(
            index(TAP_OUT)?,
            Redirect {
                to_ifindex: index(&spec.to_port)?,
                ..Redirect::default()
            },
            0,
        )
        .map_err(map_error)?;
    let _links = [
        tc_counter::attach_tcx(
            &mut object,
            CLASSIFIER,
            &spec.from_port,
            TcAttachType::Ingress,
        )?,
        tc_counter::attach_tcx(&mut object, CLASSIFIER, TAP_OUT, TcAttachType::Ingress)?,
    ];
    // Sleep as precisely as the kernel allows: the default 50 µs slack would be the error.
    // SAFETY: prctl with an integer argument, no pointers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64) };

    let (frames, arrivals) = mpsc::channel::<(Instant, Vec<u8>)>();
    let delay = spec.delay;
    std::thread::Builder::new()
        .name("delay-read".to_owned())
        .spawn(move || read_frames(tap_in, delay, &frames))
        .map_err(|source| Error::DelayLine {
            what: "starting the reader thread".to_owned(),
            source,
        })?;
    ready();
    let end = Instant::now() + spec.duration;
    let mut carried = Carried::default();
    let mut late_total = Duration::ZERO;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok((due, frame)) = arrivals.recv_timeout(left.min(Duration::from_millis(100))) else {
            continue;
        };
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        late_total += Instant::now().saturating_duration_since(due);
        // A frame the TAP refuses (the interface went down) is lost, as on a wire.
        let _ = tap_out.write_all(&frame);
        carried.frames += 1;
    }
    if carried.frames > 0 {
        carried.mean_late_us = late_total.as_secs_f64() * 1e6 / carried.frames as f64;
    }
    Ok(carried)
}

/// Reads frames off the TAP and hands each over with the time it is due out.
fn read_frames(mut tap: File, delay: Duration, frames: &mpsc::Sender<(Instant, Vec<u8>)>) {
    let mut buffer = vec![0_u8; MAX_FRAME];
    loop {
        match tap.read(&mut buffer) {
            Ok(0) => return,
            Ok(len) => {
                let due = Instant::now() + delay;
                if frames.send((due, buffer[..len].to_vec())).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Opens (creating) a non-persistent TAP device named `name`, without packet information.
fn open_tap(name: &str) -> Result<File> {
    let tap_error = |source| Error::DelayLine {
        what: format!("opening TAP device {name}"),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(tap_error)?;
    // SAFETY: an all-zero ifreq is valid; the name fits (checked by the constant names).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq, which lives across the call.
    let status = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if status < 0 {
        return Err(tap_error(std::io::Error::last_os_error()));
    }
    Ok(file)
}

fn link_up(name: &str) -> Result<()> {
    let output = Command::new("ip")
        .args(["link", "set", "dev", name, "up"])
        .output()
        .map_err(|source| Error::DelayLine {
            what: format!("ip link set {name} up"),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::DelayLine {
            what: format!("ip link set {name} up"),
            source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
        })
    }
}
