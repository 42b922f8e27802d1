//! `ssmx demo`: a gateway and an agent in this process, on loopback, with a temporary database,
//! and an interactive shell through the full protocol. Everything is torn down on exit.
//!
//! The scratch directory holds the state, the log (`demo.log`: the terminal belongs to the
//! shell), a session document that marks the demo's prompt, and `bin/` with `ssmx` and
//! `session-manager-plugin` (links to this executable, which is the plugin under that name), so
//! the banner's commands work as printed in another terminal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use ssmx_agent::{Agent, AgentConfig};
use ssmx_client::SessionManager;
use ssmx_gateway::config::{ApiCredential, Config, Database};
use ssmx_gateway::store::NewActivation;
use ssmx_gateway::Gateway;
use tokio::sync::oneshot;

/// Region the demo gateway signs and answers in.
const DEMO_REGION: &str = "us-east-1";
/// How long the agent may take to connect its control channel.
const AGENT_ONLINE_TIMEOUT: Duration = Duration::from_secs(20);
/// The session preferences of the demo's gateway: its shells show that they are the demo's.
const SHELL_PREFERENCES: &str = r#"{
  "schemaVersion": "1.0",
  "description": "ssmx demo shells",
  "sessionType": "Standard_Stream",
  "inputs": {"shellProfile": {"linux": "PS1=\"(ssmx demo) $PS1\"", "windows": ""}}
}"#;

/// `ssmx demo` options.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the gateway and agent running for other clients instead of opening a shell;
    /// Ctrl-C stops them.
    #[arg(long)]
    serve: bool,
    /// Address the gateway listens on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Runs the demo.
pub async fn run(global: &crate::GlobalArgs, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::Builder::new()
        .prefix("ssmx-demo-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let log = std::fs::File::create(scratch.path().join(LOG_FILE))
        .context("cannot create the demo's log file")?;
    crate::logging::init_to(global.verbose, true, std::sync::Mutex::new(log), false);
    let documents = prepare_scratch(scratch.path())?;
    let credential = ApiCredential::generate("demo");
    ssmx_gateway::keep_relay_memory();
    let gateway = Gateway::builder()
        .config(Config {
            documents_dir: Some(documents),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Config::default()
        })
        .listen(args.listen)
        .database(Database::File(scratch.path().join("gateway.db")))
        .credential(credential.clone())
        .recordings_dir(scratch.path().join("recordings"))
        .start()
        .await
        .context("cannot start the gateway")?;
    let result = with_gateway(&gateway, &credential, scratch.path(), args.serve).await;
    gateway.shutdown().await;
    result
}

async fn with_gateway(
    gateway: &Gateway,
    credential: &ApiCredential,
    scratch: &Path,
    serve: bool,
) -> anyhow::Result<ExitCode> {
    let activation = gateway
        .create_activation(&NewActivation::default())
        .context("cannot create an activation")?;
    let registration = ssmx_agent::register(
        gateway.url(),
        &activation.activation_id,
        &activation.activation_code,
    )
    .await
    .context("the agent cannot register")?;
    let instance_id = registration.instance_id.clone();
    let mut config = AgentConfig::new(registration);
    config.log_dir = Some(scratch.join("sessions"));
    config.commands_dir = Some(scratch.join("commands"));

    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(Agent::new(config).run(async {
        let _ = agent_stopped.await;
    }));
    let result = async {
        anyhow::ensure!(
            gateway
                .wait_for_agent(&instance_id, AGENT_ONLINE_TIMEOUT)
                .await,
            "the agent did not connect to the gateway within {AGENT_ONLINE_TIMEOUT:?}"
        );
        print_banner(gateway, credential, &instance_id, scratch);
        if serve {
            eprintln!("Serving until Ctrl-C.");
            tokio::signal::ctrl_c()
                .await
                .context("cannot wait for Ctrl-C")?;
            return Ok(ExitCode::SUCCESS);
        }
        let manager = demo_client(gateway.url(), credential).await;
        crate::client::interactive_shell(&manager, &instance_id, None).await
    }
    .await;
    let _ = stop_agent.send(());
    match agent.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("agent stopped with an error: {e}"),
        Err(e) => tracing::warn!("agent task failed: {e}"),
    }
    result
}

/// The local port of the banner's port-forwarding example (to the metrics, through the agent).
const DEMO_FORWARD_PORT: u16 = 8022;
/// The demo's log, in the scratch directory.
const LOG_FILE: &str = "demo.log";

/// Puts `bin/ssmx` and `bin/session-manager-plugin` (links to this executable) and the shell
/// preferences document into `scratch`; the documents directory.
fn prepare_scratch(scratch: &Path) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let bin = scratch.join("bin");
    std::fs::create_dir(&bin).context("cannot create the demo's bin directory")?;
    for name in ["ssmx", crate::PLUGIN_NAME] {
        std::os::unix::fs::symlink(&exe, bin.join(name))
            .with_context(|| format!("cannot link {name} into {}", bin.display()))?;
    }
    let documents = scratch.join("documents");
    std::fs::create_dir(&documents).context("cannot create the demo's documents directory")?;
    std::fs::write(
        documents.join(format!(
            "{}.json",
            ssmx_gateway::documents::DEFAULT_DOCUMENT
        )),
        SHELL_PREFERENCES,
    )
    .context("cannot write the demo's session preferences")?;
    Ok(documents)
}

/// A client configured like any AWS client, pointed at the demo gateway.
async fn demo_client(url: &str, credential: &ApiCredential) -> SessionManager {
    let credentials = Credentials::new(
        &credential.access_key_id,
        &credential.secret_access_key,
        None,
        None,
        "ssmx-demo",
    );
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(DEMO_REGION))
        .endpoint_url(url)
        .credentials_provider(credentials)
        .load()
        .await;
    SessionManager::new(&config)
}

fn print_banner(gateway: &Gateway, credential: &ApiCredential, instance_id: &str, scratch: &Path) {
    let url = gateway.url();
    let metrics_port = gateway.metrics_addr().map_or(0, |a| a.port());
    eprintln!(
        "\
ssmx demo: a gateway at {url} and the agent {instance_id}, both in this process.
State, recordings and the log ({log}) are in {scratch}, removed when the demo ends.
The gateway's metrics: http://127.0.0.1:{metrics_port}/metrics

This terminal now opens a shell on the agent. `exit` (or Ctrl-D) ends it, and so does Enter
then `~.`; the gateway and the agent stop with it.

From another terminal, while this one is open:
  export PATH={scratch}/bin:$PATH AWS_DEFAULT_REGION={DEMO_REGION} AWS_REGION={DEMO_REGION}
  export AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret}
  ssmx --endpoint-url {url} shell {instance_id}
  ssmx --endpoint-url {url} exec {instance_id} -- uname -a
  ssmx --endpoint-url {url} run --instance-ids {instance_id} -- echo hello from Run Command
  ssmx --endpoint-url {url} port-forward {instance_id} --remote-port {metrics_port} --local-port {DEMO_FORWARD_PORT}   # then: curl http://127.0.0.1:{DEMO_FORWARD_PORT}/metrics
  aws ssm start-session --endpoint-url {url} --target {instance_id}   # with aws-cli installed
",
        scratch = scratch.display(),
        log = LOG_FILE,
        key = credential.access_key_id,
        secret = credential.secret_access_key,
    );
}
