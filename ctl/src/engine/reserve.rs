//! Reserving the nodes of a measurement before it starts, so that it never lands on a node
//! another controller is measuring: every daemon of the measurement is asked in one canonical
//! order (by address); a refusal releases what was taken, and the measurement waits, with
//! backoff and jitter, and says for whom. A daemon without reservations (an older sonded) is
//! measured without one.

use std::time::{Duration, Instant};

use sonde_proto::v1 as pb;
use tonic::Code;

use super::Session;
use crate::scenario::spec::Class;

/// Nodes held for one measurement.
#[derive(Debug, Default)]
pub struct Reserved {
    /// Reservation ID by daemon address (absent for a daemon that has no reservations).
    pub ids: Vec<(String, String)>,
    /// How long it waited for them.
    pub waited: Duration,
    /// Whom it waited for: each distinct refusal, in order.
    pub waits: Vec<String>,
}

impl Reserved {
    /// The reservation held on the daemon at `agent` ("" for none).
    pub fn id_at(&self, agent: &str) -> String {
        self.ids
            .iter()
            .find(|(addr, _)| addr == agent)
            .map(|(_, id)| id.clone())
            .unwrap_or_default()
    }
}

/// Why a measurement could not have its nodes.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// Still refused after the longest wait.
    #[error("waited {waited:.0?} for a node held by someone else: {why}")]
    Refused {
        /// The last refusal.
        why: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The session was cancelled while waiting.
    #[error("cancelled while waiting for its nodes")]
    Cancelled,
    /// A daemon could not be asked.
    #[error("reserving {agent}: {reason}")]
    Daemon {
        /// The daemon.
        agent: String,
        /// What failed.
        reason: String,
    },
}

fn class_message(class: Class) -> pb::ReservationClass {
    match class {
        Class::Exclusive => pb::ReservationClass::Exclusive,
        Class::Normal => pb::ReservationClass::Normal,
        Class::Background => pb::ReservationClass::Background,
    }
}

impl Session {
    /// Reserves every daemon of `agents` in `class` for `lease`, waiting while another
    /// controller holds one of them (at most the session's longest wait).
    pub async fn reserve(
        &self,
        agents: &[String],
        class: Class,
        lease: Duration,
        purpose: &str,
    ) -> Result<Reserved, ReserveError> {
        let mut agents: Vec<&String> = agents.iter().collect();
        agents.sort();
        agents.dedup();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut reserved = Reserved::default();
        loop {
            if self.is_cancelled() {
                return Err(ReserveError::Cancelled);
            }
            let mut refused = None;
            // Every daemon that cannot be asked is named, not only the first.
            let mut broken = Vec::new();
            for &agent in &agents {
                match self.reserve_one(agent, class, lease, purpose).await {
                    Ok(Some(id)) => reserved.ids.push((agent.clone(), id)),
                    Ok(None) => {}
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        refused = Some(format!("{agent}: {}", status.message()));
                        break;
                    }
                    Err(status) => broken.push((agent, crate::agent::status_text(&status))),
                }
            }
            if !broken.is_empty() {
                self.release(&reserved).await;
                let agent = broken
                    .iter()
                    .map(|(agent, _)| agent.as_str())
                    .collect::<Vec<_>>();
                let reason = broken
                    .iter()
                    .map(|(_, reason)| reason.as_str())
                    .collect::<Vec<_>>();
                return Err(ReserveError::Daemon {
                    agent: agent.join(", "),
                    reason: reason.join("; "),
                });
            }
            let Some(why) = refused else {
                reserved.waited = started.elapsed();
                return Ok(reserved);
            };
            self.release(&reserved).await;
            reserved.ids.clear();
            // The holder's words without the time left, so one holder is one line.
            let holder_part = why.split(" for another ").next().unwrap_or(&why).to_owned();
            if !reserved.waits.iter().any(|w| w.starts_with(&holder_part)) {
                eprintln!("sondectl: waiting for a node: {why}");
                reserved.waits.push(why.clone());
            }
            if started.elapsed() >= self.max_wait() {
                return Err(ReserveError::Refused {
                    why,
                    waited: started.elapsed(),
                });
            }
            // Jitter: controllers refused together do not all come back together.
            let pause = backoff.mul_f64(0.5 + fastrand::f64());
            let cancellation = self.cancellation();
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancellation.cancelled() => return Err(ReserveError::Cancelled),
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One daemon's reservation: its ID, `None` when the daemon has no reservations.
    async fn reserve_one(
        &self,
        agent: &str,
        class: Class,
        lease: Duration,
        purpose: &str,
    ) -> Result<Option<String>, tonic::Status> {
        let mut client = self
            .agent(agent)
            .await
            .map_err(|err| tonic::Status::unavailable(crate::error::chain(&err)))?;
        let request = pb::ReserveRequest {
            holder: Some(self.holder()),
            class: class_message(class) as i32,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            purpose: purpose.chars().take(256).collect(),
        };
        match tokio::time::timeout(self.timeout(), client.reserve(request)).await {
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer in {:?}",
                self.timeout()
            ))),
            Ok(Ok(answer)) => Ok(Some(answer.into_inner().reservation_id)),
            Ok(Err(status)) if status.code() == Code::Unimplemented => Ok(None),
            Ok(Err(status)) => Err(status),
        }
    }

    /// Lets go of what `reserved` holds (best effort: a daemon that is gone lets go when the
    /// lease runs out).
    pub async fn release(&self, reserved: &Reserved) {
        for (agent, id) in &reserved.ids {
            if let Ok(mut client) = self.agent(agent).await {
                let _ = tokio::time::timeout(
                    self.timeout(),
                    client.release(pb::ReleaseRequest {
                        reservation_id: id.clone(),
                    }),
                )
                .await;
            }
        }
    }
}
