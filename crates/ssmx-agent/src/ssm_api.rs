//! The agent's SSM API call: UpdateInstanceInformation (awsJson1_1, SigV4 service `ssm`), which
//! tells the gateway the host's name, addresses, platform and agent version.

use std::time::Duration;

use serde::Serialize;
use ssmx_protocol::version::AGENT_VERSION;

use crate::error::AgentError;
use crate::host_info;
use crate::mgs::{error_chain, http_client};
use crate::registration::{parse_gateway_url, truncate, Registration};
use crate::sigv4::{Signer, SERVICE_SSM};

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

/// The SSM API endpoint of the gateway.
pub(crate) struct SsmApi {
    http: reqwest::Client,
    url: url::Url,
    signer: Signer,
    instance_id: String,
}

impl SsmApi {
    /// The API of the gateway in `registration`.
    pub(crate) fn new(
        registration: &Registration,
        http_timeout: Duration,
    ) -> Result<Self, AgentError> {
        let mut url = parse_gateway_url(&registration.gateway_url)?;
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self {
            http: http_client(http_timeout)?,
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
        const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
        const TARGET: &str = "AmazonSSM.UpdateInstanceInformation";
        let signed = self.signer.sign(
            SERVICE_SSM,
            "POST",
            self.url.as_str(),
            &[("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)],
            &body,
        )?;
        let mut request = self
            .http
            .post(self.url.clone())
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", TARGET)
            .body(body);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        let http_error = |e: reqwest::Error| AgentError::Http {
            url: self.url.to_string(),
            detail: error_chain(&e),
        };
        let response = request.send().await.map_err(http_error)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(AgentError::Status {
                url: self.url.to_string(),
                status: status.as_u16(),
                body: truncate(&text),
            });
        }
        Ok(())
    }
}
