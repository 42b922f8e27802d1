//! KMS-encrypted sessions end to end (PROTOCOL.md §6.3, §7): documents and session preferences
//! that name a `kmsKeyId`, the gateway's key service, the agent's Decrypt and challenge, and
//! the client's GenerateDataKey through aws-sdk-kms — for exec, shell and port sessions, and the
//! failures: a missing key, a disabled key, a client that cannot encrypt.

use std::process::{Command, Stdio};

use crate::common::{echo_roundtrip, ChildGuard, Stack, Tmux};
use serde_json::{json, Value};

const KEY_ALIAS: &str = "alias/ssmx-e2e";
const BANNER: &str = "This session is encrypted using AWS KMS.";

/// A NonInteractiveCommands document encrypted with `KEY_ALIAS`.
fn encrypted_exec_document() -> (&'static str, Value) {
    (
        "Encrypted-Exec",
        json!({
            "schemaVersion": "1.0",
            "description": "A command, encrypted end to end",
            "sessionType": "NonInteractiveCommands",
            "inputs": {"kmsKeyId": KEY_ALIAS},
            "parameters": {"command": {"type": "String"}},
            "properties": {"linux": {"commands": "{{command}}", "runAsElevated": false, "separateOutputStream": true}}
        }),
    )
}

/// Session preferences that make every session encrypted with `KEY_ALIAS`.
fn encrypting_preferences() -> (&'static str, Value) {
    (
        "SSM-SessionManagerRunShell",
        json!({
            "schemaVersion": "1.0",
            "description": "Session preferences: encrypt every session",
            "sessionType": "Standard_Stream",
            "inputs": {"kmsKeyId": KEY_ALIAS, "idleSessionTimeout": "20"}
        }),
    )
}

fn exec(stack: &Stack, command: &str) -> std::process::Output {
    stack
        .ssmx()
        .args(["exec", "--document", "Encrypted-Exec", &stack.instance_id])
        .args(["--", "sh", "-c", command])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The sessions the gateway has recorded as ended: (id, status, details).
fn history(stack: &Stack) -> Vec<(String, String, String)> {
    let ssm = stack.sdk();
    crate::common::runtime().block_on(async move {
        let out = ssm
            .describe_sessions()
            .state(aws_sdk_ssm::types::SessionState::History)
            .send()
            .await
            .unwrap();
        out.sessions()
            .iter()
            .map(|s| {
                (
                    s.session_id().unwrap_or_default().to_owned(),
                    s.status()
                        .map(|st| st.as_str().to_owned())
                        .unwrap_or_default(),
                    s.details().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    })
}

/// Files the gateway recorded.
fn recordings(stack: &Stack) -> Vec<String> {
    std::fs::read_dir(stack.path("recordings"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn encrypted_exec_keeps_streams_exit_code_and_large_output() {
    let stack = Stack::start_with(&[encrypted_exec_document()], "");
    let out = exec(&stack, "echo to-stdout; echo to-stderr >&2; exit 3");
    stack.assert_exit(&out, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr\n"));

    // Far more than one message: every sealed piece must fit a message of its own.
    let out = exec(&stack, "seq 1 300000");
    stack.assert_exit(&out, 0);
    let expected: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout == expected.as_bytes(),
        "output differs ({} bytes vs {})",
        out.stdout.len(),
        expected.len()
    );

    // The agent agreed on encryption, and the relay, seeing only ciphertext, recorded nothing.
    stack.assert_agent_encrypted();
    assert!(recordings(&stack).is_empty(), "{:?}", recordings(&stack));
}

#[test]
fn session_preferences_encrypt_an_interactive_shell() {
    let stack = Stack::start_with(&[encrypting_preferences()], "");
    let tmux = Tmux::start(
        stack.dir.path(),
        &stack.command_line(&["shell", &stack.instance_id]),
        100,
        30,
    );
    tmux.wait_for_text(BANNER);
    tmux.type_text("echo sealed-$((6*7))-ok");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("sealed-42-ok");
    // Multi-byte characters survive sealing piece by piece.
    tmux.type_text("printf 'caf\\303\\251 %s\\n' done");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("café done");
    tmux.type_text("exit");
    tmux.send_keys(&["Enter"]);
    let screen = tmux.wait_for_text("[exit ");
    assert!(
        screen.contains("[exit 0]"),
        "client did not exit cleanly:\n{screen}\n{}",
        stack.logs()
    );
}

#[test]
fn encrypted_port_forwarding_moves_bytes_intact() {
    // Session preferences apply to the port-forwarding documents too.
    let stack = Stack::start_with(&[encrypting_preferences()], "");
    let echo = crate::common::echo_server();
    let mut forward = ChildGuard(
        stack
            .ssmx()
            .args(["port-forward", &stack.instance_id])
            .args(["--remote-port", &echo.to_string()])
            .args(["--local-port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        "port-forward",
    );
    let local = crate::common::opened_port(forward.0.stderr.take().unwrap());
    let mut conn = crate::common::connect(local);
    let data = crate::common::pattern(4 * 1024 * 1024 + 17, 9);
    let back = echo_roundtrip(&mut conn, &data);
    assert!(back == data, "forwarded bytes corrupted\n{}", stack.logs());
    stack.assert_agent_encrypted();
}

#[test]
fn a_missing_key_fails_the_handshake_on_both_ends() {
    let stack = Stack::start_with(
        &[encrypted_exec_document()],
        "[kms]\ncreate_missing_aliases = false\n",
    );
    let out = exec(&stack, "echo must-not-run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must-not-run"));
    assert!(
        stderr.contains("NotFoundException") && stderr.contains("alias/ssmx-e2e"),
        "the client does not name the missing key:\n{stderr}\n{}",
        stack.logs()
    );
    let ended = history(&stack);
    assert!(
        ended.iter().any(|(_, status, details)| status == "Failed"
            && details.contains("KMSEncryption failed on client")
            && details.contains("NotFoundException")),
        "the agent's side of the failure is not recorded: {ended:?}"
    );
}

#[test]
fn a_disabled_key_is_refused() {
    let stack = Stack::start_with(&[encrypted_exec_document()], "");
    let kms = kms_client(&stack);
    crate::common::runtime().block_on(async {
        let key = kms.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_owned();
        kms.create_alias()
            .alias_name(KEY_ALIAS)
            .target_key_id(&key_id)
            .send()
            .await
            .unwrap();
        kms.disable_key().key_id(&key_id).send().await.unwrap();
    });
    let out = exec(&stack, "echo must-not-run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must-not-run"));
    assert!(
        stderr.contains("DisabledException"),
        "the client does not say the key is disabled:\n{stderr}\n{}",
        stack.logs()
    );
}

#[test]
fn a_client_that_cannot_encrypt_is_refused() {
    let stack = Stack::start_with(&[encrypted_exec_document()], "");
    let ssm = stack.sdk();
    let target = stack.instance_id.clone();
    let started = crate::common::runtime().block_on(async move {
        ssm.start_session()
            .target(target)
            .document_name("Encrypted-Exec")
            .parameters("command", vec!["echo must-not-run".to_owned()])
            .send()
            .await
            .unwrap()
    });
    let response = json!({
        "SessionId": started.session_id().unwrap(),
        "TokenValue": started.token_value().unwrap(),
        "StreamUrl": started.stream_url().unwrap(),
    });
    // The legacy 4-argument form: the official plugin's callers that cannot do encryption.
    let mut plugin = Command::new(crate::common::bin("session-manager-plugin"));
    stack.aws_env(&mut plugin);
    let out = plugin
        .args([&response.to_string(), crate::common::REGION, "StartSession"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("must-not-run"), "{all}");
    let session_id = started.session_id().unwrap().to_owned();
    let ended = crate::common::wait_for(
        || {
            history(&stack)
                .into_iter()
                .find(|(id, _, _)| *id == session_id)
        },
        "the refused session in the history",
    );
    assert_eq!(ended.1, "Failed", "{ended:?}");
    assert!(
        ended
            .2
            .contains("does not support Session Manager encryption"),
        "{ended:?}\n{all}"
    );
}

/// An aws-sdk-kms client for the gateway's key service, with the stack's credentials.
fn kms_client(stack: &Stack) -> aws_sdk_kms::Client {
    let creds = aws_sdk_kms::config::Credentials::new(
        crate::common::ACCESS_KEY_ID,
        crate::common::SECRET_ACCESS_KEY,
        None,
        None,
        "e2e",
    );
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(crate::common::REGION))
        .credentials_provider(creds)
        .endpoint_url(&stack.url)
        .build();
    aws_sdk_kms::Client::from_conf(config)
}
