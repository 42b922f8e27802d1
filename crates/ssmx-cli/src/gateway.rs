//! `ssmx gateway` (being written).

use std::process::ExitCode;

/// `ssmx gateway` subcommands.
#[derive(clap::Subcommand)]
pub enum GatewayCommand {
    /// Run it.
    Run,
}

/// Runs an `ssmx gateway` subcommand.
pub async fn run(_global: &crate::GlobalArgs, _cmd: GatewayCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not available yet")
}
