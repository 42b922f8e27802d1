//! `ssmx demo`: a gateway and an agent in this process, on loopback, with a temporary database,
//! and an interactive shell through the full protocol. Everything is torn down on exit.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use ssmx_agent::{Agent, AgentConfig};
use ssmx_client::SessionManager;
use ssmx_gateway::config::{ApiCredential, Database};
use ssmx_gateway::store::NewActivation;
use ssmx_gateway::Gateway;
use tokio::sync::oneshot;

/// Region the demo gateway signs and answers in.
const DEMO_REGION: &str = "us-east-1";
/// How long the agent may take to connect its control channel.
const AGENT_ONLINE_TIMEOUT: Duration = Duration::from_secs(20);

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
pub async fn run(_global: &crate::GlobalArgs, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::Builder::new()
        .prefix("ssmx-demo-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let credential = ApiCredential::generate("demo");
    ssmx_gateway::keep_relay_memory();
    let gateway = Gateway::builder()
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
        print_banner(gateway.url(), credential, &instance_id, scratch);
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

fn print_banner(url: &str, credential: &ApiCredential, instance_id: &str, scratch: &Path) {
    eprintln!(
        "\
ssmx demo: gateway {url}, agent {instance_id} (state in {scratch})

Reach it from another terminal:
  export AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} AWS_REGION={DEMO_REGION}
  aws ssm start-session --endpoint-url {url} --target {instance_id}
  ssmx --endpoint-url {url} shell {instance_id}
  ssmx --endpoint-url {url} port-forward {instance_id} --remote-port 22 --local-port 2222
  ssmx --endpoint-url {url} exec {instance_id} -- uname -a
",
        scratch = scratch.display(),
        key = credential.access_key_id,
        secret = credential.secret_access_key,
    );
}
