//! `sondectl compare BASELINE CURRENT`: a regression gate. Exit code 0 when nothing regressed
//! beyond the threshold, 1 when something did, 2 when the input is bad.

use anyhow::{Context as _, bail};

use crate::{
    cmd::results::StoreArgs,
    output::{self, OutputFormat},
    results::{
        Document, Store,
        compare::{Comparison, Settings, Verdict},
        resolve::Reference,
        samples::Samples,
    },
};

/// Flags of `sondectl compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline: a stored result's ID, a result file, or scenario:NAME@last-N (the N most
    /// recent run-sets of a scenario, pooled).
    pub baseline: Reference,

    /// What to compare with it, named the same ways.
    pub current: Reference,

    /// The noise floor: a change of the median smaller than this is not a regression (5%,
    /// or a fraction: 0.05).
    #[arg(long, default_value = "5%", value_parser = parse_threshold)]
    pub threshold: f64,

    /// Significance level of the Mann-Whitney test across repetitions.
    #[arg(long, default_value_t = 0.05, value_parser = parse_alpha)]
    pub alpha: f64,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// The store IDs and scenarios are read from.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Bad input to `compare`: the gate exits 2 rather than 1, so that a broken CI step is not
/// read as a regression.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct BadInput(pub anyhow::Error);

/// Some metric regressed: exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{count} metric{s} regressed beyond the {threshold:.1}% threshold", s = if *.count == 1 { "" } else { "s" }, threshold = .threshold * 100.0)]
pub struct Regressed {
    /// How many.
    pub count: usize,
    /// The threshold, as a fraction.
    pub threshold: f64,
}

/// Runs `sondectl compare`.
pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    let comparison = prepare(&args).map_err(BadInput)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&comparison)?),
        OutputFormat::Table => print!("{}", table(&comparison)),
    }
    if comparison.regressed() {
        return Err(Regressed {
            count: comparison
                .rows
                .iter()
                .filter(|row| row.verdict == Verdict::Regressed)
                .count(),
            threshold: comparison.settings.threshold,
        }
        .into());
    }
    Ok(())
}

fn prepare(args: &CompareArgs) -> anyhow::Result<Comparison> {
    let store = if args.baseline.needs_store() || args.current.needs_store() {
        crate::cmd::results::check_exists(&args.store)?;
        Some(args.store.open()?)
    } else {
        None
    };
    let load = |reference: &Reference, store: Option<&Store>| -> anyhow::Result<Vec<Document>> {
        reference
            .load(store)
            .with_context(|| format!("reading {reference}"))
    };
    let baseline = load(&args.baseline, store.as_ref())?;
    let current = load(&args.current, store.as_ref())?;
    let settings = Settings {
        threshold: args.threshold,
        alpha: args.alpha,
        ..Settings::default()
    };
    let comparison = Comparison::of(&Samples::of(&baseline), &Samples::of(&current), settings);
    if comparison.rows.is_empty() {
        bail!(
            "{} and {} have no measurement in common (same kind, size, path, placement and \
             pair, complete on both sides): nothing to compare",
            args.baseline,
            args.current
        );
    }
    Ok(comparison)
}

/// A metric's value with its unit.
pub fn figure(metric: &str, value: f64) -> String {
    if metric == "throughput" {
        crate::run::report::bits(value)
    } else if metric.ends_with("/s") {
        format!("{value:.0}/s")
    } else {
        crate::run::report::nanos(value.max(0.0) as u64)
    }
}

fn table(comparison: &Comparison) -> String {
    let mut table = output::table(&[
        "MEASUREMENT",
        "METRIC",
        "BASELINE",
        "CURRENT",
        "CHANGE [95% CI]",
        "P",
        "VERDICT",
    ]);
    for row in &comparison.rows {
        let verdict = match (row.verdict, row.more_repetitions) {
            (Verdict::Unknown, Some(more)) => format!("unknown: ~{more} more repetitions"),
            (Verdict::Unknown, None) => "unknown: on the threshold".to_owned(),
            (verdict, _) => verdict.name().to_owned(),
        };
        table.add_row([
            row.measurement.clone(),
            row.metric.clone(),
            format!(
                "{} (n={})",
                figure(&row.metric, row.baseline_median),
                row.baseline_samples
            ),
            format!(
                "{} (n={})",
                figure(&row.metric, row.current_median),
                row.current_samples
            ),
            format!(
                "{:+.1}% [{:+.1}%, {:+.1}%]",
                row.change * 100.0,
                row.change_interval[0] * 100.0,
                row.change_interval[1] * 100.0
            ),
            format!("{:.3}", row.p_value),
            verdict,
        ]);
    }
    let mut out = output::trim_lines(&table);
    out.push('\n');
    let count = |verdict: Verdict| {
        comparison
            .rows
            .iter()
            .filter(|row| row.verdict == verdict)
            .count()
    };
    out.push_str(&format!(
        "\n{} metrics: {} same, {} improved, {} regressed, {} unknown (threshold {:.1}%, alpha {})\n",
        comparison.rows.len(),
        count(Verdict::Same),
        count(Verdict::Improved),
        count(Verdict::Regressed),
        count(Verdict::Unknown),
        comparison.settings.threshold * 100.0,
        comparison.settings.alpha
    ));
    for (side, missing) in [
        ("baseline", &comparison.only_in_baseline),
        ("current", &comparison.only_in_current),
    ] {
        if !missing.is_empty() {
            out.push_str(&format!(
                "only in the {side} ({}): {}\n",
                missing.len(),
                missing.join("; ")
            ));
        }
    }
    out
}

/// `--threshold`: a percentage (5%) or a fraction (0.05), above 0 and below 1.
pub fn parse_threshold(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let value = match text.strip_suffix('%') {
        Some(percent) => percent
            .trim()
            .parse::<f64>()
            .map(|p| p / 100.0)
            .map_err(|_| format!("{text:?} is not a percentage (e.g. 5%)"))?,
        None => text
            .parse::<f64>()
            .map_err(|_| format!("{text:?} is not a threshold (5% or 0.05)"))?,
    };
    if !(value > 0.0 && value < 1.0) {
        return Err(format!(
            "threshold {text:?} must be above 0% and below 100% (5% or 0.05)"
        ));
    }
    Ok(value)
}

fn parse_alpha(text: &str) -> Result<f64, String> {
    let alpha: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a significance level (e.g. 0.05)"))?;
    if !(alpha > 0.0 && alpha < 0.5) {
        return Err(format!("alpha {text:?} must be between 0 and 0.5"));
    }
    Ok(alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_percentages_or_fractions() {
        assert_eq!(parse_threshold("5%"), Ok(0.05));
        assert_eq!(parse_threshold("0.1"), Ok(0.1));
        assert!(parse_threshold("5").is_err());
        assert!(parse_threshold("0%").is_err());
        assert!(parse_alpha("0.7").is_err());
        assert_eq!(parse_alpha("0.01"), Ok(0.01));
    }
}
