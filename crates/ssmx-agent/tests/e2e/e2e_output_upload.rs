//! A command's whole output survives a gateway outage: the gateway stops while a command with
//! more output than a reply carries finishes; the agent keeps the output and uploads it once the
//! gateway is back (same port, same database), and StandardOutputUrl serves every byte.

use std::path::Path;
use std::time::Duration;

use crate::common::{eventually, Stack, STEP};
use aws_sdk_ssm::types::CommandInvocationStatus;
use ssmx_agent::Backoff;
use ssmx_gateway::config::Database;

/// Bytes of stdout: more than the 24,000 characters a reply carries.
const STDOUT_BYTES: usize = 30_000;

/// `url` fetched with curl signed as the stack's user; `None` unless it answers 2xx.
fn curl_signed(stack: &Stack, url: &str) -> Option<Vec<u8>> {
    let credential = stack.credential();
    let out = std::process::Command::new("curl")
        .args(["--silent", "--fail"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:ssm"])
        .args([
            "--user",
            &format!(
                "{}:{}",
                credential.access_key_id, credential.secret_access_key
            ),
        ])
        .arg(url)
        .output()
        .expect("curl runs");
    out.status.success().then_some(out.stdout)
}

fn dir_has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_output_reaches_a_gateway_that_was_down_when_the_command_ended() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let commands_dir = state.path().join("commands");
    let database = Database::File(state.path().join("gateway.db"));
    let fast = Backoff {
        initial_min: Duration::from_millis(100),
        initial_max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.0,
        cap: Duration::from_millis(500),
    };
    let dir = commands_dir.clone();
    let mut stack = Stack::start_on(database, &[], |config| {
        config.commands_dir = Some(dir);
        config.timing.upload_retry_backoff = fast;
    })
    .await;
    let addr = stack.gateway().local_addr();

    let started = work.path().join("started");
    let release = work.path().join("release");
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done; head -c {STDOUT_BYTES} /dev/zero | tr '\\0' x",
        started.display(),
        release.display()
    );
    let command_id = stack
        .send_command("AWS-RunShellScript", &[("commands", &script)])
        .await;
    eventually("the script starts", || started.exists()).await;

    // The gateway goes away; the command finishes meanwhile and its upload fails.
    stack.stop_gateway().await;
    std::fs::write(&release, b"").unwrap();
    let uploads = commands_dir.join("uploads");
    eventually("the whole output is kept for a retry", || {
        dir_has_files(&uploads)
    })
    .await;

    stack.restart_gateway(addr).await;
    let deadline = tokio::time::Instant::now() + STEP;
    let invocation = loop {
        let invocation = stack
            .ssm
            .get_command_invocation()
            .command_id(&command_id)
            .instance_id(&stack.instance_id)
            .send()
            .await
            .unwrap();
        if invocation.status() == Some(&CommandInvocationStatus::Success) {
            break invocation;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?}",
            invocation.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        invocation
            .standard_output_content()
            .unwrap()
            .chars()
            .count(),
        24_000
    );
    let url = invocation.standard_output_url().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let served = curl_signed(&stack, &url);
        if served.as_ref().is_some_and(|s| s.len() == STDOUT_BYTES) {
            assert!(served.unwrap().iter().all(|b| *b == b'x'));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the whole output never arrived: {:?} bytes served",
            served.map(|s| s.len())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the kept output is forgotten once uploaded", || {
        !dir_has_files(&uploads)
    })
    .await;
    stack.stop().await;
}
