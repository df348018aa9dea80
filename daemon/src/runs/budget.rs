//! Token buckets of the load a daemon generates: bytes and connections per minute, whoever
//! asks. A bucket holds one minute's worth and refills continuously; a client side is
//! refused while a bucket is empty, and a side that empties one while it runs is stopped,
//! keeping what it measured and saying why.

use std::{sync::Mutex, time::Instant};

/// What one bucket bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Payload bytes moved over the network (sent plus received).
    Bytes,
    /// Connections opened.
    Connections,
}

impl Resource {
    /// The flag that sets its cap.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Bytes => "--max-bytes-per-minute",
            Self::Connections => "--max-connections-per-minute",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Bytes => "bytes",
            Self::Connections => "connections",
        }
    }
}

/// A bucket ran dry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this daemon has generated its most {} for now ({} {per_minute}): its budget refills in {refill_s} s",
    .resource.noun(),
    .resource.flag()
)]
pub struct Spent {
    /// Which bucket.
    pub resource: Resource,
    /// Its cap.
    pub per_minute: u64,
    /// Seconds until it holds a tenth of a minute's worth again.
    pub refill_s: u64,
}

#[derive(Debug)]
struct Bucket {
    resource: Resource,
    per_minute: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(resource: Resource, per_minute: u64) -> Self {
        Self {
            resource,
            per_minute,
            tokens: per_minute as f64,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let per_minute = self.per_minute as f64;
        self.tokens = (self.tokens + elapsed * per_minute / 60.0).min(per_minute);
        self.at = now;
    }

    fn spent(&self) -> Spent {
        // Admission wants more than crumbs: a tenth of a minute's worth.
        let wanted = self.per_minute as f64 / 10.0 - self.tokens;
        let refill = (wanted.max(0.0) * 60.0 / self.per_minute as f64).ceil();
        Spent {
            resource: self.resource,
            per_minute: self.per_minute,
            refill_s: refill as u64,
        }
    }
}

/// The daemon's buckets (a cap of `None` is no bucket).
#[derive(Debug, Default)]
pub struct Budget {
    buckets: Mutex<Vec<Bucket>>,
}

impl Budget {
    /// Buckets of `bytes` and `connections` per minute, full.
    pub fn new(bytes: Option<u64>, connections: Option<u64>) -> Self {
        let buckets = [
            (Resource::Bytes, bytes),
            (Resource::Connections, connections),
        ]
        .into_iter()
        .filter_map(|(resource, cap)| cap.map(|cap| Bucket::new(resource, cap.max(1))))
        .collect();
        Self {
            buckets: Mutex::new(buckets),
        }
    }

    fn with<T>(&self, act: impl FnOnce(&mut [Bucket]) -> T) -> T {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        for bucket in buckets.iter_mut() {
            bucket.refill(now);
        }
        act(&mut buckets)
    }

    /// Admits a client side opening `connections` at its start: refused while a bucket holds
    /// less than a tenth of a minute's worth, or cannot pay for those connections.
    pub fn admit(&self, connections: u64) -> Result<(), Spent> {
        self.with(|buckets| {
            for bucket in buckets.iter() {
                let needed = match bucket.resource {
                    Resource::Bytes => 0.0,
                    Resource::Connections => connections as f64,
                };
                if bucket.tokens < bucket.per_minute as f64 / 10.0 || bucket.tokens < needed {
                    return Err(bucket.spent());
                }
            }
            for bucket in buckets.iter_mut() {
                if bucket.resource == Resource::Connections {
                    bucket.tokens -= connections as f64;
                }
            }
            Ok(())
        })
    }

    /// Pays for what a running side moved: the bucket that went dry, if one did.
    pub fn charge(&self, bytes: u64, connections: u64) -> Result<(), Spent> {
        self.with(|buckets| {
            let mut dry = None;
            for bucket in buckets.iter_mut() {
                bucket.tokens -= match bucket.resource {
                    Resource::Bytes => bytes as f64,
                    Resource::Connections => connections as f64,
                };
                if bucket.tokens <= 0.0 && dry.is_none() {
                    dry = Some(bucket.spent());
                }
            }
            dry.map_or(Ok(()), Err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_side_is_refused_once_a_minutes_bytes_are_spent_and_admitted_after_the_refill() {
        let budget = Budget::new(Some(6_000), None);
        budget.admit(1).expect("a full bucket");
        budget.charge(5_000, 1).expect("within the minute's worth");
        let spent = budget
            .charge(1_500, 0)
            .expect_err("over the minute's worth");
        assert_eq!(spent.resource, Resource::Bytes);
        assert!(spent.refill_s >= 6, "{spent}");
        let refused = budget.admit(1).expect_err("dry");
        assert!(
            refused
                .to_string()
                .contains("its most bytes for now (--max-bytes-per-minute 6000)"),
            "{refused}"
        );
        // 100 a second: back from -500 to a tenth of a minute's worth (600) in 11 s.
        assert!((10..=12).contains(&refused.refill_s), "{refused}");
    }

    #[test]
    fn connections_are_paid_for_at_admission_and_as_they_open() {
        let budget = Budget::new(None, Some(100));
        budget.admit(50).expect("half");
        let refused = budget.admit(60).expect_err("more than what is left");
        assert_eq!(refused.resource, Resource::Connections);
        assert!(
            refused
                .to_string()
                .contains("--max-connections-per-minute 100"),
            "{refused}"
        );
        budget.admit(40).expect("what is left, but for a tenth");
        budget.charge(1_000_000, 0).expect("bytes are not capped");
        assert!(budget.charge(0, 11).is_err(), "the eleventh connection");
    }

    #[test]
    fn no_caps_no_refusals() {
        let budget = Budget::new(None, None);
        budget.admit(1_000_000).expect("admitted");
        budget.charge(u64::MAX / 2, u64::MAX / 2).expect("charged");
    }
}
