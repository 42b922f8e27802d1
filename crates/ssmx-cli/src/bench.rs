//! `ssmx bench` (being written).

use std::process::ExitCode;

/// `ssmx bench` options.
#[derive(clap::Args)]
pub struct BenchArgs {}

/// Runs the benchmarks.
pub async fn run(_global: &crate::GlobalArgs, _args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not available yet")
}
