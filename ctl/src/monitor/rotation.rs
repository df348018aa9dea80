//! Which pairs a monitor's round measures: each node by exactly K peers, on a ring of the
//! nodes that turns every round, so that every ordered pair is measured within
//! ceil((n-1)/K) rounds while each round costs n·K measurements, not n(n-1).
//!
//! Nodes sit on a ring in the order of a hash of their names (the same ring in every
//! sondectl). In round r, node `ring[i]` is measured from the nodes at ring distances
//! `1 + ((r·K + j) mod (n-1))`, j in 0..K: K distinct distances, and consecutive rounds take
//! the next K, so any ceil((n-1)/K) consecutive rounds take every distance from 1 to n-1. The
//! round number comes from the wall clock (`unix time / period`), so a restarted monitor goes
//! on where it was.

/// The ring distances round `round` uses, for `n` nodes and `k` peers (k < n).
pub fn offsets(n: usize, k: usize, round: u64) -> Vec<usize> {
    if n < 2 {
        return Vec::new();
    }
    let span = (n - 1) as u64;
    let k = k.min(n - 1);
    (0..k as u64)
        .map(|j| 1 + ((round.wrapping_mul(k as u64) + j) % span) as usize)
        .collect()
}

/// Round `round`'s ordered pairs `(client, server)` as ring positions mapped through `ring`
/// (ring position to node index).
pub fn pairs(ring: &[usize], k: usize, round: u64) -> Vec<(usize, usize)> {
    let n = ring.len();
    offsets(n, k, round)
        .into_iter()
        .flat_map(|d| (0..n).map(move |i| (ring[(i + d) % n], ring[i])))
        .collect()
}

/// Rounds until every ordered pair has been measured.
pub fn rotation(n: usize, k: usize) -> usize {
    if n < 2 || k == 0 {
        return 0;
    }
    (n - 1).div_ceil(k.min(n - 1))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn each_round_measures_each_node_from_exactly_k_peers() {
        for (n, k) in [(12, 2), (7, 3), (5, 4), (2, 1), (30, 10)] {
            let ring: Vec<usize> = (0..n).rev().collect();
            for round in [0, 1, 5, 1_000_003] {
                let pairs = pairs(&ring, k, round);
                assert_eq!(pairs.len(), n * k);
                for node in 0..n {
                    let from: HashSet<usize> = pairs
                        .iter()
                        .filter(|(_, to)| *to == node)
                        .map(|(from, _)| *from)
                        .collect();
                    assert_eq!(from.len(), k, "n={n} k={k} round={round}");
                    assert!(!from.contains(&node));
                }
            }
        }
    }

    #[test]
    fn any_rotation_of_consecutive_rounds_covers_every_ordered_pair() {
        for (n, k) in [(12, 2), (7, 3), (10, 1), (9, 8)] {
            let ring: Vec<usize> = (0..n).collect();
            let rounds = rotation(n, k);
            for start in [0_u64, 3, 1_734_567] {
                let covered: HashSet<(usize, usize)> = (start..start + rounds as u64)
                    .flat_map(|round| pairs(&ring, k, round))
                    .collect();
                assert_eq!(covered.len(), n * (n - 1), "n={n} k={k} from {start}");
            }
        }
        assert_eq!(rotation(12, 2), 6);
    }
}
