//! Session documents (schema 1.0) and their parameter substitution (PROTOCOL.md §10.3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only session document schema the agent runs.
pub const SCHEMA_VERSION: &str = "1.0";

/// A Session document as carried in `DocumentContent`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDocument {
    /// Must be "1.0".
    pub schema_version: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// See [`crate::payload::session_type`].
    pub session_type: String,
    /// Session preferences (`kmsKeyId`, `runAsEnabled`, `shellProfile`, …).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub inputs: Value,
    /// Parameter declarations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParameterDefinition>,
    /// Plugin properties with `{{ name }}` placeholders.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub properties: Value,
}

/// One declared parameter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParameterDefinition {
    /// `String` or `StringList`.
    #[serde(rename = "type", default = "string_type")]
    pub param_type: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Value used when the caller gives none; no default means required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Regular expression each value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_pattern: Option<String>,
    /// The values allowed, if listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_values: Option<Vec<String>>,
}

fn string_type() -> String {
    "String".to_owned()
}

/// Session preferences read from `inputs`. Booleans may be JSON booleans or strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionInputs {
    /// Non-empty: the session is KMS-encrypted with this key.
    pub kms_key_id: String,
    /// Run the shell as another OS user.
    pub run_as_enabled: bool,
    /// The user to run as when the request names none.
    pub run_as_default_user: String,
    /// Written to a Linux shell right after it starts.
    pub shell_profile_linux: String,
    /// Minutes without stream data before the session ends (0: none).
    pub idle_session_timeout_minutes: u64,
    /// Minutes before the session ends regardless (0: none).
    pub max_session_duration_minutes: u64,
    /// `ssmxRecording`: whether an ssmx gateway records sessions of this document (`None`:
    /// its configuration decides).
    pub recording: Option<bool>,
}

impl SessionDocument {
    /// Reads the typed preferences from `inputs`.
    pub fn session_inputs(&self) -> SessionInputs {
        let get = |k: &str| self.inputs.get(k);
        SessionInputs {
            kms_key_id: get("kmsKeyId").map(value_text).unwrap_or_default(),
            run_as_enabled: get("runAsEnabled").map(value_bool).unwrap_or(false),
            run_as_default_user: get("runAsDefaultUser").map(value_text).unwrap_or_default(),
            shell_profile_linux: self
                .inputs
                .get("shellProfile")
                .and_then(|p| p.get("linux"))
                .map(value_text)
                .unwrap_or_default(),
            idle_session_timeout_minutes: get("idleSessionTimeout").map(value_u64).unwrap_or(0),
            max_session_duration_minutes: get("maxSessionDuration").map(value_u64).unwrap_or(0),
            recording: get("ssmxRecording").map(value_bool),
        }
    }

    /// Fills in defaults for missing parameters. Fails naming the first required parameter that
    /// has neither a value nor a default.
    pub fn resolve_parameters(
        &self,
        given: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Value>, DocumentError> {
        let mut out = BTreeMap::new();
        for (name, def) in &self.parameters {
            match given.get(name).or(def.default.as_ref()) {
                Some(v) => {
                    out.insert(name.clone(), v.clone());
                }
                None => return Err(DocumentError::MissingParameter(name.clone())),
            }
        }
        Ok(out)
    }

    /// The document with every `{{ name }}` in `inputs` and `properties` replaced by its value.
    pub fn substituted(
        &self,
        given: &BTreeMap<String, Value>,
    ) -> Result<SessionDocument, DocumentError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(DocumentError::SchemaVersion(self.schema_version.clone()));
        }
        let values = self.resolve_parameters(given)?;
        let mut doc = self.clone();
        doc.inputs = substitute(&self.inputs, &values);
        doc.properties = substitute(&self.properties, &values);
        Ok(doc)
    }
}

/// Why a document cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// schemaVersion other than 1.0.
    #[error("session document schema version {0:?} is not supported (only 1.0)")]
    SchemaVersion(String),
    /// A required parameter has no value.
    #[error("parameter {0:?} is required")]
    MissingParameter(String),
}

/// Replaces placeholders in strings throughout `template`. A string that is exactly one
/// placeholder takes the value with its JSON type; otherwise values are spliced in as text.
pub fn substitute(template: &Value, values: &BTreeMap<String, Value>) -> Value {
    match template {
        Value::String(s) => substitute_str(s, values),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, values)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn substitute_str(s: &str, values: &BTreeMap<String, Value>) -> Value {
    let mut out = String::new();
    let mut rest = s;
    let mut whole: Option<Value> = None;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}").map(|c| open + c) else {
            break;
        };
        let name = rest[open + 2..close].trim();
        let Some(value) = values.get(name) else {
            out.push_str(&rest[..close + 2]);
            rest = &rest[close + 2..];
            continue;
        };
        if open == 0 && close + 2 == rest.len() && out.is_empty() {
            whole = Some(value.clone());
        }
        out.push_str(&rest[..open]);
        out.push_str(&value_text(value));
        rest = &rest[close + 2..];
    }
    if let Some(v) = whole {
        return v;
    }
    out.push_str(rest);
    Value::String(out)
}

/// A JSON value as text: strings as they are, a one-element list as its element, else JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.len() == 1 => value_text(&items[0]),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn value_bool(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        other => value_text(other).eq_ignore_ascii_case("true"),
    }
}

fn value_u64(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        other => value_text(other).trim().parse().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn port_doc() -> SessionDocument {
        serde_json::from_value(json!({
            "schemaVersion": "1.0",
            "sessionType": "Port",
            "parameters": {
                "portNumber": {"type": "String", "default": "80"},
                "host": {"type": "String"}
            },
            "properties": {"portNumber": "{{ portNumber }}", "host": "{{host}}", "type": "LocalPortForwarding", "note": "to {{host}}:{{ portNumber }}"}
        }))
        .unwrap()
    }

    #[test]
    fn substitutes_whole_and_spliced_placeholders() {
        let given = BTreeMap::from([("host".to_owned(), json!("db.internal"))]);
        let doc = port_doc().substituted(&given).unwrap();
        assert_eq!(
            doc.properties,
            json!({"portNumber": "80", "host": "db.internal", "type": "LocalPortForwarding", "note": "to db.internal:80"})
        );
    }

    #[test]
    fn missing_required_parameter_is_named() {
        let err = port_doc().substituted(&BTreeMap::new()).unwrap_err();
        assert_eq!(err, DocumentError::MissingParameter("host".into()));
    }

    #[test]
    fn inputs_accept_string_booleans() {
        let doc: SessionDocument = serde_json::from_value(json!({
            "schemaVersion": "1.0", "sessionType": "Standard_Stream",
            "inputs": {"runAsEnabled": "true", "runAsDefaultUser": "ops", "idleSessionTimeout": "20", "shellProfile": {"linux": "cd /tmp"}}
        }))
        .unwrap();
        let inputs = doc.session_inputs();
        assert!(inputs.run_as_enabled);
        assert_eq!(inputs.run_as_default_user, "ops");
        assert_eq!(inputs.idle_session_timeout_minutes, 20);
        assert_eq!(inputs.shell_profile_linux, "cd /tmp");
        assert_eq!(inputs.recording, None);
        let doc: SessionDocument = serde_json::from_value(json!({
            "schemaVersion": "1.0", "sessionType": "Port", "inputs": {"ssmxRecording": "true"}
        }))
        .unwrap();
        assert_eq!(doc.session_inputs().recording, Some(true));
    }
}
