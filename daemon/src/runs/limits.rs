//! What one daemon lets its callers do, whoever they are: at most so many runs at once, none
//! longer than so long, so many bytes and connections a minute ([`super::budget`]). A daemon
//! runs on every node; these caps bound what any caller can make it send, and each refusal
//! names the cap it hit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Runs held at once (a run's server and client sides on this node count once).
    pub max_runs: usize,
    /// The longest run (warm-up plus measured part).
    pub longest: Duration,
    /// Payload bytes generated over the network per minute, if capped.
    pub bytes_per_minute: Option<u64>,
    /// Connections opened per minute, if capped.
    pub connections_per_minute: Option<u64>,
}

impl Default for Limits {
    /// 16 runs, 70 minutes: as much as a scenario round or a long soak needs, bounded; no
    /// budget (sonded's flags set one).
    fn default() -> Self {
        Self {
            max_runs: 16,
            longest: Duration::from_secs(70 * 60),
            bytes_per_minute: None,
            connections_per_minute: None,
        }
    }
}

/// A run refused by a cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// As many runs as allowed are held already.
    #[error(
        "this daemon holds {running} runs, its most at once (--max-runs {max}): try again when one ends"
    )]
    TooMany {
        /// Runs held now.
        running: usize,
        /// The cap.
        max: usize,
    },
    /// The run asks for longer than allowed.
    #[error(
        "a run of {asked_s} s (warm-up and duration) is longer than this daemon allows (--max-run-seconds {max_s})"
    )]
    TooLong {
        /// What the run asks for, s.
        asked_s: u64,
        /// The cap, s.
        max_s: u64,
    },
    /// A bucket of generated load is dry.
    #[error(transparent)]
    Spent(#[from] super::budget::Spent),
}

/// The runs admitted on a daemon, by ID, with how many of their sides it holds.
#[derive(Debug, Default)]
pub struct Admissions {
    limits: Limits,
    held: Arc<Mutex<HashMap<String, usize>>>,
    budget: Arc<super::budget::Budget>,
}

impl Admissions {
    /// Admissions under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            held: Arc::default(),
            budget: Arc::new(super::budget::Budget::new(
                limits.bytes_per_minute,
                limits.connections_per_minute,
            )),
        }
    }

    /// The buckets of generated load client sides pay from.
    pub fn budget(&self) -> &Arc<super::budget::Budget> {
        &self.budget
    }

    /// The caps.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a side of `run_id` lasting `total`, or says which cap refuses it. Another side
    /// of a run already held takes no new place.
    pub fn admit(&self, run_id: &str, total: Duration) -> Result<Admission, Refusal> {
        if total > self.limits.longest {
            return Err(Refusal::TooLong {
                asked_s: total.as_secs_f64().ceil() as u64,
                max_s: self.limits.longest.as_secs(),
            });
        }
        let mut held = self.held();
        if !held.contains_key(run_id) && held.len() >= self.limits.max_runs {
            return Err(Refusal::TooMany {
                running: held.len(),
                max: self.limits.max_runs,
            });
        }
        *held.entry(run_id.to_owned()).or_default() += 1;
        Ok(Admission {
            held: Arc::clone(&self.held),
            run_id: run_id.to_owned(),
        })
    }

    /// Runs held now.
    pub fn running(&self) -> usize {
        self.held().len()
    }
}

/// A side's place among the admitted runs, given back when dropped.
#[derive(Debug)]
pub struct Admission {
    held: Arc<Mutex<HashMap<String, usize>>>,
    run_id: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sides) = held.get_mut(&self.run_id) {
            *sides = sides.saturating_sub(1);
            if *sides == 0 {
                held.remove(&self.run_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_beyond_the_cap_are_refused_and_places_come_back_when_sides_end() {
        let admissions = Admissions::new(Limits {
            max_runs: 2,
            longest: Duration::from_secs(60),
            ..Limits::default()
        });
        let a_server = admissions
            .admit("a", Duration::from_secs(10))
            .expect("first");
        // The same run's client side takes no second place.
        let a_client = admissions
            .admit("a", Duration::from_secs(10))
            .expect("same run");
        let b = admissions
            .admit("b", Duration::from_secs(10))
            .expect("second");
        let refused = admissions
            .admit("c", Duration::from_secs(10))
            .expect_err("a third run");
        assert_eq!(refused, Refusal::TooMany { running: 2, max: 2 });
        assert!(refused.to_string().contains("--max-runs 2"), "{refused}");
        drop(a_server);
        assert_eq!(admissions.running(), 2, "a's client side still holds it");
        drop(a_client);
        let _c = admissions
            .admit("c", Duration::from_secs(10))
            .expect("a place came back");
        drop(b);
        assert_eq!(admissions.running(), 1);
        let long = admissions
            .admit("d", Duration::from_secs(61))
            .expect_err("too long");
        assert!(long.to_string().contains("--max-run-seconds 60"), "{long}");
    }
}
