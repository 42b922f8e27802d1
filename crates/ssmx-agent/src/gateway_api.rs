//! The agent's awsJson1_1 calls to the gateway, signed with its registered credential: SSM
//! `UpdateInstanceInformation` (service `ssm`), which tells the gateway the host's name,
//! addresses, platform and agent version; SSM `GetDocument`, which fetches the documents
//! `aws:runDocument` runs; and KMS `Decrypt` (service `kms`), which unwraps an encrypted
//! session's data key (PROTOCOL.md §7.2).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ssmx_protocol::crypto::DataKeyUnwrap;
use ssmx_protocol::version::AGENT_VERSION;

use crate::error::AgentError;
use crate::host_info;
use crate::mgs::error_chain;
use crate::registration::{parse_gateway_url, truncate, Registration};
use crate::sigv4::{Signer, SERVICE_KMS, SERVICE_SSM};

/// `AgentName` the official agent reports.
const AGENT_NAME: &str = "amazon-ssm-agent";

/// Request body, field names as the SSM API defines them (and in the official agent's order).
#[derive(Serialize)]
struct UpdateInstanceInformation<'a> {
    #[serde(rename = "AgentName")]
    agent_name: &'a str,
    #[serde(rename = "AgentStatus")]
    agent_status: &'a str,
    #[serde(rename = "AgentVersion")]
    agent_version: &'a str,
    #[serde(rename = "ComputerName")]
    computer_name: String,
    #[serde(rename = "IPAddress")]
    ip_address: String,
    /// Every address of the host, comma-separated (an ssmx addition; the API has one address).
    #[serde(rename = "IPAddresses")]
    ip_addresses: String,
    #[serde(rename = "InstanceId")]
    instance_id: &'a str,
    #[serde(rename = "PlatformName")]
    platform_name: String,
    #[serde(rename = "PlatformType")]
    platform_type: &'a str,
    #[serde(rename = "PlatformVersion")]
    platform_version: String,
}

/// SSM `GetDocument` request body.
#[derive(Serialize)]
struct GetDocumentRequest<'a> {
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "DocumentVersion", skip_serializing_if = "Option::is_none")]
    document_version: Option<&'a str>,
    #[serde(rename = "DocumentFormat")]
    document_format: &'a str,
}

/// The part of SSM `GetDocument`'s answer the agent uses.
#[derive(Deserialize)]
struct GetDocumentResponse {
    #[serde(rename = "Content")]
    content: String,
}

/// KMS `Decrypt` request body.
#[derive(Serialize)]
struct DecryptRequest<'a> {
    #[serde(rename = "CiphertextBlob")]
    ciphertext_blob: String,
    #[serde(rename = "EncryptionContext")]
    encryption_context: &'a std::collections::BTreeMap<String, String>,
    #[serde(rename = "KeyId")]
    key_id: &'a str,
}

/// The part of KMS `Decrypt`'s answer the agent uses.
#[derive(Deserialize)]
struct DecryptResponse {
    #[serde(rename = "Plaintext")]
    plaintext: String,
}

/// An AWS-shaped error body: `{"__type": …, "message": …}`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type", default)]
    error_type: String,
    #[serde(alias = "Message", default)]
    message: String,
}

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The gateway's JSON API endpoint (SSM and KMS share it).
pub(crate) struct GatewayApi {
    http: reqwest::Client,
    url: url::Url,
    signer: Signer,
    instance_id: String,
}

impl GatewayApi {
    /// The API of the gateway in `registration`, called with `http` (from
    /// [`crate::mgs::http_client`]).
    pub(crate) fn new(
        registration: &Registration,
        http: reqwest::Client,
    ) -> Result<Self, AgentError> {
        let mut url = parse_gateway_url(&registration.gateway_url)?;
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self {
            http,
            url,
            signer: Signer::new(
                &registration.access_key_id,
                &registration.secret_access_key,
                &registration.region,
            ),
            instance_id: registration.instance_id.clone(),
        })
    }

    /// Reports this host's current name, addresses, platform and agent version.
    pub(crate) async fn update_instance_information(&self) -> Result<(), AgentError> {
        let addresses = host_info::ip_addresses();
        let (platform_name, platform_version) = host_info::platform();
        let body = UpdateInstanceInformation {
            agent_name: AGENT_NAME,
            agent_status: "Active",
            agent_version: AGENT_VERSION,
            computer_name: host_info::hostname(),
            ip_address: addresses.first().map(|a| a.to_string()).unwrap_or_default(),
            ip_addresses: addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            instance_id: &self.instance_id,
            platform_name,
            platform_type: host_info::API_PLATFORM_TYPE,
            platform_version,
        };
        let body = serde_json::to_vec(&body).expect("request serialises");
        self.call(SERVICE_SSM, "AmazonSSM.UpdateInstanceInformation", body)
            .await?;
        Ok(())
    }

    /// KMS `Decrypt` of a session's data key, with the context the agent computed; returns the
    /// plaintext key.
    pub(crate) async fn decrypt_data_key(
        &self,
        key_id: &str,
        unwrap: &DataKeyUnwrap,
    ) -> Result<Vec<u8>, AgentError> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let body = DecryptRequest {
            ciphertext_blob: base64.encode(&unwrap.ciphertext_blob),
            encryption_context: &unwrap.encryption_context,
            key_id,
        };
        let body = serde_json::to_vec(&body).expect("request serialises");
        let answer = self.call(SERVICE_KMS, "TrentService.Decrypt", body).await?;
        let response: DecryptResponse =
            serde_json::from_slice(&answer).map_err(|e| AgentError::Response {
                url: self.url.to_string(),
                detail: format!("KMS Decrypt: {e}"),
            })?;
        base64
            .decode(response.plaintext)
            .map_err(|e| AgentError::Response {
                url: self.url.to_string(),
                detail: format!("KMS Decrypt Plaintext is not base64: {e}"),
            })
    }

    /// SSM `GetDocument`: the content, as JSON text, of the document `name` (its default
    /// version unless `version` is given), for `aws:runDocument` and `aws:downloadContent`.
    pub(crate) async fn get_document(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<String, AgentError> {
        let body = GetDocumentRequest {
            name,
            document_version: version,
            document_format: "JSON",
        };
        let body = serde_json::to_vec(&body).expect("request serialises");
        let answer = self
            .call(SERVICE_SSM, "AmazonSSM.GetDocument", body)
            .await?;
        let response: GetDocumentResponse =
            serde_json::from_slice(&answer).map_err(|e| AgentError::Response {
                url: self.url.to_string(),
                detail: format!("SSM GetDocument: {e}"),
            })?;
        Ok(response.content)
    }

    /// Uploads one stream (`stdout` or `stderr`) of a plugin's whole output, for the gateway to
    /// serve beyond what the reply carries. The plugin's name goes in hex, as the gateway's
    /// output URLs carry it.
    pub(crate) async fn upload_command_output(
        &self,
        command_id: &str,
        plugin: &str,
        stream: &str,
        data: Vec<u8>,
    ) -> Result<(), AgentError> {
        let mut url = self.url.clone();
        url.path_segments_mut()
            .map_err(|()| AgentError::Response {
                url: self.url.to_string(),
                detail: "the gateway URL cannot take a path".into(),
            })?
            .pop_if_empty()
            .extend([
                "ssmx",
                "v1",
                "command-output",
                command_id,
                &self.instance_id,
                &hex::encode(plugin),
                stream,
            ]);
        let content_type = "application/octet-stream";
        self.send(
            reqwest::Method::PUT,
            &url,
            SERVICE_SSM,
            &[("content-type", content_type)],
            data,
            "UploadCommandOutput",
        )
        .await
        .map(drop)
    }

    /// One signed awsJson1_1 call; returns the response body. An AWS-shaped error answer
    /// becomes [`AgentError::Refused`].
    async fn call(
        &self,
        service: &str,
        target: &'static str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, AgentError> {
        self.send(
            reqwest::Method::POST,
            &self.url,
            service,
            &[("content-type", CONTENT_TYPE), ("x-amz-target", target)],
            body,
            target,
        )
        .await
    }

    /// One signed request with `headers`; returns the response body. An AWS-shaped error
    /// answer becomes [`AgentError::Refused`] naming `operation`.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &url::Url,
        service: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        operation: &'static str,
    ) -> Result<Vec<u8>, AgentError> {
        let signed = self
            .signer
            .sign(service, method.as_str(), url.as_str(), headers, &body)?;
        let mut request = self.http.request(method, url.clone()).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        for (name, value) in signed {
            request = request.header(name, value);
        }
        let http_error = |e: reqwest::Error| AgentError::Http {
            url: url.to_string(),
            detail: error_chain(&e),
        };
        let response = request.send().await.map_err(http_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(http_error)?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(error) if !error.error_type.is_empty() => Err(AgentError::Refused {
                operation,
                code: error
                    .error_type
                    .rsplit('#')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                message: error.message,
            }),
            _ => Err(AgentError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: truncate(&String::from_utf8_lossy(&bytes)),
            }),
        }
    }
}
