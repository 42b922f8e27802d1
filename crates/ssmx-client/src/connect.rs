//! Opening the client's data channel WebSocket (PROTOCOL.md §2): dial the StreamUrl verbatim
//! (TLS with rustls, through an HTTP proxy when the environment names one), then send the
//! `OpenDataChannel` text frame with the session token.

use std::sync::OnceLock;
use std::time::Duration;

use futures::SinkExt;
use ssmx_channel::Transport;
use ssmx_protocol::payload::{to_json, OpenDataChannelInput, MESSAGE_SCHEMA_VERSION};
use ssmx_protocol::version::CLIENT_VERSION;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use url::Url;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::proxy;

/// The client id sent in every `OpenDataChannel`: one UUID for the life of the process, as the
/// official client does.
pub fn client_id() -> Uuid {
    static CLIENT_ID: OnceLock<Uuid> = OnceLock::new();
    *CLIENT_ID.get_or_init(Uuid::new_v4)
}

/// The `OpenDataChannel` JSON a client sends first, field for field as the official client.
pub(crate) fn open_data_channel_frame(token: &str) -> String {
    let open = OpenDataChannelInput {
        message_schema_version: MESSAGE_SCHEMA_VERSION.to_owned(),
        request_id: Uuid::new_v4().hyphenated().to_string(),
        token_value: token.to_owned(),
        client_instance_id: None,
        client_id: client_id().hyphenated().to_string(),
        client_version: Some(CLIENT_VERSION.to_owned()),
    };
    String::from_utf8(to_json(&open).to_vec()).expect("JSON is UTF-8")
}

/// Dials data channels.
#[derive(Clone, Debug)]
pub(crate) struct Dialer {
    /// Limit for TCP connect + TLS + WebSocket upgrade.
    pub connect_timeout: Duration,
}

impl Dialer {
    /// Connects to `stream_url`, authenticates with `token` and returns the transport for the
    /// channel driver.
    pub async fn open(&self, stream_url: &str, token: &str) -> Result<Transport> {
        let shown = redact(stream_url);
        let fail = |reason: String| Error::Connect {
            url: shown.clone(),
            reason,
        };
        let url = Url::parse(stream_url).map_err(|e| fail(format!("invalid StreamUrl: {e}")))?;
        let connect = async {
            let host = url
                .host_str()
                .ok_or_else(|| fail("StreamUrl has no host".to_owned()))?;
            let port = url
                .port_or_known_default()
                .ok_or_else(|| fail("StreamUrl has no port".to_owned()))?;
            let target = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let tcp = match proxy::proxy_for(&url) {
                Some(p) => proxy::tunnel(&p, &target).await,
                None => TcpStream::connect(&target).await,
            }
            .map_err(|e| fail(e.to_string()))?;
            tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
            let connector = ssmx_channel::tls::connector(url.scheme()).map_err(fail)?;
            let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
                stream_url,
                tcp,
                None,
                Some(connector),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            ws.send(Message::text(open_data_channel_frame(token)))
                .await
                .map_err(|e| fail(format!("sending OpenDataChannel: {e}")))?;
            Ok::<_, Error>(ws)
        };
        let ws = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| fail(format!("no connection within {:?}", self.connect_timeout)))??;
        Ok(Transport::from_websocket(ws))
    }
}

/// The URL without its query string (which may carry credentials) for messages.
pub(crate) fn redact(stream_url: &str) -> String {
    stream_url
        .split('?')
        .next()
        .unwrap_or(stream_url)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssmx_protocol::payload::from_json;

    #[test]
    fn open_frame_has_the_official_fields_in_order() {
        let text = open_data_channel_frame("tok");
        let parsed: OpenDataChannelInput = from_json("open", text.as_bytes()).unwrap();
        assert_eq!(parsed.token_value, "tok");
        assert_eq!(parsed.client_version.as_deref(), Some(CLIENT_VERSION));
        assert_eq!(parsed.client_id, client_id().hyphenated().to_string());
        let keys: Vec<&str> = [
            "MessageSchemaVersion",
            "RequestId",
            "TokenValue",
            "ClientId",
            "ClientVersion",
        ]
        .into_iter()
        .collect();
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(!text.contains("ClientInstanceId"));
        // A fresh request id per open, the same client id.
        let again: OpenDataChannelInput =
            from_json("open", open_data_channel_frame("tok").as_bytes()).unwrap();
        assert_ne!(again.request_id, parsed.request_id);
        assert_eq!(again.client_id, parsed.client_id);
    }

    #[test]
    fn redaction_drops_the_query() {
        assert_eq!(
            redact("wss://h/v1/data-channel/s?role=publish_subscribe&X-Amz-Signature=1"),
            "wss://h/v1/data-channel/s"
        );
    }
}
