//! End to end through an in-process ssmx gateway and agent on 127.0.0.1: shell, exec, port
//! forwarding (multiplexed and standard-stream), errors, and resuming a dropped connection.

use std::collections::HashMap;
use std::sync::Arc;

use crate::common::{echo_server, CuttableProxy, Pattern, Stack, STEP};
use ssmx_client::{
    Error, PortForwarder, PortMode, SessionEnd, SessionEvent, SessionType, DEFAULT_EXEC_DOCUMENT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn params(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_runs_commands_and_ends_when_the_shell_exits() {
    let stack = Stack::start().await;
    let manager = stack.manager().await;
    let mut session = manager
        .start_session(&stack.instance_id, None, HashMap::new())
        .await
        .unwrap();
    let start = timeout(STEP, session.started()).await.unwrap().unwrap();
    assert_eq!(start.session_type, SessionType::StandardStream);
    session.resize(100, 30).await.unwrap();
    session
        .write("stty size; echo marker-$((40+2))\r")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let found = timeout(STEP, async {
        while let Some(event) = session.next_event().await {
            if let SessionEvent::Output(b) = event.unwrap() {
                seen.extend_from_slice(&b);
                let text = String::from_utf8_lossy(&seen);
                if text.contains("marker-42") && text.contains("30 100") {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(found, "output: {}", String::from_utf8_lossy(&seen));
    session.write("exit\r").await.unwrap();
    let (end, exit_code) = timeout(STEP, session.wait()).await.unwrap().unwrap();
    assert_eq!(end, SessionEnd::Closed { message: None });
    assert_eq!(exit_code, None);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_keeps_streams_apart_and_reports_exit_codes() {
    let stack = Stack::start().await;
    let manager = stack.manager().await;
    let command = ssmx_client::shell_join(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let failing = manager.exec(&stack.instance_id, &command);
    let ok = manager.exec(&stack.instance_id, "echo fine");
    let (failing, ok) = tokio::join!(failing, ok);
    let failing = failing.unwrap();
    assert_eq!(failing.stdout, b"out\n");
    assert_eq!(failing.stderr, b"err\n");
    assert_eq!(failing.exit_code, Some(3));
    let ok = ok.unwrap();
    assert_eq!(ok.stdout, b"fine\n");
    assert_eq!(ok.exit_code, Some(0));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_port_forwarding_carries_parallel_connections() {
    let stack = Stack::start().await;
    let (port, _echo) = echo_server().await;
    let manager = stack.manager().await;
    let session = manager
        .start_session(
            &stack.instance_id,
            Some("AWS-StartPortForwardingSession"),
            params(&[("portNumber", &port.to_string())]),
        )
        .await
        .unwrap();
    let forwarder = Arc::new(
        timeout(STEP, PortForwarder::new(session))
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(
        forwarder.mode(),
        PortMode::Multiplexed { keep_alive: false }
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let f = forwarder.clone();
    let server = tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            let f = f.clone();
            tokio::spawn(async move { f.forward(conn).await });
        }
    });
    const CONNECTIONS: u64 = 16;
    const BYTES: usize = 256 * 1024;
    let mut clients = Vec::new();
    for seed in 1..=CONNECTIONS {
        clients.push(tokio::spawn(async move {
            let conn = TcpStream::connect(local).await.unwrap();
            let (mut r, mut w) = conn.into_split();
            let writer = tokio::spawn(async move {
                let mut data = vec![0u8; BYTES];
                Pattern::new(seed).fill(&mut data);
                w.write_all(&data).await.unwrap();
                w
            });
            let mut echoed = vec![0u8; BYTES];
            r.read_exact(&mut echoed).await.unwrap();
            let mut expected = vec![0u8; BYTES];
            Pattern::new(seed).fill(&mut expected);
            assert!(echoed == expected, "connection {seed} corrupted");
            drop(writer.await.unwrap());
        }));
    }
    for c in clients {
        timeout(STEP, c).await.unwrap().unwrap();
    }
    timeout(STEP, forwarder.terminate()).await.unwrap().unwrap();
    let end = timeout(STEP, forwarder.closed()).await.unwrap();
    assert!(end.is_ok(), "{end:?}");
    server.abort();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_document_is_a_standard_stream() {
    let stack = Stack::start().await;
    let (port, _echo) = echo_server().await;
    let manager = stack.manager().await;
    let session = manager
        .start_session(
            &stack.instance_id,
            Some("AWS-StartSSHSession"),
            params(&[("portNumber", &port.to_string())]),
        )
        .await
        .unwrap();
    let forwarder = timeout(STEP, PortForwarder::new(session))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(forwarder.mode(), PortMode::StandardStream);
    let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
    let pipe = async {
        ours.write_all(b"SSH-2.0-test\r\n").await.unwrap();
        let mut buf = [0u8; 14];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"SSH-2.0-test\r\n");
        ours.shutdown().await.unwrap();
    };
    let (r, ()) = timeout(STEP, async {
        tokio::join!(forwarder.forward(theirs), pipe)
    })
    .await
    .unwrap();
    r.unwrap();
    timeout(STEP, forwarder.terminate()).await.unwrap().unwrap();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem() {
    let stack = Stack::start().await;
    let manager = stack.manager().await;
    let err = manager
        .start_session("mi-00000000000000000", None, HashMap::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TargetNotConnected { ref target, .. } if target == "mi-00000000000000000"),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with("target mi-00000000000000000 is not connected"));

    let err = manager
        .start_session(&stack.instance_id, Some("No-Such-Document"), HashMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidDocument(_)), "{err:?}");

    let mut wrong = stack.credential.clone();
    wrong.secret_access_key = "not-the-secret".to_owned();
    let intruder =
        ssmx_client::SessionManager::new(&crate::common::sdk_config(stack.url(), &wrong).await);
    let err = intruder.exec(&stack.instance_id, "true").await.unwrap_err();
    assert!(matches!(err, Error::AccessDenied(_)), "{err:?}");
    assert!(err.to_string().starts_with("access denied: "));
    assert_eq!(DEFAULT_EXEC_DOCUMENT, "AWS-StartNonInteractiveCommand");
    stack.stop().await;
}

/// Bytes moved through a session whose connections are cut on the way.
const RESUME_TOTAL: u64 = 100 * 1024 * 1024;
/// Read and write size of the transfer.
const RESUME_CHUNK: usize = 64 * 1024;

/// A port session to the destination at `port`, opened by `manager`. Returns the forwarder,
/// the local end of one forwarded connection and the task carrying it.
async fn forwarded_connection(
    stack: &Stack,
    manager: &ssmx_client::SessionManager,
    port: u16,
) -> (
    Arc<PortForwarder>,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<ssmx_client::Result<()>>,
) {
    let session = manager
        .start_session(
            &stack.instance_id,
            Some("AWS-StartPortForwardingSession"),
            params(&[("portNumber", &port.to_string())]),
        )
        .await
        .unwrap();
    let forwarder = Arc::new(
        timeout(STEP, PortForwarder::new(session))
            .await
            .unwrap()
            .unwrap(),
    );
    let (ours, theirs) = tokio::io::duplex(RESUME_CHUNK * 4);
    let f = forwarder.clone();
    let carrier = tokio::spawn(async move { f.forward(theirs).await });
    (forwarder, ours, carrier)
}

/// The client's side of [`forwarded_connection`] through a [`CuttableProxy`] (WebSocket and
/// API connections alike go through it).
async fn through_cuttable_proxy(
    stack: &Stack,
    port: u16,
) -> (
    CuttableProxy,
    Arc<PortForwarder>,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<ssmx_client::Result<()>>,
) {
    let proxy = CuttableProxy::start(stack.addr()).await;
    let manager = stack.manager_at(&proxy.url()).await;
    let (forwarder, local, carrier) = forwarded_connection(stack, &manager, port).await;
    (proxy, forwarder, local, carrier)
}

/// Reads [`RESUME_TOTAL`] bytes of the pattern `seed` from `local`, checking every byte, and
/// calls `cut` once when a third has arrived. Returns how many connections `cut` reset.
async fn download_checked(
    local: &mut tokio::io::DuplexStream,
    seed: u64,
    cut: impl FnOnce() -> usize,
) -> usize {
    let mut cut = Some(cut);
    let mut expected = Pattern::new(seed);
    let mut want = vec![0u8; RESUME_CHUNK];
    let mut got = vec![0u8; RESUME_CHUNK];
    let mut received = 0u64;
    let mut reset = 0;
    while received < RESUME_TOTAL {
        let n = timeout(STEP, local.read(&mut got)).await.unwrap().unwrap();
        assert!(n > 0, "stream ended after {received} bytes");
        expected.fill(&mut want[..n]);
        assert!(got[..n] == want[..n], "corrupt data at offset {received}");
        received += n as u64;
        if received >= RESUME_TOTAL / 3 {
            if let Some(cut) = cut.take() {
                reset = cut();
            }
        }
    }
    reset
}

/// Resets the client's connections in the middle of a 100 MB download; the client resumes the
/// session and every byte arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_is_resumed_without_loss_downloading() {
    let stack = Stack::start().await;
    let (port, _source) = crate::common::pattern_source(7, RESUME_TOTAL).await;
    let (proxy, forwarder, mut local, carrier) = through_cuttable_proxy(&stack, port).await;
    let cut = download_checked(&mut local, 7, || proxy.cut()).await;
    assert!(cut > 0, "no connection was cut");
    timeout(STEP, forwarder.terminate()).await.unwrap().unwrap();
    carrier.abort();
    stack.stop().await;
}

/// Resets the agent's connections (control and data channel) in the middle of a 100 MB
/// download; the agent reconnects and every byte arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_the_agents_connections_loses_nothing() {
    let stack = Stack::start_with_agent_proxy().await;
    let (port, _source) = crate::common::pattern_source(5, RESUME_TOTAL).await;
    let manager = stack.manager().await;
    let (forwarder, mut local, carrier) = forwarded_connection(&stack, &manager, port).await;
    let proxy = stack.agent_proxy.as_ref().unwrap();
    let cut = download_checked(&mut local, 5, || proxy.cut()).await;
    assert!(
        cut >= 2,
        "the control and data channels were not both cut: {cut}"
    );
    timeout(STEP, forwarder.terminate()).await.unwrap().unwrap();
    carrier.abort();
    stack.stop().await;
}

/// The same for a 100 MB upload: the destination checks every byte and reports the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_is_resumed_without_loss_uploading() {
    let stack = Stack::start().await;
    let (port, _sink) = crate::common::pattern_sink(9).await;
    let (proxy, forwarder, local, carrier) = through_cuttable_proxy(&stack, port).await;
    let (mut r, mut w) = tokio::io::split(local);
    let mut pattern = Pattern::new(9);
    let mut buf = vec![0u8; RESUME_CHUNK];
    let mut sent = 0u64;
    let mut cut = 0;
    while sent < RESUME_TOTAL {
        let n = RESUME_CHUNK.min((RESUME_TOTAL - sent) as usize);
        pattern.fill(&mut buf[..n]);
        timeout(STEP, w.write_all(&buf[..n]))
            .await
            .unwrap()
            .unwrap();
        sent += n as u64;
        if cut == 0 && sent >= RESUME_TOTAL / 3 {
            cut = proxy.cut();
        }
    }
    w.shutdown().await.unwrap();
    let mut verdict = String::new();
    timeout(STEP, r.read_to_string(&mut verdict))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verdict, format!("ok {RESUME_TOTAL}"));
    assert!(cut > 0, "no connection was cut");
    timeout(STEP, forwarder.terminate()).await.unwrap().unwrap();
    carrier.abort();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socks_front_end_reaches_hosts_through_one_session_per_destination() {
    let stack = Stack::start().await;
    let (port, _echo) = echo_server().await;
    let manager = stack.manager().await;
    let proxy = Arc::new(ssmx_client::socks::SocksProxy::new(
        manager,
        stack.instance_id.clone(),
        "AWS-StartPortForwardingSessionToRemoteHost".into(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let server = tokio::spawn(proxy.clone().serve(listener));
    for round in 0..3u8 {
        let mut conn = TcpStream::connect(local).await.unwrap();
        // Greeting (no authentication), then CONNECT 127.0.0.1:<port>.
        conn.write_all(&[5, 1, 0]).await.unwrap();
        let mut choice = [0u8; 2];
        conn.read_exact(&mut choice).await.unwrap();
        assert_eq!(choice, [5, 0]);
        let mut request = vec![5, 1, 0, 1, 127, 0, 0, 1];
        request.extend_from_slice(&port.to_be_bytes());
        conn.write_all(&request).await.unwrap();
        let mut answer = [0u8; 10];
        timeout(STEP, conn.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer[..2], [5, 0], "round {round}: {answer:?}");
        let message = [b'x', round];
        conn.write_all(&message).await.unwrap();
        let mut echoed = [0u8; 2];
        timeout(STEP, conn.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
    // Three connections to one destination shared one session.
    let open = proxy.open_sessions().await;
    assert_eq!(open.len(), 1);
    // An address type it does not serve is answered, not dropped.
    let mut conn = TcpStream::connect(local).await.unwrap();
    conn.write_all(&[5, 1, 0, 5, 1, 0, 9]).await.unwrap();
    let mut answer = [0u8; 12];
    timeout(STEP, conn.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer[..4], [5, 0, 5, 8]);
    timeout(STEP, open[0].terminate()).await.unwrap().unwrap();
    server.abort();
    stack.stop().await;
}
