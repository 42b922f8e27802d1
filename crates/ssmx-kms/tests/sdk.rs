//! The key service behind a real HTTP listener on 127.0.0.1, driven by the unmodified
//! `aws-sdk-kms` client, as the ssmx client and agent (and any AWS SDK) call it.

use std::sync::Arc;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use ssmx_kms::{KeyAccess, KeyService, KmsCaller, MemoryKeyStore, NewKey};
use ssmx_protocol::crypto::{encryption_context, SessionCipher};
use tokio::task::JoinHandle;

/// A key service on an ephemeral port; the server task ends with it.
struct Server {
    endpoint: String,
    service: Arc<KeyService>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Names the caller by the access key id of its SigV4 `Authorization` header. This reads the
/// header only; signature verification belongs to the gateway that embeds the service.
async fn caller_from_access_key(mut request: Request, next: Next) -> Response {
    let access_key = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|v| v.split('/').next())
        .map(str::to_owned);
    if let Some(access_key) = access_key {
        request.extensions_mut().insert(KmsCaller(access_key));
    }
    next.run(request).await
}

async fn serve(service: KeyService) -> Server {
    let service = Arc::new(service);
    let app = ssmx_kms::router(service.clone()).layer(middleware::from_fn(caller_from_access_key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        endpoint,
        service,
        task,
    }
}

fn client(server: &Server, access_key: &str) -> aws_sdk_kms::Client {
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access_key, "secret", None, None, "test"))
        .endpoint_url(&server.endpoint)
        .build();
    aws_sdk_kms::Client::from_conf(config)
}

fn context(session: &str, target: &str) -> std::collections::HashMap<String, String> {
    encryption_context(session, target, None)
        .into_iter()
        .collect()
}

#[tokio::test]
async fn session_data_key_round_trip() {
    let server = serve(KeyService::new(MemoryKeyStore::new()).create_missing_aliases(true)).await;
    let client_side = client(&server, "AKIDCLIENT");
    let agent_side = client(&server, "AKIDAGENT");

    // The client, as in §7.2, with the three-key context of a challenge-aware pair.
    let ctx: std::collections::HashMap<_, _> =
        encryption_context("alice-0123", "mi-0123456789abcdef0", Some("q83vEjRWeJA="))
            .into_iter()
            .collect();
    let generated = client_side
        .generate_data_key()
        .key_id("alias/ssmx-sessions")
        .number_of_bytes(64)
        .set_encryption_context(Some(ctx.clone()))
        .send()
        .await
        .unwrap();
    let data_key = generated.plaintext().unwrap().as_ref().to_vec();
    assert_eq!(data_key.len(), 64);
    let key_arn = generated.key_id().unwrap().to_owned();
    assert!(key_arn.starts_with("arn:aws:kms:us-east-1:000000000000:key/"));

    // The agent, with the blob from the HandshakeResponse.
    let decrypted = agent_side
        .decrypt()
        .ciphertext_blob(generated.ciphertext_blob().unwrap().clone())
        .set_encryption_context(Some(ctx))
        .key_id("alias/ssmx-sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(decrypted.plaintext().unwrap().as_ref(), &data_key[..]);
    assert_eq!(decrypted.key_id(), Some(key_arn.as_str()));

    // Both ends now hold the same key: the challenge of §6.3 passes.
    let agent = SessionCipher::for_agent(decrypted.plaintext().unwrap().as_ref()).unwrap();
    let client = SessionCipher::for_client(&data_key).unwrap();
    let (issued, request) = agent.issue_challenge().unwrap();
    issued
        .verify(&agent, &client.answer_challenge(&request).unwrap())
        .unwrap();

    // The alias was created once and is reused.
    let again = client_side
        .generate_data_key()
        .key_id("alias/ssmx-sessions")
        .number_of_bytes(64)
        .send()
        .await
        .unwrap();
    assert_eq!(again.key_id(), Some(key_arn.as_str()));
    assert_ne!(again.plaintext(), generated.plaintext());
}

#[tokio::test]
async fn decrypt_failures_carry_kms_error_codes() {
    let server = serve(KeyService::new(MemoryKeyStore::new())).await;
    let key = server
        .service
        .create_key(NewKey {
            alias: Some("alias/sessions".into()),
            ..NewKey::default()
        })
        .unwrap();
    let other = server.service.create_key(NewKey::default()).unwrap();
    let kms = client(&server, "AKIDCLIENT");

    let generated = kms
        .generate_data_key()
        .key_id(&key.arn)
        .number_of_bytes(64)
        .set_encryption_context(Some(context("s-1", "i-0abc")))
        .send()
        .await
        .unwrap();
    let blob = generated.ciphertext_blob().unwrap().as_ref().to_vec();

    let decrypt_code = |blob: Vec<u8>, ctx, key_id: Option<String>| {
        let kms = kms.clone();
        async move {
            kms.decrypt()
                .ciphertext_blob(Blob::new(blob))
                .set_encryption_context(Some(ctx))
                .set_key_id(key_id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.code().unwrap_or("<no code>").to_owned())
        }
    };

    // The right context works; a different target, another session or a missing pair do not.
    assert_eq!(
        decrypt_code(blob.clone(), context("s-1", "i-0abc"), None).await,
        Ok(())
    );
    for ctx in [
        context("s-1", "i-0abd"),
        context("s-2", "i-0abc"),
        [("aws:ssm:SessionId".to_owned(), "s-1".to_owned())].into(),
        encryption_context("s-1", "i-0abc", Some("extra"))
            .into_iter()
            .collect(),
    ] {
        assert_eq!(
            decrypt_code(blob.clone(), ctx, None).await,
            Err("InvalidCiphertextException".to_owned())
        );
    }

    // Tampering anywhere: header, nonce, body, tag.
    for i in [0, 5, 20, 40, blob.len() - 1] {
        let mut tampered = blob.clone();
        tampered[i] ^= 0x20;
        assert_eq!(
            decrypt_code(tampered, context("s-1", "i-0abc"), None).await,
            Err("InvalidCiphertextException".to_owned()),
            "byte {i}"
        );
    }
    assert_eq!(
        decrypt_code(b"not a blob".to_vec(), context("s-1", "i-0abc"), None).await,
        Err("InvalidCiphertextException".to_owned())
    );

    // Naming another key than the blob's.
    assert_eq!(
        decrypt_code(
            blob.clone(),
            context("s-1", "i-0abc"),
            Some(other.arn.clone())
        )
        .await,
        Err("IncorrectKeyException".to_owned())
    );
    assert_eq!(
        decrypt_code(
            blob.clone(),
            context("s-1", "i-0abc"),
            Some("alias/sessions".into())
        )
        .await,
        Ok(())
    );

    // A disabled key refuses until enabled again.
    kms.disable_key().key_id(&key.arn).send().await.unwrap();
    assert_eq!(
        decrypt_code(blob.clone(), context("s-1", "i-0abc"), None).await,
        Err("DisabledException".to_owned())
    );
    kms.enable_key().key_id(&key.arn).send().await.unwrap();
    assert_eq!(
        decrypt_code(blob, context("s-1", "i-0abc"), None).await,
        Ok(())
    );
}

#[tokio::test]
async fn unknown_and_denied_keys() {
    let server = serve(KeyService::new(MemoryKeyStore::new())).await;
    let kms = client(&server, "AKIDCLIENT");

    for key_id in [
        "alias/nothing-here".to_owned(),
        uuid_like(),
        "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-4000-8000-000000000000".to_owned(),
        "arn:aws:kms:eu-west-1:000000000000:alias/sessions".to_owned(),
        "not-a-key".to_owned(),
    ] {
        let err = kms
            .generate_data_key()
            .key_id(&key_id)
            .number_of_bytes(64)
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("NotFoundException"), "{key_id}");
        assert!(!err.message().unwrap_or("").is_empty());
    }

    let agent_only = server
        .service
        .create_key(NewKey {
            alias: Some("alias/agents-only".into()),
            access: KeyAccess::Principals(vec!["AKIDAGENT".into()]),
            ..NewKey::default()
        })
        .unwrap();
    let err = kms
        .generate_data_key()
        .key_id("alias/agents-only")
        .number_of_bytes(64)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert!(err.message().unwrap().contains("AKIDCLIENT"));

    let agent = client(&server, "AKIDAGENT");
    let generated = agent
        .generate_data_key()
        .key_id(&agent_only.arn)
        .number_of_bytes(64)
        .send()
        .await
        .unwrap();
    let err = kms
        .decrypt()
        .ciphertext_blob(generated.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"));
}

#[tokio::test]
async fn key_administration_through_the_sdk() {
    let server = serve(KeyService::new(MemoryKeyStore::new())).await;
    let kms = client(&server, "AKIDADMIN");

    let created = kms
        .create_key()
        .description("session keys")
        .send()
        .await
        .unwrap();
    let meta = created.key_metadata().unwrap();
    assert_eq!(meta.description(), Some("session keys"));
    assert!(meta.enabled());
    assert_eq!(
        meta.key_state(),
        Some(&aws_sdk_kms::types::KeyState::Enabled)
    );
    assert!(meta.creation_date().unwrap().secs() > 1_600_000_000);
    let key_id = meta.key_id().to_owned();

    kms.create_alias()
        .alias_name("alias/team/sessions")
        .target_key_id(&key_id)
        .send()
        .await
        .unwrap();
    let err = kms
        .create_alias()
        .alias_name("alias/team/sessions")
        .target_key_id(&key_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AlreadyExistsException"));

    let described = kms
        .describe_key()
        .key_id("alias/team/sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(described.key_metadata().unwrap().key_id(), key_id);

    let second = kms.create_key().send().await.unwrap();
    let second_id = second.key_metadata().unwrap().key_id().to_owned();
    let page = kms.list_keys().limit(1).send().await.unwrap();
    assert_eq!(page.keys().len(), 1);
    assert_eq!(page.keys()[0].key_id(), Some(key_id.as_str()));
    assert!(page.truncated());
    let rest = kms
        .list_keys()
        .marker(page.next_marker().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.keys()[0].key_id(), Some(second_id.as_str()));
    assert!(!rest.truncated());

    let aliases = kms.list_aliases().send().await.unwrap();
    assert_eq!(aliases.aliases().len(), 1);
    assert_eq!(aliases.aliases()[0].target_key_id(), Some(key_id.as_str()));

    let err = kms
        .create_key()
        .policy(r#"{"Version":"2012-10-17"}"#)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("UnsupportedOperationException"));
}

fn uuid_like() -> String {
    "6f1c9a52-3b0e-4a8e-9d61-2f7d6c1b9e04".to_owned()
}
