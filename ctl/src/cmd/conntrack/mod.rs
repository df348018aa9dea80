//! `sondectl conntrack`: [`watch`] every node's table live, or [`ramp`] the connection rate up
//! to the knee.

pub mod ramp;
pub mod watch;

use crate::cli::ConntrackCommand;

/// Runs a `sondectl conntrack` subcommand.
pub async fn run(command: ConntrackCommand) -> anyhow::Result<()> {
    match command {
        ConntrackCommand::Watch(args) => watch::run(args).await,
        ConntrackCommand::Ramp(args) => ramp::run(args).await,
    }
}
