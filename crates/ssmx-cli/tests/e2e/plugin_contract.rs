//! The `session-manager-plugin` binary against the aws-cli contract (PROTOCOL.md §11): argument
//! counts, texts, exit statuses, the environment-variable and legacy forms, and errors instead
//! of crashes on bad input.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ssmx_protocol::payload::{from_json, ChannelClosed, OpenDataChannelInput};
use ssmx_protocol::version::CLIENT_VERSION;
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const PLUGIN: &str = env!("CARGO_BIN_EXE_session-manager-plugin");
/// Hang guard for one plugin run (not a timing goal).
const STEP: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> Output {
    Command::new(PLUGIN)
        .args(args)
        .env_remove("AWS_SSM_START_SESSION_RESPONSE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn no_arguments_says_it_is_installed() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        "\nThe Session Manager plugin was installed successfully. Use the AWS CLI to start a session.\n\n"
    );
}

#[test]
fn version_is_newer_than_the_env_var_threshold() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert_eq!(text, format!("{CLIENT_VERSION}\n"));
    // aws-cli strips whitespace, then compares numerically with 1.2.497.0.
    let parts: Vec<u64> = text.trim().split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 4);
    assert!(parts > vec![1, 2, 497, 0]);
}

#[test]
fn one_or_two_other_arguments_are_an_unknown_operation() {
    for args in [&["frobnicate"][..], &["frobnicate", "us-east-1"][..]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            stdout(&out),
            "\nUnknown operation frobnicate. \nUse session-manager-plugin --version to check the version.\n\n"
        );
    }
}

#[test]
fn operations_other_than_start_session_are_refused() {
    let out = run(&["{}", "us-east-1", "DescribeSessions"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "Invalid Operation");
}

#[test]
fn an_unreadable_response_is_reported() {
    let out = run(&["not json", "us-east-1", "StartSession"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).starts_with("Cannot perform start session: "),
        "{}",
        stdout(&out)
    );
}

#[test]
fn missing_keys_and_target_are_errors_not_crashes() {
    let missing_token = r#"{"SessionId": "s-1", "StreamUrl": "ws://127.0.0.1:9/x"}"#;
    let out = run(&[missing_token, "us-east-1", "StartSession"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("TokenValue"), "{}", stdout(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    let response = r#"{"SessionId": "s-1", "TokenValue": "t", "StreamUrl": "ws://127.0.0.1:9/x"}"#;
    for request in ["{}", r#"{"Target": 42}"#, "not json"] {
        let out = run(&[response, "us-east-1", "StartSession", "", request, ""]);
        assert_eq!(out.status.code(), Some(1), "{request}");
        assert!(stdout(&out).contains("Target"), "{}", stdout(&out));
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
}

/// A stand-in MGS for one session: checks the OpenDataChannel frame, sends a shell prompt (no
/// handshake), and once it is acknowledged closes the channel. Returns the token it saw.
async fn one_shell_session(listener: TcpListener) -> OpenDataChannelInput {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let open = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => from_json::<OpenDataChannelInput>("open", t.as_bytes()).unwrap(),
        other => panic!("expected OpenDataChannel, got {other:?}"),
    };
    let mut prompt = AgentMessage::new(
        MessageType::OutputStreamData,
        PayloadType::Output,
        ssmx_client::Bytes::from_static(b"$ "),
    );
    prompt.flags = ssmx_protocol::flags::SYN;
    ws.send(Message::binary(prompt.to_bytes())).await.unwrap();
    loop {
        let Message::Binary(frame) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        let msg = AgentMessage::decode(frame).unwrap();
        if msg.message_type == MessageType::Acknowledge {
            break;
        }
    }
    let closed = ChannelClosed::message("s-1", "mi-0", "", "2026-11-22T00:00:00.000Z".to_owned());
    ws.send(Message::binary(closed.to_bytes())).await.unwrap();
    // Keep the socket until the plugin hangs up.
    while let Some(Ok(_)) = ws.next().await {}
    open
}

/// Runs one shell session through the plugin as aws-cli does (with `env` added to the plugin's
/// environment), checks its stdout and the token it presented; returns what it printed.
async fn plugin_session(env_var_form: bool, env: &[(&str, &Path)]) -> Output {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://{}/v1/data-channel/s-1?role=publish_subscribe",
        listener.local_addr().unwrap()
    );
    let server = tokio::spawn(one_shell_session(listener));
    // Python's json.dumps separators, as aws-cli writes it.
    let response =
        format!(r#"{{"SessionId": "s-1", "TokenValue": "token-1", "StreamUrl": "{url}"}}"#);
    let mut cmd = tokio::process::Command::new(PLUGIN);
    cmd.envs(env.iter().copied());
    if env_var_form {
        cmd.env("AWS_SSM_START_SESSION_RESPONSE", &response).args([
            "AWS_SSM_START_SESSION_RESPONSE",
            "us-east-1",
            "StartSession",
            "",
            r#"{"Target": "mi-0123456789abcdef0"}"#,
            "http://127.0.0.1:9",
        ]);
    } else {
        // The legacy form: response, region, operation.
        cmd.env_remove("AWS_SSM_START_SESSION_RESPONSE").args([
            &response,
            "us-east-1",
            "StartSession",
        ]);
    }
    let out = tokio::time::timeout(
        STEP,
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\nStarting session with SessionId: s-1\n$ \n\nExiting session with sessionId: s-1.\n\n"
    );
    let open = tokio::time::timeout(STEP, server).await.unwrap().unwrap();
    assert_eq!(open.token_value, "token-1");
    assert_eq!(open.client_version.as_deref(), Some(CLIENT_VERSION));
    out
}

#[tokio::test]
async fn env_var_form_runs_a_session() {
    plugin_session(true, &[]).await;
}

#[tokio::test]
async fn legacy_form_runs_a_session() {
    plugin_session(false, &[]).await;
}

#[tokio::test]
async fn missing_aws_config_files_leave_stderr_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let out = plugin_session(
        true,
        &[
            ("AWS_CONFIG_FILE", &dir.path().join("no-config")),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                &dir.path().join("no-credentials"),
            ),
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
