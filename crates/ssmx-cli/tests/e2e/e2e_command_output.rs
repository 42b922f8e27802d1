//! Whole command output through real gateway and agent processes: a command printing 10 MiB
//! gets AWS's truncated fields from GetCommandInvocation, and every byte at its
//! `StandardOutputUrl`, read with `curl --aws-sigv4` as a user would.

use std::process::Command;
use std::time::Duration;

use crate::common::{runtime, Stack, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use aws_sdk_ssm::types::CommandInvocationStatus;

/// Bytes the command prints on stdout.
const STDOUT_BYTES: usize = 10 * 1024 * 1024;
/// Bytes it prints on stderr (over the API's 8,000 characters too).
const STDERR_BYTES: usize = 20_000;

/// `url` fetched with curl, signed with the stack's user credential.
fn curl_signed(url: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail-with-body"])
        .args(["--aws-sigv4", &format!("aws:amz:{REGION}:ssm")])
        .args(["--user", &format!("{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}")])
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn ten_mebibytes_of_output_are_kept_whole_at_the_gateway() {
    let stack = Stack::start();
    let ssm = stack.sdk();
    let instance = stack.instance_id.clone();
    let script = format!(
        "head -c {STDOUT_BYTES} /dev/zero | tr '\\0' o; head -c {STDERR_BYTES} /dev/zero | tr '\\0' e >&2"
    );
    let invocation = runtime().block_on(async {
        let command_id = ssm
            .send_command()
            .document_name("AWS-RunShellScript")
            .instance_ids(&instance)
            .parameters("commands", vec![script])
            .send()
            .await
            .unwrap()
            .command
            .unwrap()
            .command_id
            .unwrap();
        let deadline = tokio::time::Instant::now() + crate::common::STEP_DEADLINE;
        loop {
            let inv = ssm
                .get_command_invocation()
                .command_id(&command_id)
                .instance_id(&instance)
                .send()
                .await
                .unwrap();
            if inv.status() == Some(&CommandInvocationStatus::Success) {
                break inv;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {:?}\n{}",
                inv.status(),
                stack.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The API's fields are truncated as AWS truncates them ...
    let content = invocation.standard_output_content().unwrap();
    assert_eq!(content.chars().count(), 24_000, "StandardOutputContent");
    assert_eq!(
        invocation.standard_error_content().unwrap().chars().count(),
        8_000
    );
    // ... and the URLs serve every byte.
    let stdout = curl_signed(invocation.standard_output_url().unwrap());
    assert_eq!(stdout.len(), STDOUT_BYTES);
    assert!(stdout.iter().all(|b| *b == b'o'));
    let stderr = curl_signed(invocation.standard_error_url().unwrap());
    assert_eq!(stderr, vec![b'e'; STDERR_BYTES]);

    // Unsigned, the output is not served.
    let unsigned = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ])
        .arg(invocation.standard_output_url().unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&unsigned.stdout), "403");
}
