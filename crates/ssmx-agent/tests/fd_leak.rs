//! Sessions leave no file descriptors behind in the agent (its own test binary, so no other test
//! opens descriptors in this process meanwhile).

#[path = "e2e/common/mod.rs"]
mod common;

use common::{eventually, Seen, Stack, CLIENT_VERSION};
use ssmx_protocol::PayloadType;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

async fn one_of_each(stack: &Stack, echo_port: &str) {
    let mut shell = stack.start_session(None, &[]).await;
    shell.send(b"echo fd-test\r").await;
    shell.read_until("fd-test").await;
    shell.send(b"exit\r").await;
    assert_eq!(shell.until_closed().await.1, Seen::Closed(String::new()));

    let mut exec = stack
        .start_session(
            Some("AWS-StartNonInteractiveCommand"),
            &[("command", "sh -c 'echo out; echo err >&2'")],
        )
        .await;
    exec.handshake(CLIENT_VERSION, None).await;
    assert_eq!(exec.until_closed().await.1, Seen::Closed(String::new()));

    let mut port = stack
        .start_session(
            Some("AWS-StartPortForwardingSession"),
            &[("portNumber", echo_port), ("localPortNumber", "0")],
        )
        .await;
    port.handshake("1.1.69.0", None).await;
    port.send(b"ping").await;
    match port.next().await {
        Seen::Payload(PayloadType::Output, b) => assert_eq!(&b[..], b"ping"),
        other => panic!("{other:?}"),
    }
    port.tx
        .send(
            PayloadType::Flag,
            ssmx_protocol::payload::PortFlag::TerminateSession.to_payload(),
        )
        .await
        .unwrap();
    assert_eq!(port.until_closed().await.1, Seen::Closed(String::new()));

    let mut busy = stack.start_session(None, &[]).await;
    busy.send(b"while :; do echo x; done\r").await;
    busy.read_until("x\r\nx").await;
    stack.terminate(&busy.id).await;
    busy.until_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_leave_no_descriptors_behind() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let stack = Stack::start_with(&[], |c| c.shell = Some("/bin/sh".into())).await;
    // A first round opens what lives for the whole process (signal pipes, resolver, pools).
    one_of_each(&stack, &echo_port).await;
    let gateway_sessions = || stack.gateway().active_sessions();
    eventually("the gateway closed every session", || {
        gateway_sessions() == 0
    })
    .await;
    let before = open_fds();
    for _ in 0..3 {
        one_of_each(&stack, &echo_port).await;
    }
    eventually("the gateway closed every session", || {
        gateway_sessions() == 0
    })
    .await;
    // Sockets of ended sessions close asynchronously; wait until the count settles.
    eventually(
        &format!("descriptors back to {before} (now {})", open_fds()),
        || open_fds() <= before,
    )
    .await;
    stack.stop().await;
}
