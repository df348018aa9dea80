//! `sondectl report IDS|FILES -o report.html`: results as one self-contained HTML file.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    cmd::results::StoreArgs,
    results::{
        compare::{Comparison, Settings},
        resolve::Reference,
        samples::Samples,
    },
};

/// Flags of `sondectl report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The results: stored result IDs, result files, or scenario:NAME@last-N.
    #[arg(required = true)]
    pub results: Vec<Reference>,

    /// The HTML file to write.
    #[arg(short, long, default_value = "report.html")]
    pub output: PathBuf,

    /// A baseline to compare the results with (named the same ways): adds the comparison
    /// section.
    #[arg(long)]
    pub baseline: Option<Reference>,

    /// The comparison's noise floor (see `sondectl compare`).
    #[arg(long, default_value = "5%", requires = "baseline", value_parser = crate::cmd::compare::parse_threshold)]
    pub threshold: f64,

    /// The store IDs and scenarios are read from.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `sondectl report`.
pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let needs_store = args
        .results
        .iter()
        .chain(&args.baseline)
        .any(Reference::needs_store);
    let store = if needs_store {
        crate::cmd::results::check_exists(&args.store)?;
        Some(args.store.open()?)
    } else {
        None
    };
    let mut documents = Vec::new();
    for reference in &args.results {
        let loaded = reference
            .load(store.as_ref())
            .with_context(|| format!("reading {reference}"))?;
        let several = loaded.len() > 1;
        // A file by its name: the charts' labels carry it.
        let shown = match reference {
            Reference::File(path) => path.file_name().map_or_else(
                || reference.to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
            other => other.to_string(),
        };
        for (i, document) in loaded.into_iter().enumerate() {
            let name = if several {
                format!("{shown} #{}", i + 1)
            } else {
                shown.clone()
            };
            documents.push((name, document));
        }
    }
    let comparison = match &args.baseline {
        Some(baseline) => {
            let base = baseline
                .load(store.as_ref())
                .with_context(|| format!("reading the baseline {baseline}"))?;
            let current: Vec<_> = documents.iter().map(|(_, d)| d.clone()).collect();
            let settings = Settings {
                threshold: args.threshold,
                ..Settings::default()
            };
            Some(Comparison::of(
                &Samples::of(&base),
                &Samples::of(&current),
                settings,
            ))
        }
        None => None,
    };
    let html = crate::report::html(&documents, comparison.as_ref())?;
    std::fs::write(&args.output, &html)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{}: {} documents, {} KiB",
        args.output.display(),
        documents.len(),
        html.len().div_ceil(1024)
    );
    Ok(())
}
