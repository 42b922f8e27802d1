//! Port sessions end to end through an in-process gateway: standard-stream, basic and smux
//! modes against real TCP servers on 127.0.0.1.

use std::sync::{Arc, Mutex};

use crate::common::{eventually, Seen, Stack, TestSession, CLIENT_VERSION, STEP};
use async_smux::{MuxBuilder, MuxConnector};
use bytes::Bytes;
use serde_json::json;
use ssmx_protocol::payload::PortFlag;
use ssmx_protocol::PayloadType;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// A TCP echo server; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A port on 127.0.0.1 that refuses connections: bound, so that nothing else can take it
/// (nor an outgoing connection pick it as its own port), but not listening. The port stays
/// reserved while the returned socket lives.
fn refusing_port() -> (TcpSocket, u16) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn send_flag(session: &TestSession, flag: PortFlag) {
    session
        .tx
        .send(PayloadType::Flag, flag.to_payload())
        .await
        .unwrap();
}

/// Parses complete smux frames as (cmd, stream id, data length), checking each is xtaci/smux
/// v1: version 1, a known command, little-endian fields, data only on PSH, NOP on stream 0.
fn smux_frames(bytes: &[u8]) -> Vec<(u8, u32, usize)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let (version, cmd) = (bytes[at], bytes[at + 1]);
        let length = u16::from_le_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let sid = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        assert_eq!(version, 1, "smux version at byte {at}");
        assert!(cmd <= 3, "unknown smux command {cmd} at byte {at}");
        if cmd != 2 {
            assert_eq!(length, 0, "control frame with data at byte {at}");
        }
        if cmd == 3 {
            assert_eq!(sid, 0, "NOP on a stream");
        }
        if at + 8 + length > bytes.len() {
            break;
        }
        frames.push((cmd, sid, length));
        at += 8 + length;
    }
    frames
}

/// The client's side of smux over a session's Output byte streams, as the official client runs
/// it; every byte the agent sent is recorded.
struct MuxClient {
    connector: MuxConnector<DuplexStream>,
    agent_bytes: Arc<Mutex<Vec<u8>>>,
    control: ssmx_channel::Sender,
    /// Ends with the session's end.
    downlink: JoinHandle<Seen>,
    // Dropping the set stops the smux worker and the uplink.
    _tasks: JoinSet<()>,
}

impl MuxClient {
    fn start(mut session: TestSession) -> Self {
        let (client_end, pump_end) = tokio::io::duplex(1 << 20);
        let (mut from_mux, mut to_mux) = tokio::io::split(pump_end);
        let mut tasks = JoinSet::new();
        let tx = session.tx.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = from_mux.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                if tx
                    .send(PayloadType::Output, Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let agent_bytes = Arc::new(Mutex::new(Vec::new()));
        let control = session.tx.clone();
        let recorded = agent_bytes.clone();
        let downlink = tokio::spawn(async move {
            loop {
                match session.next().await {
                    Seen::Payload(PayloadType::Output, b) => {
                        recorded.lock().unwrap().extend_from_slice(&b);
                        let _ = to_mux.write_all(&b).await;
                    }
                    Seen::Payload(..) => {}
                    end => return end,
                }
            }
        });
        let (connector, _acceptor, worker) =
            MuxBuilder::client().with_connection(client_end).build();
        tasks.spawn(async move {
            let _ = worker.await;
        });
        Self {
            connector,
            agent_bytes,
            control,
            downlink,
            _tasks: tasks,
        }
    }

    /// The complete smux frames the agent sent so far (see [`smux_frames`]).
    fn agent_frames(&self) -> Vec<(u8, u32, usize)> {
        smux_frames(&self.agent_bytes.lock().unwrap())
    }

    /// Ends the session with the TerminateSession flag; returns how it ended.
    async fn terminate(self) -> Seen {
        self.control
            .send(PayloadType::Flag, PortFlag::TerminateSession.to_payload())
            .await
            .unwrap();
        tokio::time::timeout(STEP, self.downlink)
            .await
            .unwrap()
            .unwrap()
    }
}

/// Reads Output payloads until `len` bytes arrived.
async fn read_bytes(session: &mut TestSession, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match session.next().await {
            Seen::Payload(PayloadType::Output, b) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?} after {} bytes", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_stream_mode_forwards_bytes_and_ends_with_the_destination() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(b"SSH-2.0-test\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(&buf).await.unwrap();
        // then the server closes the connection
    });
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(Some("AWS-StartSSHSession"), &[("portNumber", &port)])
        .await;
    let (request, _) = session.handshake(CLIENT_VERSION, None).await;
    assert_eq!(
        request.requested_client_actions[0].action_parameters,
        json!({"SessionType": "Port", "Properties": {"portNumber": port}})
    );
    assert_eq!(read_bytes(&mut session, 14).await, b"SSH-2.0-test\r\n");
    let data = pattern(4096, 7);
    session.send(&data).await;
    assert_eq!(read_bytes(&mut session, 4096).await, data);
    let (_, end) = session.until_closed().await;
    assert_eq!(end, Seen::Closed(String::new()));
    server.await.unwrap();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_mode_for_old_clients_redials_and_terminates_on_the_flag() {
    let port = echo_server().await.to_string();
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(
            Some("AWS-StartPortForwardingSession"),
            &[("portNumber", &port), ("localPortNumber", "0")],
        )
        .await;
    session.handshake("1.1.69.0", None).await;
    for seed in 0..3u8 {
        let data = pattern(3000, seed);
        session.send(&data).await;
        assert_eq!(read_bytes(&mut session, data.len()).await, data);
        send_flag(&session, PortFlag::DisconnectToPort).await;
    }
    send_flag(&session, PortFlag::TerminateSession).await;
    let (_, end) = session.until_closed().await;
    assert_eq!(end, Seen::Closed(String::new()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_mode_carries_twenty_parallel_connections_byte_exact() {
    let port = echo_server().await.to_string();
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(
            Some("AWS-StartPortForwardingSession"),
            &[("portNumber", &port), ("localPortNumber", "0")],
        )
        .await;
    session.handshake(CLIENT_VERSION, Some(256 * 1024)).await;
    let mux = MuxClient::start(session);

    let streams = (0..20u8).map(|i| {
        let mut stream = mux.connector.connect().unwrap();
        async move {
            let data = pattern(200_000 + usize::from(i) * 1000, i);
            let (mut r, mut w) = tokio::io::split(&mut stream);
            let write = async {
                w.write_all(&data).await.unwrap();
            };
            let read = async {
                let mut got = vec![0u8; data.len()];
                r.read_exact(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(write, read);
            assert!(got == data, "stream {i} corrupted");
            stream.shutdown().await.unwrap();
        }
    });
    futures::future::join_all(streams).await;

    // Each stream's FIN reaches the destination, which closes, and the agent FINs the stream.
    eventually("the agent closed all 20 streams", || {
        mux.agent_frames()
            .iter()
            .filter(|(cmd, _, _)| *cmd == 1)
            .count()
            == 20
    })
    .await;
    // Every frame the agent sent is xtaci/smux v1 (checked by `smux_frames`), and the stream
    // ends on a frame boundary.
    let frames = mux.agent_frames();
    let consumed: usize = frames.iter().map(|(_, _, len)| 8 + len).sum();
    assert_eq!(consumed, mux.agent_bytes.lock().unwrap().len());
    assert!(frames.iter().all(|(cmd, sid, _)| *cmd == 3 || sid % 2 == 1));

    // The client ends the session with the TerminateSession flag.
    assert_eq!(mux.terminate().await, Seen::Closed(String::new()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_frames_to_an_official_client_carry_at_most_32_kib() {
    const TOTAL: usize = 1024 * 1024;
    // A destination that sends as fast as it can, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(&pattern(TOTAL, 9)).await.unwrap();
    });
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(
            Some("AWS-StartPortForwardingSession"),
            &[("portNumber", &port), ("localPortNumber", "0")],
        )
        .await;
    // The official client: no ssmx capabilities in its HandshakeResponse.
    session.handshake(CLIENT_VERSION, None).await;
    let mux = MuxClient::start(session);
    let mut stream = mux.connector.connect().unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == pattern(TOTAL, 9), "the stream's data was corrupted");
    let largest = mux
        .agent_frames()
        .iter()
        .filter(|(cmd, _, _)| *cmd == 2)
        .map(|(_, _, len)| *len)
        .max();
    assert!(
        largest.is_some_and(|len| len <= 32 * 1024),
        "largest smux frame sent: {largest:?} bytes"
    );
    assert_eq!(mux.terminate().await, Seen::Closed(String::new()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smux_mode_reports_a_refused_destination_and_goes_on() {
    let (_reserved, refused) = refusing_port();
    let refused = refused.to_string();
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(
            Some("AWS-StartPortForwardingSession"),
            &[("portNumber", &refused), ("localPortNumber", "0")],
        )
        .await;
    session.handshake(CLIENT_VERSION, None).await;
    session.send(&[1, 0, 0, 0, 3, 0, 0, 0]).await; // SYN for stream 3, as the official client
    let mut agent_bytes = Vec::new();
    let mut saw_error = false;
    while !saw_error {
        match session.next().await {
            Seen::Payload(PayloadType::Flag, b) => {
                saw_error = PortFlag::from_payload(&b).unwrap() == PortFlag::ConnectToPortError;
            }
            Seen::Payload(PayloadType::Output, b) => agent_bytes.extend_from_slice(&b),
            Seen::Payload(..) => {}
            other => panic!("session ended before ConnectToPortError: {other:?}"),
        }
    }
    // The stream is closed with a FIN (01 01 0000 03000000); the session stays up.
    while agent_bytes.len() < 8 {
        match session.next().await {
            Seen::Payload(PayloadType::Output, b) => agent_bytes.extend_from_slice(&b),
            Seen::Payload(..) => {}
            other => panic!("session ended early: {other:?}"),
        }
    }
    assert_eq!(&agent_bytes[..8], &[1, 1, 0, 0, 3, 0, 0, 0]);
    send_flag(&session, PortFlag::TerminateSession).await;
    let (_, end) = session.until_closed().await;
    assert_eq!(end, Seen::Closed(String::new()));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_destination_fails_a_single_connection_session() {
    let (_reserved, refused) = refusing_port();
    let refused = refused.to_string();
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(Some("AWS-StartSSHSession"), &[("portNumber", &refused)])
        .await;
    session.handshake(CLIENT_VERSION, None).await;
    let (_, end) = session.until_closed().await;
    match end {
        Seen::Closed(reason) => assert!(reason.contains("Unable to connect"), "{reason:?}"),
        other => panic!("expected channel_closed with the reason, got {other:?}"),
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_echo_flows_both_ways_at_once_without_stalling() {
    const TOTAL: usize = 16 * 1024 * 1024;
    let port = echo_server().await.to_string();
    let stack = Stack::start().await;
    let mut session = stack
        .start_session(Some("AWS-StartSSHSession"), &[("portNumber", &port)])
        .await;
    session.handshake(CLIENT_VERSION, Some(256 * 1024)).await;
    let tx = session.tx.clone();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(pattern(256 * 1024, 3));
        for _ in 0..TOTAL / chunk.len() {
            tx.send(PayloadType::Output, chunk.clone()).await.unwrap();
        }
    });
    let expected = pattern(256 * 1024, 3);
    let mut received = 0;
    while received < TOTAL {
        let got = tokio::time::timeout(STEP, session.next()).await.unwrap();
        match got {
            Seen::Payload(PayloadType::Output, b) => {
                let mut rest = &b[..];
                while !rest.is_empty() {
                    let at = received % expected.len();
                    let n = rest.len().min(expected.len() - at);
                    assert!(rest[..n] == expected[at..at + n], "corrupt at {received}");
                    rest = &rest[n..];
                    received += n;
                }
            }
            other => panic!("unexpected {other:?} after {received} bytes"),
        }
    }
    writer.await.unwrap();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_response_is_read_as_leniently_as_the_official_agent_reads_it() {
    let port = echo_server().await.to_string();
    let stack = Stack::start().await;
    // Absent or null fields take Go's zero values, as in the official agent's decoder.
    let accepted = [
        r#"{"ClientVersion":"1.2.677.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1}]}"#,
        r#"{"ClientVersion":"1.2.677.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":null}],"Errors":null}"#,
        r#"{"ClientVersion":null,"ProcessedClientActions":null}"#,
        "{}",
    ];
    for response in accepted {
        let mut session = stack
            .start_session(Some("AWS-StartSSHSession"), &[("portNumber", &port)])
            .await;
        session.handshake_request().await;
        session
            .tx
            .send(PayloadType::HandshakeResponse, Bytes::from(response))
            .await
            .unwrap();
        session.handshake_complete().await;
        let data = pattern(3000, 1);
        session.send(&data).await;
        assert_eq!(
            read_bytes(&mut session, data.len()).await,
            data,
            "{response}"
        );
        send_flag(&session, PortFlag::TerminateSession).await;
        let (_, end) = session.until_closed().await;
        assert_eq!(end, Seen::Closed(String::new()), "{response}");
    }
    // An action without ActionStatus has status 0, which is a failure.
    let mut session = stack
        .start_session(Some("AWS-StartSSHSession"), &[("portNumber", &port)])
        .await;
    session.handshake_request().await;
    let response =
        r#"{"ClientVersion":"1.2.677.0","ProcessedClientActions":[{"ActionType":"SessionType"}]}"#;
    session
        .tx
        .send(PayloadType::HandshakeResponse, Bytes::from(response))
        .await
        .unwrap();
    match session.until_closed().await {
        (_, Seen::Closed(reason)) => assert!(
            reason.contains("SessionType failed on client with status 0 error: "),
            "{reason:?}"
        ),
        other => panic!("expected channel_closed with the reason, got {other:?}"),
    }
    stack.stop().await;
}
