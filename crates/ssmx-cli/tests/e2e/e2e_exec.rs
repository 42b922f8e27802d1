//! `ssmx exec` end to end: stdout and stderr kept apart, the remote exit code becomes ours.

use crate::common::{self, Stack};

#[test]
fn exec_keeps_streams_apart_and_returns_the_exit_code() {
    let stack = Stack::start();
    let out = stack
        .ssmx()
        .args([
            "exec",
            &stack.instance_id,
            "--",
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 3",
        ])
        .output()
        .unwrap();
    stack.assert_exit(&out, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr\n"));

    let ok = stack
        .ssmx()
        .args(["exec", &stack.instance_id, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
}

#[test]
fn exec_moves_large_output_intact() {
    let stack = Stack::start();
    let out = stack
        .ssmx()
        .args(["exec", &stack.instance_id, "--", "sh", "-c", "seq 1 200000"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout == expected.as_bytes(),
        "output differs ({} bytes vs {})",
        out.stdout.len(),
        expected.len()
    );
}

#[test]
fn exec_against_an_unknown_target_says_so() {
    let stack = Stack::start();
    let out = stack
        .ssmx()
        .args(["exec", "mi-00000000000000000", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Said once, not repeated by the cause.
    assert_eq!(
        err.trim(),
        "ssmx: target mi-00000000000000000 is not connected",
        "{err}"
    );
}

#[test]
fn a_refused_connection_names_the_endpoint_and_is_not_retried() {
    // Nothing listens on port 1; no region is set, and none is looked up on EC2.
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin("ssmx"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path())
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .args([
            "-v",
            "--endpoint-url",
            "http://127.0.0.1:1",
            "exec",
            "mi-1",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "nothing accepts connections at http://127.0.0.1:1: check that the gateway is running"
        ),
        "{err}"
    );
    assert_eq!(
        err.matches("API call failed").count(),
        1,
        "one attempt, no retries: {err}"
    );
    assert!(!err.contains("IMDS"), "{err}");
}

#[test]
fn a_command_session_replays_from_its_recording_and_a_missing_one_creates_nothing() {
    let stack = Stack::start();
    let out = stack
        .ssmx()
        .args(["exec", &stack.instance_id, "--", "echo", "replay-me"])
        .output()
        .unwrap();
    stack.assert_exit(&out, 0);
    let history = stack.aws_json(&["ssm", "describe-sessions", "--state", "History"]);
    let session_id = history["Sessions"][0]["SessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = stack.path("gateway.toml");
    let replayed = common::run_ok(
        stack
            .ssmx()
            .args([
                "gateway",
                "replay",
                &session_id,
                "--speed",
                "100",
                "--config",
            ])
            .arg(&config),
    );
    assert!(
        String::from_utf8_lossy(&replayed.stdout).contains("replay-me"),
        "{}",
        String::from_utf8_lossy(&replayed.stdout)
    );

    let empty = tempfile::tempdir().unwrap();
    let db = empty.path().join("never-ran.db");
    let missing = stack
        .ssmx()
        .args(["gateway", "replay", "no-such-session", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-session.cast"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert!(!db.exists(), "replay created {}", db.display());
}
