//! The data channel over `wss://` (rustls), trusting a private CA through `SSL_CERT_FILE` the
//! way the system trust store is configured. Its own test binary: the variable is process-wide.

#[path = "e2e/common/mod.rs"]
mod common;

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use ssmx_client::{SessionEnd, SessionEvent, SessionManager, SessionTicket};
use ssmx_protocol::payload::{from_json, ChannelClosed, OpenDataChannelInput};
use ssmx_protocol::{flags, AgentMessage, MessageType, PayloadType};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

use common::STEP;

#[tokio::test]
async fn wss_stream_url_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    // Before the first connection: the trust store is read once per process.
    std::env::set_var("SSL_CERT_FILE", &ca_file);

    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "wss://localhost:{}/v1/data-channel/tls-01?role=publish_subscribe",
        listener.local_addr().unwrap().port()
    );
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
        let Some(Ok(Message::Text(open))) = ws.next().await else {
            panic!("no OpenDataChannel");
        };
        let open: OpenDataChannelInput = from_json("open", open.as_bytes()).unwrap();
        let mut prompt = AgentMessage::new(
            MessageType::OutputStreamData,
            PayloadType::Output,
            ssmx_client::Bytes::from_static(b"tls$ "),
        );
        prompt.flags = flags::SYN;
        ws.send(Message::binary(prompt.to_bytes())).await.unwrap();
        // Wait for the ack, then end the session.
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(frame) = m {
                if AgentMessage::decode(frame).unwrap().message_type == MessageType::Acknowledge {
                    break;
                }
            }
        }
        let closed = ChannelClosed::message("tls-01", "mi-0", "", "2026-11-22T00:00:00Z".into());
        ws.send(Message::binary(closed.to_bytes())).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        open.token_value
    });

    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let ticket: SessionTicket = serde_json::from_value(serde_json::json!({
        "SessionId": "tls-01", "TokenValue": "tls-token", "StreamUrl": url,
    }))
    .unwrap();
    let mut session = SessionManager::new(&config)
        .attach(ticket, "mi-0123456789abcdef0")
        .await
        .unwrap();
    let mut output = Vec::new();
    let end = timeout(STEP, async {
        loop {
            match session.next_event().await.unwrap().unwrap() {
                SessionEvent::Output(b) => output.extend_from_slice(&b),
                SessionEvent::Ended(end) => return end,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(output, b"tls$ ");
    assert_eq!(end, SessionEnd::Closed { message: None });
    assert_eq!(timeout(STEP, server).await.unwrap().unwrap(), "tls-token");
}
