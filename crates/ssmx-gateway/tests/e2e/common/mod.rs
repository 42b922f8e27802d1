//! Shared test helpers: an in-process gateway, a SigV4 signer, the aws-sdk-ssm client, a fake
//! agent speaking the MGS protocol over real sockets, and a raw client data channel.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4::SigningParams;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ssmx_gateway::config::{ApiCredential, Database};
use ssmx_gateway::store::NewActivation;
use ssmx_gateway::Gateway;
use ssmx_protocol::payload::{
    parse_create_channel_output_xml, AgentTaskPayload, OpenControlChannelInput,
    OpenDataChannelInput,
};
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const REGION: &str = "us-east-1";
/// Upper bound on waiting for anything in these tests (never reached when things work).
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn start_gateway(user: &str, recordings: Option<&Path>) -> (Gateway, ApiCredential) {
    start_gateway_with(user, recordings, Database::Memory).await
}

pub async fn start_gateway_with(
    user: &str,
    recordings: Option<&Path>,
    database: Database,
) -> (Gateway, ApiCredential) {
    let credential = ApiCredential::generate(user);
    let mut builder = Gateway::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .database(database)
        .credential(credential.clone());
    builder = match recordings {
        // Everything is recorded, port sessions included.
        Some(dir) => builder
            .config(ssmx_gateway::config::Config {
                record_port_sessions: true,
                ..Default::default()
            })
            .recordings_dir(dir),
        None => builder.without_recording(),
    };
    (builder.start().await.unwrap(), credential)
}

pub fn ssm_client(url: &str, cred: &ApiCredential) -> aws_sdk_ssm::Client {
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(
            &cred.access_key_id,
            &cred.secret_access_key,
            None,
            None,
            "test",
        ))
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::disabled())
        .interceptor(ssmx_client::UniqueSignatures)
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

/// Who signs, for what service, when.
pub struct Signer<'a> {
    pub service: &'a str,
    pub key: &'a str,
    pub secret: &'a str,
    pub at: SystemTime,
}

/// Signs a request for [`REGION`]; returns the headers to add (Authorization, X-Amz-Date).
pub fn sign_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    signer: &Signer<'_>,
) -> Vec<(String, String)> {
    sign_headers_in(REGION, method, url, headers, body, signer)
}

/// Like [`sign_headers`], with the credential scoped to `region`.
pub fn sign_headers_in(
    region: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    signer: &Signer<'_>,
) -> Vec<(String, String)> {
    sign_with(region, method, url, headers, body, signer, None)
}

/// Like [`sign_headers`], with temporary credentials: adds and signs `X-Amz-Security-Token`.
pub fn sign_headers_with_token(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    signer: &Signer<'_>,
    session_token: &str,
) -> Vec<(String, String)> {
    sign_with(
        REGION,
        method,
        url,
        headers,
        body,
        signer,
        Some(session_token),
    )
}

fn sign_with(
    region: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    signer: &Signer<'_>,
    session_token: Option<&str>,
) -> Vec<(String, String)> {
    let identity = Credentials::new(
        signer.key,
        signer.secret,
        session_token.map(str::to_owned),
        None,
        "test",
    )
    .into();
    let params = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(signer.service)
        .time(signer.at)
        .settings(SigningSettings::default())
        .build()
        .unwrap();
    let req = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(req, &params.into()).unwrap().into_parts();
    instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub struct AgentCredential {
    pub instance_id: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub async fn register_agent(gateway: &Gateway) -> AgentCredential {
    let activation = gateway
        .create_activation(&NewActivation::default())
        .unwrap();
    let body = serde_json::json!({
        "ActivationId": activation.activation_id,
        "ActivationCode": activation.activation_code,
        "Hostname": "test-host",
        "PlatformType": "linux",
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/ssmx/v1/register", gateway.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["Region"], REGION);
    AgentCredential {
        instance_id: v["InstanceId"].as_str().unwrap().to_owned(),
        access_key_id: v["AccessKeyId"].as_str().unwrap().to_owned(),
        secret_access_key: v["SecretAccessKey"].as_str().unwrap().to_owned(),
    }
}

impl AgentCredential {
    /// A signed MGS REST call; returns (status, body).
    pub async fn mgs_post(&self, base: &str, path: &str, body: &str) -> (u16, String) {
        let url = format!("{base}{path}");
        let host = base.trim_start_matches("http://").to_owned();
        let headers = [
            ("content-type", "application/json"),
            ("host", host.as_str()),
        ];
        let signed = sign_headers(
            "POST",
            &url,
            &headers,
            body.as_bytes(),
            &Signer {
                service: "ssmmessages",
                key: &self.access_key_id,
                secret: &self.secret_access_key,
                at: SystemTime::now(),
            },
        );
        let mut req = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in signed {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// A signed WebSocket upgrade.
    pub async fn signed_ws(&self, base: &str, path_and_query: &str) -> Ws {
        signed_ws(
            base,
            path_and_query,
            &self.access_key_id,
            &self.secret_access_key,
        )
        .await
    }
}

/// A WebSocket upgrade signed (service `ssmmessages`) with `key` and `secret`.
pub async fn signed_ws(base: &str, path_and_query: &str, key: &str, secret: &str) -> Ws {
    signed_ws_with_token(base, path_and_query, key, secret, None).await
}

/// [`signed_ws`] with temporary credentials when `session_token` is given.
pub async fn signed_ws_with_token(
    base: &str,
    path_and_query: &str,
    key: &str,
    secret: &str,
    session_token: Option<&str>,
) -> Ws {
    let http_url = format!("{base}{path_and_query}");
    let ws_url = http_url.replacen("http://", "ws://", 1);
    let signer = Signer {
        service: "ssmmessages",
        key,
        secret,
        at: SystemTime::now(),
    };
    let signed = sign_with(REGION, "GET", &http_url, &[], b"", &signer, session_token);
    let mut request = ws_url.into_client_request().unwrap();
    for (k, v) in signed {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// An agent's control channel, opened as the official agent does it.
pub struct ControlChannel {
    pub ws: Ws,
}

pub async fn open_control_channel(gateway: &Gateway, agent: &AgentCredential) -> ControlChannel {
    let path = format!("/v1/control-channel/{}", agent.instance_id);
    let body = serde_json::json!({"MessageSchemaVersion": "1.0", "RequestId": uuid::Uuid::new_v4().to_string()});
    let (status, body) = agent
        .mgs_post(gateway.url(), &path, &body.to_string())
        .await;
    assert_eq!(status, 201, "{body}");
    let token = parse_create_channel_output_xml(&body).unwrap();
    let mut ws = agent
        .signed_ws(
            gateway.url(),
            &format!("{path}?role=subscribe&stream=input"),
        )
        .await;
    let open = OpenControlChannelInput {
        cookie: None,
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token,
        agent_version: ssmx_protocol::version::AGENT_VERSION.into(),
        platform_type: "linux".into(),
    };
    ws.send(Message::text(serde_json::to_string(&open).unwrap()))
        .await
        .unwrap();
    assert!(gateway.wait_for_agent(&agent.instance_id, WAIT).await);
    ControlChannel { ws }
}

/// Next binary frame, skipping pings/pongs; panics after [`WAIT`].
pub async fn next_binary(ws: &mut Ws) -> Bytes {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("socket ended")
            .expect("socket error");
        match msg {
            Message::Binary(b) => return b,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// A stream message of `kind` (payload type Output) numbered `seq`, encoded as the ends send it.
pub fn stream_frame(kind: MessageType, seq: i64, payload: &[u8]) -> Bytes {
    let mut m = AgentMessage::new(kind, PayloadType::Output, Bytes::copy_from_slice(payload));
    m.sequence_number = seq;
    m.to_bytes()
}

/// Waits for the gateway to refuse what was presented on `ws` with a policy-violation close
/// (1008); returns the close reason.
pub async fn expect_policy_close(ws: &mut Ws) -> String {
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no answer")
    {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
            frame.reason.to_string()
        }
        other => panic!("expected a policy close, got {other:?}"),
    }
}

pub async fn next_message(ws: &mut Ws) -> AgentMessage {
    AgentMessage::decode(next_binary(ws).await).unwrap()
}

/// Waits until the socket is closed (a close frame, EOF or reset); returns frames seen first.
pub async fn drain_until_closed(ws: &mut Ws) -> Vec<AgentMessage> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("socket stayed open")
        {
            Some(Ok(Message::Binary(b))) => seen.push(AgentMessage::decode(b).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return seen,
            Some(Ok(_)) => {}
        }
    }
}

/// The next `agent_job` on a control channel, with its frame.
pub async fn next_job(
    ctl: &mut ControlChannel,
) -> (AgentMessage, ssmx_protocol::command::AgentJob) {
    loop {
        let msg = next_message(&mut ctl.ws).await;
        if msg.message_type == MessageType::AgentJob {
            let job = ssmx_protocol::command::AgentJob::from_payload(&msg.payload).unwrap();
            return (msg, job);
        }
    }
}

/// Waits for `interactive_shell` on the control channel.
pub async fn expect_interactive_shell(ctl: &mut ControlChannel) -> AgentTaskPayload {
    let msg = next_message(&mut ctl.ws).await;
    assert_eq!(msg.message_type, MessageType::InteractiveShell);
    AgentTaskPayload::from_message_payload(&msg.payload).unwrap()
}

/// The agent's data channel for a session: CreateDataChannel + signed WebSocket + Open frame.
pub async fn open_agent_data_channel(
    gateway: &Gateway,
    agent: &AgentCredential,
    session_id: &str,
) -> Ws {
    let path = format!("/v1/data-channel/{session_id}");
    let body = serde_json::json!({"MessageSchemaVersion": "1.0", "RequestId": uuid::Uuid::new_v4().to_string(), "ClientId": ""});
    let (status, body) = agent
        .mgs_post(gateway.url(), &path, &body.to_string())
        .await;
    assert_eq!(status, 201, "{body}");
    let token = parse_create_channel_output_xml(&body).unwrap();
    let mut ws = agent
        .signed_ws(gateway.url(), &format!("{path}?role=publish_subscribe"))
        .await;
    let open = OpenDataChannelInput {
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token,
        client_instance_id: Some(agent.instance_id.clone()),
        client_id: String::new(),
        client_version: None,
    };
    ws.send(Message::text(serde_json::to_string(&open).unwrap()))
        .await
        .unwrap();
    ws
}

/// The client's data channel: dial StreamUrl verbatim, send the Open frame.
pub async fn open_client_data_channel(stream_url: &str, token: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(stream_url).await.unwrap();
    send_client_open(ws, token).await
}

/// Like [`open_client_data_channel`] (plain `ws://` only), over a socket whose kernel receive
/// buffer is held at about `bytes`: a client that stops reading makes the gateway's writes to it
/// wait after little data, instead of the many megabytes loopback sockets otherwise take in.
pub async fn open_client_data_channel_with_receive_buffer(
    stream_url: &str,
    token: &str,
    bytes: u32,
) -> Ws {
    let url = url::Url::parse(stream_url).unwrap();
    let addr = url.socket_addrs(|| None).unwrap()[0];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(stream_url, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    send_client_open(ws, token).await
}

/// Sends the client's Open frame with `token` on `ws`.
pub async fn send_client_open(mut ws: Ws, token: &str) -> Ws {
    let open = OpenDataChannelInput {
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token.to_owned(),
        client_instance_id: None,
        client_id: uuid::Uuid::new_v4().to_string(),
        client_version: Some(ssmx_protocol::version::CLIENT_VERSION.into()),
    };
    ws.send(Message::text(serde_json::to_string(&open).unwrap()))
        .await
        .unwrap();
    ws
}

/// StartSession on `agent` with `document` (`None`: the default).
pub async fn start_session(
    ssm: &aws_sdk_ssm::Client,
    agent: &AgentCredential,
    document: Option<&str>,
) -> aws_sdk_ssm::operation::start_session::StartSessionOutput {
    ssm.start_session()
        .target(&agent.instance_id)
        .set_document_name(document.map(str::to_owned))
        .send()
        .await
        .unwrap()
}

/// A started session with both data channels attached.
pub struct Wired {
    pub session_id: String,
    pub stream_url: String,
    pub task: AgentTaskPayload,
    pub client: Ws,
    pub agent: Ws,
}

pub async fn start_wired_session(
    gateway: &Gateway,
    ssm: &aws_sdk_ssm::Client,
    agent: &AgentCredential,
    ctl: &mut ControlChannel,
    document: Option<&str>,
) -> Wired {
    let out = start_session(ssm, agent, document).await;
    let session_id = out.session_id().unwrap().to_owned();
    let stream_url = out.stream_url().unwrap().to_owned();
    let client = open_client_data_channel(&stream_url, out.token_value().unwrap()).await;
    let task = expect_interactive_shell(ctl).await;
    assert_eq!(task.session_id, session_id);
    let agent_ws = open_agent_data_channel(gateway, agent, &session_id).await;
    Wired {
        session_id,
        stream_url,
        task,
        client,
        agent: agent_ws,
    }
}

/// A raw signed SSM API call (for operations the public SDK lacks, and for tampering tests).
pub async fn signed_api_call(
    base: &str,
    op: &str,
    body: &str,
    key: &str,
    secret: &str,
    at: SystemTime,
) -> (u16, serde_json::Value) {
    let host = base.trim_start_matches("http://").to_owned();
    let target = format!("AmazonSSM.{op}");
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host.as_str()),
        ("x-amz-target", target.as_str()),
    ];
    let signed = sign_headers(
        "POST",
        &format!("{base}/"),
        &headers,
        body.as_bytes(),
        &Signer {
            service: "ssm",
            key,
            secret,
            at,
        },
    );
    let mut req = reqwest::Client::new()
        .post(format!("{base}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target)
        .body(body.to_owned());
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}
