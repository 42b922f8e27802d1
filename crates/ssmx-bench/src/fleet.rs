//! Run Command to a fleet: many agent identities hosted in this process (the real agent library,
//! each with its own registration, control channel, command engine and state directory), tagged
//! alike, and one SendCommand `echo` to all of them by tag with MaxConcurrency 100%. Measures the
//! time until every invocation is Success, the gateway's CPU time meanwhile, and the gateway's
//! memory per idle connected agent.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aws_sdk_ssm::types::{CommandStatus, ConnectionStatus, ResourceTypeForTagging, Tag, Target};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use ssmx_agent::{register, Agent, AgentConfig};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::cpus;
use super::stack::{memory, Api};

/// The tag every simulated node carries, which the command targets.
const FLEET_TAG: (&str, &str) = ("ssmx-bench", "fleet");
/// API calls in flight at once while setting up (registrations, tags, connection checks).
const SETUP_CALLS: usize = 16;
/// How long the fleet may take to connect, and the command to finish.
const DEADLINE: Duration = Duration::from_secs(300);
/// How often the command's status is read.
const POLL: Duration = Duration::from_millis(50);

/// What the fleet run measured.
#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    /// Agent identities connected, each with its own control channel.
    pub agents: usize,
    /// From the first registration until every control channel was open.
    pub connect_seconds: f64,
    /// SendCommand until every invocation was Success.
    pub command_seconds: f64,
    /// Gateway CPU seconds from SendCommand to the last Success.
    pub gateway_cpu_seconds: f64,
    /// Gateway RSS before the agents connected.
    pub gateway_rss_before_kib: u64,
    /// Gateway RSS with every agent connected and idle.
    pub gateway_rss_idle_kib: u64,
    /// (idle − before) / agents.
    pub gateway_kib_per_agent: f64,
}

/// Registers `agents` identities with one activation, runs an agent for each in this process,
/// waits until all are connected, then sends one command to all of them and follows it.
pub async fn measure(
    api: &Api,
    activation: (String, String),
    agents: usize,
    gateway_pid: u32,
    scratch: &Path,
) -> anyhow::Result<FleetReport> {
    let (activation_id, activation_code) = activation;
    let rss_before = memory(gateway_pid)?.rss_kib;
    let started = Instant::now();
    let registrations: Vec<_> = futures::stream::iter(0..agents)
        .map(|_| register(&api.url, &activation_id, &activation_code))
        .buffer_unordered(SETUP_CALLS)
        .try_collect()
        .await
        .context("registering the fleet's identities")?;
    let (stop, stopped) = watch::channel(false);
    let mut running = JoinSet::new();
    let mut ids = Vec::with_capacity(agents);
    for (n, registration) in registrations.into_iter().enumerate() {
        ids.push(registration.instance_id.clone());
        let mut config = AgentConfig::new(registration);
        config.commands_dir = Some(scratch.join(format!("fleet/{n}")));
        let mut stopped = stopped.clone();
        running.spawn(Agent::new(config).run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
    }
    let result = follow(api, &ids, started, rss_before, gateway_pid).await;
    let _ = stop.send(true);
    while running.join_next().await.is_some() {}
    result
}

async fn follow(
    api: &Api,
    ids: &[String],
    started: Instant,
    rss_before: u64,
    gateway_pid: u32,
) -> anyhow::Result<FleetReport> {
    let ssm = api.sdk();
    futures::stream::iter(ids)
        .map(|id| wait_connected(ssm, id))
        .buffer_unordered(SETUP_CALLS)
        .try_collect::<()>()
        .await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    let tag = Tag::builder().key(FLEET_TAG.0).value(FLEET_TAG.1).build()?;
    futures::stream::iter(ids)
        .map(|id| {
            ssm.add_tags_to_resource()
                .resource_type(ResourceTypeForTagging::ManagedInstance)
                .resource_id(id)
                .tags(tag.clone())
                .send()
        })
        .buffer_unordered(SETUP_CALLS)
        .try_collect::<Vec<_>>()
        .await
        .context("tagging the fleet")?;
    let rss_idle = memory(gateway_pid)?.rss_kib;

    let cpu_before = cpus::cpu_seconds(gateway_pid)?;
    let sent_at = Instant::now();
    let sent = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .targets(
            Target::builder()
                .key(format!("tag:{}", FLEET_TAG.0))
                .values(FLEET_TAG.1)
                .build(),
        )
        .parameters("commands", vec!["echo ok".to_owned()])
        .max_concurrency("100%")
        .max_errors("0")
        .send()
        .await
        .context("SendCommand to the fleet")?;
    let command_id = sent
        .command()
        .and_then(|c| c.command_id())
        .context("SendCommand answered without a CommandId")?
        .to_owned();
    let deadline = sent_at + DEADLINE;
    loop {
        let listed = ssm
            .list_commands()
            .command_id(&command_id)
            .send()
            .await
            .context("ListCommands")?;
        let command = listed
            .commands()
            .first()
            .context("the command is not listed")?;
        match command.status() {
            Some(CommandStatus::Success) if command.completed_count() as usize == ids.len() => {
                break
            }
            Some(CommandStatus::Pending | CommandStatus::InProgress | CommandStatus::Success) => {}
            other => bail!(
                "the fleet command ended {other:?}: {} of {} completed, {} errors",
                command.completed_count(),
                ids.len(),
                command.error_count()
            ),
        }
        if Instant::now() >= deadline {
            bail!("the fleet command did not finish within {DEADLINE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let command_seconds = sent_at.elapsed().as_secs_f64();
    let gateway_cpu_seconds = cpus::cpu_seconds(gateway_pid)? - cpu_before;
    Ok(FleetReport {
        agents: ids.len(),
        connect_seconds,
        command_seconds,
        gateway_cpu_seconds,
        gateway_rss_before_kib: rss_before,
        gateway_rss_idle_kib: rss_idle,
        gateway_kib_per_agent: rss_idle.saturating_sub(rss_before) as f64 / ids.len() as f64,
    })
}

async fn wait_connected(ssm: &aws_sdk_ssm::Client, instance_id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = ssm
            .get_connection_status()
            .target(instance_id)
            .send()
            .await
            .context("GetConnectionStatus")?;
        if status.status() == Some(&ConnectionStatus::Connected) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("agent {instance_id} did not connect within {DEADLINE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
