//! `sondectl results ...`: what the store holds; and the store flags `run` and `scenario run`
//! record with.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{
    output::{self, OutputFormat},
    results::{Document, Store, store::Filter},
};

/// Where results are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The results store (default: $XDG_DATA_HOME/sonde/results.db, or
    /// ~/.local/share/sonde/results.db).
    #[arg(long, env = "SONDE_STORE", value_name = "PATH")]
    pub store: Option<PathBuf>,
}

impl StoreArgs {
    /// The store's file.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.store {
            Some(path) => Ok(path.clone()),
            None => Store::default_path()
                .context("no results store: neither $XDG_DATA_HOME nor $HOME is set (use --store)"),
        }
    }

    /// Opens the store.
    pub fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.path()?)?)
    }
}

/// Whether and where a run is recorded.
#[derive(Debug, Clone, clap::Args)]
pub struct RecordArgs {
    /// The store the result is recorded in.
    #[command(flatten)]
    pub store: StoreArgs,

    /// Record nothing in the results store (whatever --store or SONDE_STORE say).
    #[arg(long)]
    pub no_store: bool,
}

impl RecordArgs {
    /// Records `document` (a run's or a run-set's) unless `--no-store`, and says where on
    /// stderr. A store that cannot be written costs a warning, not the result: the output
    /// has been written already.
    pub fn record(&self, document: serde_json::Value) {
        if self.no_store {
            return;
        }
        let stored = (|| -> anyhow::Result<(i64, PathBuf)> {
            let document = Document::from_json(document)?;
            let mut store = self.store.open()?;
            let id = store.record(&document)?;
            Ok((id, store.path().to_owned()))
        })();
        match stored {
            Ok((id, path)) => eprintln!("sondectl: recorded as result {id} in {}", path.display()),
            Err(err) => eprintln!(
                "sondectl: warning: the result was not recorded: {}",
                crate::error::chain(err.as_ref())
            ),
        }
    }
}

/// `sondectl results` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ResultsCommand {
    /// List stored runs and run-sets, oldest first.
    List(ListArgs),
    /// One stored result: its facts and headline figures (-o json: the whole document).
    Show(ShowArgs),
    /// Write a stored result's document, as `-o json` wrote it.
    Export(ExportArgs),
    /// Store result documents made elsewhere (another machine, a CI job's artifacts).
    Import(ImportArgs),
    /// Keep the N most recent results of each scenario (and of plain runs), remove the rest.
    Gc(GcArgs),
}

/// Flags of `sondectl results list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only run-sets of this scenario.
    #[arg(long)]
    pub scenario: Option<String>,

    /// Only results started since: an age (30m, 24h, 7d, 2w), a date (2026-12-01, UTC) or a
    /// time (2026-12-01T08:00:00Z).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<u64>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `sondectl results show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The result's ID (`results list`).
    pub id: i64,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `sondectl results export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The result's ID (`results list`).
    pub id: i64,

    /// The file to write (default: standard output).
    #[arg(long = "to", value_name = "FILE")]
    pub to: Option<PathBuf>,

    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `sondectl results import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Documents written by `run -o json`, `scenario run -o json` or `results export`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Flags of `sondectl results gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// How many of each scenario's most recent results to keep.
    #[arg(long)]
    pub keep: usize,

    /// The store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Runs `sondectl results ...`.
pub async fn run(command: ResultsCommand) -> anyhow::Result<()> {
    let store = match &command {
        ResultsCommand::List(args) => Some(&args.store),
        ResultsCommand::Show(args) => Some(&args.store),
        ResultsCommand::Export(args) => Some(&args.store),
        ResultsCommand::Gc(args) => Some(&args.store),
        ResultsCommand::Import(_) => None,
    };
    if let Some(store) = store {
        check_exists(store)?;
    }
    match command {
        ResultsCommand::List(args) => list(&args),
        ResultsCommand::Show(args) => show(&args),
        ResultsCommand::Export(args) => {
            let store = args.store.open()?;
            let text = serde_json::to_string_pretty(store.get(args.id)?.json())?;
            match &args.to {
                Some(path) => std::fs::write(path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{text}"),
            }
            Ok(())
        }
        ResultsCommand::Import(args) => {
            // Every file checked before any is stored: an import is all or nothing.
            let mut documents = Vec::new();
            for path in &args.files {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let document = Document::parse(&text)
                    .with_context(|| format!("{} is not a result document", path.display()))?;
                documents.push((path, document));
            }
            let mut store = args.store.open()?;
            for (path, document) in documents {
                let id = store.record(&document)?;
                println!("{}: stored as result {id}", path.display());
            }
            Ok(())
        }
        ResultsCommand::Gc(args) => {
            let mut store = args.store.open()?;
            let removed = store.gc(args.keep)?;
            println!(
                "removed {removed} result{} from {}",
                if removed == 1 { "" } else { "s" },
                store.path().display()
            );
            Ok(())
        }
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let entries = store.list(&Filter {
        scenario: args.scenario.clone(),
        since_unix_ms: args.since,
    })?;
    match args.output {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = entries
                .iter()
                .map(|entry| {
                    json!({
                        "id": entry.id,
                        "shape": entry.shape.name(),
                        "recorded_at_unix_ms": entry.recorded_at_unix_ms,
                        "facts": entry.facts,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        OutputFormat::Table => {
            let mut table = output::table(&[
                "ID",
                "STARTED",
                "WHAT",
                "KINDS",
                "NODES",
                "MEASUREMENTS",
                "COMPLETE",
            ]);
            for entry in &entries {
                let facts = &entry.facts;
                table.add_row([
                    entry.id.to_string(),
                    facts.started(),
                    facts.what(entry.shape),
                    facts.kinds.join(","),
                    facts.nodes.join(","),
                    facts.measurements.to_string(),
                    if facts.complete { "yes" } else { "no" }.to_owned(),
                ]);
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", output::trim_lines(&table))?;
        }
    }
    Ok(())
}

fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let document = store.get(args.id)?;
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(document.json())?);
        return Ok(());
    }
    let facts = document.facts();
    println!("result {}: {}", args.id, facts.what(document.shape()));
    println!("  started    {}", facts.started());
    println!("  kinds      {}", facts.kinds.join(", "));
    println!("  nodes      {}", facts.nodes.join(", "));
    if !facts.zones.is_empty() {
        println!("  zones      {}", facts.zones.join(", "));
    }
    println!("  kernels    {}", facts.kernels.join(", "));
    if !facts.placements.is_empty() {
        println!("  placements {}", facts.placements.join(", "));
    }
    println!("  paths      {}", facts.paths.join(", "));
    if !facts.mtus.is_empty() {
        let mtus: Vec<String> = facts.mtus.iter().map(u64::to_string).collect();
        println!("  MTU        {}", mtus.join(", "));
    }
    println!(
        "  sonde      {}  spec {}",
        facts.sonde_version, facts.spec_hash
    );
    println!("  complete   {}", if facts.complete { "yes" } else { "no" });
    let samples = crate::results::samples::Samples::of([&document]);
    let mut table = output::table(&["MEASUREMENT", "METRIC", "N", "MEDIAN"]);
    for ((measurement, metric), series) in &samples.series {
        table.add_row([
            measurement.clone(),
            metric.clone(),
            series.values.len().to_string(),
            crate::cmd::compare::figure(metric, crate::results::compare::median(&series.values)),
        ]);
    }
    println!("\n{}", output::trim_lines(&table));
    Ok(())
}

/// `--since`: ms since the epoch, from an age, a date or a time.
fn parse_since(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return u64::try_from(timestamp.as_millisecond())
            .map_err(|_| format!("{text:?} is before 1970"));
    }
    if let Ok(date) = text.parse::<jiff::civil::Date>() {
        let start = date
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|err| format!("{text:?}: {err}"))?;
        return u64::try_from(start.timestamp().as_millisecond())
            .map_err(|_| format!("{text:?} is before 1970"));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let count: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not an age (30m, 24h, 7d, 2w), a date (2026-12-01) or a time (2026-12-01T08:00:00Z)")
    })?;
    let seconds = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use m, h, d or w)"
            ));
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|err| err.to_string())?;
    Ok((now.as_secs().saturating_sub(count.saturating_mul(seconds))) * 1000)
}

/// Refuses what `results` cannot do without a store.
pub fn check_exists(store: &StoreArgs) -> anyhow::Result<()> {
    let path = store.path()?;
    if !path.exists() {
        bail!(
            "no results store at {} yet: runs are recorded there as they end (or use --store)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_ages_dates_and_times() {
        assert_eq!(parse_since("2026-12-01"), Ok(1_796_083_200_000));
        assert_eq!(parse_since("2026-12-01T00:00:10Z"), Ok(1_796_083_210_000));
        let day_ago = parse_since("1d").expect("an age");
        let hour_ago = parse_since("1h").expect("an age");
        assert!(hour_ago - day_ago >= 23 * 3_600_000);
        assert!(parse_since("1y").is_err());
        assert!(parse_since("yesterday").is_err());
    }
}
