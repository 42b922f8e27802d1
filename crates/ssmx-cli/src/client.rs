//! Client subcommands: `shell`, `exec`, `port-forward`, `ssh-proxy`, `sessions`.
//!
//! Session output goes to stdout; every status line goes to stderr so output can be piped.

mod spec;
pub(crate) mod ui;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::{BehaviorVersion, Region};
use ssmx_client::{
    shell_join, PortForwarder, PortMode, SessionEnd, SessionEvent, SessionListState, SessionManager,
};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

use crate::GlobalArgs;
use spec::LocalForward;
use ssmx_client::socks::SocksProxy;
use ui::port::{ControlSignals, ListenAt, Listener};
use ui::Ui;

/// Region used with an explicit endpoint when nothing else names one (a gateway does not care).
const GATEWAY_DEFAULT_REGION: &str = "us-east-1";
/// Port forwarding to the target itself.
const PORT_DOCUMENT: &str = "AWS-StartPortForwardingSession";
/// Port forwarding to a host reachable from the target.
const REMOTE_HOST_PORT_DOCUMENT: &str = "AWS-StartPortForwardingSessionToRemoteHost";
/// Standard-stream forwarding to the target's SSH port.
const SSH_DOCUMENT: &str = "AWS-StartSSHSession";
/// Ctrl-C as the byte a terminal sends; `exec` forwards it to the remote command.
const INTERRUPT_BYTE: u8 = 0x03;
/// The exit status for a remote exit code outside 0..=255.
const OUT_OF_RANGE_EXIT: u8 = 255;

/// Status text on stderr, `~.` escape on.
const UI: Ui = Ui {
    status_to_stdout: false,
    escape: true,
    print_exit_code: false,
};

/// Arguments of `ssmx shell`.
#[derive(clap::Args)]
pub struct ShellArgs {
    /// Where and as whom the SSM API is called.
    #[command(flatten)]
    pub aws: crate::AwsOptions,
    /// Managed node to connect to (i-…, mi-…).
    pub target: String,
    /// Session document (default: the service's shell preferences document).
    #[arg(long)]
    pub document: Option<String>,
    /// Document parameter NAME=VALUE; repeat for several values or parameters.
    #[arg(long = "parameter", value_name = "NAME=VALUE")]
    pub parameters: Vec<String>,
    /// Do not treat `~.` after a newline as "end the session".
    #[arg(long)]
    pub no_escape: bool,
}

/// Arguments of `ssmx port-forward`.
#[derive(clap::Args)]
pub struct PortForwardArgs {
    /// Where and as whom the SSM API is called.
    #[command(flatten)]
    pub aws: crate::AwsOptions,
    /// Managed node to forward through.
    pub target: String,
    /// Destination port (on the target, or on --host).
    #[arg(long)]
    pub remote_port: Option<u16>,
    /// Local port (default: any free port).
    #[arg(long, default_value_t = 0)]
    pub local_port: u16,
    /// Destination host as seen from the target (default: the target itself).
    #[arg(long)]
    pub host: Option<String>,
    /// Local address to listen on (IPv4, IPv6 or name), or a Unix socket path.
    #[arg(long, value_name = "ADDR|PATH")]
    pub bind: Option<String>,
    /// More forwards like ssh: [bind:]local_port:host:remote_port or socket_path:host:remote_port.
    #[arg(short = 'L', value_name = "SPEC")]
    pub forwards: Vec<String>,
    /// SOCKS5 dynamic forwarding on [bind:]port, one session per destination.
    #[arg(short = 'D', value_name = "SPEC")]
    pub dynamic: Vec<String>,
}

/// Arguments of `ssmx ssh-proxy`.
#[derive(clap::Args)]
pub struct SshProxyArgs {
    /// Where and as whom the SSM API is called.
    #[command(flatten)]
    pub aws: crate::AwsOptions,
    /// Managed node to reach (use `%h` in ssh's ProxyCommand).
    pub target: String,
    /// SSH port on the target.
    #[arg(long, default_value_t = 22)]
    pub port: u16,
}

/// Arguments of `ssmx exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Where and as whom the SSM API is called.
    #[command(flatten)]
    pub aws: crate::AwsOptions,
    /// Managed node to run the command on.
    pub target: String,
    /// NonInteractiveCommands document with a `command` parameter.
    #[arg(long, default_value = ssmx_client::DEFAULT_EXEC_DOCUMENT)]
    pub document: String,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Arguments of `ssmx sessions`.
#[derive(clap::Args)]
pub struct SessionsArgs {
    /// Where and as whom the SSM API is called.
    #[command(flatten)]
    pub aws: crate::AwsOptions,
    /// Terminate this session instead of listing.
    #[arg(long, value_name = "SESSION_ID")]
    pub terminate: Option<String>,
    /// List ended sessions instead of active ones.
    #[arg(long)]
    pub history: bool,
}

/// The variables that point the SDK at an endpoint of the user's choosing (a gateway).
const ENDPOINT_ENV_VARS: &[&str] = &["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM"];

/// The AWS configuration from the global options and the usual environment.
pub(crate) async fn manager(global: &GlobalArgs) -> anyhow::Result<SessionManager> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = &global.profile {
        loader = loader.profile_name(profile);
    }
    let endpoint_configured = global.endpoint_url.is_some()
        || ENDPOINT_ENV_VARS
            .iter()
            .any(|v| std::env::var_os(v).is_some());
    match (&global.region, endpoint_configured) {
        (Some(region), _) => loader = loader.region(Region::new(region.clone())),
        // Against a gateway the region only scopes signatures: read it where users set it, not
        // from EC2's metadata service, whose lookups away from EC2 take seconds and warn.
        (None, true) => {
            let mut profile = ProfileFileRegionProvider::builder();
            if let Some(name) = &global.profile {
                profile = profile.profile_name(name);
            }
            loader = loader.region(
                RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(profile.build())
                    .or_else(Region::new(GATEWAY_DEFAULT_REGION)),
            );
        }
        (None, false) => {}
    }
    if let Some(url) = &global.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let mut config = loader.load().await;
    if config.region().is_none() {
        anyhow::ensure!(
            config.endpoint_url().is_some(),
            "no AWS region configured: pass --region or set AWS_REGION"
        );
        config = config
            .into_builder()
            .region(Region::new(GATEWAY_DEFAULT_REGION))
            .build();
    }
    Ok(SessionManager::new(&config))
}

/// `NAME=VALUE` pairs; a repeated name collects several values.
pub(crate) fn parse_parameters(pairs: &[String]) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("parameter {pair:?} is not NAME=VALUE"))?;
        anyhow::ensure!(!name.is_empty(), "parameter {pair:?} has no name");
        out.entry(name.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    Ok(out)
}

/// Runs the subcommand.
pub async fn shell(global: &GlobalArgs, args: ShellArgs) -> anyhow::Result<ExitCode> {
    let manager = manager(global).await?;
    let parameters = parse_parameters(&args.parameters)?;
    let ui = Ui {
        escape: !args.no_escape,
        ..UI
    };
    run_shell(
        &manager,
        &args.target,
        args.document.as_deref(),
        parameters,
        ui,
    )
    .await
}

/// An interactive shell on `target` with the default settings of `ssmx shell` (used by
/// `ssmx demo`).
pub async fn interactive_shell(
    manager: &SessionManager,
    target: &str,
    document: Option<&str>,
) -> anyhow::Result<ExitCode> {
    run_shell(manager, target, document, HashMap::new(), UI).await
}

async fn run_shell(
    manager: &SessionManager,
    target: &str,
    document: Option<&str>,
    parameters: HashMap<String, Vec<String>>,
    ui: Ui,
) -> anyhow::Result<ExitCode> {
    let session = manager.start_session(target, document, parameters).await?;
    ui.starting(session.id());
    let outcome = ui::shell::run(session, ui).await?;
    Ok(match (outcome.end, outcome.exit_code) {
        (_, Some(code)) => exit_status(code),
        (Some(SessionEnd::Closed { message: None }) | None, None) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn exit_status(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(OUT_OF_RANGE_EXIT))
}

/// Runs the subcommand: exits with the remote command's exit code.
pub async fn exec(global: &GlobalArgs, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let manager = manager(global).await?;
    let command = shell_join(&args.command);
    let parameters = HashMap::from([(ssmx_client::COMMAND_PARAMETER.to_owned(), vec![command])]);
    let session = manager
        .start_session(&args.target, Some(&args.document), parameters)
        .await?;
    let session_id = session.id().to_owned();
    tracing::info!(session_id, "command started");
    let (writer, mut reader) = session.split();
    let mut interrupts = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut interrupted = false;
    let end = loop {
        tokio::select! {
            event = reader.next_event() => match event {
                Some(Ok(SessionEvent::Output(b))) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Some(Ok(SessionEvent::StdErr(b))) => {
                    stderr.write_all(&b).await?;
                    stderr.flush().await?;
                }
                Some(Ok(SessionEvent::Ended(end))) => break end,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("session {session_id} stopped without a reason"),
            },
            _ = interrupts.recv() => {
                if interrupted {
                    // Second Ctrl-C: stop waiting for the command.
                    match tokio::time::timeout(ui::TERMINATE_TIMEOUT, writer.terminate()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!("ending session {session_id}: {e}"),
                        Err(_) => anyhow::bail!("session {session_id} did not end in time"),
                    }
                } else {
                    interrupted = true;
                    // The agent delivers it to the command as SIGINT.
                    if let Err(e) = writer.write(vec![INTERRUPT_BYTE]).await {
                        tracing::warn!("forwarding Ctrl-C: {e}");
                    }
                }
            }
        }
    };
    match (reader.exit_code(), end) {
        (Some(code), _) => Ok(exit_status(code)),
        (None, SessionEnd::Closed { message: None }) => {
            tracing::info!("the document reported no exit code");
            Ok(ExitCode::SUCCESS)
        }
        (None, end) => {
            UI.ended(&session_id, &end);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs the subcommand: a byte pipe for `ssh -o ProxyCommand='ssmx ssh-proxy %h --port %p'`.
pub async fn ssh_proxy(global: &GlobalArgs, args: SshProxyArgs) -> anyhow::Result<ExitCode> {
    let manager = manager(global).await?;
    let parameters = HashMap::from([("portNumber".to_owned(), vec![args.port.to_string()])]);
    let session = manager
        .start_session(&args.target, Some(SSH_DOCUMENT), parameters)
        .await?;
    tracing::info!(session_id = session.id(), "ssh proxy session started");
    let forwarder = PortForwarder::new(session).await?;
    anyhow::ensure!(
        forwarder.mode() == PortMode::StandardStream,
        "document {SSH_DOCUMENT} set up {:?} forwarding, not a byte stream",
        forwarder.mode()
    );
    ui::stdio::run(&forwarder, UI).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the subcommand: every forward runs until a signal or the end of any session.
pub async fn port_forward(global: &GlobalArgs, args: PortForwardArgs) -> anyhow::Result<ExitCode> {
    let mut forwards = Vec::new();
    if let Some(remote_port) = args.remote_port {
        forwards.push(LocalForward {
            listen: spec::parse_bind(args.bind.as_deref(), args.local_port),
            host: args.host.clone(),
            remote_port,
        });
    } else {
        anyhow::ensure!(
            args.host.is_none() && args.bind.is_none() && args.local_port == 0,
            "--host, --bind and --local-port need --remote-port"
        );
    }
    for spec in &args.forwards {
        forwards.push(spec::parse_local_forward(spec)?);
    }
    let dynamic = args
        .dynamic
        .iter()
        .map(|s| spec::parse_dynamic_forward(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        !forwards.is_empty() || !dynamic.is_empty(),
        "nothing to forward: give --remote-port, -L or -D"
    );

    let manager = manager(global).await?;
    let mut signals = ControlSignals::watch()?;
    let mut started = Vec::new();
    let mut running = JoinSet::new();
    for forward in forwards {
        let listener = Listener::bind(&forward.listen).await?;
        let forwarder = match start_forward(&manager, &args.target, &forward, &listener).await {
            Ok(f) => Arc::new(f),
            Err(e) => {
                terminate_all(&started).await;
                return Err(e);
            }
        };
        started.push(forwarder.clone());
        running.spawn(async move {
            let id = forwarder.session_id().to_owned();
            (id, ui::port::serve(forwarder, listener, UI).await)
        });
    }
    let mut proxies = Vec::new();
    let mut socks_servers = JoinSet::new();
    for at in dynamic {
        let ListenAt::Tcp { host, port } = &at else {
            anyhow::bail!("a SOCKS proxy listens on TCP");
        };
        let listener = tokio::net::TcpListener::bind((host.as_str(), *port))
            .await
            .with_context(|| format!("cannot listen on {host} port {port}"))?;
        let proxy = Arc::new(SocksProxy::new(
            manager.clone(),
            args.target.clone(),
            REMOTE_HOST_PORT_DOCUMENT.to_owned(),
        ));
        proxies.push(proxy.clone());
        UI.status(&format!(
            "SOCKS5 proxy on {} through {} (one session per destination).\n",
            listener.local_addr()?,
            args.target
        ));
        socks_servers.spawn(proxy.serve(listener));
    }

    let (status, already_reported) = tokio::select! {
        Some(done) = running.join_next() => match done {
            Ok((id, Ok(end))) => {
                UI.ended(&id, &end);
                let status = if end.is_normal() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
                (status, Some(id))
            }
            Ok((id, Err(e))) => {
                UI.status(&format!("session {id}: {e:#}\n"));
                (ExitCode::FAILURE, Some(id))
            }
            Err(e) => return Err(e.into()),
        },
        Some(done) = socks_servers.join_next() => {
            done?.context("accepting a SOCKS client")?;
            (ExitCode::FAILURE, None)
        }
        () = signals.recv() => {
            UI.terminate_signal();
            (ExitCode::SUCCESS, None)
        }
    };
    running.abort_all();
    socks_servers.abort_all();
    terminate_all(&started).await;
    for proxy in &proxies {
        terminate_all(&proxy.open_sessions().await).await;
    }
    for forwarder in &started {
        if already_reported.as_deref() != Some(forwarder.session_id()) {
            UI.ended(
                forwarder.session_id(),
                &SessionEnd::Closed { message: None },
            );
        }
    }
    Ok(status)
}

/// Starts the session for one forward; the listener is already bound so its real port can be
/// passed as `localPortNumber`.
async fn start_forward(
    manager: &SessionManager,
    target: &str,
    forward: &LocalForward,
    listener: &Listener,
) -> anyhow::Result<PortForwarder> {
    let local_port = match forward.listen {
        ListenAt::Tcp { .. } => listener.local_name(),
        ListenAt::Unix(_) => "0".to_owned(),
    };
    let mut parameters = HashMap::from([
        (
            "portNumber".to_owned(),
            vec![forward.remote_port.to_string()],
        ),
        ("localPortNumber".to_owned(), vec![local_port]),
    ]);
    let document = match &forward.host {
        Some(host) => {
            parameters.insert("host".to_owned(), vec![host.clone()]);
            REMOTE_HOST_PORT_DOCUMENT
        }
        None => PORT_DOCUMENT,
    };
    let session = manager
        .start_session(target, Some(document), parameters)
        .await?;
    let session_id = session.id().to_owned();
    UI.starting(&session_id);
    let forwarder = match PortForwarder::new(session).await {
        Ok(f) => f,
        Err(e) => {
            if let Err(t) = manager.terminate_session(&session_id).await {
                tracing::warn!("ending session {session_id}: {t}");
            }
            return Err(e.into());
        }
    };
    if forwarder.mode() == PortMode::StandardStream {
        ui::port::terminate(&forwarder).await;
        anyhow::bail!("document {document} is not a local port forwarding document");
    }
    Ok(forwarder)
}

async fn terminate_all(forwarders: &[Arc<PortForwarder>]) {
    for f in forwarders {
        if !f.is_closed() {
            ui::port::terminate(f).await;
        }
    }
}

/// Runs the subcommand: lists sessions (tab-separated, one per line) or terminates one.
pub async fn sessions(global: &GlobalArgs, args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let manager = manager(global).await?;
    if let Some(id) = &args.terminate {
        manager.terminate_session(id).await?;
        println!("Session {id} terminated.");
        return Ok(ExitCode::SUCCESS);
    }
    let state = if args.history {
        SessionListState::History
    } else {
        SessionListState::Active
    };
    let list = manager.sessions(state).await?;
    crate::table::print(
        [
            "SESSION ID",
            "TARGET",
            "STATUS",
            "STARTED",
            "ENDED",
            "OWNER",
            "DOCUMENT",
        ],
        list.into_iter().map(|s| {
            [
                s.session_id,
                s.target,
                s.status,
                s.start_date.map(iso8601).unwrap_or_default(),
                s.end_date.map(iso8601).unwrap_or_default(),
                s.owner,
                s.document_name,
            ]
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub(crate) fn iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_collect_repeated_names() {
        let p = parse_parameters(&["a=1".into(), "a=2".into(), "b=x=y".into()]).unwrap();
        assert_eq!(p["a"], ["1", "2"]);
        assert_eq!(p["b"], ["x=y"]);
        assert!(parse_parameters(&["novalue".into()]).is_err());
        assert!(parse_parameters(&["=v".into()]).is_err());
    }

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_795_309_948), "2026-11-22T01:12:28Z");
    }

    #[test]
    fn exit_status_clamps() {
        assert_eq!(exit_status(3), ExitCode::from(3));
        assert_eq!(exit_status(-1), ExitCode::from(OUT_OF_RANGE_EXIT));
    }
}
