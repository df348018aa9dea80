//! What the stage programs cost: their run counts and the kernel's statistics, and the
//! difference over a run.

/// What a program cost: its own run count, and the kernel's BPF statistics over the windows
/// they were on (see `stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCost {
    /// The program's name.
    pub name: &'static str,
    /// Times it ran.
    pub invocations: u64,
    /// Runs the kernel's statistics timed.
    pub timed_invocations: u64,
    /// Total time of the timed runs, ns.
    pub run_time_ns: u64,
}

/// The costs in `now` minus those in `before`, for programs that ran in between.
pub fn since(now: &[ProgramCost], before: &[ProgramCost]) -> Vec<ProgramCost> {
    now.iter()
        .map(|cost| {
            let base = before.iter().find(|b| b.name == cost.name);
            ProgramCost {
                name: cost.name,
                invocations: cost
                    .invocations
                    .saturating_sub(base.map_or(0, |b| b.invocations)),
                timed_invocations: cost
                    .timed_invocations
                    .saturating_sub(base.map_or(0, |b| b.timed_invocations)),
                run_time_ns: cost
                    .run_time_ns
                    .saturating_sub(base.map_or(0, |b| b.run_time_ns)),
            }
        })
        .filter(|cost| cost.invocations > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_since_a_baseline_keep_only_programs_that_ran() {
        let cost = |name, invocations, run_time_ns| ProgramCost {
            name,
            invocations,
            timed_invocations: invocations / 10,
            run_time_ns,
        };
        let before = [cost("a", 10, 1000), cost("b", 5, 500)];
        let now = [cost("a", 30, 3000), cost("b", 5, 500), cost("c", 20, 90)];
        assert_eq!(
            since(&now, &before),
            vec![cost("a", 20, 2000), cost("c", 20, 90)]
        );
    }
}
