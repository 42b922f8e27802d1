//! Registering a host with a gateway (`POST /ssmx/v1/register`) and the registration file.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::host_info;

/// Name of the registration file inside the state directory.
pub const REGISTRATION_FILE: &str = "registration.json";

/// Path of the registration endpoint on the gateway.
const REGISTER_PATH: &str = "ssmx/v1/register";

/// Longest error body quoted in an error message.
const MAX_ERROR_BODY: usize = 512;

/// The identity of a registered host: its gateway, instance id and credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Base URL of the gateway (`http://…` or `https://…`).
    #[serde(rename = "GatewayUrl")]
    pub gateway_url: String,
    /// The managed instance id (`mi-…`).
    #[serde(rename = "InstanceId")]
    pub instance_id: String,
    /// Region for request signing.
    #[serde(rename = "Region")]
    pub region: String,
    /// Access key id of the agent credential.
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    /// Secret of the agent credential.
    #[serde(rename = "SecretAccessKey")]
    pub secret_access_key: String,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("gateway_url", &self.gateway_url)
            .field("instance_id", &self.instance_id)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl Registration {
    /// Reads `<state_dir>/registration.json`.
    pub fn load(state_dir: &Path) -> Result<Self, AgentError> {
        let path = state_dir.join(REGISTRATION_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| AgentError::RegistrationFile {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let registration: Registration =
            serde_json::from_str(&text).map_err(|e| AgentError::RegistrationFile {
                path: path.clone(),
                detail: format!("not a registration: {e}"),
            })?;
        parse_gateway_url(&registration.gateway_url)?;
        Ok(registration)
    }

    /// Writes `<state_dir>/registration.json` with mode 0600 (the directory is created with mode
    /// 0700 if missing), replacing any previous registration atomically. Returns the file's path.
    pub fn save(&self, state_dir: &Path) -> Result<PathBuf, AgentError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| AgentError::Io {
                what: "cannot create state directory",
                path: state_dir.to_owned(),
                source,
            })?;
        let path = state_dir.join(REGISTRATION_FILE);
        let tmp = state_dir.join(format!(".{REGISTRATION_FILE}.{}", std::process::id()));
        let io_err = |what, path: &Path| {
            let path = path.to_owned();
            move |source| AgentError::Io { what, path, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("cannot create", &tmp))?;
        let json = serde_json::to_vec_pretty(self).expect("registration serialises");
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(io_err("cannot write", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io_err("cannot replace", &path))?;
        Ok(path)
    }
}

/// The default state directory: [`SYSTEM_STATE_DIR`] for root, else
/// `<user data dir>/ssmx/agent`.
pub fn default_state_dir() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from(SYSTEM_STATE_DIR));
    }
    dirs::data_dir().map(|d| d.join("ssmx").join("agent"))
}

/// The state directory of an agent run by root, as the packaged service runs it.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/ssmx/agent";

/// Checks that `url` is an absolute http(s) URL and returns it without a trailing slash.
pub(crate) fn parse_gateway_url(url: &str) -> Result<url::Url, AgentError> {
    let invalid = |reason: String| AgentError::GatewayUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".into()));
    }
    if parsed.host().is_none() {
        return Err(invalid("the URL has no host".into()));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("the URL must not carry a query or fragment".into()));
    }
    Ok(parsed)
}

/// `base` with `segments` appended to its path.
pub(crate) fn join_url(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    {
        let mut path = url.path_segments_mut().expect("http(s) URLs have a path");
        path.pop_if_empty();
        for segment in segments {
            for part in segment.split('/') {
                path.push(part);
            }
        }
    }
    url
}

#[derive(Serialize)]
struct RegisterRequest<'a> {
    #[serde(rename = "ActivationId")]
    activation_id: &'a str,
    #[serde(rename = "ActivationCode")]
    activation_code: &'a str,
    #[serde(rename = "Hostname")]
    hostname: &'a str,
    #[serde(rename = "PlatformType")]
    platform_type: &'a str,
}

#[derive(Deserialize)]
struct RegisterResponse {
    #[serde(rename = "InstanceId")]
    instance_id: String,
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: String,
    #[serde(rename = "Region")]
    region: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type", default)]
    code: String,
    #[serde(alias = "Message", default)]
    message: String,
}

/// Registers this host with the gateway at `gateway_url` using an activation, and returns the new
/// identity (not yet saved: call [`Registration::save`]).
pub async fn register(
    gateway_url: &str,
    activation_id: &str,
    activation_code: &str,
) -> Result<Registration, AgentError> {
    let base = parse_gateway_url(gateway_url)?;
    let url = join_url(&base, &[REGISTER_PATH]);
    let hostname = host_info::hostname();
    let request = RegisterRequest {
        activation_id,
        activation_code,
        hostname: &hostname,
        platform_type: host_info::PLATFORM_TYPE,
    };
    let http = crate::mgs::http_client(std::time::Duration::from_secs(15))?;
    let response = http
        .post(url.clone())
        .json(&request)
        .send()
        .await
        .map_err(|e| AgentError::Http {
            url: url.to_string(),
            detail: crate::mgs::error_chain(&e),
        })?;
    let status = response.status();
    let body = response.text().await.map_err(|e| AgentError::Http {
        url: url.to_string(),
        detail: crate::mgs::error_chain(&e),
    })?;
    if !status.is_success() {
        if let Ok(err) = serde_json::from_str::<ErrorBody>(&body) {
            if !err.code.is_empty() {
                let code = err.code.rsplit('#').next().unwrap_or(&err.code).to_owned();
                return Err(AgentError::Registration {
                    code,
                    message: err.message,
                });
            }
        }
        return Err(AgentError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body: truncate(&body),
        });
    }
    let parsed: RegisterResponse =
        serde_json::from_str(&body).map_err(|e| AgentError::Response {
            url: url.to_string(),
            detail: format!("{e}: {}", truncate(&body)),
        })?;
    let mut gateway = base.to_string();
    while gateway.ends_with('/') {
        gateway.pop();
    }
    Ok(Registration {
        gateway_url: gateway,
        instance_id: parsed.instance_id,
        region: parsed.region,
        access_key_id: parsed.access_key_id,
        secret_access_key: parsed.secret_access_key,
    })
}

/// `body`, cut to [`MAX_ERROR_BODY`] bytes on a character boundary.
pub(crate) fn truncate(body: &str) -> String {
    if body.len() <= MAX_ERROR_BODY {
        return body.to_owned();
    }
    let mut end = MAX_ERROR_BODY;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &body[..end])
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample() -> Registration {
        Registration {
            gateway_url: "http://127.0.0.1:8080".into(),
            instance_id: "mi-0123456789abcdef0".into(),
            region: "us-east-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
        }
    }

    #[test]
    fn saved_registration_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let path = sample().save(&state).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(Registration::load(&state).unwrap(), sample());
        assert!(!format!("{:?}", sample()).contains("secret\""));
    }

    #[test]
    fn missing_registration_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = Registration::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ssmx agent register"), "{err}");
    }

    #[test]
    fn gateway_urls_are_checked_and_joined() {
        assert!(parse_gateway_url("ftp://x").is_err());
        assert!(parse_gateway_url("not a url").is_err());
        let base = parse_gateway_url("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            join_url(&base, &["v1/control-channel", "mi-1"]).as_str(),
            "http://127.0.0.1:8080/v1/control-channel/mi-1"
        );
        let prefixed = parse_gateway_url("https://gw.example/ssm").unwrap();
        assert_eq!(
            join_url(&prefixed, &[REGISTER_PATH]).as_str(),
            "https://gw.example/ssm/ssmx/v1/register"
        );
    }
}
