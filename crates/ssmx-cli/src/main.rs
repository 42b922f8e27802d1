//! `ssmx`: Session Manager and Run Command client, agent, gateway and demo in one command.

mod agent;
mod bench;
mod client;
mod demo;
mod gateway;
mod instances;
mod logging;
mod plugin;
mod run;

use client::ui;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// AWS Systems Manager Session Manager and Run Command, all three ends.
#[derive(Parser)]
#[command(name = "ssmx", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand understands.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// AWS shared-config profile.
    #[arg(long, global = true, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// AWS region.
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// SSM API endpoint (an ssmx gateway, or a custom AWS endpoint).
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
    /// More logging (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive shell on a target.
    Shell(client::ShellArgs),
    /// Forward local ports to a target (or a host reachable from it).
    PortForward(client::PortForwardArgs),
    /// Byte pipe to the target's SSH port, for `ssh -o ProxyCommand=...`.
    SshProxy(client::SshProxyArgs),
    /// Run a command on a target; exits with its exit code.
    Exec(client::ExecArgs),
    /// List or terminate sessions.
    Sessions(client::SessionsArgs),
    /// Run a command on many nodes with Run Command; exits 0 only if it succeeded on every one.
    Run(run::RunArgs),
    /// List, show or cancel Run Command commands.
    #[command(subcommand)]
    Commands(run::CommandsCommand),
    /// List the fleet's nodes: reachability, last contact, platform, agent, tags; or tag them.
    Instances(instances::InstancesArgs),
    /// Run or administer the self-hosted gateway.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Register or run the agent on a target host.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Start a gateway and an agent locally and open a shell through them.
    Demo(demo::DemoArgs),
    /// Measure throughput, latency, set-up time and concurrency end to end on loopback.
    Bench(bench::BenchArgs),
}

/// The executable name aws-cli runs; `ssmx` started under it is the plugin.
pub(crate) const PLUGIN_NAME: &str = "session-manager-plugin";

/// True when this process was started under the plugin's name.
fn invoked_as_plugin() -> bool {
    std::env::args_os().next().is_some_and(|argv0| {
        std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new(PLUGIN_NAME))
    })
}

fn main() -> ExitCode {
    if invoked_as_plugin() {
        return plugin::main();
    }
    let cli = Cli::parse();
    let service = matches!(
        cli.command,
        Command::Gateway(gateway::GatewayCommand::Run { .. })
            | Command::Agent(agent::AgentCommand::Run(_))
    );
    // The demo logs into its scratch directory: its terminal belongs to the shell.
    if !matches!(cli.command, Command::Demo(_)) {
        logging::init(cli.global.verbose, service);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssmx: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let endpoint = cli.global.endpoint_url.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Shell(args) => client::shell(&cli.global, args).await,
            Command::PortForward(args) => client::port_forward(&cli.global, args).await,
            Command::SshProxy(args) => client::ssh_proxy(&cli.global, args).await,
            Command::Exec(args) => client::exec(&cli.global, args).await,
            Command::Sessions(args) => client::sessions(&cli.global, args).await,
            Command::Run(args) => run::run(&cli.global, args).await,
            Command::Commands(cmd) => run::commands(&cli.global, cmd).await,
            Command::Instances(args) => instances::run(&cli.global, args).await,
            Command::Gateway(cmd) => gateway::run(&cli.global, cmd).await,
            Command::Agent(cmd) => agent::run(&cli.global, cmd).await,
            Command::Demo(args) => demo::run(&cli.global, args).await,
            Command::Bench(args) => bench::run(&cli.global, args).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ssmx: {}", causes(&e));
            if let Some(hint) = hint(&e, endpoint.as_deref()) {
                eprintln!("ssmx: {hint}");
            }
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, outermost first, each said once (a cause whose text an outer
/// error already carries is left out).
fn causes(error: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
    }
    said.join(": ")
}

/// What to check after a failure that has a usual cause.
fn hint(error: &anyhow::Error, endpoint: Option<&str>) -> Option<String> {
    let refused = error.chain().any(|e| {
        matches!(
            e.downcast_ref::<ssmx_client::Error>(),
            Some(ssmx_client::Error::Unreachable { refused: true, .. })
        )
    });
    match (refused, endpoint) {
        (true, Some(url)) => Some(format!(
            "nothing accepts connections at {url}: check that the gateway is running there (ssmx gateway run) and that --endpoint-url is right"
        )),
        (true, None) => Some("the connection was refused: check the endpoint configured for SSM".to_owned()),
        _ => None,
    }
}
