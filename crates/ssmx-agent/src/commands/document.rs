//! Command documents (RUNCOMMAND.md §2, OFFICIAL-AGENT.md §9.3): schema 1.x `runtimeConfig` and
//! 2.x `mainSteps`, parameter defaults and `{{ name }}` substitution, preconditions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Runs a shell script.
pub(crate) const RUN_SHELL_SCRIPT: &str = "aws:runShellScript";
/// Runs the steps of another document.
pub(crate) const RUN_DOCUMENT: &str = "aws:runDocument";
/// Fetches a document for a later [`RUN_DOCUMENT`] step.
pub(crate) const DOWNLOAD_CONTENT: &str = "aws:downloadContent";
/// A plugin known to the official agent that this agent does not run.
const RUN_POWERSHELL_SCRIPT: &str = "aws:runPowerShellScript";
/// Platform names preconditions compare with.
const PLATFORM_TYPE: &str = "Linux";

/// One step of a document, parameters substituted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Step {
    /// Key in `runtimeStatus`: the plugin name (schema 1.x) or the step name (2.x).
    pub(crate) id: String,
    /// The plugin (`aws:runShellScript`, …).
    pub(crate) action: String,
    /// `stepName` in replies (2.x only).
    pub(crate) step_name: String,
    /// The plugin's inputs (schema 1.x: its properties).
    pub(crate) inputs: Value,
    /// What to do before running.
    pub(crate) plan: Plan,
    /// `onFailure: exit`: a failure stops the later steps.
    pub(crate) exit_on_failure: bool,
}

/// Whether a step runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Plan {
    /// Run the plugin.
    Run,
    /// Report it Skipped with this output.
    Skip(String),
    /// Report it Failed with this output.
    Fail(String),
}

/// Reads the steps of `content` with `parameters` applied; an error means the document cannot
/// run at all (acknowledged as InvalidDocument).
pub(crate) fn steps(
    content: &Value,
    parameters: &BTreeMap<String, Value>,
) -> Result<Vec<Step>, String> {
    let Value::Object(doc) = content else {
        return Err("the document is not a JSON object".into());
    };
    let version = doc
        .get("schemaVersion")
        .and_then(Value::as_str)
        .ok_or("the document has no schemaVersion")?;
    let values = parameter_values(doc.get("parameters"), parameters);
    match version {
        "1.0" | "1.2" => runtime_config(doc.get("runtimeConfig"), &values),
        "2.0" | "2.0.1" | "2.0.2" | "2.0.3" | "2.2" => {
            main_steps(doc.get("mainSteps"), &values, version == "2.2")
        }
        other => Err(format!("unsupported document schema version {other:?}")),
    }
}

/// Whether this agent runs the plugin `action`.
fn runs(action: &str) -> bool {
    matches!(action, RUN_SHELL_SCRIPT | RUN_DOCUMENT | DOWNLOAD_CONTENT)
}

/// Values of the declared parameters: the caller's, else the declared default. A single string
/// given for a StringList (as `aws:runDocument` parameters often are) is a list of one.
fn parameter_values(
    declared: Option<&Value>,
    given: &BTreeMap<String, Value>,
) -> BTreeMap<String, Value> {
    let mut values = given.clone();
    if let Some(Value::Object(declared)) = declared {
        for (name, spec) in declared {
            let is_list = spec.get("type").and_then(Value::as_str) == Some("StringList");
            if let (true, Some(Value::String(one))) = (is_list, values.get(name)) {
                let list = Value::Array(vec![Value::String(one.clone())]);
                values.insert(name.clone(), list);
            }
            if !values.contains_key(name) {
                if let Some(default) = spec.get("default") {
                    values.insert(name.clone(), default.clone());
                }
            }
        }
    }
    values
}

fn runtime_config(
    config: Option<&Value>,
    values: &BTreeMap<String, Value>,
) -> Result<Vec<Step>, String> {
    let Some(Value::Object(plugins)) = config else {
        return Err("the document has no runtimeConfig".into());
    };
    if plugins.is_empty() {
        return Err("the document's runtimeConfig is empty".into());
    }
    plugins
        .iter()
        .map(|(name, plugin)| {
            let properties = match plugin.get("properties") {
                Some(Value::Array(list)) => list.first().cloned().unwrap_or(Value::Null),
                Some(other) => other.clone(),
                None => Value::Null,
            };
            let plan = if plugin.get("precondition").is_some() {
                Plan::Fail(format!(
                    "Precondition is not supported for document schema version prior to 2.2. Step name: {name}"
                ))
            } else if runs(name) {
                Plan::Run
            } else {
                Plan::Fail(format!(
                    "Plugin with name {name} not found. Step name: {name}"
                ))
            };
            Ok(Step {
                id: name.clone(),
                action: name.clone(),
                step_name: String::new(),
                inputs: substitute(&properties, values),
                plan,
                exit_on_failure: false,
            })
        })
        .collect()
}

fn main_steps(
    steps: Option<&Value>,
    values: &BTreeMap<String, Value>,
    cross_platform: bool,
) -> Result<Vec<Step>, String> {
    let Some(Value::Array(steps)) = steps else {
        return Err("the document has no mainSteps".into());
    };
    if steps.is_empty() {
        return Err("the document's mainSteps is empty".into());
    }
    steps
        .iter()
        .map(|step| {
            let action = step
                .get("action")
                .and_then(Value::as_str)
                .ok_or("a step has no action")?;
            let name = step
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a step has no name")?;
            let precondition = step.get("precondition").filter(|p| !p.is_null());
            let plan = plan(action, name, precondition, cross_platform);
            Ok(Step {
                id: name.to_owned(),
                action: action.to_owned(),
                step_name: name.to_owned(),
                inputs: substitute(step.get("inputs").unwrap_or(&Value::Null), values),
                plan,
                exit_on_failure: step.get("onFailure").and_then(Value::as_str) == Some("exit"),
            })
        })
        .collect()
}

/// The official agent's decision for a 2.x step (its messages included).
fn plan(action: &str, name: &str, precondition: Option<&Value>, cross_platform: bool) -> Plan {
    let known = action == RUN_POWERSHELL_SCRIPT || runs(action);
    let supported = runs(action);
    let Some(precondition) = precondition else {
        return if cross_platform && !known {
            Plan::Fail(format!(
                "Plugin with name {action} is not supported by this version of ssm agent, please update to latest version. Step name: {name}"
            ))
        } else if supported {
            Plan::Run
        } else if cross_platform {
            Plan::Skip(format!(
                "Step execution skipped due to unsupported plugin: {action}. Step name: {name}"
            ))
        } else {
            Plan::Fail(format!(
                "Plugin with name {action} not found. Step name: {name}"
            ))
        };
    };
    if !cross_platform {
        return Plan::Fail(format!(
            "Precondition is not supported for document schema version prior to 2.2. Step name: {name}"
        ));
    }
    let (allowed, text) = match evaluate(precondition) {
        Ok(result) => result,
        Err(unrecognized) => {
            return Plan::Fail(format!(
                "Unrecognized precondition(s): '{unrecognized}', please update agent to latest version. Step name: {name}"
            ))
        }
    };
    if allowed && !known {
        Plan::Fail(format!(
            "Plugin with name {action} is not supported by this version of ssm agent, please update to latest version. Step name: {name}"
        ))
    } else if !supported {
        Plan::Skip(format!(
            "Step execution skipped due to unsupported plugin: {action}. Step name: {name}"
        ))
    } else if !allowed {
        Plan::Skip(format!(
            "Step execution skipped due to unsatisfied preconditions: '{text}'. Step name: {name}"
        ))
    } else {
        Plan::Run
    }
}

/// Evaluates `{"StringEquals": ["platformType", "Linux"]}`: whether it holds and its text as the
/// official agent prints it; `Err` names what is not understood.
fn evaluate(precondition: &Value) -> Result<(bool, String), String> {
    let Value::Object(map) = precondition else {
        return Err(precondition.to_string());
    };
    let mut allowed = true;
    let mut texts = Vec::new();
    for (operator, arguments) in map {
        let arguments: Vec<&str> = match arguments {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        match (operator.as_str(), arguments.as_slice()) {
            ("StringEquals", [left, right]) => {
                let resolve = |arg: &str| {
                    if arg == "platformType" {
                        PLATFORM_TYPE.to_owned()
                    } else {
                        arg.to_owned()
                    }
                };
                allowed &= resolve(left) == resolve(right);
                texts.push(format!("\"{operator}\": [{left}, {right}]"));
            }
            _ => return Err(format!("\"{operator}\": {arguments:?}")),
        }
    }
    Ok((allowed, texts.join(", ")))
}

/// `value` with every `{{ name }}` of a known parameter replaced; a string that is a single
/// placeholder takes the parameter's JSON value (a StringList becomes an array).
pub(crate) fn substitute(value: &Value, values: &BTreeMap<String, Value>) -> Value {
    match value {
        Value::String(text) => substitute_text(text, values),
        Value::Array(list) => Value::Array(list.iter().map(|v| substitute(v, values)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn substitute_text(text: &str, values: &BTreeMap<String, Value>) -> Value {
    if let Some(name) = placeholder(text.trim()) {
        if let Some(value) = values.get(name) {
            return value.clone();
        }
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let whole = &rest[start..start + len + 2];
        out.push_str(&rest[..start]);
        match placeholder(whole).and_then(|name| values.get(name)) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(items)) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect();
                out.push_str(&parts.join("\n"));
            }
            Some(other) => out.push_str(&other.to_string()),
            None => out.push_str(whole),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Value::String(out)
}

/// The parameter name of a string that is exactly `{{ name }}`.
fn placeholder(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let valid = !inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    valid.then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn schema_1_2_takes_defaults_and_keeps_list_types() {
        let doc = json!({"schemaVersion":"1.2","parameters":{
            "commands":{"type":"StringList"},
            "workingDirectory":{"type":"String","default":""},
            "executionTimeout":{"type":"String","default":"3600"}},
            "runtimeConfig":{"aws:runShellScript":{"properties":[{"id":"0.aws:runShellScript",
              "runCommand":"{{ commands }}","workingDirectory":"{{ workingDirectory }}",
              "timeoutSeconds":"{{ executionTimeout }}"}]}}});
        let steps = steps(&doc, &params(json!({"commands":["echo a","echo b"]}))).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].id, "aws:runShellScript");
        assert_eq!(steps[0].plan, Plan::Run);
        assert_eq!(steps[0].inputs["runCommand"], json!(["echo a", "echo b"]));
        assert_eq!(steps[0].inputs["timeoutSeconds"], json!("3600"));
        assert_eq!(steps[0].inputs["workingDirectory"], json!(""));
    }

    #[test]
    fn schema_2_2_preconditions_and_plugins() {
        let doc = json!({"schemaVersion":"2.2","parameters":{"who":{"type":"String","default":"x"}},
            "mainSteps":[
              {"action":"aws:runShellScript","name":"linux","precondition":{"StringEquals":["platformType","Linux"]},
               "inputs":{"runCommand":["echo hi {{ who }}"]},"onFailure":"exit"},
              {"action":"aws:runShellScript","name":"windows","precondition":{"StringEquals":["platformType","Windows"]},
               "inputs":{"runCommand":["echo no"]}},
              {"action":"aws:runPowerShellScript","name":"ps","inputs":{"runCommand":["dir"]}},
              {"action":"aws:unknown","name":"odd","inputs":{}}]});
        let steps = steps(&doc, &BTreeMap::new()).unwrap();
        assert_eq!(steps[0].plan, Plan::Run);
        assert!(steps[0].exit_on_failure);
        assert_eq!(steps[0].inputs["runCommand"], json!(["echo hi x"]));
        assert_eq!(
            steps[1].plan,
            Plan::Skip("Step execution skipped due to unsatisfied preconditions: '\"StringEquals\": [platformType, Windows]'. Step name: windows".into())
        );
        assert_eq!(
            steps[2].plan,
            Plan::Skip(
                "Step execution skipped due to unsupported plugin: aws:runPowerShellScript. Step name: ps"
                    .into()
            )
        );
        assert!(
            matches!(&steps[3].plan, Plan::Fail(m) if m.contains("not supported by this version"))
        );
    }

    #[test]
    fn documents_that_cannot_run_are_refused() {
        assert!(steps(&json!("text"), &BTreeMap::new()).is_err());
        assert!(steps(&json!({"schemaVersion":"9.9"}), &BTreeMap::new()).is_err());
        assert!(steps(
            &json!({"schemaVersion":"2.2","mainSteps":[]}),
            &BTreeMap::new()
        )
        .is_err());
        assert!(steps(&json!({"schemaVersion":"1.2"}), &BTreeMap::new()).is_err());
    }

    #[test]
    fn unknown_placeholders_stay() {
        let values = params(json!({"a":"1","l":["x","y"]}));
        assert_eq!(
            substitute(&json!("{{a}}-{{ b }}"), &values),
            json!("1-{{ b }}")
        );
        assert_eq!(substitute(&json!(" {{ l }} "), &values), json!(["x", "y"]));
        assert_eq!(substitute(&json!("[{{ l }}]"), &values), json!("[x\ny]"));
    }
}
