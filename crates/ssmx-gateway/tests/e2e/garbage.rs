//! A peer sending what does not decode: frames are dropped without effect on other sessions, the
//! log gets a bounded number of lines, a flood closes the connection with 1007 and a reason, and
//! an oversized message closes it with 1009 and a reason.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::common::*;
use futures::{SinkExt, StreamExt};
use ssmx_protocol::MessageType;
use tokio_tungstenite::tungstenite::Message;

/// Collects everything the gateway logs on this thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn warn_lines(&self) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains("WARN")).count()
    }
}

/// Waits for the close frame on `ws`, skipping data; returns (code, reason).
async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("closed without a code")
            }
            Some(Ok(_)) => {}
        }
    }
}

// Current-thread runtime: the gateway's tasks log on this thread, into the subscriber below.
#[tokio::test]
async fn a_flood_of_malformed_frames_is_logged_briefly_and_closed() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (gateway, cred) = start_gateway("flood", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut victim = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;
    let mut attacker = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;
    let warnings_before = log.warn_lines();

    // 10,000 one-byte frames of every kind of garbage; the socket is closed long before the end.
    for i in 0..10_000u32 {
        let frame = match i % 3 {
            0 => Message::binary(vec![0u8]),
            1 => Message::text("x"),
            _ => Message::binary(vec![0xff; 200]),
        };
        if attacker.client.feed(frame).await.is_err() {
            break;
        }
    }
    let _ = attacker.client.flush().await;
    let (code, reason) = close_of(&mut attacker.client).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("malformed"), "{reason}");
    let warnings = log.warn_lines() - warnings_before;
    assert!(warnings <= 8, "{warnings} WARN lines for one flood");

    // The other session on the same agent relays as before.
    let frame = stream_frame(MessageType::OutputStreamData, 0, b"unaffected");
    victim
        .agent
        .send(Message::binary(frame.clone()))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut victim.client).await, frame);
    let input = stream_frame(MessageType::InputStreamData, 0, b"typed");
    victim
        .client
        .send(Message::binary(input.clone()))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut victim.agent).await, input);
    gateway.shutdown().await;
}

#[tokio::test]
async fn malformed_control_frames_are_dropped_and_a_flood_is_closed() {
    let (gateway, _cred) = start_gateway("ctl-flood", None).await;
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    for _ in 0..10_000u32 {
        if ctl.ws.feed(Message::binary(vec![1u8])).await.is_err() {
            break;
        }
    }
    let _ = ctl.ws.flush().await;
    let (code, reason) = close_of(&mut ctl.ws).await;
    assert_eq!((code, reason.as_str()), (1007, "too many malformed frames"));
    // The agent may come back with a new control channel.
    let _again = open_control_channel(&gateway, &agent).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_is_closed_with_1009_and_a_reason() {
    let (gateway, cred) = start_gateway("big", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let mut wired = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;
    let too_big = vec![0u8; ssmx_protocol::message::DEFAULT_MAX_PAYLOAD + 4096];
    let _ = wired.client.send(Message::binary(too_big.clone())).await;
    let (code, reason) = close_of(&mut wired.client).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("larger than"), "{reason}");

    let _ = ctl.ws.send(Message::binary(too_big)).await;
    let (code, _) = close_of(&mut ctl.ws).await;
    assert_eq!(code, 1009);
    gateway.shutdown().await;
}
