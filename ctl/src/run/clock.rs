//! The offset between two daemons' clocks (CLOCK_MONOTONIC, the clock of eBPF timestamps).
//!
//! Daemons on one kernel (same boot ID, as in the lab) share the clock: the offset is exactly
//! zero. Otherwise it is estimated NTP-style through this controller: many round trips to each
//! daemon, keeping the fastest, whose midpoint is the best guess of when the daemon read its
//! clock; the error bar is half of each fastest round trip, summed.

use std::time::Instant;

use serde::Serialize;
use sonde_proto::v1 as pb;

use crate::engine::Session;

/// Round trips per daemon.
const SAMPLES: usize = 32;

/// How a server node's clock relates to the client node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockOffset {
    /// Server clock minus client clock, ns.
    pub offset_ns: i64,
    /// The offset is right within this many ns.
    pub error_ns: u64,
    /// "same-kernel" (one clock) or "ntp-style" (estimated).
    pub method: &'static str,
}

impl ClockOffset {
    /// Both sides on one clock.
    pub const SAME_KERNEL: Self = Self {
        offset_ns: 0,
        error_ns: 0,
        method: "same-kernel",
    };
}

/// The fastest of [`SAMPLES`] round trips: (daemon clock minus controller clock, half the round
/// trip), both ns; and the daemon's boot ID.
async fn sample(
    session: &Session,
    agent: &str,
    base: Instant,
) -> crate::Result<(i64, u64, String)> {
    let mut client = session.agent(agent).await?;
    let mut best: Option<(i64, u64)> = None;
    let mut boot_id = String::new();
    for _ in 0..SAMPLES {
        let sent = base.elapsed().as_nanos() as i64;
        let answer =
            tokio::time::timeout(session.timeout(), client.get_clock(pb::GetClockRequest {}))
                .await
                .map_err(|_| {
                    crate::Error::Daemon(format!(
                        "{agent}: GetClock: no answer in {:?}",
                        session.timeout()
                    ))
                })?
                .map_err(|status| {
                    crate::Error::Daemon(format!(
                        "{agent}: GetClock: {}",
                        crate::agent::status_text(&status)
                    ))
                })?
                .into_inner();
        let received = base.elapsed().as_nanos() as i64;
        let half_rtt = ((received - sent) / 2) as u64;
        let offset = answer.monotonic_ns as i64 - (sent + received) / 2;
        if best.is_none_or(|(_, error)| half_rtt < error) {
            best = Some((offset, half_rtt));
        }
        boot_id = answer.boot_id;
    }
    let (offset, error) = best.unwrap_or((0, u64::MAX));
    Ok((offset, error, boot_id))
}

/// The server daemon's clock relative to the client daemon's. `estimate` forces the
/// NTP-style estimate even on one kernel (to check the estimator against a known zero).
pub async fn offset(
    session: &Session,
    client: &str,
    server: &str,
    estimate: bool,
) -> crate::Result<ClockOffset> {
    if client == server && !estimate {
        return Ok(ClockOffset::SAME_KERNEL);
    }
    let base = Instant::now();
    let (client_offset, client_error, client_boot) = sample(session, client, base).await?;
    let (server_offset, server_error, server_boot) = sample(session, server, base).await?;
    if client_boot == server_boot && !client_boot.is_empty() && !estimate {
        return Ok(ClockOffset::SAME_KERNEL);
    }
    Ok(ClockOffset {
        offset_ns: server_offset - client_offset,
        error_ns: client_error + server_error,
        method: "ntp-style",
    })
}
