//! Session documents: the AWS-managed ones users rely on, custom ones from a directory, and the
//! validation of StartSession parameters against them (PROTOCOL.md §10.3, Appendix B).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::{json, Value};
use ssmx_protocol::document::{SessionDocument, SessionInputs, SCHEMA_VERSION};
use ssmx_protocol::payload::session_type;

use crate::error::{ApiError, ErrorCode};

/// The preferences document; the default when StartSession names none.
pub const DEFAULT_DOCUMENT: &str = "SSM-SessionManagerRunShell";
/// Idle timeout when the preferences name none (AWS's default), minutes.
pub const DEFAULT_IDLE_TIMEOUT_MINUTES: u64 = 20;
/// Longest custom document file read; real Session documents are a few KiB.
const MAX_DOCUMENT_FILE: u64 = 1024 * 1024;
/// Most values a StringList parameter may carry, and the longest value (AWS's StartSession
/// limits: 1–65535 characters per value).
const MAX_PARAMETER_VALUES: usize = 256;
const MAX_PARAMETER_VALUE_LEN: usize = 65_535;

const PORT_PATTERN: &str = "^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";
const LOCAL_PORT_PATTERN: &str = "^([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";

fn builtin_documents() -> Vec<(&'static str, Value)> {
    let command_properties = |separate: Option<bool>| {
        let mut platform = json!({"commands": "{{command}}", "runAsElevated": false});
        if let Some(separate) = separate {
            platform["separateOutputStream"] = json!(separate);
        }
        json!({"windows": platform, "linux": platform, "macos": platform})
    };
    vec![
        (
            DEFAULT_DOCUMENT,
            json!({
                "schemaVersion": "1.0",
                "description": "Document to hold regional settings for Session Manager",
                "sessionType": "Standard_Stream",
                "inputs": {
                    "s3BucketName": "",
                    "s3KeyPrefix": "",
                    "s3EncryptionEnabled": true,
                    "cloudWatchLogGroupName": "",
                    "cloudWatchEncryptionEnabled": true,
                    "cloudWatchStreamingEnabled": false,
                    "idleSessionTimeout": "20",
                    "maxSessionDuration": "",
                    "kmsKeyId": "",
                    "runAsEnabled": false,
                    "runAsDefaultUser": "",
                    "shellProfile": {"windows": "", "linux": ""}
                }
            }),
        ),
        (
            "AWS-StartPortForwardingSession",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to start port forwarding session over Session Manager",
                "sessionType": "Port",
                "parameters": {
                    "portNumber": {"type": "String", "description": "(Optional) Port number of the server on the instance", "allowedPattern": PORT_PATTERN, "default": "80"},
                    "localPortNumber": {"type": "String", "description": "(Optional) Port number on local machine to forward traffic to. An open port is chosen at run-time if not provided", "allowedPattern": LOCAL_PORT_PATTERN, "default": "0"}
                },
                "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding", "localPortNumber": "{{ localPortNumber }}"}
            }),
        ),
        (
            "AWS-StartPortForwardingSessionToRemoteHost",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to start port forwarding session over Session Manager to a remote host",
                "sessionType": "Port",
                "parameters": {
                    "portNumber": {"type": "String", "description": "(Optional) Port number of the server on the remote host", "allowedPattern": PORT_PATTERN, "default": "80"},
                    "localPortNumber": {"type": "String", "description": "(Optional) Port number on local machine to forward traffic to. An open port is chosen at run-time if not provided", "allowedPattern": LOCAL_PORT_PATTERN, "default": "0"},
                    "host": {"type": "String", "description": "(Required) The IP address or DNS name of the remote host", "allowedPattern": "^[a-zA-Z0-9._:\\[\\]-]{1,255}$"}
                },
                "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding", "localPortNumber": "{{ localPortNumber }}", "host": "{{ host }}"}
            }),
        ),
        (
            "AWS-StartSSHSession",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to start SSH session over Session Manager",
                "sessionType": "Port",
                "parameters": {
                    "portNumber": {"type": "String", "description": "(Optional) Port number of SSH server on the instance", "allowedPattern": PORT_PATTERN, "default": "22"}
                },
                "properties": {"portNumber": "{{ portNumber }}"}
            }),
        ),
        (
            "AWS-StartInteractiveCommand",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to run single interactive command on an instance",
                "sessionType": "InteractiveCommands",
                "parameters": {
                    "command": {"type": "String", "description": "The command to run on the instance"}
                },
                "properties": command_properties(None)
            }),
        ),
        (
            "AWS-StartNonInteractiveCommand",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to run single non interactive command on an instance",
                "sessionType": "NonInteractiveCommands",
                "parameters": {
                    "command": {"type": "String", "description": "The command to run on the instance"}
                },
                "properties": command_properties(Some(true))
            }),
        ),
    ]
}

/// Why a document file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DocumentLoadError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid Session document.
    #[error("session document {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A loaded document with its compiled parameter patterns.
#[derive(Debug)]
struct Entry {
    document: SessionDocument,
    patterns: HashMap<String, Regex>,
}

/// A document ready to send to an agent, with the caller's validated parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedDocument {
    /// The document's name.
    pub name: String,
    /// Its content, with the session preferences merged into `inputs`.
    pub content: SessionDocument,
    /// Parameters for the agent: JSON strings for String, arrays for StringList.
    pub parameters: BTreeMap<String, Value>,
    /// The effective preferences.
    pub inputs: SessionInputs,
}

impl PreparedDocument {
    /// Minutes without stream data before the gateway ends the session (0: never).
    pub fn idle_timeout_minutes(&self) -> u64 {
        let explicit = self.content.inputs.get("idleSessionTimeout").is_some();
        match self.inputs.idle_session_timeout_minutes {
            0 if !explicit => DEFAULT_IDLE_TIMEOUT_MINUTES,
            n => n,
        }
    }
}

/// The documents a gateway serves.
#[derive(Debug)]
pub struct Documents {
    entries: HashMap<String, Entry>,
}

impl Documents {
    /// The built-in AWS-managed documents.
    pub fn builtin() -> Self {
        let mut entries = HashMap::new();
        for (name, value) in builtin_documents() {
            let document: SessionDocument =
                serde_json::from_value(value).expect("built-in documents are valid");
            let entry = compile(document).expect("built-in documents are valid");
            entries.insert(name.to_owned(), entry);
        }
        Self { entries }
    }

    /// Adds (or replaces) every `*.json`, `*.yaml` and `*.yml` in `dir`; the file stem is the
    /// document name.
    pub fn load_dir(&mut self, dir: &Path) -> Result<usize, DocumentLoadError> {
        let read_err = |path: &Path, source| DocumentLoadError::Read {
            path: path.to_owned(),
            source,
        };
        let mut loaded = 0;
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| read_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let yaml = match ext {
                "json" => false,
                "yaml" | "yml" => true,
                _ => continue,
            };
            let invalid = |reason: String| DocumentLoadError::Invalid {
                path: path.clone(),
                reason,
            };
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            if !valid_document_name(&name) {
                return Err(invalid(format!(
                    "file name {name:?} is not a valid document name ([a-zA-Z0-9_.-], 3-128 characters)"
                )));
            }
            let len = std::fs::metadata(&path)
                .map_err(|e| read_err(&path, e))?
                .len();
            if len > MAX_DOCUMENT_FILE {
                return Err(invalid(format!(
                    "{len} bytes is over the {MAX_DOCUMENT_FILE}-byte limit"
                )));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            let document: SessionDocument = if yaml {
                serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?
            } else {
                serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?
            };
            let entry = compile(document).map_err(invalid)?;
            self.entries.insert(name, entry);
            loaded += 1;
        }
        Ok(loaded)
    }

    /// The document called `name` (an ARN's last path segment is accepted too).
    pub fn get(&self, name: &str) -> Option<&SessionDocument> {
        self.entries.get(strip_arn(name)).map(|e| &e.document)
    }

    /// Names of every document, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Checks that `document` is a Session document this gateway can serve.
    pub fn check(document: SessionDocument) -> Result<(), String> {
        compile(document).map(drop)
    }

    /// Resolves StartSession's `DocumentName` and `Parameters` against the documents loaded here.
    pub fn prepare(
        &self,
        name: Option<&str>,
        given: &BTreeMap<String, Vec<String>>,
    ) -> Result<PreparedDocument, ApiError> {
        self.prepare_under(name, given, None)
    }

    /// [`Documents::prepare`] with `preferences` (inputs of the preferences document stored
    /// elsewhere) in place of the preferences loaded here.
    pub fn prepare_under(
        &self,
        name: Option<&str>,
        given: &BTreeMap<String, Vec<String>>,
        preferences: Option<Value>,
    ) -> Result<PreparedDocument, ApiError> {
        let name = strip_arn(name.unwrap_or(DEFAULT_DOCUMENT));
        let entry = self.entries.get(name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidDocument,
                format!("document {name} does not exist"),
            )
        })?;
        self.prepare_entry(name, entry, given, preferences)
    }

    /// Resolves StartSession's `Parameters` against `document` (one stored elsewhere, called
    /// `name`), under `preferences` as [`Documents::prepare_under`] does.
    pub fn prepare_document(
        &self,
        name: &str,
        document: SessionDocument,
        given: &BTreeMap<String, Vec<String>>,
        preferences: Option<Value>,
    ) -> Result<PreparedDocument, ApiError> {
        let entry = compile(document).map_err(|e| ApiError::new(ErrorCode::InvalidDocument, e))?;
        self.prepare_entry(name, &entry, given, preferences)
    }

    fn prepare_entry(
        &self,
        name: &str,
        entry: &Entry,
        given: &BTreeMap<String, Vec<String>>,
        preferences: Option<Value>,
    ) -> Result<PreparedDocument, ApiError> {
        let invalid = |msg: String| ApiError::new(ErrorCode::InvalidDocument, msg);
        let doc = &entry.document;
        let mut parameters = BTreeMap::new();
        for (key, values) in given {
            let def = doc.parameters.get(key).ok_or_else(|| {
                invalid(format!(
                    "parameter {key:?} is not defined by document {name}"
                ))
            })?;
            if values.is_empty() || values.len() > MAX_PARAMETER_VALUES {
                return Err(invalid(format!(
                    "parameter {key:?} needs 1 to {MAX_PARAMETER_VALUES} values, got {}",
                    values.len()
                )));
            }
            for value in values {
                if value.len() > MAX_PARAMETER_VALUE_LEN {
                    return Err(invalid(format!(
                        "a value of parameter {key:?} is longer than {MAX_PARAMETER_VALUE_LEN} characters"
                    )));
                }
                if let Some(re) = entry.patterns.get(key) {
                    if !re.is_match(value) {
                        return Err(invalid(format!(
                            "value {value:?} of parameter {key:?} does not match its allowed pattern {}",
                            re.as_str()
                        )));
                    }
                }
                if let Some(allowed) = &def.allowed_values {
                    if !allowed.contains(value) {
                        return Err(invalid(format!(
                            "value {value:?} of parameter {key:?} is not one of the allowed values {allowed:?}"
                        )));
                    }
                }
            }
            let value = if def.param_type == "StringList" {
                json!(values)
            } else {
                if values.len() != 1 {
                    return Err(invalid(format!(
                        "parameter {key:?} is a String and takes exactly one value, got {}",
                        values.len()
                    )));
                }
                json!(values[0])
            };
            parameters.insert(key.clone(), value);
        }
        for (key, def) in &doc.parameters {
            if def.default.is_none() && !parameters.contains_key(key) {
                return Err(invalid(format!(
                    "parameter {key:?} of document {name} is required"
                )));
            }
        }
        let mut content = doc.clone();
        content.inputs = self.merged_inputs(preferences, &doc.inputs);
        let inputs = content.session_inputs();
        Ok(PreparedDocument {
            name: name.to_owned(),
            content,
            parameters,
            inputs,
        })
    }

    /// The preferences' inputs (`preferences`, else those of the preferences document loaded
    /// here) overlaid with `own`.
    fn merged_inputs(&self, preferences: Option<Value>, own: &Value) -> Value {
        let mut merged = preferences.unwrap_or_else(|| {
            self.entries
                .get(DEFAULT_DOCUMENT)
                .map(|e| e.document.inputs.clone())
                .unwrap_or(Value::Null)
        });
        match (merged.as_object_mut(), own.as_object()) {
            (Some(base), Some(own)) => {
                for (k, v) in own {
                    base.insert(k.clone(), v.clone());
                }
                merged
            }
            (None, Some(_)) => own.clone(),
            _ => merged,
        }
    }
}

fn compile(document: SessionDocument) -> Result<Entry, String> {
    if document.schema_version != SCHEMA_VERSION {
        return Err(format!(
            "schemaVersion {:?} is not supported (only 1.0)",
            document.schema_version
        ));
    }
    let known = [
        session_type::STANDARD_STREAM,
        session_type::INTERACTIVE_COMMANDS,
        session_type::NON_INTERACTIVE_COMMANDS,
        session_type::PORT,
    ];
    if !known.contains(&document.session_type.as_str()) {
        return Err(format!(
            "sessionType {:?} is not one of {known:?}",
            document.session_type
        ));
    }
    if !document.inputs.is_null() && !document.inputs.is_object() {
        return Err("inputs must be an object".into());
    }
    let mut patterns = HashMap::new();
    for (name, def) in &document.parameters {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "parameter name {name:?} must be letters and digits only"
            ));
        }
        if !matches!(def.param_type.as_str(), "String" | "StringList") {
            return Err(format!(
                "parameter {name:?} has type {:?}; Session documents support String and StringList",
                def.param_type
            ));
        }
        if let Some(pattern) = &def.allowed_pattern {
            let re = Regex::new(pattern)
                .map_err(|e| format!("allowedPattern of parameter {name:?}: {e}"))?;
            patterns.insert(name.clone(), re);
        }
    }
    Ok(Entry { document, patterns })
}

/// A document's name from its name or ARN.
pub(crate) fn strip_arn(name: &str) -> &str {
    if name.starts_with("arn:") {
        name.rsplit('/').next().unwrap_or(name)
    } else {
        name
    }
}

/// StartSession's DocumentName rule: `^[a-zA-Z0-9_\-.:/]{3,128}$`.
pub fn valid_document_name(name: &str) -> bool {
    (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn builtins_validate_parameters() {
        let docs = Documents::builtin();
        let ok = docs
            .prepare(
                Some("AWS-StartPortForwardingSession"),
                &params(&[("portNumber", &["8080"])]),
            )
            .unwrap();
        assert_eq!(ok.parameters["portNumber"], json!("8080"));
        assert_eq!(ok.content.inputs["idleSessionTimeout"], json!("20"));
        assert_eq!(ok.idle_timeout_minutes(), 20);
        for bad in [
            params(&[("portNumber", &["0"])]),
            params(&[("portNumber", &["80", "81"])]),
            params(&[("nope", &["1"])]),
        ] {
            let err = docs
                .prepare(Some("AWS-StartPortForwardingSession"), &bad)
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidDocument, "{err}");
        }
        let err = docs
            .prepare(
                Some("AWS-StartPortForwardingSessionToRemoteHost"),
                &params(&[]),
            )
            .unwrap_err();
        assert!(err.message.contains("host"), "{err}");
        assert_eq!(
            docs.prepare(Some("No-Such-Doc"), &params(&[]))
                .unwrap_err()
                .code,
            ErrorCode::InvalidDocument
        );
        let default = docs.prepare(None, &params(&[])).unwrap();
        assert_eq!(default.name, DEFAULT_DOCUMENT);
        assert_eq!(default.content.session_type, "Standard_Stream");
    }

    #[test]
    fn custom_documents_load_from_json_and_yaml() {
        let dir = std::env::temp_dir().join(format!("ssmx-docs-{}", crate::secrets::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Team-Shell.yaml"),
            "schemaVersion: '1.0'\nsessionType: Standard_Stream\ninputs:\n  idleSessionTimeout: '5'\n  maxSessionDuration: '60'\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("Team-Db.json"),
            r#"{"schemaVersion":"1.0","sessionType":"Port","parameters":{"env":{"type":"String","allowedValues":["dev","prod"]}},"properties":{"portNumber":"5432","host":"db-{{ env }}"}}"#,
        )
        .unwrap();
        let mut docs = Documents::builtin();
        assert_eq!(docs.load_dir(&dir).unwrap(), 2);
        let shell = docs.prepare(Some("Team-Shell"), &params(&[])).unwrap();
        assert_eq!(shell.idle_timeout_minutes(), 5);
        assert_eq!(shell.inputs.max_session_duration_minutes, 60);
        assert!(docs
            .prepare(Some("Team-Db"), &params(&[("env", &["qa"])]))
            .is_err());
        assert!(docs
            .prepare(Some("Team-Db"), &params(&[("env", &["dev"])]))
            .is_ok());
        std::fs::write(
            dir.join("Bad.json"),
            r#"{"schemaVersion":"2.2","sessionType":"Port"}"#,
        )
        .unwrap();
        assert!(matches!(
            docs.load_dir(&dir),
            Err(DocumentLoadError::Invalid { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
