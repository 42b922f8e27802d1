//! The KMS JSON API on the gateway's port (`TrentService.*`, SigV4 service `kms`): API users
//! generate and unwrap data keys with aws-sdk-kms, keys outlive a restart, and agents may only
//! decrypt data keys of live sessions on themselves.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::common::{
    open_control_channel, register_agent, sign_headers, ssm_client, start_gateway,
    start_gateway_with, start_wired_session, AgentCredential, Signer, REGION,
};
use aws_sdk_kms::primitives::Blob;
use base64::Engine as _;
use ssmx_gateway::config::{ApiCredential, Database};

const KEY_ALIAS: &str = "alias/ssmx-sessions";

fn kms_client(url: &str, cred: &ApiCredential) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            &cred.access_key_id,
            &cred.secret_access_key,
            None,
            None,
            "test",
        ))
        .retry_config(aws_sdk_kms::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

fn context(session_id: &str, target: &str) -> HashMap<String, String> {
    HashMap::from([
        ("aws:ssm:SessionId".to_owned(), session_id.to_owned()),
        ("aws:ssm:TargetId".to_owned(), target.to_owned()),
    ])
}

/// A raw KMS call signed for `service`; returns (status, JSON body).
async fn raw_kms_call(
    base: &str,
    op: &str,
    body: &serde_json::Value,
    service: &str,
    key: &str,
    secret: &str,
) -> (u16, serde_json::Value) {
    let host = base.trim_start_matches("http://").to_owned();
    let target = format!("TrentService.{op}");
    let body = body.to_string();
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
            service,
            key,
            secret,
            at: SystemTime::now(),
        },
    );
    let mut request = reqwest::Client::new()
        .post(format!("{base}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target)
        .body(body);
    for (k, v) in signed {
        request = request.header(k, v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn agent_decrypt(
    gateway: &ssmx_gateway::Gateway,
    agent: &AgentCredential,
    blob: &[u8],
    context: &HashMap<String, String>,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "CiphertextBlob": base64::engine::general_purpose::STANDARD.encode(blob),
        "EncryptionContext": context,
        "KeyId": KEY_ALIAS,
    });
    raw_kms_call(
        gateway.url(),
        "Decrypt",
        &body,
        "kms",
        &agent.access_key_id,
        &agent.secret_access_key,
    )
    .await
}

#[tokio::test]
async fn data_keys_round_trip_through_aws_sdk_kms_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::File(dir.path().join("gateway.db"));
    let (gateway, cred) = start_gateway_with("alice", None, db.clone()).await;
    let kms = kms_client(gateway.url(), &cred);
    let generated = kms
        .generate_data_key()
        .key_id(KEY_ALIAS)
        .number_of_bytes(64)
        .set_encryption_context(Some(context("alice-1", "mi-0123456789abcdef0")))
        .send()
        .await
        .unwrap();
    let plaintext = generated.plaintext().unwrap().as_ref().to_vec();
    let blob = generated.ciphertext_blob().unwrap().clone();
    assert_eq!(plaintext.len(), 64);
    assert!(generated
        .key_id()
        .unwrap()
        .starts_with("arn:aws:kms:us-east-1:"));

    // Another context (another session) does not open the key.
    let err = kms
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(context("alice-2", "mi-0123456789abcdef0")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_kms::error::ProvideErrorMetadata::code(&err),
        Some("InvalidCiphertextException"),
        "{err:?}"
    );
    gateway.shutdown().await;

    // The master key lives in the gateway's database.
    let gateway = ssmx_gateway::Gateway::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .database(db)
        .credential(cred.clone())
        .without_recording()
        .start()
        .await
        .unwrap();
    let kms = kms_client(gateway.url(), &cred);
    let opened = kms
        .decrypt()
        .ciphertext_blob(Blob::new(blob.into_inner()))
        .set_encryption_context(Some(context("alice-1", "mi-0123456789abcdef0")))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.plaintext().unwrap().as_ref(), plaintext.as_slice());
    gateway.shutdown().await;
}

#[tokio::test]
async fn agents_may_only_decrypt_data_keys_of_their_own_live_sessions() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let kms = kms_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let other = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let wired = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;

    let own = context(&wired.session_id, &agent.instance_id);
    let generated = kms
        .generate_data_key()
        .key_id(KEY_ALIAS)
        .number_of_bytes(64)
        .set_encryption_context(Some(own.clone()))
        .send()
        .await
        .unwrap();
    let blob = generated.ciphertext_blob().unwrap().as_ref().to_vec();

    let (status, body) = agent_decrypt(&gateway, &agent, &blob, &own).await;
    assert_eq!(status, 200, "{body}");
    let plaintext = base64::engine::general_purpose::STANDARD
        .decode(body["Plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(plaintext, generated.plaintext().unwrap().as_ref());

    // Another agent, even with the right blob and context, is refused.
    let (status, body) = agent_decrypt(&gateway, &other, &blob, &own).await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "{body}"
    );
    // So is a context naming a session that is not live on the agent.
    let stale = context("alice-0000000000000000", &agent.instance_id);
    let (status, body) = agent_decrypt(&gateway, &agent, &blob, &stale).await;
    assert_eq!(body["__type"], "AccessDeniedException", "{status} {body}");
    // Agents cannot mint data keys or administer keys.
    let (status, body) = raw_kms_call(
        gateway.url(),
        "GenerateDataKey",
        &serde_json::json!({"KeyId": KEY_ALIAS, "NumberOfBytes": 64}),
        "kms",
        &agent.access_key_id,
        &agent.secret_access_key,
    )
    .await;
    assert_eq!(body["__type"], "AccessDeniedException", "{status} {body}");

    // Once the session is over, its key can no longer be unwrapped by the agent.
    ssm.terminate_session()
        .session_id(&wired.session_id)
        .send()
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..100 {
        let (status, _) = agent_decrypt(&gateway, &agent, &blob, &own).await;
        if status == 400 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refused, "a terminated session's key was still unwrapped");
    gateway.shutdown().await;
}

#[tokio::test]
async fn kms_calls_need_a_signature_for_kms() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let body = serde_json::json!({"KeyId": KEY_ALIAS, "NumberOfBytes": 64});
    let (status, answer) = raw_kms_call(
        gateway.url(),
        "GenerateDataKey",
        &body,
        "ssm",
        &cred.access_key_id,
        &cred.secret_access_key,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("\"kms\""),
        "{answer}"
    );
    let (status, answer) = raw_kms_call(
        gateway.url(),
        "GenerateDataKey",
        &body,
        "kms",
        &cred.access_key_id,
        "not-the-secret",
    )
    .await;
    assert_eq!(
        (status, answer["__type"].as_str()),
        (400, Some("InvalidSignatureException")),
        "{answer}"
    );
    let unsigned = reqwest::Client::new()
        .post(format!("{}/", gateway.url()))
        .header("x-amz-target", "TrentService.GenerateDataKey")
        .header("content-type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    gateway.shutdown().await;
}
