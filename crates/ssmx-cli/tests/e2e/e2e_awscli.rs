//! Unmodified aws-cli and boto3 (from the virtualenv scripts/setup-test-env makes) against the
//! gateway, with our `session-manager-plugin` on PATH.

use std::process::Stdio;

use crate::common::{ChildGuard, Stack, Tmux};

/// `aws ssm start-session` with AWS-StartNonInteractiveCommand running `command`; its stdout.
fn command_session(stack: &Stack, command: &str) -> String {
    let parameters = serde_json::json!({ "command": [command] });
    let out = stack
        .aws()
        .args(["ssm", "start-session", "--target", &stack.instance_id])
        .args(["--document-name", "AWS-StartNonInteractiveCommand"])
        .args(["--parameters", &parameters.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "aws-cli failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdout,
        stack.logs()
    );
    stdout
}

#[test]
fn aws_cli_runs_a_command_session_through_our_plugin() {
    let stack = Stack::start();
    // Non-interactive commands run without a shell (split into argv, as the official agent).
    let stdout = command_session(&stack, "sh -c 'echo from-aws-cli-$((20+1))'");
    assert!(
        stdout.contains("Starting session with SessionId"),
        "{stdout}"
    );
    assert!(stdout.contains("from-aws-cli-21"), "{stdout}");
}

#[test]
fn aws_cli_runs_an_encrypted_session_through_our_plugin() {
    // Session preferences that require KMS encryption: aws-cli hands the gateway endpoint to
    // the plugin, which asks the gateway's key service for the data key.
    let preferences = serde_json::json!({
        "schemaVersion": "1.0",
        "sessionType": "Standard_Stream",
        "inputs": {"kmsKeyId": "alias/ssmx-awscli"}
    });
    let stack = Stack::start_with(&[("SSM-SessionManagerRunShell", preferences)], "");
    let stdout = command_session(&stack, "sh -c 'echo sealed-by-aws-cli-$((40+2))'");
    assert!(
        stdout.contains("This session is encrypted using AWS KMS."),
        "{stdout}"
    );
    assert!(stdout.contains("sealed-by-aws-cli-42"), "{stdout}");
}

#[test]
fn aws_cli_port_forwarding_session_forwards_tcp() {
    let stack = Stack::start();
    let echo = crate::common::echo_server();
    let mut session = ChildGuard(
        stack
            .aws()
            .args(["ssm", "start-session", "--target", &stack.instance_id])
            .args([
                "--document-name",
                "AWS-StartPortForwardingSession",
                "--parameters",
            ])
            .arg(format!(
                r#"{{"portNumber":["{echo}"],"localPortNumber":["0"]}}"#
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "aws ssm start-session",
    );
    let local = crate::common::opened_port(session.0.stdout.take().unwrap());
    let mut conn = crate::common::connect(local);
    let data = crate::common::pattern(100_000, 3);
    assert!(crate::common::echo_roundtrip(&mut conn, &data) == data);
}

/// A shell command line running `aws ssm start-session --target <the agent> ARGS` against the
/// stack (for a terminal in tmux).
fn start_session_command_line(stack: &Stack, args: &str) -> String {
    format!(
        "env AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_CONFIG_FILE={} AWS_SHARED_CREDENTIALS_FILE={} PATH={} {} --endpoint-url {} --region {} ssm start-session --target {} {args}",
        crate::common::ACCESS_KEY_ID,
        crate::common::SECRET_ACCESS_KEY,
        stack.path("none").display(),
        stack.path("none").display(),
        crate::common::path_with_plugin(),
        crate::common::venv_bin("aws").display(),
        stack.url,
        crate::common::REGION,
        stack.instance_id
    )
}

#[test]
fn aws_cli_interactive_shell_in_a_terminal() {
    let stack = Stack::start();
    let command = start_session_command_line(&stack, "");
    let tmux = Tmux::start(stack.dir.path(), &command, 100, 30);
    tmux.wait_for_text("Starting session with SessionId");
    tmux.type_text("echo shell-via-aws-$((3*3))");
    tmux.send_keys(&["Enter"]);
    tmux.wait_for_text("shell-via-aws-9");
    tmux.type_text("exit");
    tmux.send_keys(&["Enter"]);
    let screen = tmux.wait_for_text("[exit ");
    assert!(screen.contains("[exit 0]"), "{screen}");
}

#[test]
fn aws_cli_command_output_in_a_terminal_starts_each_line_at_column_zero() {
    let stack = Stack::start();
    // A command without a remote terminal ends its lines with a bare `\n`.
    let command = start_session_command_line(
        &stack,
        r#"--document-name AWS-StartNonInteractiveCommand --parameters '{"command":["sh -c \"echo to-stderr >&2; seq -f line-%g 1 3; exit 3\""]}'"#,
    );
    let tmux = Tmux::start(stack.dir.path(), &command, 100, 30);
    let screen = tmux.wait_for_text("[exit ");
    for line in ["to-stderr", "line-1", "line-2", "line-3", "EXIT_CODE: 3"] {
        assert!(
            screen.lines().any(|l| l.starts_with(line)),
            "{line:?} does not start a line:\n{screen}"
        );
    }
}

#[test]
fn aws_cli_and_boto3_manage_sessions() {
    let stack = Stack::start();
    // boto3: start a session (left unattached), see it listed, terminate it, see it in history.
    let script = r#"
import sys, boto3
ssm = boto3.client("ssm", endpoint_url=sys.argv[1], region_name=sys.argv[2])
sid = ssm.start_session(Target=sys.argv[3])["SessionId"]
active = [s["SessionId"] for s in ssm.describe_sessions(State="Active")["Sessions"]]
assert sid in active, (sid, active)
ssm.terminate_session(SessionId=sid)
history = {s["SessionId"]: s["Status"] for s in ssm.describe_sessions(State="History")["Sessions"]}
assert history.get(sid) in ("Terminated", "Terminating"), history
try:
    ssm.start_session(Target="mi-00000000000000000")
    raise SystemExit("expected TargetNotConnected")
except ssm.exceptions.TargetNotConnected:
    pass
print("boto3-ok")
"#;
    stack.run_boto3(script);

    // aws-cli lists the agent and refuses a disconnected target with the AWS error code.
    let out = stack
        .aws()
        .args(["ssm", "describe-instance-information", "--output", "json"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&stack.instance_id));
    let out = stack
        .aws()
        .args(["ssm", "start-session", "--target", "mi-00000000000000000"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TargetNotConnected"));
}
