//! Comparing two sets of results, metric by metric, as a regression gate can trust: the
//! relative change of the median with a bootstrap confidence interval, a Mann-Whitney U test
//! across repetitions, and a verdict that says *same*, *improved*, *regressed*, or *unknown*
//! (and roughly how many more repetitions would decide) rather than reading noise as a
//! change.
//!
//! A metric is *different* only when the test rejects "no change" at `alpha` **and** the
//! median moved by more than the noise threshold; it is *same* when the interval lies within
//! the threshold, or when the change is real but below it. So with no change the share of
//! metrics called different is at most `alpha`. Below the repetitions the test needs to reach
//! `alpha` at all (four a side at 0.05) every verdict is *unknown*, with how many more it
//! takes: an interval of two or three values says nothing either way.

use serde::Serialize;
use statrs::stats_tests::{
    Alternative,
    mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu},
};

use super::samples::{Better, Samples, Series};

/// How a comparison decides.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Settings {
    /// Relative change of the median below which a difference is noise, not a regression
    /// (0.05: 5%).
    pub threshold: f64,
    /// The test's significance level.
    pub alpha: f64,
    /// Bootstrap resamples for the interval.
    pub resamples: usize,
    /// Seed of the resampling, so that a comparison gives the same interval every time.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold: 0.05,
            alpha: 0.05,
            resamples: 2000,
            seed: 0x50_4e_44_45,
        }
    }
}

/// What a comparison concluded about one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No change beyond the threshold.
    Same,
    /// Changed beyond the threshold, for the better.
    Improved,
    /// Changed beyond the threshold, for the worse.
    Regressed,
    /// Too few or too noisy samples to say either.
    Unknown,
}

impl Verdict {
    /// As tables print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Improved => "improved",
            Self::Regressed => "REGRESSED",
            Self::Unknown => "unknown",
        }
    }
}

/// One metric of one measurement, compared.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The measurement (test, path, pair, size).
    pub measurement: String,
    /// The metric.
    pub metric: String,
    /// Which way is better.
    pub better: Better,
    /// Baseline repetitions and their median.
    pub baseline_samples: usize,
    /// Median of the baseline.
    pub baseline_median: f64,
    /// Current repetitions.
    pub current_samples: usize,
    /// Median of the current.
    pub current_median: f64,
    /// (current - baseline) / baseline of the medians.
    pub change: f64,
    /// 95% bootstrap interval of `change`.
    pub change_interval: [f64; 2],
    /// Mann-Whitney U p-value (two-sided).
    pub p_value: f64,
    /// The conclusion.
    pub verdict: Verdict,
    /// For *unknown*: about how many more repetitions of each side would likely decide
    /// (absent when the change sits on the threshold, where no count will).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub more_repetitions: Option<usize>,
}

/// A whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// How it decided.
    pub settings: Settings,
    /// Every matched metric, by measurement.
    pub rows: Vec<Row>,
    /// Measurements or metrics only the baseline has.
    pub only_in_baseline: Vec<String>,
    /// Measurements or metrics only the current has.
    pub only_in_current: Vec<String>,
}

impl Comparison {
    /// Compares every metric the two sides share.
    pub fn of(baseline: &Samples, current: &Samples, settings: Settings) -> Self {
        let mut rng = fastrand::Rng::with_seed(settings.seed);
        let mut rows = Vec::new();
        let mut only_in_baseline = Vec::new();
        for (slot, base) in &baseline.series {
            match current.series.get(slot) {
                Some(now) => {
                    if let Some(row) = compare(&slot.0, &slot.1, base, now, &settings, &mut rng) {
                        rows.push(row);
                    }
                }
                None => only_in_baseline.push(format!("{}: {}", slot.0, slot.1)),
            }
        }
        let only_in_current = current
            .series
            .keys()
            .filter(|slot| !baseline.series.contains_key(*slot))
            .map(|slot| format!("{}: {}", slot.0, slot.1))
            .collect();
        Self {
            settings,
            rows,
            only_in_baseline,
            only_in_current,
        }
    }

    /// Whether any metric regressed beyond the threshold (the gate's exit code 1).
    pub fn regressed(&self) -> bool {
        self.rows
            .iter()
            .any(|row| row.verdict == Verdict::Regressed)
    }
}

/// The median of `values` (not empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The percentile bootstrap interval of the relative change of the median, at `1 - alpha`.
pub fn bootstrap_interval(
    baseline: &[f64],
    current: &[f64],
    alpha: f64,
    resamples: usize,
    rng: &mut fastrand::Rng,
) -> [f64; 2] {
    let mut resample = |values: &[f64], into: &mut Vec<f64>| {
        into.clear();
        into.extend((0..values.len()).map(|_| values[rng.usize(..values.len())]));
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut changes: Vec<f64> = (0..resamples.max(1))
        .filter_map(|_| {
            resample(baseline, &mut a);
            resample(current, &mut b);
            let base = median(&a);
            (base != 0.0).then(|| median(&b) / base - 1.0)
        })
        .collect();
    if changes.is_empty() {
        return [f64::NAN, f64::NAN];
    }
    changes.sort_by(f64::total_cmp);
    let at = |q: f64| changes[((changes.len() - 1) as f64 * q).round() as usize];
    [at(alpha / 2.0), at(1.0 - alpha / 2.0)]
}

/// The two-sided Mann-Whitney U p-value, by the normal approximation with continuity and
/// tie corrections (as scipy's `method="asymptotic"`); 1 when it cannot be computed.
///
/// Not the exact distribution: statrs 0.19's exact p-value is the complement of the right one
/// when the samples are the same size (perfectly separated 5 and 5 come out at p = 1). The
/// approximation is within a few thousandths of the exact value from four repetitions a side.
pub fn mann_whitney(baseline: &[f64], current: &[f64]) -> f64 {
    mannwhitneyu(
        baseline,
        current,
        MannWhitneyUMethod::AsymptoticInclContinuityCorrection,
        Alternative::TwoSided,
    )
    .map(|(_, p)| p)
    .unwrap_or(1.0)
}

fn compare(
    measurement: &str,
    metric: &str,
    base: &Series,
    now: &Series,
    settings: &Settings,
    rng: &mut fastrand::Rng,
) -> Option<Row> {
    if base.values.is_empty() || now.values.is_empty() {
        return None;
    }
    let baseline_median = median(&base.values);
    let current_median = median(&now.values);
    if baseline_median == 0.0 {
        // A relative change from zero is not a number; nothing to compare.
        return None;
    }
    let change = current_median / baseline_median - 1.0;
    let interval = bootstrap_interval(
        &base.values,
        &now.values,
        settings.alpha,
        settings.resamples,
        rng,
    );
    let p_value = mann_whitney(&base.values, &now.values);
    let (verdict, more_repetitions) = decide(
        change,
        interval,
        p_value,
        base.better,
        base.values.len().min(now.values.len()),
        settings,
    );
    Some(Row {
        measurement: measurement.to_owned(),
        metric: metric.to_owned(),
        better: base.better,
        baseline_samples: base.values.len(),
        baseline_median,
        current_samples: now.values.len(),
        current_median,
        change,
        change_interval: interval,
        p_value,
        verdict,
        more_repetitions,
    })
}

/// The verdict on a change (see the module's documentation), and for *unknown* how many
/// more repetitions of each side would likely decide.
pub fn decide(
    change: f64,
    interval: [f64; 2],
    p_value: f64,
    better: Better,
    repetitions: usize,
    settings: &Settings,
) -> (Verdict, Option<usize>) {
    let threshold = settings.threshold;
    // Fewer repetitions than the test needs to reject anything: neither *different* nor,
    // from an interval of two or three values, *same*.
    let least = least_repetitions(settings.alpha);
    if repetitions < least {
        return (Verdict::Unknown, Some(least - repetitions));
    }
    let significant = p_value < settings.alpha;
    let beyond = change.abs() > threshold;
    if significant && beyond {
        let improved = (change > 0.0) == (better == Better::Higher);
        let verdict = if improved {
            Verdict::Improved
        } else {
            Verdict::Regressed
        };
        return (verdict, None);
    }
    let within = interval[0] >= -threshold && interval[1] <= threshold;
    if within || (significant && !beyond) {
        return (Verdict::Same, None);
    }
    (
        Verdict::Unknown,
        more_repetitions(change, interval, repetitions, settings),
    )
}

/// The interval narrows as one over the square root of the repetitions: how many it takes for
/// its half-width to clear the distance that decides (to zero when the change is beyond the
/// threshold, to the threshold when it is within).
fn more_repetitions(
    change: f64,
    interval: [f64; 2],
    repetitions: usize,
    settings: &Settings,
) -> Option<usize> {
    let half_width = (interval[1] - interval[0]) / 2.0;
    let distance = if change.abs() > settings.threshold {
        change.abs()
    } else {
        settings.threshold - change.abs()
    };
    if !half_width.is_finite() || distance < 1e-3 {
        return None;
    }
    let needed = (repetitions as f64 * (half_width / distance).powi(2)).ceil() as usize;
    Some(needed.saturating_sub(repetitions).clamp(1, 10_000))
}

/// The fewest repetitions per side with which the test can reach `alpha`: those whose most
/// extreme outcome (every current sample beyond every baseline one) gets below it.
fn least_repetitions(alpha: f64) -> usize {
    (1..64)
        .find(|&n| {
            let baseline: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let current: Vec<f64> = (n..2 * n).map(|i| i as f64).collect();
            mann_whitney(&baseline, &current) < alpha
        })
        .unwrap_or(64)
}

#[cfg(test)]
mod tests {
    use statrs::distribution::{ContinuousCDF as _, Normal};

    use super::*;

    fn normal_quantile(p: f64) -> f64 {
        Normal::standard().inverse_cdf(p)
    }

    fn series(better: Better, values: Vec<f64>) -> Series {
        Series { better, values }
    }

    fn normal_samples(rng: &mut fastrand::Rng, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        (0..n)
            .map(|_| mean + sd * normal_quantile(rng.f64().clamp(1e-9, 1.0 - 1e-9)))
            .collect()
    }

    fn one(base: Series, now: Series) -> Row {
        let settings = Settings::default();
        compare(
            "m",
            "x",
            &base,
            &now,
            &settings,
            &mut fastrand::Rng::with_seed(7),
        )
        .expect("a row")
    }

    #[test]
    fn four_repetitions_each_are_the_fewest_that_can_decide_at_five_percent() {
        // Perfectly separated 4 and 4: p = 0.030 (exact: 2 / C(8, 4) = 0.029); 3 and 3:
        // 0.081 (exact 0.1).
        assert!((mann_whitney(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]) - 0.0304).abs() < 1e-3);
        assert_eq!(least_repetitions(0.05), 4);
        // 5 and 5: 0.012, above 0.01 (exact 0.008); 6 and 6: 0.005.
        assert_eq!(least_repetitions(0.01), 6);
    }

    #[test]
    fn a_clear_drop_in_throughput_is_a_regression_and_a_rise_an_improvement() {
        let base = series(Better::Higher, vec![100.0, 101.0, 99.5, 100.4, 100.2]);
        let lower = series(Better::Higher, vec![90.0, 90.5, 89.7, 90.2, 90.1]);
        let row = one(base.clone(), lower);
        assert_eq!(row.verdict, Verdict::Regressed, "{row:?}");
        assert!((row.change + 0.1).abs() < 0.01, "{row:?}");
        assert!(row.change_interval[0] <= row.change && row.change <= row.change_interval[1]);
        assert!(row.p_value < 0.05);
        let higher = series(Better::Higher, vec![110.0, 110.5, 109.7, 110.2, 110.1]);
        assert_eq!(one(base, higher).verdict, Verdict::Improved);
        // Lower is better for latency: a rise is the regression.
        let fast = series(Better::Lower, vec![50.0, 51.0, 49.0, 50.5, 50.2]);
        let slow = series(Better::Lower, vec![60.0, 61.0, 59.0, 60.5, 60.2]);
        assert_eq!(one(fast, slow).verdict, Verdict::Regressed);
    }

    #[test]
    fn a_real_change_below_the_threshold_is_the_same() {
        let base = series(
            Better::Higher,
            vec![100.0, 100.1, 99.9, 100.05, 99.95, 100.0],
        );
        let now = series(Better::Higher, vec![98.0, 98.1, 97.9, 98.05, 97.95, 98.0]);
        let row = one(base, now);
        assert!(row.p_value < 0.05, "{row:?}");
        assert_eq!(row.verdict, Verdict::Same, "{row:?}");
    }

    #[test]
    fn too_few_or_too_noisy_samples_are_unknown_with_how_many_more_would_decide() {
        let row = one(
            series(Better::Higher, vec![100.0]),
            series(Better::Higher, vec![80.0]),
        );
        assert_eq!(row.verdict, Verdict::Unknown, "{row:?}");
        assert_eq!(row.more_repetitions, Some(3));
        let row = one(
            series(Better::Higher, vec![100.0, 60.0, 140.0, 90.0, 120.0]),
            series(Better::Higher, vec![95.0, 55.0, 150.0, 70.0, 110.0]),
        );
        assert_eq!(row.verdict, Verdict::Unknown, "{row:?}");
        assert!(
            row.more_repetitions.is_some_and(|more| more >= 1),
            "{row:?}"
        );
    }

    /// A/A: twenty comparisons of samples drawn from one distribution, with a spread larger
    /// than the threshold: at most alpha of them may be called different.
    #[test]
    fn with_no_change_at_most_alpha_of_comparisons_are_called_different() {
        let mut rng = fastrand::Rng::with_seed(2026);
        let settings = Settings::default();
        let mut different = 0;
        let mut same_or_unknown = 0;
        let trials = 20;
        for trial in 0..trials {
            let base = normal_samples(&mut rng, 10, 1000.0, 80.0);
            let now = normal_samples(&mut rng, 10, 1000.0, 80.0);
            let mut a = Samples::default();
            a.series.insert(
                (format!("m{trial}"), "throughput".into()),
                series(Better::Higher, base),
            );
            let mut b = Samples::default();
            b.series.insert(
                (format!("m{trial}"), "throughput".into()),
                series(Better::Higher, now),
            );
            let comparison = Comparison::of(&a, &b, settings);
            match comparison.rows[0].verdict {
                Verdict::Improved | Verdict::Regressed => different += 1,
                Verdict::Same | Verdict::Unknown => same_or_unknown += 1,
            }
        }
        assert_eq!(different + same_or_unknown, trials);
        println!("{different} of {trials} A/A comparisons called different");
        assert!(
            f64::from(different) <= settings.alpha * f64::from(trials),
            "{different} of {trials} A/A comparisons called different"
        );
    }

    #[test]
    fn unmatched_metrics_are_listed_on_their_side() {
        let mut a = Samples::default();
        a.series
            .insert(("m".into(), "p50".into()), series(Better::Lower, vec![1.0]));
        a.series.insert(
            ("old".into(), "p50".into()),
            series(Better::Lower, vec![1.0]),
        );
        let mut b = Samples::default();
        b.series
            .insert(("m".into(), "p50".into()), series(Better::Lower, vec![1.0]));
        b.series.insert(
            ("new".into(), "p50".into()),
            series(Better::Lower, vec![1.0]),
        );
        let comparison = Comparison::of(&a, &b, Settings::default());
        assert_eq!(comparison.rows.len(), 1);
        assert_eq!(comparison.only_in_baseline, vec!["old: p50"]);
        assert_eq!(comparison.only_in_current, vec!["new: p50"]);
        assert!(!comparison.regressed());
    }
}
