//! Command documents (Run Command): the AWS-owned ones users reach for, and the validation of
//! SendCommand parameters against a document's `parameters` (RUNCOMMAND.md §2).

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ErrorCode};

/// A command document the gateway can send.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandDocument {
    /// Its name.
    pub name: String,
    /// Its content as the agent receives it.
    pub content: Value,
}

impl CommandDocument {
    /// The document's `parameters` definitions.
    fn parameters(&self) -> Map<String, Value> {
        self.content
            .get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// The execution timeout (seconds) the parameters give the document, for the delivery
    /// deadline: `executionTimeout`, else 3600.
    pub fn execution_timeout(&self, parameters: &BTreeMap<String, Value>) -> u64 {
        parameters
            .get("executionTimeout")
            .and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| Some(v.to_string()))
            })
            .and_then(|s| s.trim_matches('"').parse().ok())
            .unwrap_or(DEFAULT_EXECUTION_TIMEOUT)
    }
}

/// A script's run time when its document says nothing (AWS's default).
pub const DEFAULT_EXECUTION_TIMEOUT: u64 = 3600;

/// Names of the AWS-owned command documents.
pub fn builtin_names() -> &'static [&'static str] {
    &["AWS-RunDocument", "AWS-RunShellScript"]
}

/// Parameter types command documents may declare.
const PARAMETER_TYPES: &[&str] = &[
    "String",
    "StringList",
    "Integer",
    "Boolean",
    "MapList",
    "StringMap",
];

/// Checks a command document's `parameters` declarations: an object of objects with a known
/// `type` and an `allowedPattern` that compiles.
pub fn check_parameter_definitions(content: &Value) -> Result<(), String> {
    let Some(parameters) = content.get("parameters") else {
        return Ok(());
    };
    let parameters = parameters
        .as_object()
        .ok_or("parameters must be an object")?;
    for (name, def) in parameters {
        let kind = def
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("parameter \"{name}\" needs a type"))?;
        if !PARAMETER_TYPES.contains(&kind) {
            return Err(format!(
                "parameter \"{name}\" has type {kind:?}, not one of {PARAMETER_TYPES:?}"
            ));
        }
        if let Some(pattern) = def.get("allowedPattern").and_then(Value::as_str) {
            Regex::new(pattern)
                .map_err(|e| format!("allowedPattern of parameter \"{name}\": {e}"))?;
        }
    }
    Ok(())
}

/// The AWS-owned command documents served read-only.
pub fn builtin(name: &str) -> Option<CommandDocument> {
    let content = match name {
        "AWS-RunShellScript" => json!({
            "schemaVersion": "1.2",
            "description": "Run a shell script or specify the commands to run.",
            "parameters": {
                "commands": {
                    "type": "StringList",
                    "description": "(Required) Specify a shell script or a command to run.",
                    "minItems": 1,
                    "displayType": "textarea"
                },
                "workingDirectory": {
                    "type": "String",
                    "default": "",
                    "description": "(Optional) The path to the working directory on your instance.",
                    "maxChars": 4096
                },
                "executionTimeout": {
                    "type": "String",
                    "default": "3600",
                    "description": "(Optional) The time in seconds for a command to complete before it is considered to have failed. Default is 3600 (1 hour). Maximum is 172800 (48 hours).",
                    "allowedPattern": "([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|(172[0-7][0-9]{2})|(172800)"
                }
            },
            "runtimeConfig": {
                "aws:runShellScript": {
                    "properties": [{
                        "id": "0.aws:runShellScript",
                        "runCommand": "{{ commands }}",
                        "workingDirectory": "{{ workingDirectory }}",
                        "timeoutSeconds": "{{ executionTimeout }}"
                    }]
                }
            }
        }),
        // As AWS publishes it: the document is fetched by aws:downloadContent, then run by
        // aws:runDocument from where it was put.
        "AWS-RunDocument" => json!({
            "schemaVersion": "2.2",
            "description": "Run a Systems Manager document (a composite or nested one included) kept in a remote location: GitHub, Amazon S3, or a document stored in Systems Manager.",
            "parameters": {
                "sourceType": {
                    "description": "(Required) Where the document is kept.",
                    "type": "String",
                    "allowedValues": ["GitHub", "S3", "SSMDocument"]
                },
                "sourceInfo": {
                    "description": "(Required) How to reach the document. GitHub: 'owner', 'repository', 'path', 'getOptions', 'tokenInfo'. S3: 'path', the object's URL. SSMDocument: 'name', e.g. {\"name\": \"AWS-RunShellScript\"}.",
                    "type": "StringMap",
                    "displayType": "textarea"
                },
                "documentParameters": {
                    "description": "(Optional) Parameters of the document run.",
                    "type": "StringMap",
                    "displayType": "textarea",
                    "default": {}
                }
            },
            "mainSteps": [
                {
                    "action": "aws:downloadContent",
                    "name": "downloadContent",
                    "inputs": {
                        "sourceType": "{{ sourceType }}",
                        "sourceInfo": "{{ sourceInfo }}",
                        "destinationPath": "document"
                    }
                },
                {
                    "action": "aws:runDocument",
                    "name": "runDocument",
                    "inputs": {
                        "documentType": "LocalPath",
                        "documentPath": "document",
                        "documentParameters": "{{ documentParameters }}"
                    }
                }
            ]
        }),
        _ => return None,
    };
    Some(CommandDocument {
        name: name.to_owned(),
        content,
    })
}

/// Checks SendCommand's `Parameters` against `document` and fills defaults: each value's type,
/// `allowedValues`, `allowedPattern` (whole value), `minChars`/`maxChars`, `minItems`/`maxItems`,
/// and required parameters. The error names the parameter.
pub fn resolve_parameters(
    document: &CommandDocument,
    given: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Value>, ApiError> {
    let invalid = |msg: String| ApiError::new(ErrorCode::InvalidParameters, msg);
    let definitions = document.parameters();
    let mut resolved = BTreeMap::new();
    for (name, values) in given {
        let def = definitions.get(name).ok_or_else(|| {
            invalid(format!(
                "Parameter \"{name}\" is not defined in document {}.",
                document.name
            ))
        })?;
        let kind = def.get("type").and_then(Value::as_str).unwrap_or("String");
        let count = |key: &str| def.get(key).and_then(Value::as_u64);
        if kind == "StringList" {
            let n = values.len() as u64;
            if count("minItems").is_some_and(|min| n < min)
                || count("maxItems").is_some_and(|max| n > max)
            {
                return Err(invalid(format!(
                    "Parameter \"{name}\" takes {} to {} values, got {n}.",
                    count("minItems").unwrap_or(0),
                    count("maxItems").map_or("any".to_owned(), |m| m.to_string())
                )));
            }
        } else if values.len() != 1 {
            return Err(invalid(format!(
                "Parameter \"{name}\" is of type {kind} and takes exactly one value, got {}.",
                values.len()
            )));
        }
        let pattern = match def.get("allowedPattern").and_then(Value::as_str) {
            Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidDocument,
                    format!("allowedPattern of parameter \"{name}\": {e}"),
                )
            })?),
            None => None,
        };
        for value in values {
            check_value(name, kind, def, pattern.as_ref(), value).map_err(invalid)?;
        }
        let value = match kind {
            "StringList" => json!(values),
            _ => json!(values[0]),
        };
        resolved.insert(name.clone(), value);
    }
    for (name, def) in &definitions {
        if resolved.contains_key(name) {
            continue;
        }
        match def.get("default") {
            Some(default) => {
                resolved.insert(name.clone(), default.clone());
            }
            None => {
                return Err(invalid(format!(
                    "Parameter \"{name}\" is required by document {} and has no default.",
                    document.name
                )))
            }
        }
    }
    Ok(resolved)
}

fn check_value(
    name: &str,
    kind: &str,
    def: &Value,
    pattern: Option<&Regex>,
    value: &str,
) -> Result<(), String> {
    let chars = value.chars().count() as u64;
    let limit = |key: &str| def.get(key).and_then(Value::as_u64);
    if limit("minChars").is_some_and(|min| chars < min)
        || limit("maxChars").is_some_and(|max| chars > max)
    {
        return Err(format!(
            "Value of parameter \"{name}\" must be {} to {} characters long.",
            limit("minChars").unwrap_or(0),
            limit("maxChars").map_or("any".to_owned(), |m| m.to_string())
        ));
    }
    if let Some(re) = pattern {
        if !re.is_match(value) {
            return Err(format!(
                "Value \"{value}\" of parameter \"{name}\" does not match its allowed pattern {}.",
                re.as_str()
            ));
        }
    }
    if let Some(allowed) = def.get("allowedValues").and_then(Value::as_array) {
        if !allowed.iter().any(|a| a.as_str() == Some(value)) {
            return Err(format!(
                "Value \"{value}\" of parameter \"{name}\" is not one of its allowed values."
            ));
        }
    }
    let typed = match kind {
        "Integer" => value.parse::<i64>().is_ok(),
        "Boolean" => matches!(value, "true" | "false"),
        _ => true,
    };
    if !typed {
        return Err(format!(
            "Value \"{value}\" of parameter \"{name}\" is not a valid {kind}."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn run_document_takes_a_source_and_defaults_its_parameters() {
        let doc = builtin("AWS-RunDocument").unwrap();
        check_parameter_definitions(&doc.content).unwrap();
        let ok = resolve_parameters(
            &doc,
            &given(&[
                ("sourceType", &["SSMDocument"]),
                ("sourceInfo", &[r#"{"name":"Mine"}"#]),
            ]),
        )
        .unwrap();
        assert_eq!(ok["sourceInfo"], json!(r#"{"name":"Mine"}"#));
        assert_eq!(ok["documentParameters"], json!({}));
        let bad = resolve_parameters(
            &doc,
            &given(&[("sourceType", &["Web"]), ("sourceInfo", &["{}"])]),
        )
        .unwrap_err();
        assert!(bad.message.contains("sourceType"), "{}", bad.message);
        let steps: Vec<&str> = doc.content["mainSteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["action"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["aws:downloadContent", "aws:runDocument"]);
    }

    #[test]
    fn run_shell_script_parameters_are_checked_and_defaulted() {
        let doc = builtin("AWS-RunShellScript").unwrap();
        let ok = resolve_parameters(&doc, &given(&[("commands", &["echo hi", "uname"])])).unwrap();
        assert_eq!(ok["commands"], json!(["echo hi", "uname"]));
        assert_eq!(ok["executionTimeout"], json!("3600"));
        assert_eq!(ok["workingDirectory"], json!(""));
        assert_eq!(doc.execution_timeout(&ok), 3600);

        let missing = resolve_parameters(&doc, &BTreeMap::new()).unwrap_err();
        assert_eq!(missing.code, ErrorCode::InvalidParameters);
        assert!(
            missing.message.contains("\"commands\""),
            "{}",
            missing.message
        );
        let pattern = resolve_parameters(
            &doc,
            &given(&[("commands", &["x"]), ("executionTimeout", &["172801"])]),
        )
        .unwrap_err();
        assert!(
            pattern.message.contains("executionTimeout"),
            "{}",
            pattern.message
        );
        let unknown = resolve_parameters(&doc, &given(&[("commands", &["x"]), ("nope", &["1"])]))
            .unwrap_err();
        assert!(unknown.message.contains("\"nope\""));
        let empty = resolve_parameters(&doc, &given(&[("commands", &[])])).unwrap_err();
        assert!(empty.message.contains("commands"));
        let two = resolve_parameters(
            &doc,
            &given(&[("commands", &["x"]), ("workingDirectory", &["/a", "/b"])]),
        )
        .unwrap_err();
        assert!(two.message.contains("exactly one"));
    }
}
