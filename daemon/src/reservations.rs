//! Reservations of this node, so that measurements never collide on it, whoever starts them.
//!
//! A reservation is a time-bounded grant of the node in a class (pScheduler's): exclusive
//! excludes exclusive and normal of anyone else; normal excludes exclusive; background excludes
//! nothing. The daemon, not the controller, holds them: a controller that vanished holds
//! nothing once its lease runs out. Runs are admitted against them: a run under a reservation
//! of its holder's runs; a run under none is checked against everyone's reservations with its
//! kind's class (runs under no reservation do not exclude one another, as before reservations
//! existed). Every run side's hold of the node is recorded, so that anyone can check afterwards
//! that no two measurements overlapped.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The longest lease a reservation may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(2 * 3600);
/// Run holds kept for `ListReservations`.
const HISTORY: usize = 4096;
/// Reservations held at once, at most (each refusal names the cap).
const MAX_HELD: usize = 1024;

/// How a measurement loads the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Streams, connection storms, fan-in, ramps.
    Exclusive,
    /// Request/response.
    Normal,
    /// Light trace flows.
    Background,
}

impl Class {
    /// Whether this class may not share the node with `other` held by someone else.
    pub fn conflicts_with(self, other: Self) -> bool {
        matches!(
            (self, other),
            (Self::Exclusive, Self::Exclusive | Self::Normal) | (Self::Normal, Self::Exclusive)
        )
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exclusive => "exclusive",
            Self::Normal => "normal",
            Self::Background => "background",
        }
    }
}

/// Who holds a reservation or a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    /// The controller's session.
    pub session: String,
    /// `user@host`.
    pub user: String,
    /// The scenario, if any.
    pub scenario: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = if self.user.is_empty() {
            "an unnamed controller"
        } else {
            &self.user
        };
        write!(f, "{who} (session {}", self.session)?;
        if !self.scenario.is_empty() {
            write!(f, ", scenario {}", self.scenario)?;
        }
        write!(f, ")")
    }
}

/// A reservation held now.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// Its ID.
    pub id: String,
    /// Its holder.
    pub holder: Holder,
    /// Its class.
    pub class: Class,
    /// What for.
    pub purpose: String,
    /// When it was granted, ms since the epoch.
    pub granted_at_unix_ms: u64,
    /// When it ends unless released, ms since the epoch.
    pub expires_at_unix_ms: u64,
    /// The same, on the monotonic clock.
    expires: Instant,
}

/// When one side of a run held the node.
#[derive(Debug, Clone)]
pub struct RunHold {
    /// The run.
    pub run_id: String,
    /// "server" or "client".
    pub side: &'static str,
    /// Under whom.
    pub holder: Holder,
    /// In which class.
    pub class: Class,
    /// The kind's name.
    pub kind: String,
    /// ms since the epoch.
    pub started_at_unix_ms: u64,
    /// 0 while running.
    pub ended_at_unix_ms: u64,
}

/// Why a reservation or a run was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// Someone else holds the node in a conflicting class.
    #[error(
        "this node is held {class} by {holder} for another {remaining:.1} s ({purpose}); {wanted} measurements cannot share it"
    )]
    Conflict {
        /// Who.
        holder: Box<Holder>,
        /// In which class.
        class: &'static str,
        /// What for.
        purpose: String,
        /// For how much longer, s.
        remaining: f64,
        /// The class asked for.
        wanted: &'static str,
    },
    /// A run named a reservation this node does not hold.
    #[error(
        "reservation_id: {id:?} is not held on this node (released, expired, or another node's)"
    )]
    NotHeld {
        /// The ID named.
        id: String,
    },
    /// Too many reservations at once.
    #[error("this node already holds {MAX_HELD} reservations, the most it keeps")]
    TooMany,
}

#[derive(Debug, Default)]
struct State {
    held: Vec<Reservation>,
    /// Run sides running now, by (run, side), with the hold recorded when it started.
    running: Vec<RunHold>,
    /// Ended run sides, most recent last.
    history: VecDeque<RunHold>,
    next_id: u64,
}

impl State {
    fn expire(&mut self) {
        let now = Instant::now();
        self.held.retain(|r| r.expires > now);
    }

    /// The first hold of someone other than `holder` that `class` conflicts with.
    fn conflict(&self, holder: &Holder, class: Class, runs_too: bool) -> Option<Refusal> {
        let now = Instant::now();
        let reserved = self
            .held
            .iter()
            .filter(|r| r.holder.session != holder.session)
            .find(|r| class.conflicts_with(r.class))
            .map(|r| Refusal::Conflict {
                holder: Box::new(r.holder.clone()),
                class: r.class.name(),
                purpose: r.purpose.clone(),
                remaining: r.expires.saturating_duration_since(now).as_secs_f64(),
                wanted: class.name(),
            });
        let running = || {
            self.running
                .iter()
                .filter(|run| run.holder.session != holder.session)
                .find(|run| class.conflicts_with(run.class))
                .map(|run| Refusal::Conflict {
                    holder: Box::new(run.holder.clone()),
                    class: run.class.name(),
                    purpose: format!("{} run {}, running", run.kind, run.run_id),
                    remaining: 0.0,
                    wanted: class.name(),
                })
        };
        reserved.or_else(|| runs_too.then(running).flatten())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// This node's reservations and run holds.
#[derive(Debug, Default)]
pub struct Reservations {
    state: Mutex<State>,
    /// Run sides admitted since start: [server, client].
    runs_served: [AtomicU64; 2],
    /// Reservations and runs refused since start.
    refusals: AtomicU64,
}

/// What `/metrics` says of reservations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Reservations held now.
    pub held: usize,
    /// Server sides admitted since start.
    pub servers_served: u64,
    /// Client sides admitted since start.
    pub clients_served: u64,
    /// Reservations and runs refused since start.
    pub refusals: u64,
}

impl Reservations {
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.expire();
        state
    }

    /// Grants the node to `holder` in `class` for `lease`, unless someone else holds it (or
    /// runs on it) in a conflicting class.
    pub fn reserve(
        &self,
        holder: Holder,
        class: Class,
        lease: Duration,
        purpose: String,
    ) -> Result<Reservation, Refusal> {
        let mut state = self.state();
        let refused = state
            .conflict(&holder, class, true)
            .or_else(|| (state.held.len() >= MAX_HELD).then_some(Refusal::TooMany));
        if let Some(refusal) = refused {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(refusal);
        }
        state.next_id += 1;
        let now = unix_ms();
        let reservation = Reservation {
            id: format!("rsv-{}-{}", std::process::id(), state.next_id),
            holder,
            class,
            purpose,
            granted_at_unix_ms: now,
            expires_at_unix_ms: now + lease.as_millis() as u64,
            expires: Instant::now() + lease,
        };
        tracing::info!(
            reservation = reservation.id,
            holder = %reservation.holder,
            class = class.name(),
            lease_ms = lease.as_millis() as u64,
            "node reserved"
        );
        state.held.push(reservation.clone());
        Ok(reservation)
    }

    /// Ends a reservation; whether it was held.
    pub fn release(&self, id: &str) -> bool {
        let mut state = self.state();
        let before = state.held.len();
        state.held.retain(|r| r.id != id);
        before != state.held.len()
    }

    /// Admits one side of a run: under `reservation_id` (its holder's class), or, with none,
    /// in `class` against everyone's reservations. The returned hold records the side's end
    /// when dropped.
    pub fn admit(
        self: &Arc<Self>,
        run_id: &str,
        side: &'static str,
        kind: &str,
        reservation_id: &str,
        class: Class,
    ) -> Result<HoldGuard, Refusal> {
        let mut state = self.state();
        let (holder, class) = if reservation_id.is_empty() {
            let holder = Holder {
                session: format!("run:{run_id}"),
                ..Holder::default()
            };
            if let Some(refusal) = state.conflict(&holder, class, false) {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return Err(refusal);
            }
            (holder, class)
        } else {
            let Some(held) = state.held.iter().find(|r| r.id == reservation_id) else {
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::NotHeld {
                    id: reservation_id.to_owned(),
                });
            };
            (held.holder.clone(), held.class)
        };
        self.runs_served[usize::from(side == "client")].fetch_add(1, Ordering::Relaxed);
        state.running.push(RunHold {
            run_id: run_id.to_owned(),
            side,
            holder,
            class,
            kind: kind.to_owned(),
            started_at_unix_ms: unix_ms(),
            ended_at_unix_ms: 0,
        });
        Ok(HoldGuard {
            reservations: Arc::clone(self),
            run_id: run_id.to_owned(),
            side,
        })
    }

    fn ended(&self, run_id: &str, side: &str) {
        let mut state = self.state();
        if let Some(index) = state
            .running
            .iter()
            .position(|run| run.run_id == run_id && run.side == side)
        {
            let mut hold = state.running.remove(index);
            hold.ended_at_unix_ms = unix_ms();
            if state.history.len() >= HISTORY {
                state.history.pop_front();
            }
            state.history.push_back(hold);
        }
    }

    /// Counts for `/metrics`.
    pub fn stats(&self) -> Stats {
        Stats {
            held: self.state().held.len(),
            servers_served: self.runs_served[0].load(Ordering::Relaxed),
            clients_served: self.runs_served[1].load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }

    /// Reservations held now, and recent run holds (ended, then running).
    pub fn list(&self) -> (Vec<Reservation>, Vec<RunHold>) {
        let state = self.state();
        let runs = state
            .history
            .iter()
            .chain(&state.running)
            .cloned()
            .collect();
        (state.held.clone(), runs)
    }
}

/// One run side's hold of the node: recorded as ended when dropped.
#[derive(Debug)]
pub struct HoldGuard {
    reservations: Arc<Reservations>,
    run_id: String,
    side: &'static str,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.reservations.ended(&self.run_id, self.side);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(session: &str) -> Holder {
        Holder {
            session: session.into(),
            user: "test@here".into(),
            scenario: "s".into(),
        }
    }

    #[test]
    fn classes_conflict_across_holders_only() {
        let node = Arc::new(Reservations::default());
        let lease = Duration::from_secs(60);
        let a = node
            .reserve(holder("a"), Class::Exclusive, lease, "stream".into())
            .expect("first");
        // The same holder may hold more; others may not, but for background.
        node.reserve(holder("a"), Class::Normal, lease, "rr".into())
            .expect("same holder");
        let refused = node
            .reserve(holder("b"), Class::Normal, lease, "rr".into())
            .expect_err("b normal");
        let text = refused.to_string();
        assert!(
            text.contains("held exclusive by test@here (session a, scenario s)"),
            "{text}"
        );
        node.reserve(holder("b"), Class::Background, lease, "trace".into())
            .expect("background");
        // A run under no reservation is checked with its kind's class.
        assert!(
            node.admit("r1", "server", "tcp-stream", "", Class::Exclusive)
                .is_err()
        );
        let guard = node
            .admit("r2", "server", "tcp-stream", &a.id, Class::Exclusive)
            .expect("under a's reservation");
        assert!(matches!(
            node.admit("r3", "client", "tcp-rr", "rsv-none", Class::Normal),
            Err(Refusal::NotHeld { .. })
        ));
        assert!(node.release(&a.id));
        assert!(!node.release(&a.id));
        // a's second (normal) reservation is still there, and a's exclusive run still runs.
        assert!(
            node.reserve(holder("b"), Class::Normal, lease, "rr".into())
                .is_err()
        );
        drop(guard);
        // With the run over, b's exclusive is refused (a's normal), normal is not.
        assert!(
            node.reserve(holder("b"), Class::Exclusive, lease, "x".into())
                .is_err()
        );
        node.reserve(holder("b"), Class::Normal, lease, "rr".into())
            .expect("normal beside normal");
        let (_, runs) = node.list();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].holder.session, "a");
        assert!(runs[0].ended_at_unix_ms >= runs[0].started_at_unix_ms);
    }

    #[test]
    fn a_reservation_ends_with_its_lease_and_a_running_run_blocks_a_reservation() {
        let node = Arc::new(Reservations::default());
        node.reserve(
            holder("a"),
            Class::Exclusive,
            Duration::from_millis(50),
            "x".into(),
        )
        .expect("a");
        std::thread::sleep(Duration::from_millis(80));
        let b = node
            .reserve(
                holder("b"),
                Class::Exclusive,
                Duration::from_secs(60),
                "y".into(),
            )
            .expect("a's lease ran out");
        node.release(&b.id);
        // An exclusive run under no reservation keeps others from reserving while it runs.
        let run = node
            .admit("r1", "client", "tcp-stream", "", Class::Exclusive)
            .expect("admitted");
        let refused = node
            .reserve(
                holder("c"),
                Class::Normal,
                Duration::from_secs(1),
                "z".into(),
            )
            .expect_err("run holds the node");
        assert!(
            refused.to_string().contains("tcp-stream run r1, running"),
            "{refused}"
        );
        drop(run);
        node.reserve(
            holder("c"),
            Class::Normal,
            Duration::from_secs(1),
            "z".into(),
        )
        .expect("run ended");
    }
}
