//! NonInteractiveCommands end to end through an in-process gateway: separate and joined output,
//! exit codes, many sessions at once, documents the gateway refuses.

use crate::common::{joined, Seen, Stack, CLIENT_VERSION};
use serde_json::json;
use ssmx_protocol::payload::ExitCode;
use ssmx_protocol::PayloadType;

const EXEC: &str = "AWS-StartNonInteractiveCommand";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_output_streams_apart_and_the_exit_code_comes_last() {
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(
            Some(EXEC),
            &[("command", "sh -c 'echo out; echo err >&2; exit 3'")],
        )
        .await;
    let (request, complete) = session.handshake(CLIENT_VERSION, None).await;
    let action = &request.requested_client_actions[0];
    assert_eq!(action.action_type, "SessionType");
    assert_eq!(
        action.action_parameters,
        json!({"SessionType": "NonInteractiveCommands", "Properties": null})
    );
    assert!(complete.customer_message.is_empty());
    let (payloads, end) = session.until_closed().await;
    assert_eq!(joined(&payloads, PayloadType::Output), "out\n");
    assert_eq!(joined(&payloads, PayloadType::StdErr), "err\n");
    let (last_type, last) = payloads.last().unwrap();
    assert_eq!(*last_type, PayloadType::ExitCode);
    assert_eq!(ExitCode::from_payload(last).unwrap(), ExitCode(3));
    assert_eq!(end, Seen::Closed(String::new()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_output_keeps_order_and_has_no_exit_code() {
    let joined_doc = json!({
        "schemaVersion": "1.0", "sessionType": "NonInteractiveCommands",
        "parameters": {"command": {"type": "String"}},
        "properties": {"linux": {"commands": "{{ command }}", "separateOutputStream": false}}
    });
    let stack = Stack::start_with(&[("Test-Joined", joined_doc)], |_| {}).await;
    let mut session = stack
        .start_session(
            Some("Test-Joined"),
            &[("command", "sh -c 'echo 1; echo 2 >&2; echo 3; exit 7'")],
        )
        .await;
    session.handshake(CLIENT_VERSION, None).await;
    let (payloads, end) = session.until_closed().await;
    assert!(payloads.iter().all(|(t, _)| *t == PayloadType::Output));
    assert_eq!(joined(&payloads, PayloadType::Output), "1\n2\n3\n");
    assert_eq!(end, Seen::Closed(String::new()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_are_negotiated_with_an_ssmx_client() {
    let stack = Stack::start().await;
    let mut session = stack
        // One write of 300 kB: the pipe fills before the agent is woken, so its reads are
        // large however busy the machine is (small writes would wake it for each one).
        .start_session(
            Some(EXEC),
            &[("command", "dd if=/dev/zero bs=300000 count=1 status=none")],
        )
        .await;
    let (request, _) = session.handshake(CLIENT_VERSION, Some(1 << 20)).await;
    let offered = request
        .ssmx_capabilities
        .expect("the agent offers capabilities");
    assert!(offered.max_payload_size >= 64 * 1024);
    let (payloads, _) = session.until_closed().await;
    let output: Vec<usize> = payloads
        .iter()
        .filter(|(t, _)| *t == PayloadType::Output)
        .map(|(_, b)| b.len())
        .collect();
    assert_eq!(output.iter().sum::<usize>(), 300_000);
    assert!(
        output.iter().any(|n| *n > 32 * 1024),
        "no payload above the default size: {output:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_at_once_stay_apart() {
    let stack = Stack::start().await;
    let sessions = (0..50).map(|i| {
        let stack = &stack;
        async move {
            let command = format!("sh -c 'echo session-{i}; exit {}'", i % 7);
            let mut session = stack
                .start_session(Some(EXEC), &[("command", &command)])
                .await;
            session.handshake(CLIENT_VERSION, None).await;
            let (payloads, end) = session.until_closed().await;
            // The agent flushed everything before ending, so all output is here; whether the
            // client then reads `channel_closed` or sees the gateway's close first is a race
            // outside the agent (both end the session).
            assert!(
                matches!(&end, Seen::Closed(reason) if reason.is_empty())
                    || matches!(end, Seen::Ended(_)),
                "session {i}: {end:?}"
            );
            assert_eq!(
                joined(&payloads, PayloadType::Output),
                format!("session-{i}\n")
            );
            let (_, code) = payloads.last().unwrap();
            assert_eq!(ExitCode::from_payload(code).unwrap(), ExitCode(i % 7));
        }
    });
    futures::future::join_all(sessions).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_fails_with_its_error_on_stderr() {
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(
            Some(EXEC),
            &[("command", "/nonexistent/ssmx-no-such-program")],
        )
        .await;
    session.handshake(CLIENT_VERSION, None).await;
    let (payloads, end) = session.until_closed().await;
    assert!(joined(&payloads, PayloadType::StdErr).contains("Error occurred starting the command"));
    assert_eq!(payloads.last().unwrap().1.as_ref(), b"EXIT_CODE: 1");
    assert!(matches!(end, Seen::Closed(_)), "{end:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_documents_are_refused_before_reaching_the_agent() {
    let stack = Stack::start().await;
    let err = stack
        .ssm
        .start_session()
        .target(&stack.instance_id)
        .document_name("No-Such-Document")
        .send()
        .await
        .unwrap_err();
    let text = format!("{:?}", err.into_service_error());
    assert!(text.contains("InvalidDocument"), "{text}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_lists_the_agent_with_its_host_details() {
    let stack = Stack::start().await;
    let deadline = tokio::time::Instant::now() + crate::common::STEP;
    loop {
        let described = stack
            .ssm
            .describe_instance_information()
            .send()
            .await
            .unwrap();
        let info = described
            .instance_information_list()
            .iter()
            .find(|i| i.instance_id() == Some(stack.instance_id.as_str()))
            .cloned();
        if let Some(info) = info.filter(|i| i.agent_version().is_some_and(|v| !v.is_empty())) {
            assert_eq!(
                info.agent_version(),
                Some(ssmx_protocol::version::AGENT_VERSION)
            );
            assert!(info.computer_name().is_some_and(|n| !n.is_empty()));
            assert!(info
                .ip_address()
                .is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok()));
            assert_eq!(info.platform_type().map(|p| p.as_str()), Some("Linux"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never reported itself"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stack.stop().await;
}
