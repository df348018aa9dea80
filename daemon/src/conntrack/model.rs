//! The capacity model: from the observed rate of new entries and the kernel's timeouts, where
//! the table is heading and when it will be full.
//!
//! # Formula
//! An entry lives about as long as the timeout of the state it ends in: a short TCP connection
//! ends in TIME_WAIT (`nf_conntrack_tcp_timeout_time_wait`, 120 s by default), a UDP flow in
//! `nf_conntrack_udp_timeout` (30 s), ICMP in `nf_conntrack_icmp_timeout`, anything else in
//! `nf_conntrack_generic_timeout`. With `r_c` new entries a second of class `c`, each living
//! `L_c`, Little's law gives the occupancy the table settles at:
//!
//! ```text
//! N_steady = E + Σ_c r_c · L_c        (E: established TCP entries, which do not churn)
//! ```
//!
//! Until it settles, the table grows at the observed net rate `g = dN/dt` (new minus destroyed
//! entries a second). If `N_steady` exceeds the maximum `M`, it fills in
//!
//! ```text
//! t_full = (M − N) / g
//! ```
//!
//! and never does otherwise. When events were lost (a receive-buffer overflow), new entries are
//! at least `g` plus the destroyed ones, and that floor is used.
//!
//! # Levels
//! - `full`: the table is at its maximum, or the kernel failed inserts, dropped packets for
//!   lack of room, or evicted unassured entries to make room (`early_drop`) in the window;
//! - `critical`: at least 90% full, or full within a minute;
//! - `warning`: at least 75% full, full within ten minutes, or settling above 90%;
//! - `ok`: none of the above.

use std::{fs, path::Path};

/// A class of entries with one lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// TCP: ends in TIME_WAIT.
    Tcp = 0,
    /// UDP: ends when its timeout runs out.
    Udp = 1,
    /// ICMP and ICMPv6.
    Icmp = 2,
    /// Every other protocol (generic timeout).
    Other = 3,
}

impl Class {
    /// Every class, in the order arrays are indexed by.
    pub const ALL: [Class; 4] = [Class::Tcp, Class::Udp, Class::Icmp, Class::Other];

    /// The class of an IP protocol number.
    pub fn of(protocol: u8) -> Class {
        match protocol {
            6 => Class::Tcp,
            17 | 136 => Class::Udp,
            1 | 58 => Class::Icmp,
            _ => Class::Other,
        }
    }

    /// Lower-case name, for output and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Class::Tcp => "tcp",
            Class::Udp => "udp",
            Class::Icmp => "icmp",
            Class::Other => "other",
        }
    }

    /// How long an entry of this class lives after its last packet, in seconds.
    pub fn lifetime(self, timeouts: &Timeouts) -> f64 {
        match self {
            Class::Tcp => timeouts.tcp_time_wait,
            Class::Udp => timeouts.udp,
            Class::Icmp => timeouts.icmp,
            Class::Other => timeouts.generic,
        }
    }
}

/// The kernel's timeouts that the model uses, in seconds (per network namespace).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// `nf_conntrack_tcp_timeout_time_wait`.
    pub tcp_time_wait: f64,
    /// `nf_conntrack_udp_timeout` (unreplied, or replied but not a stream).
    pub udp: f64,
    /// `nf_conntrack_icmp_timeout`.
    pub icmp: f64,
    /// `nf_conntrack_generic_timeout`.
    pub generic: f64,
}

impl Default for Timeouts {
    /// The kernel's defaults.
    fn default() -> Self {
        Self {
            tcp_time_wait: 120.0,
            udp: 30.0,
            icmp: 30.0,
            generic: 600.0,
        }
    }
}

impl Timeouts {
    /// Reads them from `/proc/sys/net/netfilter` as the calling thread's namespace sees it;
    /// a value that cannot be read keeps the kernel's default.
    pub fn read() -> Self {
        Self::read_from(Path::new("/proc/sys/net/netfilter"))
    }

    fn read_from(directory: &Path) -> Self {
        let read = |name: &str, default: f64| {
            fs::read_to_string(directory.join(name))
                .ok()
                .and_then(|text| text.trim().parse::<f64>().ok())
                .unwrap_or(default)
        };
        let defaults = Self::default();
        Self {
            tcp_time_wait: read("nf_conntrack_tcp_timeout_time_wait", defaults.tcp_time_wait),
            udp: read("nf_conntrack_udp_timeout", defaults.udp),
            icmp: read("nf_conntrack_icmp_timeout", defaults.icmp),
            generic: read("nf_conntrack_generic_timeout", defaults.generic),
        }
    }
}

/// What was seen of the table over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Entries at the end of the window.
    pub entries: f64,
    /// The table's maximum.
    pub max: f64,
    /// Net growth of the entries over the window, per second.
    pub growth_per_s: f64,
    /// New entries per second, by [`Class::ALL`].
    pub created_per_s: [f64; 4],
    /// Destroyed entries per second.
    pub destroyed_per_s: f64,
    /// Events were lost in the window: the created rates are low.
    pub events_lost: bool,
    /// Established TCP entries (long-lived; 0 when not counted).
    pub established: f64,
    /// Insert failures, drops and early drops in the window.
    pub pressure_events: u64,
}

/// How worried to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Far from full.
    Ok,
    /// Getting there.
    Warning,
    /// Nearly full, or full soon.
    Critical,
    /// Full: connections are being dropped or evicted.
    Full,
}

impl Level {
    /// Lower-case name, for output.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Critical => "critical",
            Level::Full => "full",
        }
    }
}

/// Where the model says the table is heading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// The occupancy the table settles at if the rates hold (`N_steady`).
    pub steady_entries: f64,
    /// Seconds until the table is full if the rates hold; `None` when it never fills.
    pub seconds_to_full: Option<f64>,
    /// The warning level.
    pub level: Level,
}

/// Applies the model (see the module documentation) to one observation.
pub fn project(observation: &Observation, timeouts: &Timeouts) -> Projection {
    let Observation {
        entries,
        max,
        growth_per_s,
        destroyed_per_s,
        ..
    } = *observation;
    let mut created = observation.created_per_s;
    let counted: f64 = created.iter().sum();
    let floor = (growth_per_s + destroyed_per_s).max(0.0);
    if observation.events_lost && counted < floor {
        // Scale every class up to the floor, keeping their mix (all of it as "other" when no
        // event got through).
        if counted > 0.0 {
            created.iter_mut().for_each(|rate| *rate *= floor / counted);
        } else {
            created[Class::Other as usize] = floor;
        }
    }
    let steady_entries = observation.established
        + Class::ALL
            .iter()
            .map(|class| created[*class as usize] * class.lifetime(timeouts))
            .sum::<f64>();
    let seconds_to_full = if max <= 0.0 {
        None
    } else if entries >= max {
        Some(0.0)
    } else if growth_per_s > 0.0 && steady_entries > max {
        Some((max - entries) / growth_per_s)
    } else {
        None
    };
    let fill = if max > 0.0 { entries / max } else { 0.0 };
    let level = if observation.pressure_events > 0 || seconds_to_full == Some(0.0) {
        Level::Full
    } else if fill >= 0.9 || seconds_to_full.is_some_and(|t| t <= 60.0) {
        Level::Critical
    } else if fill >= 0.75
        || seconds_to_full.is_some_and(|t| t <= 600.0)
        || (max > 0.0 && steady_entries >= 0.9 * max)
    {
        Level::Warning
    } else {
        Level::Ok
    };
    Projection {
        steady_entries,
        seconds_to_full,
        level,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: f64 = 262_144.0;

    fn observation(entries: f64, growth: f64, udp_rate: f64) -> Observation {
        Observation {
            entries,
            max: MAX,
            growth_per_s: growth,
            created_per_s: [0.0, udp_rate, 0.0, 0.0],
            ..Observation::default()
        }
    }

    #[test]
    fn a_table_filling_faster_than_it_drains_is_full_in_room_over_growth() {
        // 20k new UDP flows a second live 30 s: 600k would be held, more than the maximum.
        let projection = project(
            &observation(62_144.0, 20_000.0, 20_000.0),
            &Timeouts::default(),
        );
        assert_eq!(projection.steady_entries, 600_000.0);
        assert_eq!(projection.seconds_to_full, Some(10.0));
        assert_eq!(projection.level, Level::Critical);
    }

    #[test]
    fn a_table_that_settles_below_its_maximum_never_fills() {
        // 1000 new TCP connections a second end in TIME_WAIT for 120 s: 120k, under 262144.
        let mut seen = observation(60_000.0, 1_000.0, 0.0);
        seen.created_per_s = [1_000.0, 0.0, 0.0, 0.0];
        let projection = project(&seen, &Timeouts::default());
        assert_eq!(projection.steady_entries, 120_000.0);
        assert_eq!(projection.seconds_to_full, None);
        assert_eq!(projection.level, Level::Ok);
    }

    #[test]
    fn the_rule_of_thumb_rate_is_the_edge() {
        // max / 120 s = 2184.5 connections a second is where TIME_WAIT alone fills the table.
        let mut below = observation(0.0, 2_184.0, 0.0);
        below.created_per_s = [2_184.0, 0.0, 0.0, 0.0];
        assert_eq!(project(&below, &Timeouts::default()).seconds_to_full, None);
        let mut above = below;
        above.created_per_s = [2_185.0, 0.0, 0.0, 0.0];
        above.growth_per_s = 2_185.0;
        let projection = project(&above, &Timeouts::default());
        assert!((projection.seconds_to_full.unwrap_or_default() - MAX / 2_185.0).abs() < 1e-9);
        assert_eq!(projection.level, Level::Warning);
    }

    #[test]
    fn lost_events_fall_back_to_growth_plus_destroyed() {
        let mut seen = observation(100_000.0, 5_000.0, 1_000.0);
        seen.destroyed_per_s = 1_000.0;
        seen.events_lost = true;
        // At least 6000 new a second: the counted 1000 UDP ones are scaled up to that floor.
        let projection = project(&seen, &Timeouts::default());
        assert_eq!(projection.steady_entries, 6_000.0 * 30.0);
        assert_eq!(projection.seconds_to_full, None);
        assert_eq!(projection.level, Level::Ok);
    }

    #[test]
    fn levels() {
        let timeouts = Timeouts::default();
        assert_eq!(
            project(&observation(MAX, 0.0, 0.0), &timeouts).level,
            Level::Full
        );
        let mut pressed = observation(1000.0, 0.0, 0.0);
        pressed.pressure_events = 1;
        assert_eq!(project(&pressed, &timeouts).level, Level::Full);
        assert_eq!(
            project(&observation(0.91 * MAX, 0.0, 0.0), &timeouts).level,
            Level::Critical
        );
        assert_eq!(
            project(&observation(0.8 * MAX, 0.0, 0.0), &timeouts).level,
            Level::Warning
        );
        assert_eq!(
            project(&observation(0.1 * MAX, 0.0, 0.0), &timeouts).level,
            Level::Ok
        );
        // Unknown maximum: no projection, no alarm.
        let mut unknown = observation(10.0, 100.0, 100.0);
        unknown.max = 0.0;
        assert_eq!(project(&unknown, &timeouts).seconds_to_full, None);
    }

    #[test]
    fn timeouts_are_read_per_name_with_defaults_for_the_rest() {
        let directory = std::env::temp_dir().join(format!("sonde-timeouts-{}", std::process::id()));
        fs::create_dir_all(&directory).expect("temp dir");
        fs::write(directory.join("nf_conntrack_udp_timeout"), "300\n").expect("write");
        fs::write(directory.join("nf_conntrack_icmp_timeout"), "garbage").expect("write");
        let timeouts = Timeouts::read_from(&directory);
        fs::remove_dir_all(&directory).expect("cleanup");
        assert_eq!(timeouts.udp, 300.0);
        assert_eq!(timeouts.icmp, 30.0);
        assert_eq!(timeouts.tcp_time_wait, 120.0);
    }
}
