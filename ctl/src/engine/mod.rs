//! The run engine: what every measuring command stands on. A [`Session`] owns the daemon
//! connections, the clock offsets between nodes and the runs in flight; it executes
//! [`Plan`]s, one or many at once, and stops them all when cancelled. Commands only build
//! plans (`run`, `trace`, `conntrack ramp`, scenarios) and render what comes back.
//!
//! # Layout
//! - [`session`]: the session itself.
//! - [`reserve`]: reserving a measurement's nodes on their daemons, waiting for others.

pub mod reserve;
pub mod session;

use std::time::{SystemTime, UNIX_EPOCH};

use sonde_proto::v1 as pb;

pub use self::session::Session;
use crate::run::{
    execute::{self, Plan},
    report::{self, EndReport, RunReport, SpecReport},
    sizes,
};

impl Session {
    /// Runs every size and repetition of `plan` one after the other and returns the report,
    /// complete or not: a failed measurement is kept with its errors, and a cancelled session
    /// keeps what was measured before it stopped.
    pub async fn run(&self, plan: &Plan) -> RunReport {
        let servers: Vec<&str> = plan
            .destination
            .servers
            .iter()
            .map(|s| s.agent.as_str())
            .collect();
        let mut report = RunReport {
            schema: report::SCHEMA,
            sonde_version: env!("CARGO_PKG_VERSION"),
            started_at_unix_seconds: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            kind: plan.kind.name.to_owned(),
            from: EndReport {
                endpoint: plan.from.clone(),
                places: vec![plan.source.clone()],
                ip: plan.source.ip.map(|ip| ip.to_string()),
                kernels: self.kernels(&[plan.source.agent.as_str()]).await,
            },
            to: EndReport {
                endpoint: plan.to.clone(),
                places: plan.destination.servers.clone(),
                ip: Some(plan.destination.ip.to_string()),
                kernels: self.kernels(&servers).await,
            },
            path: plan.path,
            spec: SpecReport {
                duration_seconds: plan.duration.as_secs_f64(),
                warmup_seconds: plan.warmup.as_secs_f64(),
                parallel: plan.parallel,
                rate: plan.rate,
                direction: direction_name(plan.direction).to_owned(),
                plain_io: plan.plain_io,
                repetitions: plan.repetitions,
                sizes_bytes: plan.sizes.iter().map(|(size, _)| *size).collect(),
                dns_name: Some(plan.dns_name.clone()).filter(|name| !name.is_empty()),
                dns_types: if plan.kind.kind == sonde_proto::v1::RunKind::Dns {
                    plan.dns_types.clone()
                } else {
                    Vec::new()
                },
            },
            measurements: Vec::new(),
            complete: false,
            errors: Vec::new(),
            waited_seconds: 0.0,
            waits: Vec::new(),
        };
        'sizes: for size_index in 0..plan.sizes.len() {
            for repetition in 1..=plan.repetitions {
                match execute::measure(plan, self, size_index, repetition).await {
                    Some(measured) => {
                        report.waited_seconds += measured.waited.as_secs_f64();
                        for wait in measured.waits {
                            if !report.waits.contains(&wait) {
                                report.waits.push(wait);
                            }
                        }
                        report.measurements.push(measured.measurement);
                    }
                    None => break 'sizes,
                }
            }
        }
        let cancelled = self.is_cancelled();
        if cancelled {
            report
                .errors
                .push("cancelled (Ctrl-C): both sides were stopped".to_owned());
        }
        for m in &report.measurements {
            report.errors.extend(
                m.errors
                    .iter()
                    .map(|e| format!("{} #{}: {e}", sizes::human(m.size_bytes), m.repetition)),
            );
        }
        let planned = plan.sizes.len() * plan.repetitions as usize;
        report.complete = !cancelled
            && report.measurements.len() == planned
            && report.measurements.iter().all(|m| m.complete);
        report
    }
}

/// The name a direction has in reports and on the command line.
pub fn direction_name(direction: pb::Direction) -> &'static str {
    match direction {
        pb::Direction::ClientToServer => "forward",
        pb::Direction::ServerToClient => "reverse",
        pb::Direction::Both => "both",
    }
}

/// Cancels `session` on Ctrl-C (SIGINT) or SIGTERM (a pod being stopped), so that its runs
/// stop on every daemon before the process goes; the returned task ends with the process.
pub fn cancel_on_ctrl_c(session: &std::sync::Arc<Session>) -> tokio::task::JoinHandle<()> {
    let session = std::sync::Arc::clone(session);
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                if interrupted.is_err() {
                    return;
                }
            }
            () = terminate => {}
        }
        session.cancel().await;
    })
}
