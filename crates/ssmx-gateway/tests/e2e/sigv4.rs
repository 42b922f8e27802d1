//! SigV4 acceptance and rejection on real HTTP requests: wrong key, unknown key, stale date,
//! tampered body, replay, missing signature, wrong service, and MGS calls with the wrong kind
//! of credential.

use std::time::{Duration, SystemTime};

use crate::common::*;

#[tokio::test]
async fn api_signatures_are_verified() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let url = gateway.url().to_owned();
    let (key, secret) = (cred.access_key_id.as_str(), cred.secret_access_key.as_str());
    let describe = r#"{"State":"Active"}"#;
    let now = SystemTime::now();

    let (status, body) =
        signed_api_call(&url, "DescribeSessions", describe, key, secret, now).await;
    assert_eq!((status, body), (200, serde_json::json!({"Sessions": []})));

    let code = |(status, body): (u16, serde_json::Value)| {
        (status, body["__type"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(
        code(signed_api_call(&url, "DescribeSessions", describe, key, "wrong-secret", now).await),
        (400, "InvalidSignatureException".into())
    );
    assert_eq!(
        code(
            signed_api_call(
                &url,
                "DescribeSessions",
                describe,
                "AKIDUNKNOWN",
                secret,
                now
            )
            .await
        ),
        (400, "UnrecognizedClientException".into())
    );
    let stale = now - Duration::from_secs(16 * 60);
    let (status, body) =
        signed_api_call(&url, "DescribeSessions", describe, key, secret, stale).await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "InvalidSignatureException");
    assert!(
        body["message"].as_str().unwrap().contains("window"),
        "{body}"
    );
    let future = now + Duration::from_secs(16 * 60);
    assert_eq!(
        code(signed_api_call(&url, "DescribeSessions", describe, key, secret, future).await),
        (400, "InvalidSignatureException".into())
    );

    // Tampered body: signed for one body, sent with another.
    let host = url.trim_start_matches("http://").to_owned();
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host.as_str()),
        ("x-amz-target", "AmazonSSM.DescribeSessions"),
    ];
    let signed = sign_headers(
        "POST",
        &format!("{url}/"),
        &headers,
        describe.as_bytes(),
        &Signer {
            service: "ssm",
            key,
            secret,
            at: now,
        },
    );
    let mut req = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "AmazonSSM.DescribeSessions")
        .body(r#"{"State":"History"}"#);
    for (k, v) in &signed {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["__type"], "InvalidSignatureException");

    // Unsigned.
    let resp = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("x-amz-target", "AmazonSSM.DescribeSessions")
        .body(describe)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["__type"], "MissingAuthenticationTokenException");

    // Signed for another service.
    let signed = sign_headers(
        "POST",
        &format!("{url}/"),
        &headers,
        describe.as_bytes(),
        &Signer {
            service: "ec2",
            key,
            secret,
            at: now,
        },
    );
    let mut req = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "AmazonSSM.DescribeSessions")
        .body(describe);
    for (k, v) in &signed {
        req = req.header(k, v);
    }
    let body: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    assert_eq!(body["__type"], "IncompleteSignatureException");

    // Requests that mint secrets are single-use: the identical signed request is refused.
    let agent = register_agent(&gateway).await;
    let _ctl = open_control_channel(&gateway, &agent).await;
    let start = serde_json::json!({"Target": agent.instance_id}).to_string();
    let (status, first) = signed_api_call(&url, "StartSession", &start, key, secret, now).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = signed_api_call(&url, "StartSession", &start, key, secret, now).await;
    assert_eq!(status, 400);
    assert_eq!(again["__type"], "ThrottlingException");
    assert!(again["message"].as_str().unwrap().contains("already used"));
    assert!(again.get("TokenValue").is_none());

    // Unknown operation.
    assert_eq!(
        code(signed_api_call(&url, "DescribeMaintenanceWindows", "{}", key, secret, now).await),
        (400, "UnknownOperationException".into())
    );
    gateway.shutdown().await;
}

/// One StartSession signed once, sent as the SDKs send it: the signed headers plus an unsigned
/// `amz-sdk-invocation-id` the sender may set to anything.
async fn send_signed(
    url: &str,
    signed: &[(String, String)],
    body: &str,
    invocation_id: &str,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "AmazonSSM.StartSession")
        .header("amz-sdk-invocation-id", invocation_id)
        .body(body.to_owned());
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_captured_start_session_with_a_fresh_invocation_id_starts_nothing() {
    let (gateway, cred) = start_gateway("mallory-target", None).await;
    let url = gateway.url().to_owned();
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let host = url.trim_start_matches("http://").to_owned();
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host.as_str()),
        ("x-amz-target", "AmazonSSM.StartSession"),
    ];
    let body = serde_json::json!({"Target": agent.instance_id}).to_string();
    let signed = sign_headers(
        "POST",
        &format!("{url}/"),
        &headers,
        body.as_bytes(),
        &Signer {
            service: "ssm",
            key: &cred.access_key_id,
            secret: &cred.secret_access_key,
            at: SystemTime::now(),
        },
    );
    let (status, first) = send_signed(&url, &signed, &body, "11111111-aaaa").await;
    assert_eq!(status, 200, "{first}");
    let (status, replay) = send_signed(&url, &signed, &body, "22222222-bbbb").await;
    assert_eq!(status, 400, "{replay}");
    assert_eq!(replay["__type"], "ThrottlingException");
    assert!(replay.get("SessionId").is_none());

    // Only the first request's session exists, and the client channel was never pushed twice.
    let sessions = signed_api_call(
        &url,
        "DescribeSessions",
        r#"{"State":"Active"}"#,
        &cred.access_key_id,
        &cred.secret_access_key,
        SystemTime::now(),
    )
    .await
    .1;
    assert_eq!(
        sessions["Sessions"].as_array().unwrap().len(),
        1,
        "{sessions}"
    );
    drop(ctl.ws.close(None).await);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_request_signed_for_another_region_is_refused() {
    let (gateway, cred) = start_gateway("rita", None).await;
    let url = gateway.url().to_owned();
    let host = url.trim_start_matches("http://").to_owned();
    let body = r#"{"State":"Active"}"#;
    let headers = [
        ("content-type", "application/x-amz-json-1.1"),
        ("host", host.as_str()),
        ("x-amz-target", "AmazonSSM.DescribeSessions"),
    ];
    let signed = sign_headers_in(
        "eu-west-1",
        "POST",
        &format!("{url}/"),
        &headers,
        body.as_bytes(),
        &Signer {
            service: "ssm",
            key: &cred.access_key_id,
            secret: &cred.secret_access_key,
            at: SystemTime::now(),
        },
    );
    let mut req = reqwest::Client::new()
        .post(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "AmazonSSM.DescribeSessions")
        .body(body);
    for (k, v) in &signed {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["__type"], "InvalidSignatureException");
    assert!(
        answer["message"].as_str().unwrap().contains("eu-west-1"),
        "{answer}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn mgs_calls_need_the_instances_own_credential() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let agent = register_agent(&gateway).await;
    let other = register_agent(&gateway).await;
    let body =
        r#"{"MessageSchemaVersion":"1.0","RequestId":"00000000-0000-4000-8000-00000000000a"}"#;
    let path = format!("/v1/control-channel/{}", agent.instance_id);

    // An API user's key is not an agent credential.
    let api_user = AgentCredential {
        instance_id: agent.instance_id.clone(),
        access_key_id: cred.access_key_id.clone(),
        secret_access_key: cred.secret_access_key.clone(),
    };
    let (status, text) = api_user.mgs_post(gateway.url(), &path, body).await;
    assert_eq!(status, 403);
    assert!(text.starts_with("<AccessDeniedException>"), "{text}");
    // Another instance's credential cannot open this instance's channel.
    let (status, text) = other.mgs_post(gateway.url(), &path, body).await;
    assert_eq!(status, 403, "{text}");
    // The right one can, once.
    let (status, text) = agent.mgs_post(gateway.url(), &path, body).await;
    assert_eq!(status, 201, "{text}");
    assert!(text.contains("<TokenValue>"));

    // A WebSocket upgrade with a bad signature is refused before upgrading.
    let wrong = AgentCredential {
        instance_id: agent.instance_id.clone(),
        access_key_id: agent.access_key_id.clone(),
        secret_access_key: "wrong".into(),
    };
    let url = format!("{}{path}?role=subscribe&stream=input", gateway.url());
    let signed = sign_headers(
        "GET",
        &url,
        &[],
        b"",
        &Signer {
            service: "ssmmessages",
            key: &wrong.access_key_id,
            secret: &wrong.secret_access_key,
            at: SystemTime::now(),
        },
    );
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    for (k, v) in signed {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("upgrade should be refused, got {:?}", other.map(|_| ())),
    }
    gateway.shutdown().await;
}
