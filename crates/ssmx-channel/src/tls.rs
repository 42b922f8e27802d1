//! The TLS settings both ends dial `wss://` (and `https://`) with: rustls on the ring provider,
//! trusting the system's store (which honours `SSL_CERT_FILE` / `SSL_CERT_DIR`, so a
//! self-hosted gateway's private CA works) plus the Mozilla roots. Built once per process.

use std::sync::{Arc, OnceLock};

use tokio_tungstenite::Connector;

/// How to dial a URL of `scheme`: TLS with [`client_config`] for `wss`/`https`, else plain.
pub fn connector(scheme: &str) -> Result<Connector, String> {
    match scheme {
        "wss" | "https" => client_config().map(Connector::Rustls),
        _ => Ok(Connector::Plain),
    }
}

/// The shared client configuration, or why it could not be built.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!("skipping unreadable system certificate: {e}");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, ignored, "system trust store loaded");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS setup: {e}"))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::Connector;

    #[test]
    fn the_configuration_builds() {
        assert!(super::client_config().is_ok());
        assert!(matches!(super::connector("wss"), Ok(Connector::Rustls(_))));
        assert!(matches!(super::connector("ws"), Ok(Connector::Plain)));
    }
}
