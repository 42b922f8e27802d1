//! SigV4 signing of the agent's requests with its registered credential (PROTOCOL.md §2.2, §10.1).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use crate::error::AgentError;

/// SigV4 service name of the MGS REST calls and WebSockets.
pub(crate) const SERVICE_MGS: &str = "ssmmessages";
/// SigV4 service name of the SSM API.
pub(crate) const SERVICE_SSM: &str = "ssm";
/// SigV4 service name of KMS.
pub(crate) const SERVICE_KMS: &str = "kms";

/// Signs requests for one credential and region.
#[derive(Clone)]
pub(crate) struct Signer {
    credentials: Credentials,
    region: String,
}

impl Signer {
    /// A signer for a long-term access key.
    pub(crate) fn new(access_key_id: &str, secret_access_key: &str, region: &str) -> Self {
        Self {
            credentials: Credentials::new(access_key_id, secret_access_key, None, None, "ssmx"),
            region: region.to_owned(),
        }
    }

    /// The headers (`Authorization`, `X-Amz-Date`, …) that sign a request. `headers` are the
    /// request's own headers to include in the signature; `Host` is taken from `url`.
    pub(crate) fn sign(
        &self,
        service: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, AgentError> {
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| AgentError::Signing(e.to_string()))?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| AgentError::Signing(e.to_string()))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| AgentError::Signing(e.to_string()))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_upgrade_signature_covers_host_and_date() {
        let signer = Signer::new("AKIDEXAMPLE", "secret", "us-east-1");
        let headers = signer
            .sign(
                SERVICE_MGS,
                "GET",
                "ws://127.0.0.1:8080/v1/control-channel/mi-1?role=subscribe&stream=input",
                &[],
                b"",
            )
            .unwrap();
        let auth = &headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .unwrap()
            .1;
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
        assert!(auth.contains("/us-east-1/ssmmessages/aws4_request"));
        assert!(auth.contains("SignedHeaders=host;x-amz-date,"), "{auth}");
        assert!(headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("x-amz-date")));
    }
}
