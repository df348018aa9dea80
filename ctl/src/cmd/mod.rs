//! One module per subcommand; [`run`] dispatches.

pub mod compare;
pub mod conntrack;
pub mod deploy;
pub mod lab;
pub mod monitor;
pub mod nodes;
pub mod report;
pub mod results;
pub mod run;
pub mod scenario;
pub mod serve;
pub mod trace;

use crate::cli::{Cli, Command};

/// Runs the command `cli` asks for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(credentials) = cli.tls.chosen()? {
        crate::tls::choose(credentials);
    }
    match cli.command {
        Command::Nodes(args) => nodes::run(args).await,
        Command::Lab(command) => lab::run(command).await,
        Command::Run(args) => run::run(*args).await,
        Command::Scenario(command) => scenario::run(command).await,
        Command::Monitor(args) => monitor::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Trace(args) => trace::run(args).await,
        Command::Conntrack(command) => conntrack::run(command).await,
        Command::Results(command) => results::run(command).await,
        Command::Compare(args) => compare::run(args).await,
        Command::Report(args) => report::run(args).await,
        Command::Deploy(args) => deploy::deploy(args).await,
        Command::Undeploy(args) => deploy::undeploy(args).await,
    }
}
