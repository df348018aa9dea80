//! Values kept per run from a server side's prepare to its finish (the conntrack sample taken
//! at prepare), bounded: a side whose lease ran out is never finished, so past the bound the
//! oldest entries are forgotten one at a time, and every other run keeps its own.

use std::collections::{HashMap, VecDeque};

/// Per-run values, at most `bound` of them, the oldest forgotten first.
#[derive(Debug)]
pub struct Pending<T> {
    values: HashMap<String, T>,
    /// Run IDs in insertion order; some may have been taken already.
    order: VecDeque<String>,
    bound: usize,
}

impl<T> Pending<T> {
    /// Holds at most `bound` values (at least one).
    pub fn new(bound: usize) -> Self {
        Self {
            values: HashMap::new(),
            order: VecDeque::new(),
            bound: bound.max(1),
        }
    }

    /// Keeps `value` for `run_id`, forgetting the oldest run's if the bound is reached.
    pub fn insert(&mut self, run_id: String, value: T) {
        if self.values.insert(run_id.clone(), value).is_none() {
            self.order.push_back(run_id);
        }
        while self.values.len() > self.bound {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.values.remove(&oldest);
                }
                None => break,
            }
        }
        // Taken runs leave their IDs in the order: sweep them before it doubles.
        if self.order.len() > 2 * self.bound {
            let values = &self.values;
            self.order.retain(|id| values.contains_key(id));
        }
    }

    /// The value kept for `run_id`, removed.
    pub fn take(&mut self, run_id: &str) -> Option<T> {
        self.values.remove(run_id)
    }

    /// How many runs have a value.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no run has a value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_only_the_oldest_are_forgotten() {
        let mut pending = Pending::new(4096);
        for i in 0..5000 {
            pending.insert(format!("run-{i}"), i);
        }
        assert_eq!(pending.len(), 4096);
        // The 904 oldest are gone; every later run keeps its sample.
        assert_eq!(pending.take("run-903"), None);
        assert_eq!(pending.take("run-904"), Some(904));
        assert_eq!(pending.take("run-4999"), Some(4999));
    }

    #[test]
    fn taken_runs_free_their_place_and_the_order_stays_bounded() {
        let mut pending = Pending::new(4);
        for i in 0..1000 {
            pending.insert(format!("run-{i}"), i);
            if i % 2 == 0 {
                assert_eq!(pending.take(&format!("run-{i}")), Some(i));
            }
        }
        assert!(pending.order.len() <= 8, "{}", pending.order.len());
        assert_eq!(pending.take("run-999"), Some(999));
        assert_eq!(pending.take("run-993"), Some(993));
        assert!(pending.len() <= 4);
    }

    #[test]
    fn inserting_a_run_again_replaces_its_value() {
        let mut pending = Pending::new(2);
        pending.insert("a".into(), 1);
        pending.insert("a".into(), 2);
        pending.insert("b".into(), 3);
        assert_eq!(pending.take("a"), Some(2));
        assert_eq!(pending.take("b"), Some(3));
    }
}
