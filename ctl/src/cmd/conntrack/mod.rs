//! `sondectl conntrack`: [`watch`] every node's table live, or [`ramp`] the connection rate up
//! to the knee.

pub mod ramp;
pub mod watch;

use self::{ramp::ConntrackRampArgs, watch::ConntrackWatchArgs};

/// `sondectl conntrack` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConntrackCommand {
    /// A live view of every node's conntrack table: entries/max, new and destroyed entries a
    /// second, failed inserts, drops, early drops, and the projected time until it is full.
    Watch(ConntrackWatchArgs),
    /// A bounded tcp-crr connection-rate ramp between two endpoints that stops at the first
    /// failed insert, drop or eviction in a conntrack table (or at a ceiling) and reports the
    /// knee. It changes no setting.
    Ramp(ConntrackRampArgs),
}

/// Runs a `sondectl conntrack` subcommand.
pub async fn run(command: ConntrackCommand) -> anyhow::Result<()> {
    match command {
        ConntrackCommand::Watch(args) => watch::run(args).await,
        ConntrackCommand::Ramp(args) => ramp::run(args).await,
    }
}
