//! The command line: global flags and one subcommand per job.

use std::time::Duration;

use crate::{agent::AgentAddr, output::OutputFormat};

/// sondectl: measure pod-to-pod networking from inside the kernel.
#[derive(Debug, clap::Parser)]
#[command(name = "sondectl", version)]
pub struct Cli {
    /// The job to do.
    #[command(subcommand)]
    pub command: Command,
}

/// sondectl's subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List sonde's daemons: node, kernel, capabilities and loaded eBPF programs.
    Nodes(NodesArgs),
}

/// Flags of `sondectl nodes`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// Daemons to ask, as HOST:PORT (comma-separated or repeated).
    #[arg(long, env = "SONDE_AGENTS", value_delimiter = ',', required = true)]
    pub agents: Vec<AgentAddr>,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How long to wait for each daemon to answer, e.g. "3s" or "500ms".
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Parses "500ms", "3s", "2m" or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 500ms, 3s or 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s or m)"
            ));
        }
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn agents_split_on_commas() {
        let cli = Cli::try_parse_from([
            "sondectl",
            "nodes",
            "--agents",
            "127.0.0.1:7470,node-b:7470",
            "-o",
            "json",
        ])
        .expect("valid command line");
        let Command::Nodes(args) = cli.command;
        assert_eq!(args.agents.len(), 2);
        assert_eq!(args.agents[1].to_string(), "node-b:7470");
        assert_eq!(args.output, OutputFormat::Json);
    }

    #[test]
    fn a_bad_agent_address_is_refused_with_its_reason() {
        let err = Cli::try_parse_from(["sondectl", "nodes", "--agents", "127.0.0.1"])
            .expect_err("no port");
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
    }
}
