//! `ssmx`: Session Manager and Run Command client, agent, gateway and demo in one command.

mod agent;
mod client;
mod demo;
mod gateway;
mod instances;
mod logging;
mod plugin;
mod run;
mod table;

use client::ui;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// AWS Systems Manager Session Manager and Run Command: the client (shells, port forwarding,
/// SSH, commands, Run Command), the agent for target hosts, and a self-hosted gateway that
/// stands in for the AWS service.
#[derive(Parser)]
#[command(name = "ssmx", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options given before the subcommand.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// AWS shared-config profile.
    #[arg(long, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// AWS region.
    #[arg(long)]
    pub region: Option<String>,
    /// SSM API endpoint (an ssmx gateway, or a custom AWS endpoint).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// More logging (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The SSM API options of the subcommands that call it, also accepted after the subcommand
/// (where they win over the same option before it).
#[derive(Args, Clone, Debug, Default)]
pub struct AwsOptions {
    /// AWS shared-config profile.
    #[arg(long)]
    pub profile: Option<String>,
    /// AWS region.
    #[arg(long)]
    pub region: Option<String>,
    /// SSM API endpoint (an ssmx gateway, or a custom AWS endpoint).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

impl GlobalArgs {
    /// These options, with those a subcommand was given taking their place.
    pub fn with(&self, aws: &AwsOptions) -> GlobalArgs {
        GlobalArgs {
            profile: aws.profile.clone().or_else(|| self.profile.clone()),
            region: aws.region.clone().or_else(|| self.region.clone()),
            endpoint_url: aws
                .endpoint_url
                .clone()
                .or_else(|| self.endpoint_url.clone()),
            verbose: self.verbose,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Interactive shell on a target.
    #[command(
        after_help = "Examples:\n  ssmx shell i-0123456789abcdef0\n  ssmx --endpoint-url http://127.0.0.1:8080 shell mi-0123456789abcdef0"
    )]
    Shell(client::ShellArgs),
    /// Forward local ports to a target (or a host reachable from it).
    #[command(
        after_help = "Examples:\n  ssmx port-forward i-0123456789abcdef0 --remote-port 5432 --local-port 5432\n  ssmx port-forward i-0123456789abcdef0 -L 8080:internal-alb:80 -L 6379:redis.internal:6379\n  ssmx port-forward i-0123456789abcdef0 -D 1080     # a SOCKS5 proxy through the node"
    )]
    PortForward(client::PortForwardArgs),
    /// Byte pipe to the target's SSH port, for `ssh -o ProxyCommand=...`.
    #[command(
        after_help = "Examples:\n  ssh -o ProxyCommand='ssmx ssh-proxy %h --port %p' ec2-user@i-0123456789abcdef0"
    )]
    SshProxy(client::SshProxyArgs),
    /// Run a command on a target; exits with its exit code.
    #[command(
        after_help = "Examples:\n  ssmx exec i-0123456789abcdef0 -- systemctl status nginx\n  ssmx exec i-0123456789abcdef0 -- sh -c 'df -h | head'"
    )]
    Exec(client::ExecArgs),
    /// List or terminate sessions.
    #[command(
        after_help = "Examples:\n  ssmx sessions\n  ssmx sessions --history\n  ssmx sessions --terminate alice-0123456789abcdef0"
    )]
    Sessions(client::SessionsArgs),
    /// Run a command on many nodes with Run Command; exits 0 only if it succeeded on every one.
    #[command(
        after_help = "Examples:\n  ssmx run --instance-ids mi-0123456789abcdef0 -- uptime\n  ssmx run --targets Key=tag:env,Values=prod --max-concurrency 10% --max-errors 1 -- apt-get -y upgrade"
    )]
    Run(run::RunArgs),
    /// List, show or cancel Run Command commands.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ssmx commands list --max 10\n  ssmx commands show 0b6f5c3e-1a2b-4c5d-8e9f-0123456789ab\n  ssmx commands cancel 0b6f5c3e-1a2b-4c5d-8e9f-0123456789ab"
    )]
    Commands(run::CommandsCommand),
    /// List the fleet's nodes: reachability, last contact, platform, agent, tags; or tag them.
    #[command(
        after_help = "Examples:\n  ssmx instances\n  ssmx instances --tag env=prod --status Online\n  ssmx instances tag mi-0123456789abcdef0 env=prod team=web"
    )]
    Instances(instances::InstancesArgs),
    /// Run or administer the self-hosted gateway.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ssmx gateway run --config gateway.toml\n  ssmx gateway activation create --config gateway.toml"
    )]
    Gateway(gateway::GatewayCommand),
    /// Register or run the agent on a target host.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ssmx agent register --gateway http://127.0.0.1:8080 --activation-id ID --activation-code CODE\n  ssmx agent run"
    )]
    Agent(agent::AgentCommand),
    /// Start a gateway and an agent locally and open a shell through them.
    #[command(after_help = "Examples:\n  ssmx demo\n  ssmx demo --serve --listen 127.0.0.1:8080")]
    Demo(demo::DemoArgs),
    /// Measure throughput, latency, set-up time and concurrency end to end on loopback.
    #[command(after_help = "Examples:\n  ssmx bench")]
    Bench(ssmx_bench::BenchArgs),
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
            Command::Shell(args) => client::shell(&cli.global.with(&args.aws), args).await,
            Command::PortForward(args) => {
                client::port_forward(&cli.global.with(&args.aws), args).await
            }
            Command::SshProxy(args) => client::ssh_proxy(&cli.global.with(&args.aws), args).await,
            Command::Exec(args) => client::exec(&cli.global.with(&args.aws), args).await,
            Command::Sessions(args) => client::sessions(&cli.global.with(&args.aws), args).await,
            Command::Run(args) => run::run(&cli.global.with(&args.aws), args).await,
            Command::Commands(cmd) => run::commands(&cli.global, cmd).await,
            Command::Instances(args) => instances::run(&cli.global, args).await,
            Command::Gateway(cmd) => gateway::run(&cli.global, cmd).await,
            Command::Agent(cmd) => agent::run(&cli.global, cmd).await,
            Command::Demo(args) => demo::run(&cli.global, args).await,
            Command::Bench(args) => {
                if cli.global.endpoint_url.is_some() {
                    anyhow::bail!(
                        "ssmx bench starts its own gateway on 127.0.0.1; leave out --endpoint-url"
                    );
                }
                ssmx_bench::run(cli.global.region.as_deref(), args).await
            }
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// Splits an example line as a shell would, for the quoting the examples use: words, and
    /// '…' quoted words; a `#` word starts a comment.
    fn words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut rest = line.trim();
        while !rest.is_empty() {
            let (word, tail) = match rest.strip_prefix('\'') {
                Some(quoted) => quoted.split_once('\'').expect("closing quote"),
                None => rest.split_once(' ').unwrap_or((rest, "")),
            };
            if word == "#" {
                break;
            }
            words.push(word.to_owned());
            rest = tail.trim_start();
        }
        words
    }

    /// The SSM API options go before the subcommand or after it, and only to the subcommands
    /// that call the API.
    #[test]
    fn api_options_apply_where_the_api_is_called() {
        let parsed = Cli::try_parse_from([
            "ssmx",
            "--region",
            "eu-west-1",
            "--endpoint-url",
            "http://a",
            "shell",
            "mi-1",
            "--endpoint-url",
            "http://b",
        ])
        .unwrap();
        let super::Command::Shell(args) = &parsed.command else {
            panic!("not a shell")
        };
        let merged = parsed.global.with(&args.aws);
        assert_eq!(merged.region.as_deref(), Some("eu-west-1"));
        assert_eq!(merged.endpoint_url.as_deref(), Some("http://b"));
        for command in [
            &["ssmx", "gateway", "run", "--region", "x"][..],
            &["ssmx", "agent", "run", "--region", "x"],
            &["ssmx", "demo", "--endpoint-url", "x"],
        ] {
            assert!(
                Cli::try_parse_from(command).is_err(),
                "{command:?} accepted"
            );
        }
        let mut help = Vec::new();
        Cli::command()
            .find_subcommand_mut("gateway")
            .and_then(|g| g.find_subcommand_mut("run"))
            .unwrap()
            .write_long_help(&mut help)
            .unwrap();
        assert!(!String::from_utf8(help).unwrap().contains("--region"));
    }

    /// Every subcommand's help ends with examples, and each `ssmx …` example parses.
    #[test]
    fn every_subcommand_has_examples_that_parse() {
        fn visit(command: &clap::Command, path: &str, checked: &mut usize) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .unwrap_or_else(|| panic!("`{path}` has no examples"))
                    .to_string();
                assert!(help.starts_with("Examples:"), "{path}: {help}");
                for line in help.lines().skip(1) {
                    let argv = words(line);
                    if argv.first().map(String::as_str) != Some("ssmx") {
                        continue;
                    }
                    if let Err(e) = Cli::try_parse_from(&argv) {
                        panic!("`{path}` example {line:?} does not parse: {e}");
                    }
                    *checked += 1;
                }
                visit(sub, &path, checked);
            }
        }
        let mut checked = 0;
        visit(&Cli::command(), "ssmx", &mut checked);
        assert!(checked > 20, "only {checked} examples checked");
    }
}
