//! A self-hosted gateway behind TLS with a private CA: the agent (control and data channels,
//! registration, its API and KMS calls) and the client trust it through `SSL_CERT_FILE`, and an
//! encrypted session runs over it.

#[path = "e2e/common/mod.rs"]
mod common;

use common::Stack;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

#[test]
fn agent_and_client_work_with_a_gateway_certified_by_a_private_ca() {
    let pki = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        pki.path().join("ca.pem"),
        pki.path().join("gateway.pem"),
        pki.path().join("gateway.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
    // Every process of the stack (and the harness's own SDK calls) trusts the private CA the
    // way an operator would set it up. This test binary has no other test to disturb.
    std::env::set_var("SSL_CERT_FILE", &ca_file);

    let preferences = serde_json::json!({
        "schemaVersion": "1.0",
        "sessionType": "Standard_Stream",
        "inputs": {"kmsKeyId": "alias/ssmx-tls"}
    });
    let stack = Stack::start_with(
        &[("SSM-SessionManagerRunShell", preferences)],
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_file.display(),
            key_file.display()
        ),
    );
    assert!(stack.url.starts_with("https://"), "{}", stack.url);
    let out = stack
        .ssmx()
        .args([
            "exec",
            &stack.instance_id,
            "--",
            "sh",
            "-c",
            "echo over-tls-$((40+2))",
        ])
        .output()
        .unwrap();
    stack.assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over-tls-42\n");
    stack.assert_agent_encrypted();
}
