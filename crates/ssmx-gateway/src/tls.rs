//! TLS of the listener: the rustls acceptor from PEM files, and for first runs a private CA and
//! a server certificate it signs (`[tls] generate`), which the official agent can be told to
//! trust with `SSL_CERT_FILE` (OFFICIAL-AGENT.md §5.3).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::config::TlsConfig;

/// Validity of generated certificates: ten years for the CA, one for the server.
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 365;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("TLS {what} {path}: {reason}")]
    Pem {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate could not be generated or written.
    #[error("cannot generate the TLS certificate {path}: {reason}")]
    Generate {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// rustls refused the pair.
    #[error("TLS certificate and key do not work together: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the rustls acceptor from PEM files.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let pem_err = |what, path: &Path, reason: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("certificate", cert, "no CERTIFICATE block".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    // The official agent speaks HTTP/2 for its REST calls and HTTP/1.1 for WebSockets.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The CA file generated beside `cert`.
pub fn generated_ca_path(cert: &Path) -> PathBuf {
    cert.with_file_name("ca.pem")
}

/// With `generate`, creates the CA and the server certificate when `cert` or `key` is missing
/// (an existing pair is used as it is); then builds the acceptor.
pub(crate) fn prepare(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    if config.generate && !(config.cert.exists() && config.key.exists()) {
        generate(config)?;
    }
    acceptor(&config.cert, &config.key)
}

fn generate(config: &TlsConfig) -> Result<(), TlsError> {
    let failed = |path: &Path, e: &dyn std::fmt::Display| TlsError::Generate {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let ca_path = generated_ca_path(&config.cert);
    let ca_key_path = ca_path.with_file_name("ca.key");
    let names = if config.names.is_empty() {
        default_names()
    } else {
        config.names.clone()
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_key = rcgen::KeyPair::generate().map_err(|e| failed(&ca_path, &e))?;
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ssmx gateway private CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(CA_DAYS);
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| failed(&ca_path, &e))?;
    let server_key = rcgen::KeyPair::generate().map_err(|e| failed(&config.key, &e))?;
    let mut params =
        rcgen::CertificateParams::new(names.clone()).map_err(|e| failed(&config.cert, &e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].as_str());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(SERVER_DAYS);
    let server = params
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(|e| failed(&config.cert, &e))?;
    for dir in [&ca_path, &config.cert, &config.key]
        .iter()
        .filter_map(|p| p.parent())
    {
        std::fs::create_dir_all(dir).map_err(|e| failed(dir, &e))?;
    }
    write(&ca_key_path, &ca_key.serialize_pem(), true).map_err(|e| failed(&ca_key_path, &e))?;
    write(&ca_path, &ca.pem(), false).map_err(|e| failed(&ca_path, &e))?;
    write(&config.key, &server_key.serialize_pem(), true).map_err(|e| failed(&config.key, &e))?;
    // Leaf first, then the CA: clients that were given only the CA can build the chain.
    write(
        &config.cert,
        &format!("{}{}", server.pem(), ca.pem()),
        false,
    )
    .map_err(|e| failed(&config.cert, &e))?;
    info!(
        ca = %ca_path.display(),
        cert = %config.cert.display(),
        names = ?names,
        "generated a private CA and a TLS certificate; agents and clients must trust the CA (for the official agent: SSL_CERT_FILE={})",
        ca_path.display()
    );
    Ok(())
}

fn default_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_owned();
        if !host.is_empty() && !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

fn write(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_used_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert: dir.path().join("tls/cert.pem"),
            key: dir.path().join("tls/key.pem"),
            generate: true,
            names: vec!["gw.example".into(), "127.0.0.1".into()],
        };
        prepare(&config).unwrap();
        let first = std::fs::read(&config.cert).unwrap();
        assert!(generated_ca_path(&config.cert).exists());
        prepare(&config).unwrap();
        assert_eq!(std::fs::read(&config.cert).unwrap(), first);
        let without = TlsConfig {
            generate: false,
            cert: dir.path().join("none.pem"),
            ..config
        };
        assert!(matches!(prepare(&without), Err(TlsError::Pem { .. })));
    }
}
