//! Encrypted sessions whose ciphertext is altered on the way (PROTOCOL.md §7.3): a WebSocket
//! proxy between the client and the gateway flips one bit of one sealed Output payload and
//! recomputes the message digest, so only the AES-GCM tag can notice. The receiving end must
//! end the session with a clear error, and nothing after the altered message may reach the
//! other side's output or input.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use ssmx_client::{Error, SessionEvent, SessionListState};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Stack, STEP};

const KEY_ALIAS: &str = "alias/ssmx-tampering";

/// Session preferences that encrypt every session.
fn encrypting_preferences() -> (&'static str, serde_json::Value) {
    (
        "SSM-SessionManagerRunShell",
        json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream",
               "inputs": {"kmsKeyId": KEY_ALIAS}}),
    )
}

/// Which direction's Output messages the proxy alters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client → agent (`input_stream_data`).
    ToAgent,
    /// Agent → client (`output_stream_data`).
    ToClient,
}

/// A data-channel proxy in front of `gateway` that alters the `nth` (from 1) Output message
/// travelling in `direction`. Returns its `host:port`.
async fn tampering_proxy(
    gateway: std::net::SocketAddr,
    direction: Direction,
    nth: usize,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut path = String::new();
        // The callback's error type is tungstenite's, however large.
        #[allow(clippy::result_large_err)]
        let client = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            path = req.uri().to_string();
            Ok(resp)
        })
        .await
        .unwrap();
        let (upstream, _) = tokio_tungstenite::connect_async(format!("ws://{gateway}{path}"))
            .await
            .unwrap();
        let (mut client_tx, mut client_rx) = client.split();
        let (mut upstream_tx, mut upstream_rx) = upstream.split();
        let seen = Arc::new(AtomicUsize::new(0));
        let alter = move |msg: Message, wanted: MessageType| -> Message {
            let Message::Binary(frame) = &msg else {
                return msg;
            };
            let Ok(mut decoded) = AgentMessage::decode(frame.clone()) else {
                return msg;
            };
            if decoded.message_type != wanted || decoded.payload_type != PayloadType::Output {
                return msg;
            }
            if seen.fetch_add(1, Ordering::SeqCst) + 1 != nth {
                return msg;
            }
            let mut payload = decoded.payload.to_vec();
            let last = payload.len() - 1;
            payload[last / 2] ^= 0x01;
            decoded.payload = payload.into();
            Message::Binary(decoded.to_bytes())
        };
        let to_agent = {
            let alter = alter.clone();
            async move {
                while let Some(Ok(msg)) = client_rx.next().await {
                    let msg = if direction == Direction::ToAgent {
                        alter(msg, MessageType::InputStreamData)
                    } else {
                        msg
                    };
                    if upstream_tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        };
        let to_client = async move {
            while let Some(Ok(msg)) = upstream_rx.next().await {
                let msg = if direction == Direction::ToClient {
                    alter(msg, MessageType::OutputStreamData)
                } else {
                    msg
                };
                if client_tx.send(msg).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            () = to_agent => {}
            () = to_client => {}
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_agent_output_ends_the_session_without_corrupt_output() {
    let stack = Stack::start_with_documents(&[encrypting_preferences()]).await;
    let manager = stack.manager().await;
    let mut ticket = manager
        .request_session(
            &stack.instance_id,
            Some("AWS-StartNonInteractiveCommand"),
            // The command outlives the failure: only a terminate ends the session soon.
            [(
                "command".to_owned(),
                vec!["sh -c 'seq 1 200000; sleep 600'".to_owned()],
            )]
            .into(),
        )
        .await
        .unwrap();
    let proxy = tampering_proxy(stack.addr(), Direction::ToClient, 3).await;
    ticket.stream_url = ticket.stream_url.replace(&stack.addr().to_string(), &proxy);
    let mut session = manager.attach(ticket, &stack.instance_id).await.unwrap();
    let start = timeout(STEP, session.started()).await.unwrap().unwrap();
    assert!(start.encrypted);

    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    let mut received = Vec::new();
    let failure = loop {
        match timeout(STEP, session.next_event()).await.unwrap() {
            Some(Ok(SessionEvent::Output(bytes))) => received.extend_from_slice(&bytes),
            Some(Ok(SessionEvent::Ended(end))) => panic!("ended without an error: {end}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the session stopped without an error"),
        }
    };
    assert!(
        matches!(failure, Error::Encryption(_)),
        "not an encryption error: {failure:?}"
    );
    let text = failure.to_string();
    assert!(
        text.contains("decrypt") || text.contains("authenticat"),
        "{text}"
    );
    assert!(
        expected.as_bytes().starts_with(&received),
        "output after the altered message reached the caller ({} bytes received)",
        received.len()
    );
    assert!(
        received.len() < expected.len(),
        "the alteration went unnoticed"
    );
    // The client also ended the session at the service, so the agent stopped at once.
    let id = session.id().to_owned();
    timeout(std::time::Duration::from_secs(10), async {
        loop {
            let ended = manager.sessions(SessionListState::History).await.unwrap();
            if ended.iter().any(|s| s.session_id == id) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the session is still active at the service");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_client_input_ends_the_session_before_it_reaches_the_shell() {
    let stack = Stack::start_with_documents(&[encrypting_preferences()]).await;
    let manager = stack.manager().await;
    let mut ticket = manager
        .request_session(&stack.instance_id, None, Default::default())
        .await
        .unwrap();
    // The first Output message is the first keystrokes below; the second is altered.
    let proxy = tampering_proxy(stack.addr(), Direction::ToAgent, 2).await;
    ticket.stream_url = ticket.stream_url.replace(&stack.addr().to_string(), &proxy);
    let mut session = manager.attach(ticket, &stack.instance_id).await.unwrap();
    let start = timeout(STEP, session.started()).await.unwrap().unwrap();
    assert!(start.encrypted);

    session.write("echo first-$((40+2))\n").await.unwrap();
    let mut screen = String::new();
    while !screen.contains("first-42") {
        match timeout(STEP, session.next_event()).await.unwrap() {
            Some(Ok(SessionEvent::Output(bytes))) => {
                screen.push_str(&String::from_utf8_lossy(&bytes))
            }
            Some(Ok(_)) => {}
            other => panic!("session ended early: {other:?}"),
        }
    }
    session.write("echo second-$((40+3))\n").await.unwrap();
    let end = loop {
        match timeout(STEP, session.next_event()).await.unwrap() {
            Some(Ok(SessionEvent::Output(bytes))) => {
                screen.push_str(&String::from_utf8_lossy(&bytes))
            }
            Some(Ok(SessionEvent::Ended(end))) => break end.to_string(),
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => panic!("the session stopped without saying why"),
        }
    };
    assert!(
        !screen.contains("second-43"),
        "the altered input reached the shell:\n{screen}"
    );
    assert!(
        end.contains("cannot decrypt the client's data"),
        "the client was not told why: {end}"
    );
    stack.stop().await;
}
