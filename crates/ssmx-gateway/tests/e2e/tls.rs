//! HTTPS/WSS with rustls when `[tls]` is configured: registration, a signed control channel over
//! wss://, StartSession handing out a wss:// StreamUrl, and a frame relayed over TLS.

use std::sync::Arc;
use std::time::SystemTime;

use crate::common::*;
use futures::SinkExt;
use ssmx_gateway::config::{ApiCredential, Config, Database, TlsConfig};
use ssmx_protocol::payload::{parse_create_channel_output_xml, OpenControlChannelInput};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn tls_listener_serves_api_mgs_and_wss_data_channels() {
    let dir = tempfile::tempdir().unwrap();
    // The gateway makes its own private CA and certificate on this first run.
    let cert_path = dir.path().join("tls/cert.pem");
    let credential = ApiCredential::generate("alice");
    let config = Config {
        tls: Some(TlsConfig {
            cert: cert_path.clone(),
            key: dir.path().join("tls/key.pem"),
            generate: true,
            names: Vec::new(),
        }),
        ..Config::default()
    };
    let gateway = ssmx_gateway::Gateway::builder()
        .config(config)
        .listen("127.0.0.1:0".parse().unwrap())
        .database(Database::Memory)
        .credential(credential.clone())
        .without_recording()
        .start()
        .await
        .unwrap();
    assert!(gateway.url().starts_with("https://127.0.0.1:"));
    let url = gateway.url().replace("127.0.0.1", "localhost");
    let host = url.trim_start_matches("https://").to_owned();

    let ca_pem = std::fs::read(ssmx_gateway::generated_ca_path(&cert_path)).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
        &ca_pem,
    ) {
        roots.add(ca.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls));

    // Registration over HTTPS (HTTP/2, as the official agent's REST calls use).
    let activation = gateway
        .create_activation(&ssmx_gateway::store::NewActivation::default())
        .unwrap();
    let resp = https
        .post(format!("{url}/ssmx/v1/register"))
        .json(&serde_json::json!({"ActivationId": activation.activation_id, "ActivationCode": activation.activation_code, "Hostname": "h", "PlatformType": "linux"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let reg: serde_json::Value = resp.json().await.unwrap();
    let instance = reg["InstanceId"].as_str().unwrap().to_owned();
    let agent_signer = |at| Signer {
        service: "ssmmessages",
        key: reg["AccessKeyId"].as_str().unwrap(),
        secret: reg["SecretAccessKey"].as_str().unwrap(),
        at,
    };

    // CreateControlChannel over HTTPS, then the control channel over wss://.
    let path = format!("/v1/control-channel/{instance}");
    let body =
        r#"{"MessageSchemaVersion":"1.0","RequestId":"00000000-0000-4000-8000-000000000001"}"#;
    let headers = [
        ("content-type", "application/json"),
        ("host", host.as_str()),
    ];
    let signed = sign_headers(
        "POST",
        &format!("{url}{path}"),
        &headers,
        body.as_bytes(),
        &agent_signer(SystemTime::now()),
    );
    let mut req = https
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let token = parse_create_channel_output_xml(&resp.text().await.unwrap()).unwrap();
    let ws_http_url = format!("{url}{path}?role=subscribe&stream=input");
    let signed = sign_headers(
        "GET",
        &ws_http_url,
        &[],
        b"",
        &agent_signer(SystemTime::now()),
    );
    let mut request = ws_http_url
        .replacen("https://", "wss://", 1)
        .into_client_request()
        .unwrap();
    for (k, v) in signed {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (mut control, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(connector.clone()),
    )
    .await
    .unwrap();
    let open = OpenControlChannelInput {
        cookie: None,
        message_schema_version: "1.0".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        token_value: token,
        agent_version: "3.3.0.0".into(),
        platform_type: "linux".into(),
    };
    control
        .send(Message::text(serde_json::to_string(&open).unwrap()))
        .await
        .unwrap();
    assert!(gateway.wait_for_agent(&instance, WAIT).await);

    // StartSession over HTTPS hands out a wss:// StreamUrl that a client can open.
    let start = serde_json::json!({"Target": instance}).to_string();
    let api_headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host.as_str()),
        ("x-amz-target", "AmazonSSM.StartSession"),
    ];
    let api_signer = Signer {
        service: "ssm",
        key: &credential.access_key_id,
        secret: &credential.secret_access_key,
        at: SystemTime::now(),
    };
    let signed = sign_headers(
        "POST",
        &format!("{url}/"),
        &api_headers,
        start.as_bytes(),
        &api_signer,
    );
    let mut req = https
        .post(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "AmazonSSM.StartSession")
        .body(start);
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let started: serde_json::Value = resp.json().await.unwrap();
    let stream_url = started["StreamUrl"].as_str().unwrap();
    assert!(stream_url.starts_with("wss://localhost:"), "{stream_url}");
    let (mut client, _) =
        tokio_tungstenite::connect_async_tls_with_config(stream_url, None, false, Some(connector))
            .await
            .unwrap();
    let open = serde_json::json!({"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":started["TokenValue"],"ClientId":"c","ClientVersion":"1.2.677.0"});
    client.send(Message::text(open.to_string())).await.unwrap();
    let mut ctl = ControlChannel { ws: control };
    let task = expect_interactive_shell(&mut ctl).await;
    assert_eq!(task.session_id, started["SessionId"].as_str().unwrap());
    gateway.shutdown().await;
}

#[tokio::test]
async fn plain_http_on_a_network_address_needs_an_explicit_setting() {
    let start = |config: Config| {
        ssmx_gateway::Gateway::builder()
            .config(config)
            .listen("0.0.0.0:0".parse().unwrap())
            .database(Database::Memory)
            .without_recording()
            .start()
    };
    let refused = start(Config::default()).await.err().expect("refused");
    assert!(
        matches!(refused, ssmx_gateway::GatewayError::PlaintextOnNetwork(_)),
        "{refused}"
    );
    assert!(refused.to_string().contains("allow_plaintext_on_network"));

    let config: Config = toml::from_str("allow_plaintext_on_network = true").unwrap();
    let gateway = start(config).await.expect("explicitly allowed");
    gateway.shutdown().await;

    // Loopback needs no setting.
    let (gateway, _) = start_gateway("lo", None).await;
    gateway.shutdown().await;
}
