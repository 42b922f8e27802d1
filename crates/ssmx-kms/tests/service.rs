//! `KeyService::handle` called directly: request validation, key references, error bodies and
//! keys that outlive the service in SQLite.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use ssmx_kms::{Caller, IdentityPolicy, KeyService, MemoryKeyStore, NewKey, SqliteKeyStore};

fn call(kms: &KeyService, op: &str, body: Value) -> (u16, Value) {
    let response = kms.handle(
        Some("alice"),
        &format!("TrentService.{op}"),
        body.to_string().as_bytes(),
    );
    (
        response.status,
        serde_json::from_slice(&response.body).unwrap(),
    )
}

fn error_type(kms: &KeyService, op: &str, body: Value) -> String {
    let (status, body) = call(kms, op, body);
    assert_eq!(status, 400, "{body}");
    assert!(
        !body["message"].as_str().unwrap().is_empty(),
        "AWS-shaped error with a message: {body}"
    );
    body["__type"].as_str().unwrap().to_owned()
}

#[test]
fn malformed_requests() {
    let kms = KeyService::new(MemoryKeyStore::new()).create_missing_aliases(true);
    let raw = kms.handle(None, "TrentService.Decrypt", b"{not json");
    assert_eq!(raw.status, 400);
    let body: Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(body["__type"], "SerializationException");

    let raw = kms.handle(None, "AmazonSSM.StartSession", b"{}");
    let body: Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(body["__type"], "UnknownOperationException");

    let cases = [
        ("GenerateDataKey", json!({"NumberOfBytes": 64})),
        ("GenerateDataKey", json!({"KeyId": "alias/k"})),
        (
            "GenerateDataKey",
            json!({"KeyId": "alias/k", "NumberOfBytes": 64, "KeySpec": "AES_256"}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": "alias/k", "NumberOfBytes": 0}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": "alias/k", "NumberOfBytes": 1025}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": "alias/k", "KeySpec": "AES_512"}),
        ),
        ("Decrypt", json!({})),
        (
            "Decrypt",
            json!({"CiphertextBlob": "AAAA", "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        ),
        ("Encrypt", json!({"KeyId": "alias/k", "Plaintext": ""})),
        (
            "Encrypt",
            json!({"KeyId": "alias/k", "Plaintext": base64_of(&[0; 4097])}),
        ),
        ("ListKeys", json!({"Limit": 0})),
        (
            "CreateAlias",
            json!({"AliasName": "sessions", "TargetKeyId": "x"}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": "alias/aws/ssm", "NumberOfBytes": 64}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": "alias/bad name", "NumberOfBytes": 64}),
        ),
    ];
    for (op, body) in cases {
        assert_eq!(
            error_type(&kms, op, body.clone()),
            "ValidationException",
            "{op} {body}"
        );
    }
    assert_eq!(
        error_type(
            &kms,
            "Decrypt",
            json!({"CiphertextBlob": "not base64 at all!"})
        ),
        "SerializationException"
    );
    assert_eq!(
        error_type(
            &kms,
            "GenerateDataKey",
            json!({"KeyId": "alias/k", "NumberOfBytes": 64, "DryRun": true})
        ),
        "UnsupportedOperationException"
    );
    assert_eq!(
        error_type(&kms, "ListKeys", json!({"Marker": "bogus"})),
        "InvalidMarkerException"
    );
}

#[test]
fn key_references_in_every_form() {
    let kms = KeyService::new(MemoryKeyStore::new())
        .with_region("eu-central-1")
        .with_account_id("111122223333");
    let key = kms
        .create_key(NewKey {
            alias: Some("alias/s".into()),
            ..NewKey::default()
        })
        .unwrap();
    assert_eq!(
        key.arn,
        format!("arn:aws:kms:eu-central-1:111122223333:key/{}", key.key_id)
    );
    for reference in [
        key.key_id.to_string(),
        key.arn.clone(),
        "alias/s".to_owned(),
        "arn:aws:kms:eu-central-1:111122223333:alias/s".to_owned(),
    ] {
        let (status, body) = call(
            &kms,
            "Encrypt",
            json!({"KeyId": reference, "Plaintext": base64_of(b"secret")}),
        );
        assert_eq!(status, 200, "{reference}: {body}");
        assert_eq!(body["KeyId"], key.arn.as_str());
        assert_eq!(body["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
        let (status, body) = call(
            &kms,
            "Decrypt",
            json!({"CiphertextBlob": body["CiphertextBlob"]}),
        );
        assert_eq!(status, 200);
        assert_eq!(body["Plaintext"], base64_of(b"secret"));
    }
    for reference in [
        key.key_id.to_string().to_uppercase(),
        key.arn.replace("111122223333", "999999999999"),
        key.arn.replace("eu-central-1", "us-east-1"),
        "arn:aws:kms:eu-central-1:111122223333:something/s".to_owned(),
        "alias/missing".to_owned(),
        String::new(),
    ] {
        assert_eq!(
            error_type(
                &kms,
                "Encrypt",
                json!({"KeyId": reference, "Plaintext": base64_of(b"x")})
            ),
            "NotFoundException",
            "{reference}"
        );
    }
    assert_eq!(
        error_type(
            &kms,
            "CreateAlias",
            json!({"AliasName": "alias/t", "TargetKeyId": "alias/s"})
        ),
        "ValidationException"
    );
}

#[test]
fn keys_in_sqlite_outlive_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    let open = || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        KeyService::new(SqliteKeyStore::new(Arc::new(Mutex::new(conn))).unwrap())
    };
    let context = json!({"aws:ssm:SessionId": "s-1", "aws:ssm:TargetId": "mi-1"});

    let first = open().create_missing_aliases(true);
    let (status, generated) = call(
        &first,
        "GenerateDataKey",
        json!({"KeyId": "alias/ssmx", "NumberOfBytes": 64, "EncryptionContext": context}),
    );
    assert_eq!(status, 200);
    let arn = first.describe_key("alias/ssmx").unwrap().arn;
    assert_eq!(first.ensure_alias("alias/ssmx").unwrap().arn, arn);
    drop(first);

    let second = open();
    assert_eq!(second.describe_key("alias/ssmx").unwrap().arn, arn);
    let (status, decrypted) = call(
        &second,
        "Decrypt",
        json!({"CiphertextBlob": generated["CiphertextBlob"], "EncryptionContext": context}),
    );
    assert_eq!(status, 200);
    assert_eq!(decrypted["Plaintext"], generated["Plaintext"]);
    assert_eq!(decrypted["KeyId"], arn.as_str());
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Allows only what its list names, as `(action, resource)`.
struct Allow(Vec<(&'static str, String)>);

impl IdentityPolicy for Allow {
    fn check(&self, action: &str, resource: &str) -> Result<(), String> {
        if self.0.iter().any(|(a, r)| *a == action && r == resource) {
            Ok(())
        } else {
            Err(format!(
                "not authorized to perform: {action} on resource: {resource}"
            ))
        }
    }
}

/// `op` called by alice under `policy`: status and body text.
fn call_under(kms: &KeyService, policy: &Allow, op: &str, body: &Value) -> (u16, String) {
    let caller = Caller {
        principal: Some("alice"),
        policy: Some(policy),
    };
    let response = kms.handle_as(
        caller,
        &format!("TrentService.{op}"),
        body.to_string().as_bytes(),
    );
    (response.status, String::from_utf8(response.body).unwrap())
}

#[test]
fn the_identity_policy_is_asked_before_anything_happens() {
    let kms = KeyService::new(MemoryKeyStore::new()).create_missing_aliases(true);
    let nothing = Allow(Vec::new());
    let body = json!({"KeyId": "alias/team", "NumberOfBytes": 32});
    let (status, text) = call_under(&kms, &nothing, "GenerateDataKey", &body);
    assert_eq!(status, 400);
    assert!(text.contains("AccessDeniedException"), "{text}");
    assert!(
        text.contains(
            "kms:GenerateDataKey on resource: arn:aws:kms:us-east-1:000000000000:alias/team"
        ),
        "{text}"
    );
    // Refused before a key was created for the alias.
    let (_, listed) = call(&kms, "ListAliases", json!({}));
    assert_eq!(listed["Aliases"], json!([]), "{listed}");
    let (_, text) = call_under(&kms, &nothing, "ListKeys", &json!({}));
    assert!(text.contains("kms:ListKeys on resource: *"), "{text}");

    // A policy on the key's ARN allows its use.
    let (status, made) = call(&kms, "GenerateDataKey", body.clone());
    assert_eq!(status, 200, "{made}");
    let key_arn = made["KeyId"].as_str().unwrap().to_owned();
    let on_key = Allow(vec![
        ("kms:GenerateDataKey", key_arn.clone()),
        ("kms:Decrypt", key_arn.clone()),
    ]);
    let (status, made) = call_under(&kms, &on_key, "GenerateDataKey", &body);
    assert_eq!(status, 200, "{made}");
    let made: Value = serde_json::from_str(&made).unwrap();
    let decrypt = json!({"CiphertextBlob": made["CiphertextBlob"]});
    let (status, text) = call_under(&kms, &on_key, "Decrypt", &decrypt);
    assert_eq!(status, 200, "{text}");
    let (_, text) = call_under(&kms, &nothing, "Decrypt", &decrypt);
    assert!(
        text.contains(&format!("kms:Decrypt on resource: {key_arn}")),
        "{text}"
    );
}
