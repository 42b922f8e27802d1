//! `ssmx agent`: register this host with a gateway, then run the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ssmx_agent::{register, Agent, AgentConfig, Registration};

/// `ssmx agent` subcommands.
#[derive(clap::Subcommand)]
pub enum AgentCommand {
    /// Register this host with a gateway using an activation; prints {"InstanceId":"mi-..."}.
    #[command(
        after_help = "Examples:\n  ssmx agent register --gateway https://gateway.example:8443 --activation-id ID --activation-code CODE"
    )]
    Register(RegisterArgs),
    /// Run the agent until SIGINT or SIGTERM.
    #[command(after_help = "Examples:\n  ssmx agent run")]
    Run(RunArgs),
}

/// Arguments of `ssmx agent register`.
#[derive(clap::Args)]
pub struct RegisterArgs {
    /// Base URL of the gateway, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    gateway: String,
    /// Activation id (from `ssmx gateway activation create`).
    #[arg(long)]
    activation_id: String,
    /// Activation code.
    #[arg(long, env = "SSMX_ACTIVATION_CODE", hide_env_values = true)]
    activation_code: String,
    /// Where the registration is stored [default: /var/lib/ssmx/agent for root, else <user data
    /// dir>/ssmx/agent].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Arguments of `ssmx agent run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Directory holding the registration [default: /var/lib/ssmx/agent for root, else <user
    /// data dir>/ssmx/agent].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where session transcripts go [default: <state dir>/logs].
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Shell for interactive sessions [default: the session user's login shell].
    #[arg(long)]
    shell: Option<PathBuf>,
    /// OS user for sessions when running as root without run-as in the document.
    #[arg(long)]
    session_user: Option<String>,
    /// Minutes between the agent's health reports (UpdateInstanceInformation), 5 to 60, as the
    /// official agent's HealthFrequencyMinutes.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(5..=60))]
    health_frequency_minutes: u64,
}

/// Runs an `ssmx agent` subcommand.
pub async fn run(_global: &crate::GlobalArgs, cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Register(args) => {
            let state_dir = state_dir(args.state_dir)?;
            let registration =
                register(&args.gateway, &args.activation_id, &args.activation_code).await?;
            registration.save(&state_dir)?;
            println!(
                "{}",
                serde_json::json!({ "InstanceId": registration.instance_id })
            );
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Run(args) => {
            let state_dir = state_dir(args.state_dir)?;
            let registration = Registration::load(&state_dir)?;
            let mut config = AgentConfig::new(registration);
            config.log_dir = Some(args.log_dir.unwrap_or_else(|| state_dir.join("logs")));
            config.commands_dir = Some(state_dir.join("commands"));
            config.commands_dir = Some(state_dir.join("commands"));
            config.shell = args.shell;
            config.session_user = args.session_user;
            config.timing.update_interval =
                std::time::Duration::from_secs(args.health_frequency_minutes * 60);
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("cannot watch SIGTERM")?;
            let shutdown = async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            };
            Agent::new(config).run(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn state_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given
        .or_else(ssmx_agent::default_state_dir)
        .context("no --state-dir given and no user data directory known")
}
