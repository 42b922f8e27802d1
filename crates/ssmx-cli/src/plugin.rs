//! `session-manager-plugin`: a drop-in replacement for the official plugin that
//! `aws ssm start-session` runs (PROTOCOL.md §11): the same arguments, environment variable,
//! texts and exit statuses, for shell, port-forwarding and SSH documents.
//!
//! Built as its own small executable, and also inside `ssmx`, which runs it when it is invoked
//! under the plugin's name (a link named `session-manager-plugin`, as `ssmx demo` makes).

use std::process::ExitCode;

use aws_config::{BehaviorVersion, Region};
use ssmx_client::{PortForwarder, PortMode, SessionManager, SessionTicket, SessionType};
use ssmx_protocol::version::CLIENT_VERSION;

use crate::logging;
use crate::ui::{self, port::ControlSignals, port::ListenAt, port::Listener, Ui};

/// aws-cli passes this name (instead of the JSON) when the plugin is newer than 1.2.497.0.
const RESPONSE_ENV_VAR: &str = "AWS_SSM_START_SESSION_RESPONSE";
/// The only operation aws-cli asks for.
const START_SESSION: &str = "StartSession";
/// Argument count (with argv[0]) of the legacy form: response, region, operation.
const LEGACY_ARGUMENT_COUNT: usize = 4;
/// The official plugin's answer to a KMS encryption request in the legacy form.
const LEGACY_ENCRYPTION_REFUSAL: &str = "Installed version of CLI does not support Session Manager encryption feature. Please upgrade to the latest version of your CLI (e.g., AWS CLI).";
/// Overrides the host port-forwarding listens on, as in the official plugin.
const LOCAL_HOST_ENV_VAR: &str = "SSM_PLUGIN_LOCAL_HOST";
/// Default listen host of port forwarding, as in the official plugin.
const DEFAULT_LOCAL_HOST: &str = "localhost";
/// Region for the plugin's own API calls when aws-cli passed none.
const FALLBACK_REGION: &str = "us-east-1";
/// Statuses the official plugin prints to stdout; no escape key (it has none).
const UI: Ui = Ui {
    status_to_stdout: true,
    escape: false,
    print_exit_code: true,
};

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    /// No arguments.
    Installed,
    /// `--version`.
    Version,
    /// `--ssmx-version`: whose plugin this is.
    SsmxVersion,
    /// One or two arguments that are not `--version`.
    UnknownOperation(String),
    /// An operation other than StartSession.
    InvalidOperation,
    /// Start a session.
    Start(StartArgs),
}

/// The arguments of a StartSession invocation (argv[1..=6]; missing ones are empty).
#[derive(Debug, PartialEq, Eq)]
struct StartArgs {
    /// The StartSession response JSON (argv[1], or the environment variable it names).
    response: String,
    region: String,
    profile: String,
    /// The StartSession request parameters JSON (argv[5]); `None` when not passed.
    request: Option<String>,
    endpoint: String,
    /// The legacy 4-argument form, whose callers cannot do KMS encryption.
    legacy: bool,
}

/// Classifies argv the way the official plugin does. `env` reads the response variable.
fn parse_args(args: &[String], env: impl Fn(&str) -> Option<String>) -> Invocation {
    match args.len() {
        0 | 1 => return Invocation::Installed,
        2 if args[1] == "--version" => return Invocation::Version,
        2 if args[1] == "--ssmx-version" => return Invocation::SsmxVersion,
        n if n < LEGACY_ARGUMENT_COUNT => return Invocation::UnknownOperation(args[1].clone()),
        _ => {}
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    if arg(3) != START_SESSION {
        return Invocation::InvalidOperation;
    }
    let response = if args[1].starts_with(RESPONSE_ENV_VAR) {
        env(&args[1]).unwrap_or_default()
    } else {
        args[1].clone()
    };
    Invocation::Start(StartArgs {
        response,
        region: arg(2),
        profile: arg(4),
        request: args.get(5).cloned(),
        endpoint: arg(6),
        legacy: args.len() == LEGACY_ARGUMENT_COUNT,
    })
}

/// Why the start arguments cannot be used; the official plugin crashes on the second kind.
#[derive(Debug, PartialEq, Eq)]
enum BadStart {
    /// The response is not JSON of the expected shape (the official plugin prints and exits 0).
    Unreadable(String),
    /// A required value is missing (the official plugin panics).
    Missing(String),
}

/// The session ticket and target from the start arguments.
fn ticket_and_target(args: &StartArgs) -> Result<(SessionTicket, String), BadStart> {
    let response: serde_json::Value =
        serde_json::from_str(&args.response).map_err(|e| BadStart::Unreadable(e.to_string()))?;
    let field = |name: &str| match response.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BadStart::Unreadable(format!("{name} is not a string"))),
        None => Err(BadStart::Missing(format!(
            "the StartSession response has no {name}"
        ))),
    };
    let ticket = SessionTicket {
        session_id: field("SessionId")?,
        token_value: field("TokenValue")?,
        stream_url: field("StreamUrl")?,
    };
    let target = match &args.request {
        None => String::new(),
        Some(request) => serde_json::from_str::<serde_json::Value>(request)
            .ok()
            .and_then(|r| r.get("Target")?.as_str().map(str::to_owned))
            .ok_or_else(|| {
                BadStart::Missing(
                    "the StartSession parameters (argument 5) have no Target".to_owned(),
                )
            })?,
    };
    Ok((ticket, target))
}

/// Runs the plugin on this process's arguments.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let invocation = parse_args(&args, |name| std::env::var(name).ok());
    if args.get(1).is_some_and(|a| a.starts_with(RESPONSE_ENV_VAR)) {
        // Keep the token out of the environment of anything we start (the official plugin
        // does the same). No other thread exists yet.
        std::env::remove_var(&args[1]);
    }
    let start = match invocation {
        Invocation::Installed => {
            print!("\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n");
            return ExitCode::SUCCESS;
        }
        Invocation::Version => {
            println!("{CLIENT_VERSION}");
            return ExitCode::SUCCESS;
        }
        Invocation::SsmxVersion => {
            println!(
                "ssmx {} session-manager-plugin, compatible with the official plugin {CLIENT_VERSION}",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Invocation::UnknownOperation(op) => {
            print!("\nUnknown operation {op}. \nUse session-manager-plugin --version to check the version.\n\n");
            return ExitCode::SUCCESS;
        }
        Invocation::InvalidOperation => {
            print!("Invalid Operation");
            return ExitCode::SUCCESS;
        }
        Invocation::Start(start) => start,
    };
    let (ticket, target) = match ticket_and_target(&start) {
        Ok(t) => t,
        Err(BadStart::Unreadable(e)) => {
            println!("Cannot perform start session: {e}");
            return ExitCode::SUCCESS;
        }
        Err(BadStart::Missing(e)) => {
            println!("Cannot perform start session: {e}");
            return ExitCode::FAILURE;
        }
    };
    // No verbosity option: the official plugin has none.
    logging::init(0, false);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            println!("Cannot perform start session: cannot start the async runtime: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let result = runtime.block_on(run(start, ticket, target));
    // stdin is read on a blocking thread that cannot be interrupted; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    if let Err(e) = result {
        println!("Cannot perform start session: {e:#}");
    }
    // The official plugin exits 0 once a session was attempted, whatever happened.
    ExitCode::SUCCESS
}

async fn run(start: StartArgs, ticket: SessionTicket, target: String) -> anyhow::Result<()> {
    let region = if start.region.is_empty() {
        FALLBACK_REGION.to_owned()
    } else {
        start.region.clone()
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region));
    if !start.profile.is_empty() {
        loader = loader.profile_name(&start.profile);
    }
    if !start.endpoint.is_empty() {
        loader = loader.endpoint_url(&start.endpoint);
    }
    let mut builder = SessionManager::builder();
    if start.legacy {
        builder = builder.refuse_encryption(LEGACY_ENCRYPTION_REFUSAL);
    }
    let manager = builder.build(&loader.load().await);

    UI.starting(&ticket.session_id);
    let session_id = ticket.session_id.clone();
    let mut session = manager.attach(ticket, &target).await?;
    let info = match session.started().await {
        Ok(info) => info,
        Err(ssmx_client::Error::EndedBeforeStart(end)) => {
            UI.ended(&session_id, &end);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if info.session_type != SessionType::Port {
        let outcome = ui::shell::run(session, UI).await?;
        tracing::info!(end = ?outcome.end, exit_code = ?outcome.exit_code, "session over");
        return Ok(());
    }
    let forwarder = std::sync::Arc::new(PortForwarder::new(session).await?);
    if forwarder.mode() == PortMode::StandardStream {
        return ui::stdio::run(&forwarder, UI).await;
    }
    let params = forwarder.parameters();
    let at = if params.local_connection_type == "unix" {
        ListenAt::Unix(params.local_unix_socket.clone().into())
    } else {
        let port = match params.local_port_number.as_str() {
            "" => 0,
            p => p
                .parse()
                .map_err(|_| anyhow::anyhow!("localPortNumber {p:?} is not a port number"))?,
        };
        let host = std::env::var(LOCAL_HOST_ENV_VAR)
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_LOCAL_HOST.to_owned());
        ListenAt::Tcp { host, port }
    };
    let listener = Listener::bind(&at).await?;
    let mut signals = ControlSignals::watch()?;
    tokio::select! {
        end = ui::port::serve(forwarder.clone(), listener, UI) => UI.ended(forwarder.session_id(), &end?),
        () = signals.recv() => {
            UI.terminate_signal();
            ui::port::terminate(&forwarder).await;
            UI.ended(forwarder.session_id(), &ssmx_client::SessionEnd::Closed { message: None });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const RESPONSE: &str = r#"{"SessionId": "s-1", "TokenValue": "tok", "StreamUrl": "ws://127.0.0.1:1/v1/data-channel/s-1"}"#;

    #[test]
    fn argument_counts_follow_the_official_plugin() {
        let none = |_: &str| None;
        assert_eq!(parse_args(&argv(&["p"]), none), Invocation::Installed);
        assert_eq!(
            parse_args(&argv(&["p", "--version"]), none),
            Invocation::Version
        );
        assert_eq!(
            parse_args(&argv(&["p", "--ssmx-version"]), none),
            Invocation::SsmxVersion
        );
        assert_eq!(
            parse_args(&argv(&["p", "x"]), none),
            Invocation::UnknownOperation("x".into())
        );
        assert_eq!(
            parse_args(&argv(&["p", "x", "y"]), none),
            Invocation::UnknownOperation("x".into())
        );
        assert_eq!(
            parse_args(&argv(&["p", RESPONSE, "r", "Other"]), none),
            Invocation::InvalidOperation
        );
        let Invocation::Start(legacy) =
            parse_args(&argv(&["p", RESPONSE, "eu-west-1", "StartSession"]), none)
        else {
            panic!("legacy form not recognised")
        };
        assert_eq!(legacy.region, "eu-west-1");
        assert!(legacy.legacy);
        assert_eq!(legacy.request, None);
        assert_eq!(legacy.endpoint, "");
    }

    #[test]
    fn response_comes_from_the_named_variable() {
        let env = |name: &str| (name == RESPONSE_ENV_VAR).then(|| RESPONSE.to_owned());
        let Invocation::Start(s) = parse_args(
            &argv(&[
                "p",
                RESPONSE_ENV_VAR,
                "us-east-1",
                "StartSession",
                "",
                r#"{"Target": "mi-0123456789abcdef0"}"#,
                "http://127.0.0.1:8080",
            ]),
            env,
        ) else {
            panic!("start form not recognised")
        };
        assert_eq!(s.response, RESPONSE);
        let (ticket, target) = ticket_and_target(&s).unwrap();
        assert_eq!(ticket.session_id, "s-1");
        assert_eq!(target, "mi-0123456789abcdef0");
        assert_eq!(s.endpoint, "http://127.0.0.1:8080");
        assert!(!s.legacy);
    }

    #[test]
    fn bad_start_arguments_are_errors_not_panics() {
        let start = |response: &str, request: Option<&str>| StartArgs {
            response: response.into(),
            region: String::new(),
            profile: String::new(),
            request: request.map(str::to_owned),
            endpoint: String::new(),
            legacy: false,
        };
        assert!(matches!(
            ticket_and_target(&start("not json", None)),
            Err(BadStart::Unreadable(_))
        ));
        assert!(matches!(
            ticket_and_target(&start(r#"{"SessionId":"s"}"#, None)),
            Err(BadStart::Missing(_))
        ));
        assert!(matches!(
            ticket_and_target(&start(RESPONSE, Some("{}"))),
            Err(BadStart::Missing(_))
        ));
        assert!(matches!(
            ticket_and_target(&start(RESPONSE, Some(r#"{"Target": 5}"#))),
            Err(BadStart::Missing(_))
        ));
        assert!(ticket_and_target(&start(RESPONSE, None)).is_ok());
    }
}
