//! `ssmx gateway`: run the self-hosted gateway, manage activations and registered instances,
//! replay recordings.
//!
//! `activation create` and `replay` work on the gateway's database directly (no gateway need
//! run); `activation list`, `activation delete` and `instance deregister` call the SSM API of a
//! running gateway (`--endpoint-url`), so that it cuts off what they revoke at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use aws_sdk_ssm::types::Activation;
use ssmx_client::Error;
use ssmx_gateway::config::{Config, Database};
use ssmx_gateway::store::{NewActivation, Store};
use ssmx_gateway::Gateway;

use crate::client::{iso8601, manager};

/// `ssmx gateway` subcommands.
#[derive(clap::Subcommand)]
pub enum GatewayCommand {
    /// Serve the SSM API, the MGS WebSockets and agent registration on one port.
    #[command(
        after_help = "Examples:\n  ssmx gateway run --config /etc/ssmx/gateway.toml\n  ssmx gateway run --listen 127.0.0.1:8080 --db gateway.db"
    )]
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:8080 (127.0.0.1:0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// SQLite database file, or `:memory:`.
        #[arg(long)]
        db: Option<String>,
        /// Write the gateway's URL to this file once it is listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Manage agent activations.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ssmx gateway activation create --config gateway.toml\n  ssmx gateway activation list"
    )]
    Activation(ActivationCommand),
    /// Manage registered instances (through the running gateway's API).
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  ssmx gateway instance deregister mi-0123456789abcdef0")]
    Instance(InstanceCommand),
    /// Check access policies.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  ssmx gateway policy check --config gateway.toml --user alice --action ssm:StartSession --resource '*'"
    )]
    Policy(PolicyCommand),
    /// Play a recorded shell session back with its original timing.
    #[command(
        after_help = "Examples:\n  ssmx gateway replay alice-0123456789abcdef0\n  ssmx gateway replay alice-0123456789abcdef0 --speed 4 --max-pause 1"
    )]
    Replay {
        /// The session id.
        session_id: String,
        /// Configuration file (TOML), for the database and recordings locations.
        #[arg(long)]
        config: Option<PathBuf>,
        /// SQLite database file.
        #[arg(long)]
        db: Option<String>,
        /// Playback speed factor (2 plays twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause between two outputs, in seconds.
        #[arg(long)]
        max_pause: Option<f64>,
    },
}

/// `ssmx gateway activation` subcommands.
#[derive(clap::Subcommand)]
pub enum ActivationCommand {
    /// Create an activation; prints {"ActivationId","ActivationCode"} as JSON.
    #[command(after_help = "Examples:\n  ssmx gateway activation create --config gateway.toml")]
    Create {
        /// Configuration file (TOML), for the database location.
        #[arg(long)]
        config: Option<PathBuf>,
        /// SQLite database file.
        #[arg(long)]
        db: Option<String>,
        /// How many agents may register with it.
        #[arg(long)]
        registration_limit: Option<u32>,
        /// Hours until it expires (default 24, at most 720).
        #[arg(long)]
        expires_in_hours: Option<u64>,
        /// Free-text description.
        #[arg(long)]
        description: Option<String>,
        /// Name given to instances registered with it.
        #[arg(long)]
        default_instance_name: Option<String>,
    },
    /// List activations with their use and expiry (DescribeActivations).
    #[command(after_help = "Examples:\n  ssmx gateway activation list --json")]
    List {
        /// Where and as whom the SSM API is called.
        #[command(flatten)]
        aws: crate::AwsOptions,
        /// Print them as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Delete an activation: no more instances register with it (DeleteActivation).
    #[command(
        after_help = "Examples:\n  ssmx gateway activation delete 4f1b2c3d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
    )]
    Delete {
        /// Where and as whom the SSM API is called.
        #[command(flatten)]
        aws: crate::AwsOptions,
        /// The activation id.
        activation_id: String,
    },
}

/// `ssmx gateway policy` subcommands.
#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Say whether a user may perform an action on a resource, and which statement of which
    /// policy decides, as IAM's policy simulator does. Exits 0 when allowed, 1 when denied.
    #[command(
        after_help = "Examples:\n  ssmx gateway policy check --config gateway.toml --user alice --action ssm:StartSession --resource arn:aws:ssm:us-east-1:000000000000:managed-instance/mi-0123456789abcdef0 --context ssm:resourceTag/env=prod"
    )]
    Check {
        /// Configuration file (TOML) with the users, groups and policies.
        #[arg(long)]
        config: PathBuf,
        /// The user.
        #[arg(long)]
        user: String,
        /// The action, e.g. ssm:StartSession.
        #[arg(long)]
        action: String,
        /// The resource's ARN (`*` for operations without resource-level permissions).
        #[arg(long, default_value = "*")]
        resource: String,
        /// A condition key of the request, e.g. ssm:resourceTag/env=prod (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
}

/// `ssmx gateway instance` subcommands.
#[derive(clap::Subcommand)]
pub enum InstanceCommand {
    /// Deregister an instance: its credentials stop working and its control channel is closed.
    #[command(
        after_help = "Examples:\n  ssmx --endpoint-url http://127.0.0.1:8080 gateway instance deregister mi-0123456789abcdef0"
    )]
    Deregister {
        /// Where and as whom the SSM API is called.
        #[command(flatten)]
        aws: crate::AwsOptions,
        /// The instance (mi-…).
        instance_id: String,
    },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

fn database(config: &Config, db: Option<&str>) -> anyhow::Result<Database> {
    match db {
        Some(db) => Ok(Database::parse(db)),
        None => Ok(config.database()?),
    }
}

/// Runs an `ssmx gateway` subcommand.
pub async fn run(global: &crate::GlobalArgs, cmd: GatewayCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GatewayCommand::Run {
            config,
            listen,
            db,
            ready_file,
        } => {
            ssmx_gateway::keep_relay_memory();
            let config_path = config;
            let config = load_config(config_path.as_deref())?;
            let database = database(&config, db.as_deref())?;
            let mut builder = Gateway::builder().config(config).database(database);
            if let Some(listen) = listen {
                builder = builder.listen(listen);
            }
            let gateway = builder.start().await?;
            println!("listening on {}", gateway.url());
            if let Some(path) = ready_file {
                std::fs::write(&path, gateway.url())
                    .with_context(|| format!("cannot write the ready file {}", path.display()))?;
            }
            serve_until_stopped(&gateway, config_path.as_deref()).await?;
            gateway.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Policy(PolicyCommand::Check {
            config,
            user,
            action,
            resource,
            context,
        }) => policy_check(&config, &user, &action, &resource, &context),
        GatewayCommand::Activation(ActivationCommand::Create {
            config,
            db,
            registration_limit,
            expires_in_hours,
            description,
            default_instance_name,
        }) => {
            let config = load_config(config.as_deref())?;
            let store = Store::open(&database(&config, db.as_deref())?)?;
            if let Some(limit) = registration_limit {
                anyhow::ensure!(
                    (1..=ssmx_gateway::store::MAX_REGISTRATION_LIMIT).contains(&limit),
                    "--registration-limit must be 1 to {}",
                    ssmx_gateway::store::MAX_REGISTRATION_LIMIT
                );
            }
            let expires_at = match expires_in_hours {
                None => None,
                Some(h) => {
                    let lifetime = Duration::from_secs(h * 3600);
                    anyhow::ensure!(
                        h > 0 && lifetime <= ssmx_gateway::store::MAX_ACTIVATION_LIFETIME,
                        "--expires-in-hours must be 1 to 720"
                    );
                    Some(SystemTime::now() + lifetime)
                }
            };
            let activation = store.create_activation(&NewActivation {
                description: description.unwrap_or_default(),
                default_instance_name: default_instance_name.unwrap_or_default(),
                registration_limit,
                expires_at,
                ..Default::default()
            })?;
            store.audit("cli", "CreateActivation", "", "", &activation.activation_id)?;
            println!("{}", serde_json::to_string(&activation)?);
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Activation(ActivationCommand::List { aws, json }) => {
            list_activations(&ssm(&global.with(&aws)).await?, json).await
        }
        GatewayCommand::Activation(ActivationCommand::Delete { aws, activation_id }) => {
            ssm(&global.with(&aws))
                .await?
                .delete_activation()
                .activation_id(&activation_id)
                .send()
                .await
                .map_err(|e| Error::from_api("DeleteActivation", &activation_id, e))?;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Instance(InstanceCommand::Deregister { aws, instance_id }) => {
            ssm(&global.with(&aws))
                .await?
                .deregister_managed_instance()
                .instance_id(&instance_id)
                .send()
                .await
                .map_err(|e| Error::from_api("DeregisterManagedInstance", &instance_id, e))?;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Replay {
            session_id,
            config,
            db,
            speed,
            max_pause,
        } => {
            anyhow::ensure!(
                speed.is_finite() && speed > 0.0,
                "--speed must be a positive number"
            );
            let config = load_config(config.as_deref())?;
            let database = database(&config, db.as_deref())?;
            // A gateway that never ran has no database: look for the recording by its name,
            // and create nothing.
            let recorded = match &database {
                Database::File(path) if !path.exists() => None,
                _ => Store::open(&database)?
                    .session(&session_id)?
                    .and_then(|s| s.recording),
            };
            let path = match recorded {
                Some(path) => PathBuf::from(path),
                None => config.recordings_dir()?.join(format!("{session_id}.cast")),
            };
            anyhow::ensure!(
                path.extension().and_then(|e| e.to_str()) == Some("cast"),
                "session {session_id} is not a shell session; its byte log is {}",
                path.display()
            );
            let max_pause = max_pause
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let mut stdout = tokio::io::stdout();
            ssmx_gateway::recording::replay(&path, speed, max_pause, &mut stdout).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn ssm(global: &crate::GlobalArgs) -> anyhow::Result<aws_sdk_ssm::Client> {
    Ok(manager(global).await?.ssm().clone())
}

/// `ssmx gateway activation list`: one line an activation, or JSON.
async fn list_activations(ssm: &aws_sdk_ssm::Client, json: bool) -> anyhow::Result<ExitCode> {
    let activations: Vec<Activation> = ssm
        .describe_activations()
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Error::from_api("DescribeActivations", "", e))?;
    let time = |t: Option<&aws_sdk_ssm::primitives::DateTime>| t.map(|t| iso8601(t.secs()));
    if json {
        let listed: Vec<serde_json::Value> = activations
            .iter()
            .map(|a| {
                serde_json::json!({
                    "ActivationId": a.activation_id(),
                    "Description": a.description(),
                    "DefaultInstanceName": a.default_instance_name(),
                    "RegistrationLimit": a.registration_limit(),
                    "RegistrationsCount": a.registrations_count(),
                    "ExpirationDate": time(a.expiration_date()),
                    "Expired": a.expired(),
                    "CreatedDate": time(a.created_date()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("ACTIVATION ID\tREGISTERED\tLIMIT\tEXPIRES\tSTATE\tDESCRIPTION");
    for a in &activations {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            a.activation_id().unwrap_or_default(),
            a.registrations_count().unwrap_or_default(),
            a.registration_limit()
                .map_or("-".to_owned(), |l| l.to_string()),
            time(a.expiration_date()).unwrap_or_else(|| "-".to_owned()),
            if a.expired() { "expired" } else { "active" },
            a.description().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_check(
    config: &Path,
    user: &str,
    action: &str,
    resource: &str,
    context: &[String],
) -> anyhow::Result<ExitCode> {
    use ssmx_gateway::access::describe_statement;
    use ssmx_gateway::access::policy::{Decision, Request};
    let access = Config::load(config)?.access_control()?;
    let principal = access.principal(user).with_context(|| {
        format!(
            "user {user:?} is in neither [[users]] nor [[credentials]] of {}",
            config.display()
        )
    })?;
    let mut keys = principal.context();
    for pair in context {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--context {pair:?} must be KEY=VALUE"))?;
        keys.insert(key, value);
    }
    let request = Request {
        action,
        resource,
        context: &keys,
    };
    let evaluation = principal.evaluate(&request);
    match (evaluation.decision, evaluation.statement) {
        (Decision::Allow, Some((policy, statement))) => {
            println!(
                "allowed: {} allows {action} on {resource}",
                describe_statement(policy, statement)
            );
            Ok(ExitCode::SUCCESS)
        }
        (Decision::ExplicitDeny, Some((policy, statement))) => {
            println!(
                "denied: {} denies {action} on {resource} (explicit deny)",
                describe_statement(policy, statement)
            );
            Ok(ExitCode::FAILURE)
        }
        _ => {
            println!("denied: no statement of {user}'s policies allows {action} on {resource} (implicit deny)");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Waits for SIGTERM or SIGINT; on SIGHUP re-reads the configuration file and reloads the
/// credentials, users and policies (an invalid file is reported and changes nothing).
#[cfg(unix)]
async fn serve_until_stopped(gateway: &Gateway, config_path: Option<&Path>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => return r,
            _ = hangup.recv() => {
                let Some(path) = config_path else {
                    tracing::warn!("SIGHUP ignored: the gateway was started without --config");
                    continue;
                };
                match Config::load(path).map_err(anyhow::Error::from).and_then(|c| Ok(gateway.reload_access(&c)?)) {
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "configuration not reloaded; the previous one stays in force"),
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn serve_until_stopped(_: &Gateway, _: Option<&Path>) -> anyhow::Result<()> {
    wait_for_signal().await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}
