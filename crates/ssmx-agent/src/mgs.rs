//! The agent's side of MGS: CreateControlChannel / CreateDataChannel (REST, 201 + XML) and the
//! SigV4-signed WebSockets with their Open…Channel first frame (PROTOCOL.md §2, §10.1, §10.4).

use std::time::Duration;

use futures::SinkExt;
use ssmx_protocol::payload::{
    parse_create_channel_output_xml, CreateChannelInput, OpenControlChannelInput,
    OpenDataChannelInput, MESSAGE_SCHEMA_VERSION,
};
use ssmx_protocol::version::AGENT_VERSION;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::error::AgentError;
use crate::host_info::PLATFORM_TYPE;
use crate::registration::{join_url, parse_gateway_url, truncate, Registration};
use crate::sigv4::{Signer, SERVICE_MGS};

/// A WebSocket to the gateway.
pub(crate) type GatewaySocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Idle keep-alive connections kept per gateway host: a burst of session starts reuses a few,
/// and leaves no more than these open once it is over.
const HTTP_POOL_MAX_IDLE: usize = 4;

/// Idle keep-alive connections are closed after this long: the agent's periodic calls are
/// minutes apart, so a connection kept longer would rarely be used again.
const HTTP_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Text the service puts in a CreateDataChannel refusal for a session that is over; the official
/// agent stops retrying when it sees it (PROTOCOL.md §12.3, §13.2).
const SESSION_TERMINATED: &str = "Session is already terminated";

/// The MGS endpoints of one gateway, with the agent's identity.
pub(crate) struct Mgs {
    http: reqwest::Client,
    base: url::Url,
    ws_base: url::Url,
    signer: Signer,
    instance_id: String,
}

impl Mgs {
    /// Endpoints for `registration`, REST calls made with `http` (from [`http_client`]).
    pub(crate) fn new(
        registration: &Registration,
        http: reqwest::Client,
    ) -> Result<Self, AgentError> {
        let base = parse_gateway_url(&registration.gateway_url)?;
        let mut ws_base = base.clone();
        let scheme = if base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        ws_base
            .set_scheme(scheme)
            .map_err(|()| AgentError::GatewayUrl {
                url: registration.gateway_url.clone(),
                reason: "cannot derive a WebSocket URL".into(),
            })?;
        Ok(Self {
            http,
            base,
            ws_base,
            signer: Signer::new(
                &registration.access_key_id,
                &registration.secret_access_key,
                &registration.region,
            ),
            instance_id: registration.instance_id.clone(),
        })
    }

    /// The instance id this agent speaks for.
    pub(crate) fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// True when the gateway runs on this host (its address is loopback or `localhost`).
    pub(crate) fn gateway_is_local(&self) -> bool {
        match self.base.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
    }

    /// CreateControlChannel: a token for the control channel.
    pub(crate) async fn create_control_channel(&self) -> Result<String, AgentError> {
        let input = CreateChannelInput {
            message_schema_version: MESSAGE_SCHEMA_VERSION.to_owned(),
            request_id: Uuid::new_v4().to_string(),
            client_id: None,
        };
        let url = join_url(&self.base, &["v1/control-channel", &self.instance_id]);
        self.create_channel(url, &input).await
    }

    /// CreateDataChannel: the agent's token for the data channel of `session_id`.
    pub(crate) async fn create_data_channel(&self, session_id: &str) -> Result<String, AgentError> {
        let input = CreateChannelInput {
            message_schema_version: MESSAGE_SCHEMA_VERSION.to_owned(),
            request_id: Uuid::new_v4().to_string(),
            client_id: Some(String::new()),
        };
        let url = join_url(&self.base, &["v1/data-channel", session_id]);
        self.create_channel(url, &input).await
    }

    async fn create_channel(
        &self,
        url: url::Url,
        input: &CreateChannelInput,
    ) -> Result<String, AgentError> {
        let body = serde_json::to_vec(input).expect("channel input serialises");
        let signed = self.signer.sign(
            SERVICE_MGS,
            "POST",
            url.as_str(),
            &[("content-type", "application/json")],
            &body,
        )?;
        let mut request = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        let http_error = |e: reqwest::Error| AgentError::Http {
            url: url.to_string(),
            detail: error_chain(&e),
        };
        let response = request.send().await.map_err(http_error)?;
        let status = response.status();
        let text = response.text().await.map_err(http_error)?;
        if status.as_u16() != 201 {
            return Err(AgentError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: truncate(&text),
            });
        }
        parse_create_channel_output_xml(&text).ok_or_else(|| AgentError::Response {
            url: url.to_string(),
            detail: format!("no TokenValue in {}", truncate(&text)),
        })
    }

    /// Opens the control-channel WebSocket and sends OpenControlChannel with `token`.
    pub(crate) async fn connect_control_channel(
        &self,
        token: &str,
    ) -> Result<GatewaySocket, AgentError> {
        let mut url = join_url(&self.ws_base, &["v1/control-channel", &self.instance_id]);
        url.set_query(Some("role=subscribe&stream=input"));
        let open = OpenControlChannelInput {
            cookie: None,
            message_schema_version: MESSAGE_SCHEMA_VERSION.to_owned(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token.to_owned(),
            agent_version: AGENT_VERSION.to_owned(),
            platform_type: PLATFORM_TYPE.to_owned(),
        };
        let first = serde_json::to_string(&open).expect("open input serialises");
        self.open_websocket(url, first).await
    }

    /// CreateDataChannel, the data-channel WebSocket and OpenDataChannel for `session_id`.
    pub(crate) async fn connect_data_channel(
        &self,
        session_id: &str,
    ) -> Result<GatewaySocket, AgentError> {
        let token = self.create_data_channel(session_id).await?;
        let mut url = join_url(&self.ws_base, &["v1/data-channel", session_id]);
        url.set_query(Some("role=publish_subscribe"));
        let open = OpenDataChannelInput {
            message_schema_version: MESSAGE_SCHEMA_VERSION.to_owned(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token,
            client_instance_id: Some(self.instance_id.clone()),
            client_id: String::new(),
            client_version: None,
        };
        let first = serde_json::to_string(&open).expect("open input serialises");
        self.open_websocket(url, first).await
    }

    async fn open_websocket(
        &self,
        url: url::Url,
        first_frame: String,
    ) -> Result<GatewaySocket, AgentError> {
        let ws_error = |detail: String| AgentError::WebSocket {
            url: url.to_string(),
            detail,
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ws_error(error_chain(&e)))?;
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let signed = self
            .signer
            .sign(SERVICE_MGS, "GET", url.as_str(), &[("host", &host)], b"")?;
        for (name, value) in signed {
            let value = HeaderValue::from_str(&value)
                .map_err(|e| ws_error(format!("bad signature header: {e}")))?;
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| ws_error(format!("bad signature header: {e}")))?;
            request.headers_mut().insert(name, value);
        }
        // Nagle's algorithm would hold small frames (keystrokes, echoes, acknowledgements) back
        // for the peer's delayed ACK: tens of milliseconds per hop.
        let disable_nagle = true;
        let connector = ssmx_channel::tls::connector(url.scheme()).map_err(ws_error)?;
        let (mut socket, _response) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            disable_nagle,
            Some(connector),
        )
        .await
        .map_err(|e| ws_error(error_chain(&e)))?;
        socket
            .send(Message::text(first_frame))
            .await
            .map_err(|e| ws_error(error_chain(&e)))?;
        Ok(socket)
    }
}

/// True when a CreateDataChannel failure says the session is over (do not retry).
pub(crate) fn is_session_terminated(error: &AgentError) -> bool {
    matches!(error, AgentError::Status { body, .. } if body.contains(SESSION_TERMINATED))
}

/// The HTTP client for gateway REST calls; one per agent, shared by all its calls (clones share
/// the connection pool).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, AgentError> {
    let tls = ssmx_channel::tls::client_config().map_err(|detail| AgentError::Http {
        url: String::new(),
        detail,
    })?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(timeout)
        .pool_max_idle_per_host(HTTP_POOL_MAX_IDLE)
        .pool_idle_timeout(HTTP_POOL_IDLE_TIMEOUT)
        .user_agent(concat!("ssmx-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AgentError::Http {
            url: String::new(),
            detail: error_chain(&e),
        })
}

/// An error with all its causes, `outer: inner: …`.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::Barrier;

    use super::*;

    /// An HTTP/1.1 server that answers every request with an empty 200, the first request of
    /// each connection only once `first_requests` of them have arrived (so that many connections
    /// are open at once). Returns its URL and the number of connections open to it.
    async fn counting_server(first_requests: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(first_requests));
        let counter = open.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (counter, barrier) = (counter.clone(), barrier.clone());
                tokio::spawn(async move {
                    let mut socket = BufReader::new(socket);
                    let mut line = String::new();
                    let mut answered = 0;
                    while matches!(socket.read_line(&mut line).await, Ok(n) if n > 0) {
                        let end_of_request = line == "\r\n";
                        line.clear();
                        if !end_of_request {
                            continue;
                        }
                        if answered == 0 {
                            barrier.wait().await;
                        }
                        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if socket.get_mut().write_all(response).await.is_err() {
                            break;
                        }
                        answered += 1;
                    }
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (url, open)
    }

    async fn wait_until(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..1000 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    #[tokio::test]
    async fn idle_gateway_connections_are_few_and_closed_in_time() {
        const CONCURRENT: usize = 24;
        let (url, open) = counting_server(CONCURRENT).await;
        let http = http_client(Duration::from_secs(10)).unwrap();
        let requests = (0..CONCURRENT).map(|_| http.get(&url).send());
        for response in futures::future::join_all(requests).await {
            assert!(response.unwrap().status().is_success());
        }
        assert_eq!(open.load(Ordering::SeqCst), CONCURRENT);
        wait_until("the pool kept at most its idle maximum", || {
            open.load(Ordering::SeqCst) <= HTTP_POOL_MAX_IDLE
        })
        .await;
        // The pool's clock is tokio's: jump past the idle timeout instead of waiting for it.
        tokio::time::pause();
        tokio::time::advance(2 * HTTP_POOL_IDLE_TIMEOUT).await;
        tokio::time::resume();
        wait_until("idle connections were closed", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
    }
}
