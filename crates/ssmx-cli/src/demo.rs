//! `ssmx demo` (being written).

use std::process::ExitCode;

/// `ssmx demo` options.
#[derive(clap::Args)]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_global: &crate::GlobalArgs, _args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not available yet")
}
