//! `ssmx agent` (being written).

use std::process::ExitCode;

/// `ssmx agent` subcommands.
#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// Run it.
    Run,
}

/// Runs an `ssmx agent` subcommand.
pub async fn run(_global: &crate::GlobalArgs, _cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not available yet")
}
