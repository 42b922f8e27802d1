//! The tokio driver over in-memory transports, a relay that can be cut, and real WebSockets on
//! 127.0.0.1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ssmx_channel::driver::EVENT_QUEUE_CAPACITY;
use ssmx_channel::{
    spawn, ChannelConfig, ChannelError, ChannelEvent, Receiver, Role, Sender, Transport,
};
use ssmx_protocol::payload::{from_json, Acknowledge, AgentSessionState};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Payload `i` of a numbered test stream: its index, then filler, `len` bytes in all.
fn numbered(i: u32, len: usize) -> Bytes {
    let mut payload = vec![(i % 251) as u8; len.max(4)];
    payload[..4].copy_from_slice(&i.to_be_bytes());
    Bytes::from(payload)
}

/// Sends `count` numbered payloads of `len` bytes, then waits until all are acknowledged.
fn send_numbered(sender: Sender, count: u32, len: usize) -> JoinHandle<Result<(), ChannelError>> {
    tokio::spawn(async move {
        for i in 0..count {
            sender.send(PayloadType::Output, numbered(i, len)).await?;
        }
        sender.flush().await
    })
}

/// Reads events until the `count` numbered payloads of `len` bytes arrived as one byte stream
/// (the channel may split long payloads), checking order and content; publishes the bytes
/// received so far on `progress`. Transport losses are skipped. Returns the receiver.
fn receive_numbered(
    mut receiver: Receiver,
    count: u32,
    len: usize,
    progress: Option<watch::Sender<usize>>,
) -> JoinHandle<Receiver> {
    tokio::spawn(async move {
        let expected: Vec<u8> = (0..count).flat_map(|i| numbered(i, len)).collect();
        let mut offset = 0;
        while offset < expected.len() {
            match receiver.recv().await.expect("driver alive") {
                ChannelEvent::Payload {
                    payload_type,
                    payload,
                } => {
                    assert_eq!(payload_type, PayloadType::Output);
                    let end = offset + payload.len();
                    assert!(
                        end <= expected.len() && expected[offset..end] == payload[..],
                        "bytes {offset}..{end} differ from what was sent"
                    );
                    offset = end;
                    if let Some(progress) = &progress {
                        progress.send_replace(offset);
                    }
                }
                ChannelEvent::TransportLost(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        receiver
    })
}

#[tokio::test]
async fn transfer_both_ways_over_a_pair() {
    let (client_side, agent_side) = Transport::pair();
    let (client, client_rx) = spawn(ChannelConfig::new(Role::Client), client_side);
    let (agent, agent_rx) = spawn(ChannelConfig::new(Role::Agent), agent_side);
    let down = send_numbered(agent.clone(), 300, 40 * 1024);
    let up = send_numbered(client.clone(), 300, 100);
    let client_rx = receive_numbered(client_rx, 300, 40 * 1024, None);
    let agent_rx = receive_numbered(agent_rx, 300, 100, None);
    down.await.unwrap().unwrap();
    up.await.unwrap().unwrap();
    let mut client_rx = client_rx.await.unwrap();
    agent_rx.await.unwrap();

    // Non-stream messages pass once, unnumbered.
    let state = AgentSessionState::message("s-1", "Connected");
    agent.send_message(state.clone()).await.unwrap();
    assert_eq!(client_rx.recv().await, Some(ChannelEvent::Message(state)));

    // Closing one end drops its transport: the other end sees the loss.
    client.close();
    assert_eq!(client_rx.recv().await, None);
    assert_eq!(
        client
            .send(PayloadType::Output, Bytes::from_static(b"x"))
            .await,
        Err(ChannelError::Closed)
    );
    agent
        .send(PayloadType::Output, Bytes::from_static(b"late"))
        .await
        .unwrap();
    drop(agent);
}

#[tokio::test(start_paused = true)]
async fn a_full_window_holds_the_sender_back() {
    let (a_side, b_side) = Transport::pair();
    let config = ChannelConfig {
        send_window: 4,
        ..ChannelConfig::new(Role::Agent)
    };
    let (sender, _sender_rx) = spawn(config, a_side);
    let (_receiver_tx, receiver_rx) = spawn(ChannelConfig::new(Role::Client), b_side);
    const COUNT: u32 = 1000;
    let sent = Arc::new(AtomicUsize::new(0));
    let sending = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            for i in 0..COUNT {
                sender.send(PayloadType::Output, numbered(i, 1024)).await?;
                sent.fetch_add(1, Ordering::SeqCst);
            }
            sender.flush().await
        })
    };
    // Nobody reads the receiving end: once its event queue is full it leaves new data
    // unacknowledged, and the sender waits with a full window. (Paused time runs ahead only
    // when every task is idle.)
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stuck_at = sent.load(Ordering::SeqCst);
    assert!(
        stuck_at >= EVENT_QUEUE_CAPACITY && stuck_at < COUNT as usize,
        "sent {stuck_at}"
    );
    assert!(!sending.is_finished());
    // Reading resumes the flow; everything arrives once, in order.
    receive_numbered(receiver_rx, COUNT, 1024, None)
        .await
        .unwrap();
    sending.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_end_that_is_behind_reading_still_takes_acks_for_what_it_sends() {
    let (a_side, b_side) = Transport::pair();
    let (a_tx, a_rx) = spawn(ChannelConfig::new(Role::Agent), a_side);
    let (b_tx, b_rx) = spawn(ChannelConfig::new(Role::Client), b_side);
    const TO_B: u32 = 300;
    const TO_A: u32 = 1000;
    // B does not read for now, while A reads everything B sends.
    let a_sending = send_numbered(a_tx, TO_B, 512);
    let a_receiving = receive_numbered(a_rx, TO_A, 512, None);
    // B's output flows although its event queue is full: it still reads A's acks.
    let b_sending = send_numbered(b_tx, TO_A, 512);
    tokio::time::timeout(Duration::from_secs(60), b_sending)
        .await
        .expect("the end that does not read stalled its own output")
        .unwrap()
        .unwrap();
    a_receiving.await.unwrap();
    assert!(!a_sending.is_finished(), "B took more than it could hold");
    // When B reads again, A's resends fill the gap: everything arrives once, in order.
    receive_numbered(b_rx, TO_B, 512, None).await.unwrap();
    a_sending.await.unwrap().unwrap();
}

/// Forwards frames between two transports until aborted, like the service between the ends.
fn relay(a: Transport, b: Transport) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (mut a_sink, mut a_stream) = (a.sink, a.stream);
        let (mut b_sink, mut b_stream) = (b.sink, b.stream);
        let a_to_b = async {
            while let Some(Ok(frame)) = a_stream.next().await {
                if b_sink.send(frame).await.is_err() {
                    break;
                }
            }
        };
        let b_to_a = async {
            while let Some(Ok(frame)) = b_stream.next().await {
                if a_sink.send(frame).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(a_to_b, b_to_a);
    })
}

/// A fresh relay between the two ends; returns the transports the ends attach to.
fn relayed() -> (Transport, Transport, JoinHandle<()>) {
    let (client_side, relay_client) = Transport::pair();
    let (relay_agent, agent_side) = Transport::pair();
    (client_side, agent_side, relay(relay_client, relay_agent))
}

#[tokio::test]
async fn reattach_after_a_dropped_transport_loses_and_repeats_nothing() {
    let (client_side, agent_side, mut relay_task) = relayed();
    let (client, client_rx) = spawn(ChannelConfig::new(Role::Client), client_side);
    let (agent, agent_rx) = spawn(ChannelConfig::new(Role::Agent), agent_side);
    const COUNT: u32 = 3000;
    const LEN: usize = 2000;
    let (progress_tx, mut progress) = watch::channel(0);
    let down = send_numbered(agent.clone(), COUNT, LEN);
    let up = send_numbered(client.clone(), COUNT, 300);
    let client_rx = receive_numbered(client_rx, COUNT, LEN, Some(progress_tx));
    let agent_rx = receive_numbered(agent_rx, COUNT, 300, None);
    for quarter in 1..=3 {
        // Cut the connection with frames in flight, at each quarter of the transfer.
        let threshold = quarter * COUNT as usize * LEN / 4;
        progress.wait_for(|&got| got >= threshold).await.unwrap();
        relay_task.abort();
        let _ = relay_task.await;
        let (client_side, agent_side, task) = relayed();
        relay_task = task;
        client.reattach(client_side).await.unwrap();
        agent.reattach(agent_side).await.unwrap();
    }
    down.await.unwrap().unwrap();
    up.await.unwrap().unwrap();
    client_rx.await.unwrap();
    agent_rx.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_task_ends_when_every_handle_is_dropped() {
    let (ours, mut peer) = Transport::pair();
    let (sender, receiver) = spawn(ChannelConfig::new(Role::Client), ours);
    let second_sender = sender.clone();
    sender
        .send(PayloadType::Output, Bytes::from_static(b"hi"))
        .await
        .unwrap();
    let sent = AgentMessage::decode(peer.stream.next().await.unwrap().unwrap()).unwrap();
    let ack = Acknowledge::of(&sent).to_message().to_bytes();
    peer.sink.send(ack).await.unwrap();

    // Dropping the receiver, or some senders, leaves the task running.
    drop(receiver);
    drop(sender);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(futures::poll!(peer.stream.next()).is_pending());

    // Dropping the last handle ends it and drops the transport.
    drop(second_sender);
    assert!(peer.stream.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_fails_the_channel() {
    let (ours, _peer) = Transport::pair();
    let config = ChannelConfig {
        max_resends: 5,
        ..ChannelConfig::new(Role::Agent)
    };
    let (sender, mut receiver) = spawn(config, ours);
    sender
        .send(PayloadType::Output, Bytes::from_static(b"anyone?"))
        .await
        .unwrap();
    let failure = ChannelError::ResendLimit {
        sequence_number: 0,
        resends: 5,
    };
    assert_eq!(
        receiver.recv().await,
        Some(ChannelEvent::Failed(failure.clone()))
    );
    assert_eq!(receiver.recv().await, None);
    assert_eq!(sender.flush().await, Err(failure.clone()));
    assert_eq!(
        sender
            .send(PayloadType::Output, Bytes::from_static(b"x"))
            .await,
        Err(failure)
    );
}

#[tokio::test]
async fn channel_closed_from_the_service_ends_the_channel() {
    let (ours, mut service) = Transport::pair();
    let (sender, mut receiver) = spawn(ChannelConfig::new(Role::Client), ours);
    let closed = ssmx_protocol::payload::ChannelClosed::message("s-9", "i-1", "", "now".into());
    service.sink.send(closed.to_bytes()).await.unwrap();
    match receiver.recv().await {
        Some(ChannelEvent::Closed(c)) => assert_eq!(c.session_id, "s-9"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(receiver.recv().await, None);
    assert_eq!(
        sender
            .send(PayloadType::Output, Bytes::from_static(b"x"))
            .await,
        Err(ChannelError::Closed)
    );
    assert!(service.stream.next().await.is_none(), "transport dropped");
}

/// A connected WebSocket pair on 127.0.0.1: (client side, server side).
async fn websocket_pair() -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::WebSocketStream<TcpStream>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/v1/data-channel/s"), tcp)
            .await
            .unwrap();
    (client, server.await.unwrap())
}

#[tokio::test]
async fn an_idle_data_channel_sends_keepalive_pings() {
    let (client_ws, mut server_ws) = websocket_pair().await;
    let interval = Duration::from_millis(100);
    let (_client, _client_rx) = spawn(
        ChannelConfig::new(Role::Client),
        Transport::from_websocket_with_keepalive(client_ws, interval),
    );
    // Nothing is sent on the channel, yet pings keep arriving.
    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), server_ws.next())
            .await
            .expect("no keepalive ping")
            .unwrap()
            .unwrap();
        assert!(matches!(msg, Message::Ping(_)), "unexpected {msg:?}");
    }
}

#[tokio::test]
async fn transfer_over_a_real_websocket() {
    let (client_ws, server_ws) = websocket_pair().await;
    let (client, client_rx) = spawn(
        ChannelConfig::new(Role::Client),
        Transport::from_websocket(client_ws),
    );
    let (agent, agent_rx) = spawn(
        ChannelConfig::new(Role::Agent),
        Transport::from_websocket(server_ws),
    );
    let down = send_numbered(agent.clone(), 200, 32 * 1024);
    let up = send_numbered(client.clone(), 200, 1024);
    let mut client_rx = receive_numbered(client_rx, 200, 32 * 1024, None)
        .await
        .unwrap();
    receive_numbered(agent_rx, 200, 1024, None).await.unwrap();
    down.await.unwrap().unwrap();
    up.await.unwrap().unwrap();
    // Closing the agent's end closes the TCP connection under the client.
    agent.close();
    assert!(matches!(
        client_rx.recv().await,
        Some(ChannelEvent::TransportLost(_))
    ));
}

/// Overwrites the frame fields that are random or binary with ASCII so the whole frame is valid
/// UTF-8 and can travel as a text message; the digest no longer matches.
fn as_utf8_frame(msg: &AgentMessage) -> String {
    let mut frame = msg.to_bytes().to_vec();
    frame[40..48].copy_from_slice(b"17000000"); // CreatedDate (non-zero)
    frame[64..112].fill(b'0'); // MessageId and PayloadDigest
    String::from_utf8(frame).expect("ASCII and NUL only")
}

#[tokio::test]
async fn websocket_text_messages_are_read_like_binary_ones() {
    let (client_ws, mut raw_agent) = websocket_pair().await;
    let config = ChannelConfig {
        verify_digest: false,
        ..ChannelConfig::new(Role::Client)
    };
    let (_client, mut client_rx) = spawn(config, Transport::from_websocket(client_ws));
    let msg = AgentMessage::new(
        MessageType::OutputStreamData,
        PayloadType::Output,
        Bytes::from_static(b"hello"),
    );
    raw_agent
        .send(Message::Text(as_utf8_frame(&msg).into()))
        .await
        .unwrap();
    assert_eq!(
        client_rx.recv().await,
        Some(ChannelEvent::Payload {
            payload_type: PayloadType::Output,
            payload: Bytes::from_static(b"hello"),
        })
    );
    // The ack comes back as a binary message.
    let ack = loop {
        match raw_agent.next().await.unwrap().unwrap() {
            Message::Binary(frame) => break AgentMessage::decode(frame).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(ack.message_type, MessageType::Acknowledge);
    let ack: Acknowledge = from_json("acknowledge", &ack.payload).unwrap();
    assert_eq!(ack.sequence_number, 0);
}
