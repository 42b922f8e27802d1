//! The gateway's Prometheus metrics, scraped from the `ssmx gateway run` process while a session
//! runs, after a command, a bad signature and a refused request.

use std::process::{Command, Stdio};

use crate::common::{lines, read_until, run_ok, wait_for, ChildGuard, Stack};

/// Metrics on an ephemeral port; `auditor` may only look.
const CONFIG: &str = r#"
metrics_listen = "127.0.0.1:0"

[[credentials]]
access_key_id = "AKIASSMXE2EAUDITOR01"
secret_access_key = "auditor-secret"
user = "auditor"

[[users]]
name = "tester"
policies = ["AdministratorAccess"]

[[users]]
name = "auditor"
policies = ["read-only"]

[[policies]]
name = "read-only"
document = '{"Statement": {"Effect": "Allow", "Action": "ssm:Describe*", "Resource": "*"}}'
"#;

/// The metrics URL the gateway logged when it started.
fn metrics_url(stack: &Stack) -> String {
    wait_for(
        || {
            let log = std::fs::read_to_string(stack.path("gateway.log")).ok()?;
            let line = log.lines().find(|l| l.contains("metrics listening"))?;
            let start = line.find("http://")?;
            let url = line[start..].split_whitespace().next()?;
            Some(url.trim_matches('"').to_owned())
        },
        "the metrics listener in the gateway's log",
    )
}

/// One scrape: the value of each sample line, keyed by name and labels as printed.
fn scrape(url: &str) -> Vec<(String, f64)> {
    let out = run_ok(Command::new("curl").args(["-sSf", url]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF:\n{text}"
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn value(samples: &[(String, f64)], key: &str) -> Option<f64> {
    samples.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

#[test]
fn gateway_metrics_count_sessions_bytes_commands_and_refusals() {
    let stack = Stack::start_with(&[], CONFIG);
    let url = metrics_url(&stack);
    let samples = scrape(&url);
    assert_eq!(
        value(&samples, "ssmx_connected_agents"),
        Some(1.0),
        "{samples:?}"
    );

    // A session that stays open until we have looked.
    let mut exec = ChildGuard(
        stack
            .ssmx()
            .args([
                "exec",
                &stack.instance_id,
                "--",
                "sh",
                "-c",
                "echo ready; sleep 60",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
        "ssmx exec",
    );
    read_until(&mut lines(&mut exec.0), "ready");
    let samples = scrape(&url);
    assert_eq!(
        value(
            &samples,
            r#"ssmx_sessions{type="NonInteractiveCommands",state="Connected"}"#
        ),
        Some(1.0),
        "{samples:?}"
    );
    let from_agent = value(
        &samples,
        r#"ssmx_relayed_bytes_total{direction="agent_to_client"}"#,
    );
    assert!(from_agent.is_some_and(|v| v > 0.0), "{samples:?}");
    exec.kill();

    // A bad signature and a refused request.
    let bad = stack
        .aws()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["ssm", "describe-instance-information"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let refused = stack
        .aws()
        .env("AWS_ACCESS_KEY_ID", "AKIASSMXE2EAUDITOR01")
        .env("AWS_SECRET_ACCESS_KEY", "auditor-secret")
        .args(["ssm", "list-commands"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("AccessDeniedException"));

    // A command that succeeds.
    let sent = stack.aws_json(&[
        "ssm",
        "send-command",
        "--document-name",
        "AWS-RunShellScript",
        "--instance-ids",
        &stack.instance_id,
        "--parameters",
        "commands=true",
    ]);
    let command_id = sent["Command"]["CommandId"].as_str().unwrap().to_owned();
    wait_for(
        || {
            let listed = stack.aws_json(&["ssm", "list-commands", "--command-id", &command_id]);
            (listed["Commands"][0]["Status"] == "Success").then_some(())
        },
        "the command to succeed",
    );

    let samples = scrape(&url);
    for (key, expected) in [
        (r#"ssmx_authentication_failures_total{service="ssm"}"#, 1.0),
        (
            r#"ssmx_access_denied_total{action="ssm:ListCommands"}"#,
            1.0,
        ),
        (r#"ssmx_command_invocations{status="Success"}"#, 1.0),
        ("ssmx_recording_backlog", 0.0),
    ] {
        assert_eq!(value(&samples, key), Some(expected), "{key}: {samples:?}");
    }
}
