//! From an `interactive_shell` request to what the session will run: the substituted document,
//! its session type and plugin settings, run-as user, handshake and time limits (PROTOCOL.md §6.1,
//! §8, §10.3).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use ssmx_protocol::document::value_text;
use ssmx_protocol::payload::{session_type, AgentTaskPayload};
use ssmx_protocol::version::agent_compare;

use crate::config::AgentConfig;
use crate::plugins::command::{valid_prefix, CommandSpec};
use crate::plugins::port::{spec_from_properties, PortSpec};
use crate::plugins::shell::ShellSpec;
use crate::process::{resolve_session_user, SessionUser};

/// Shell when neither the configuration nor the user's account names one.
const FALLBACK_SHELL: &str = "/bin/sh";

/// Clients at or below this version cannot show separated output well (PROTOCOL.md §6.4).
const SEPARATE_OUTPUT_MIN_CLIENT_EXCLUSIVE: &str = "1.2.295";

/// HandshakeComplete text for those clients.
const SEPARATE_OUTPUT_UPGRADE_MESSAGE: &str = "Please update session manager plugin version (minimum required version 1.2.312.0) for fully support of separate StdOut/StdErr output.\r\n";

/// HandshakeComplete text of an encrypted session.
const ENCRYPTED_MESSAGE: &str = "This session is encrypted using AWS KMS.";

/// The plugin a session runs, with its settings.
#[derive(Debug)]
pub(crate) enum Plugin {
    /// Standard_Stream or InteractiveCommands.
    Shell(ShellSpec),
    /// NonInteractiveCommands.
    Command(CommandSpec),
    /// Port.
    Port(PortSpec),
}

/// Everything decided before the data channel opens.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The document's session type.
    pub(crate) session_type: String,
    /// What runs.
    pub(crate) plugin: Plugin,
    /// `Some(properties for the client)` when the session type needs a handshake.
    pub(crate) handshake: Option<Value>,
    /// End the session after this long without stream data.
    pub(crate) idle_timeout: Option<Duration>,
    /// End the session after this long in any case.
    pub(crate) max_duration: Option<Duration>,
    /// A NonInteractiveCommands session with separate output (an old client gets a warning).
    pub(crate) separate_output: bool,
    /// The KMS key the session must be encrypted with (`inputs.kmsKeyId`), if any.
    pub(crate) kms_key_id: Option<String>,
}

impl Plan {
    /// The HandshakeComplete `CustomerMessage` for a client of `client_version` (§6.4).
    pub(crate) fn customer_message(&self, client_version: &str) -> String {
        let mut message = String::new();
        if self.separate_output
            && agent_compare(client_version, SEPARATE_OUTPUT_MIN_CLIENT_EXCLUSIVE).is_le()
        {
            message.push_str(SEPARATE_OUTPUT_UPGRADE_MESSAGE);
        }
        if self.kms_key_id.is_some() {
            message.push_str(ENCRYPTED_MESSAGE);
        }
        message
    }
}

/// Decides how to run `request`, or says why it cannot run (the text goes to the service in
/// `agent_task_complete`, and from there to the client).
pub(crate) fn plan(request: &AgentTaskPayload, config: &AgentConfig) -> Result<Plan, String> {
    // Parameter names outside [a-zA-Z0-9]+ are dropped, as the official agent does.
    let parameters: BTreeMap<String, Value> = request
        .parameters
        .iter()
        .filter(|(name, _)| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let document = request
        .document_content
        .substituted(&parameters)
        .map_err(|e| format!("invalid session document: {e}"))?;
    let inputs = document.session_inputs();
    let session_type = document.session_type.clone();
    let minutes = |n: u64| (n > 0).then(|| config.timing.session_minute * n as u32);
    let idle_timeout = minutes(inputs.idle_session_timeout_minutes);
    let max_duration = minutes(inputs.max_session_duration_minutes);
    let properties = os_properties(&document.properties);
    // Unlike the official agent, Port sessions are encrypted too when the document asks: the
    // official client handles encryption the same way for every session type.
    let kms_key_id = Some(inputs.kms_key_id.trim().to_owned()).filter(|id| !id.is_empty());
    let run_as = || -> Result<SessionUser, String> {
        let requested = if inputs.run_as_enabled {
            let user = [
                request.run_as_user.trim(),
                inputs.run_as_default_user.trim(),
            ]
            .into_iter()
            .find(|u| !u.is_empty())
            .ok_or("run-as is enabled but no user is given (RunAsUser or runAsDefaultUser)")?;
            Some(user.to_owned())
        } else if nix::unistd::geteuid().is_root() {
            config.session_user.clone()
        } else {
            None
        };
        resolve_session_user(requested.as_deref())
    };
    let (plugin, handshake, separate_output) = match session_type.as_str() {
        session_type::STANDARD_STREAM => {
            let user = run_as()?;
            let program = login_shell(config.shell.as_deref(), &user);
            let arg0 = program
                .file_name()
                .map(|name| format!("-{}", name.to_string_lossy()).into());
            let spec = ShellSpec {
                program,
                args: Vec::new(),
                arg0,
                user,
                profile: inputs.shell_profile_linux.clone(),
            };
            (Plugin::Shell(spec), None, false)
        }
        session_type::INTERACTIVE_COMMANDS => {
            let commands = commands(properties)
                .ok_or("Commands cannot be empty for session type InteractiveCommands")?;
            let spec = ShellSpec {
                program: PathBuf::from(FALLBACK_SHELL),
                args: vec!["-c".into(), commands.into()],
                arg0: None,
                user: run_as()?,
                profile: String::new(),
            };
            (Plugin::Shell(spec), None, false)
        }
        session_type::NON_INTERACTIVE_COMMANDS => {
            let commands = commands(properties)
                .ok_or("Commands cannot be empty for session type NonInteractiveCommands")?;
            let argv = shell_words::split(&commands)
                .map_err(|e| format!("cannot parse the command {commands:?}: {e}"))?;
            if argv.is_empty() {
                return Err("Commands cannot be empty for session type NonInteractiveCommands".into());
            }
            let separate = properties
                .get("separateOutputStream")
                .map(|v| match v {
                    Value::Bool(b) => Ok(*b),
                    other => match value_text(other).trim().to_ascii_lowercase().as_str() {
                        "true" => Ok(true),
                        "false" | "" => Ok(false),
                        text => Err(format!("fail to get separateOutPutStream property: {text:?} is not a boolean")),
                    },
                })
                .transpose()?
                .unwrap_or(false);
            let prefix = |key: &str| -> Result<String, String> {
                let prefix = properties.get(key).map(value_text).unwrap_or_default();
                if separate && !valid_prefix(&prefix) {
                    return Err(format!("invalid {key} {prefix:?}"));
                }
                Ok(prefix)
            };
            let spec = CommandSpec {
                argv,
                user: run_as()?,
                separate_output: separate,
                stdout_prefix: if separate { prefix("stdOutSeparatorPrefix")? } else { String::new() },
                stderr_prefix: if separate { prefix("stdErrSeparatorPrefix")? } else { String::new() },
            };
            (Plugin::Command(spec), Some(Value::Null), separate)
        }
        session_type::PORT => {
            let spec = spec_from_properties(&document.properties)?;
            (Plugin::Port(spec), Some(document.properties.clone()), false)
        }
        other => {
            return Err(format!(
                "unsupported session type {other:?}; this agent runs Standard_Stream, InteractiveCommands, NonInteractiveCommands and Port sessions"
            ))
        }
    };
    // Encryption is agreed in the handshake, so an encrypted session always has one.
    let handshake = match (handshake, &kms_key_id) {
        (None, Some(_)) => Some(Value::Null),
        (handshake, _) => handshake,
    };
    Ok(Plan {
        session_type,
        plugin,
        handshake,
        idle_timeout,
        max_duration,
        separate_output,
        kms_key_id,
    })
}

/// The Linux section of the properties (`properties.linux`), or the properties themselves.
fn os_properties(properties: &Value) -> &Value {
    match properties.get("linux") {
        Some(linux) if linux.is_object() => linux,
        _ => properties,
    }
}

/// The `commands` property as one script (a list is joined with newlines); `None` when empty.
fn commands(properties: &Value) -> Option<String> {
    let text = match properties.get("commands")? {
        Value::Array(lines) => lines.iter().map(value_text).collect::<Vec<_>>().join("\n"),
        other => value_text(other),
    };
    (!text.trim().is_empty()).then_some(text)
}

/// The shell to run: the configured one, else the user's login shell if it exists, else `sh`.
fn login_shell(configured: Option<&Path>, user: &SessionUser) -> PathBuf {
    if let Some(shell) = configured {
        return shell.to_owned();
    }
    if user.shell.is_absolute() && user.shell.is_file() {
        return user.shell.clone();
    }
    PathBuf::from(FALLBACK_SHELL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::Registration;
    use serde_json::json;

    fn config() -> AgentConfig {
        AgentConfig::new(Registration {
            gateway_url: "http://127.0.0.1:1".into(),
            instance_id: "mi-0123456789abcdef0".into(),
            region: "us-east-1".into(),
            access_key_id: "AKID".into(),
            secret_access_key: "secret".into(),
        })
    }

    fn request(document: Value, parameters: Value) -> AgentTaskPayload {
        serde_json::from_value(json!({
            "SessionId": "s-1",
            "DocumentName": "doc",
            "DocumentContent": document,
            "Parameters": parameters,
            "RunAsUser": "",
            "SessionOwner": "arn:aws:iam::111122223333:user/test"
        }))
        .unwrap()
    }

    #[test]
    fn shell_document_runs_a_login_shell_without_handshake() {
        let doc = json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream",
            "inputs": {"shellProfile": {"linux": "cd /tmp", "windows": ""}, "idleSessionTimeout": "20"}});
        let plan = plan(&request(doc, json!({})), &config()).unwrap();
        assert!(plan.handshake.is_none());
        assert_eq!(plan.idle_timeout, Some(Duration::from_secs(20 * 60)));
        let Plugin::Shell(spec) = plan.plugin else {
            panic!("not a shell")
        };
        assert_eq!(spec.profile, "cd /tmp");
        assert!(spec.arg0.unwrap().to_string_lossy().starts_with('-'));
    }

    #[test]
    fn port_document_substitutes_parameters_and_hands_them_to_the_client() {
        let doc = json!({"schemaVersion": "1.0", "sessionType": "Port",
            "parameters": {"portNumber": {"type": "String", "default": "80"}, "localPortNumber": {"type": "String", "default": "0"}},
            "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding", "localPortNumber": "{{ localPortNumber }}"}});
        let plan = plan(
            &request(doc, json!({"portNumber": "7777", "bad-name": "x"})),
            &config(),
        )
        .unwrap();
        assert_eq!(
            plan.handshake,
            Some(
                json!({"portNumber": "7777", "type": "LocalPortForwarding", "localPortNumber": "0"})
            )
        );
        let Plugin::Port(spec) = plan.plugin else {
            panic!("not a port session")
        };
        assert_eq!((spec.port, spec.local_port_forwarding), (7777, true));
    }

    #[test]
    fn non_interactive_command_is_split_and_flags_parsed() {
        let doc = json!({"schemaVersion": "1.0", "sessionType": "NonInteractiveCommands",
            "parameters": {"command": {"type": "String"}},
            "properties": {"linux": {"commands": "{{command}}", "separateOutputStream": "true", "runAsElevated": false}}});
        let plan = plan(
            &request(doc, json!({"command": "sh -c 'echo out; exit 3'"})),
            &config(),
        )
        .unwrap();
        assert_eq!(plan.handshake, Some(Value::Null));
        assert!(plan.customer_message("1.2.295.0").is_empty());
        assert!(!plan.customer_message("1.2.0.0").is_empty());
        let Plugin::Command(spec) = plan.plugin else {
            panic!("not a command")
        };
        assert_eq!(spec.argv, ["sh", "-c", "echo out; exit 3"]);
        assert!(spec.separate_output);
    }

    #[test]
    fn kms_key_id_turns_on_encryption_with_a_handshake() {
        let doc = json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": {"kmsKeyId": " alias/x "}});
        let plan = plan(&request(doc, json!({})), &config()).unwrap();
        assert_eq!(plan.kms_key_id.as_deref(), Some("alias/x"));
        assert_eq!(plan.handshake, Some(Value::Null));
        assert_eq!(plan.customer_message("1.2.779.0"), ENCRYPTED_MESSAGE);
        let plain = json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": {"kmsKeyId": ""}});
        let plan = super::plan(&request(plain, json!({})), &config()).unwrap();
        assert_eq!((plan.kms_key_id, plan.handshake), (None, None));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let unknown = json!({"schemaVersion": "1.0", "sessionType": "Teleport"});
        let err = plan(&request(unknown, json!({})), &config()).unwrap_err();
        assert!(
            err.contains("unsupported session type \"Teleport\""),
            "{err}"
        );
        let schema = json!({"schemaVersion": "2.2", "sessionType": "Standard_Stream"});
        assert!(plan(&request(schema, json!({})), &config())
            .unwrap_err()
            .contains("schema version"));
        let empty = json!({"schemaVersion": "1.0", "sessionType": "InteractiveCommands", "properties": {"linux": {"commands": ""}}});
        assert!(plan(&request(empty, json!({})), &config())
            .unwrap_err()
            .contains("cannot be empty"));
        let run_as = json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": {"runAsEnabled": true}});
        assert!(plan(&request(run_as, json!({})), &config())
            .unwrap_err()
            .contains("run-as"));
    }
}
