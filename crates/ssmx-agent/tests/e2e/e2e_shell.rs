//! Shell sessions end to end through an in-process gateway: Standard_Stream and
//! InteractiveCommands on a PTY, resize, transcripts, termination, idle timeout.

use std::time::Duration;

use crate::common::{eventually, joined, processes_with_arg, Seen, Stack};
use serde_json::json;
use ssmx_protocol::PayloadType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_session_runs_commands_resizes_and_ends_when_the_shell_exits() {
    let stack = Stack::start_with(&[], |c| c.shell = Some("/bin/sh".into())).await;
    let mut session = stack.start_session(None, &[]).await;
    // No handshake for an unencrypted shell: the first message is the prompt (PROTOCOL.md §6.6).
    match session.next().await {
        Seen::Payload(PayloadType::Output, _) => {}
        other => panic!("expected shell output first, got {other:?}"),
    }
    session.resize(132, 40).await;
    session.send(b"stty size; echo \"sum=$((40 + 2))\"\r").await;
    let text = session.read_until("sum=42").await;
    assert!(text.contains("40 132"), "{text:?}");
    session.send("echo 'héllo €'\r".as_bytes()).await;
    session.read_until("héllo €\r\n").await;
    session.send(b"exit\r").await;
    let (_, end) = session.until_closed().await;
    assert_eq!(
        end,
        Seen::Closed(String::new()),
        "a normal end closes with empty Output"
    );
    // The transcript has input, output and the resize.
    let transcript = stack.transcript(&session.id);
    let mut lines = transcript.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |code: &str, text: &str| {
        events
            .iter()
            .any(|e| e[1] == code && e[2].as_str().unwrap_or("").contains(text))
    };
    assert!(has("i", "exit"), "{transcript}");
    assert!(has("o", "sum=42"), "{transcript}");
    assert!(has("r", "132x40"), "{transcript}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_profile_runs_first_and_interactive_commands_run_on_a_pty() {
    let profile_doc = json!({
        "schemaVersion": "1.0", "sessionType": "Standard_Stream",
        "inputs": {"shellProfile": {"linux": "export SSMX_PROFILE=loaded", "windows": ""}}
    });
    let stack = Stack::start_with(&[("Test-Profile", profile_doc)], |c| {
        c.shell = Some("/bin/sh".into())
    })
    .await;
    let mut session = stack.start_session(Some("Test-Profile"), &[]).await;
    session.send(b"echo \"profile=$SSMX_PROFILE\"\r").await;
    session.read_until("profile=loaded").await;
    session.send(b"exit\r").await;
    assert_eq!(session.until_closed().await.1, Seen::Closed(String::new()));

    let mut interactive = stack
        .start_session(
            Some("AWS-StartInteractiveCommand"),
            &[("command", "test -t 0 && echo on-a-tty; echo TERM=$TERM")],
        )
        .await;
    let (payloads, end) = interactive.until_closed().await;
    let text = joined(&payloads, PayloadType::Output);
    assert!(text.contains("on-a-tty"), "{text:?}");
    assert!(text.contains("TERM=xterm-256color"), "{text:?}");
    assert_eq!(end, Seen::Closed(String::new()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_in_the_middle_of_a_busy_session_kills_the_whole_tree() {
    let stack = Stack::start_with(&[], |c| c.shell = Some("/bin/sh".into())).await;
    let mut session = stack.start_session(None, &[]).await;
    let marker = format!("{}", 300_000 + std::process::id() % 100_000);
    // A background job in its own process group plus a foreground flood of output.
    session
        .send(format!("sleep {marker} & while :; do echo busy-{marker}; done\r").as_bytes())
        .await;
    session
        .read_until(&format!("busy-{marker}\r\nbusy-{marker}"))
        .await;
    eventually("the background job runs", || {
        processes_with_arg(&marker) == 1
    })
    .await;
    stack.terminate(&session.id).await;
    // The gateway closes the client's socket; under a flood of output the client may see the
    // reset before `channel_closed` (that is the gateway's side of the contract).
    let (_, end) = session.until_closed().await;
    assert!(matches!(end, Seen::Closed(_) | Seen::Ended(_)), "{end:?}");
    eventually("no process of the session is left", || {
        processes_with_arg(&marker) == 0
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out() {
    let idle_doc = json!({
        "schemaVersion": "1.0", "sessionType": "Standard_Stream",
        "inputs": {"idleSessionTimeout": "1"}
    });
    // One document "minute" lasts 300 ms here.
    let stack = Stack::start_with(&[("Test-Idle", idle_doc)], |c| {
        c.shell = Some("/bin/sh".into());
        c.timing.session_minute = Duration::from_millis(300);
    })
    .await;
    let mut session = stack.start_session(Some("Test-Idle"), &[]).await;
    let (_, end) = session.until_closed().await;
    assert!(matches!(end, Seen::Closed(_)), "{end:?}");
    eventually("the transcript records the timeout", || {
        stack.transcript(&session.id).contains("idle timeout")
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_switches_to_the_document_user() {
    let run_as_doc = json!({
        "schemaVersion": "1.0", "sessionType": "InteractiveCommands",
        "inputs": {"runAsEnabled": true, "runAsDefaultUser": "nobody"},
        "properties": {"linux": {"commands": "echo \"user=$(id -un) home=$HOME dir=$(pwd)\""}}
    });
    let stack = Stack::start_with(&[("Test-RunAs", run_as_doc)], |_| {}).await;
    let mut session = stack.start_session(Some("Test-RunAs"), &[]).await;
    let (payloads, end) = session.until_closed().await;
    if nix::unistd::geteuid().is_root() {
        let text = joined(&payloads, PayloadType::Output);
        assert!(text.contains("user=nobody"), "{text:?}");
        assert!(text.contains("dir=/"), "{text:?}");
        assert_eq!(end, Seen::Closed(String::new()));
    } else {
        match end {
            Seen::Closed(reason) => assert!(reason.contains("not running as root"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_sessions_end_at_their_maximum_duration() {
    let max_doc = json!({
        "schemaVersion": "1.0", "sessionType": "InteractiveCommands",
        "inputs": {"maxSessionDuration": "1", "idleSessionTimeout": "20"},
        "properties": {"linux": {"commands": "while :; do echo tick; sleep 0.05; done"}}
    });
    // One document "minute" lasts 500 ms here.
    let stack = Stack::start_with(&[("Test-Max", max_doc)], |c| {
        c.timing.session_minute = Duration::from_millis(500);
    })
    .await;
    let mut session = stack.start_session(Some("Test-Max"), &[]).await;
    session.read_until("tick").await;
    let (_, end) = session.until_closed().await;
    assert!(matches!(end, Seen::Closed(_)), "{end:?}");
    eventually("the transcript records the limit", || {
        stack.transcript(&session.id).contains("maximum duration")
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_ends_its_sessions_and_their_processes() {
    let mut stack = Stack::start_with(&[], |c| c.shell = Some("/bin/sh".into())).await;
    let mut session = stack.start_session(None, &[]).await;
    let marker = format!("{}", 200_000 + std::process::id() % 100_000);
    session
        .send(format!("sleep {marker} & sleep {marker}\r").as_bytes())
        .await;
    eventually("both sleeps run", || processes_with_arg(&marker) == 2).await;
    stack.stop_agent().await;
    assert_eq!(processes_with_arg(&marker), 0);
    let (_, end) = session.until_closed().await;
    assert!(matches!(end, Seen::Closed(_) | Seen::Ended(_)), "{end:?}");
    stack.stop().await;
}
