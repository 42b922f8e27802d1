//! Documents inside documents (RUNCOMMAND.md §2.3): `aws:runDocument` runs the steps of another
//! document — one stored in the gateway (`SSMDocument`, fetched with GetDocument) or a file on
//! this host (`LocalPath`) — at most three levels deep; `aws:downloadContent` fetches a document
//! from the gateway to a file for a later `LocalPath` step.
//!
//! As in the official agent, the nested steps are not reported on their own: the
//! `aws:runDocument` step's output is their outputs one after the other, and its status the
//! most severe of theirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde_json::Value;
use ssmx_protocol::command::document_status;
use ssmx_protocol::message::now_millis;
use tokio_util::sync::CancellationToken;

use super::document::{self, Step};
use super::state::DocumentState;
use super::{iso_millis, stops_document, Inner, Scope, StepOutcome};

/// Deepest `aws:runDocument` nesting (the official agent's limit).
const MAX_DEPTH: u32 = 3;
/// `documentType` of a document stored in the gateway.
const SSM_DOCUMENT: &str = "SSMDocument";
/// `documentType` of a document file on this host.
const LOCAL_PATH: &str = "LocalPath";
/// Sources of `aws:downloadContent` the official agent knows besides [`SSM_DOCUMENT`].
const INTERNET_SOURCES: &[&str] = &["GitHub", "S3", "HTTP", "Git"];
/// Result statuses from the least to the most severe, as the official agent merges them.
const SEVERITY: &[&str] = &[
    document_status::SKIPPED,
    document_status::SUCCESS,
    document_status::SUCCESS_AND_REBOOT,
    "PassedAndReboot",
    "NotStarted",
    document_status::IN_PROGRESS,
    document_status::FAILED,
    document_status::CANCELLED,
    document_status::TIMED_OUT,
];

/// The inputs of an `aws:runDocument` step.
struct RunDocumentInputs {
    document_type: String,
    document_path: String,
    parameters: Value,
}

impl RunDocumentInputs {
    fn parse(inputs: &Value) -> Result<Self, String> {
        let text = |name: &str| match inputs.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!(
                "invalid format in plugin properties {inputs}; {name} must be a string"
            )),
        };
        let parsed = Self {
            document_type: text("documentType")?,
            document_path: text("documentPath")?,
            parameters: inputs
                .get("documentParameters")
                .cloned()
                .unwrap_or(Value::Null),
        };
        if parsed.document_type.is_empty() {
            return Err(
                "invalid input: Document Type must be specified to either by SSMDocument or LocalPath."
                    .into(),
            );
        }
        if ![SSM_DOCUMENT, LOCAL_PATH].contains(&parsed.document_type.as_str()) {
            return Err(format!(
                "invalid input: Document type {:?} is not SSMDocument or LocalPath",
                parsed.document_type
            ));
        }
        if parsed.document_path.is_empty() {
            return Err("invalid input: Document Path must be provided".into());
        }
        Ok(parsed)
    }
}

impl Inner {
    /// Runs an `aws:runDocument` step: the steps of its document, in order, under `scope`.
    pub(super) fn run_document<'a>(
        &'a self,
        state: &'a mut DocumentState,
        step: &'a Step,
        scope: &'a Scope,
        cancel: &'a CancellationToken,
        start: String,
    ) -> BoxFuture<'a, Option<StepOutcome>> {
        Box::pin(async move {
            let failed = |message: String| StepOutcome::failed(step, &message, &start, &now_iso());
            let depth = scope.depth + 1;
            if depth > MAX_DEPTH {
                return Some(failed(format!(
                    "Maximum depth for document execution exceeded. Maximum depth permitted - {MAX_DEPTH} and current depth - {depth}"
                )));
            }
            let steps = match self.nested_steps(state, step).await {
                Ok(steps) => steps,
                Err(message) => return Some(failed(message)),
            };
            let inner_scope = scope.nested(step);
            let (mut stdout, mut stderr) = (String::new(), String::new());
            let mut status = document_status::SUCCESS.to_owned();
            for nested in &steps {
                if cancel.is_cancelled() {
                    status = merge_status(&status, document_status::CANCELLED).to_owned();
                    break;
                }
                let outcome = self.run_step(state, nested, &inner_scope, cancel).await?;
                append_line(&mut stdout, &outcome.stdout);
                append_line(&mut stderr, &outcome.stderr);
                status = merge_status(&status, &outcome.result.status).to_owned();
                if stops_document(nested, &outcome.result) {
                    break;
                }
            }
            let succeeded = [
                document_status::SUCCESS,
                document_status::SKIPPED,
                document_status::SUCCESS_AND_REBOOT,
            ];
            let code = if succeeded.contains(&status.as_str()) {
                0
            } else {
                1
            };
            Some(StepOutcome::finished(
                step,
                &status,
                code,
                stdout,
                stderr,
                (&start, &now_iso()),
            ))
        })
    }

    /// The steps of the document an `aws:runDocument` step names, its parameters applied.
    async fn nested_steps(&self, state: &DocumentState, step: &Step) -> Result<Vec<Step>, String> {
        let inputs = RunDocumentInputs::parse(&step.inputs)?;
        let content = if inputs.document_type == SSM_DOCUMENT {
            self.fetch_document(&inputs.document_path).await?
        } else {
            let path = self.local_document(state, &inputs.document_path)?;
            std::fs::read_to_string(&path)
                .map_err(|e| format!("Could not read document {}: {e}", path.display()))?
        };
        let content = parse_document(&content)?;
        let parameters = document_parameters(&inputs.parameters)?;
        document::steps(&content, &parameters)
            .map_err(|e| format!("There was an error while preparing documents - {e}"))
    }

    /// The content of a document stored in the gateway, `name` or `name:version`.
    async fn fetch_document(&self, reference: &str) -> Result<String, String> {
        let (name, version) = name_and_version(reference);
        self.api
            .get_document(name, version)
            .await
            .map_err(|e| format!("Unable to get ssm document {reference}. {e}"))
    }

    /// The file of a `LocalPath` document: an absolute path, or one under the command's
    /// downloads; a directory holding a single file stands for that file.
    fn local_document(&self, state: &DocumentState, given: &str) -> Result<PathBuf, String> {
        let path = if Path::new(given).is_absolute() {
            PathBuf::from(given)
        } else {
            let store = self.store.as_ref().ok_or("no state directory")?;
            store.downloads_dir(&state.command_id).join(given)
        };
        if !path.is_dir() {
            return Ok(path);
        }
        let files: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| format!("Could not read directory {}: {e}", path.display()))?
            .flatten()
            .map(|entry| entry.path())
            .filter(|p| p.is_file())
            .collect();
        match files.as_slice() {
            [only] => Ok(only.clone()),
            _ => Err(format!(
                "Directory {} holds {} files; documentPath must name one document",
                path.display(),
                files.len()
            )),
        }
    }

    /// Runs an `aws:downloadContent` step: a document stored in the gateway is written to
    /// `<destinationPath>/<name>.json` (relative paths under the command's downloads). Returns
    /// the step's output.
    pub(super) async fn download_content(
        &self,
        state: &DocumentState,
        step: &Step,
    ) -> Result<String, String> {
        let inputs = &step.inputs;
        let source_type = inputs
            .get("sourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if INTERNET_SOURCES.contains(&source_type) {
            return Err(format!(
                "sourceType {source_type} is not supported by this agent: it reaches its gateway only, not the internet. Store the document in the gateway and use sourceType SSMDocument."
            ));
        }
        if source_type != SSM_DOCUMENT {
            return Err(format!(
                "Unsupported sourceType {source_type:?}; this agent supports SSMDocument"
            ));
        }
        let info = match inputs.get("sourceInfo") {
            Some(Value::String(text)) => serde_json::from_str(text).map_err(|_| {
                "SourceInfo could not be unmarshalled for SourceType SSMDocument. Please check JSON format of SourceInfo".to_owned()
            })?,
            Some(other) => other.clone(),
            None => Value::Null,
        };
        let reference = info
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or("SSM Document name in SourceType must be specified")?;
        let content = self.fetch_document(reference).await?;
        let (name, _) = name_and_version(reference);
        let file_name = Path::new(name)
            .file_name()
            .ok_or_else(|| format!("{name:?} is not a document name"))?;
        let destination = inputs
            .get("destinationPath")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let dir = if Path::new(destination).is_absolute() {
            PathBuf::from(destination)
        } else {
            let store = self.store.as_ref().ok_or("no state directory")?;
            store.downloads_dir(&state.command_id).join(destination)
        };
        let file = dir.join(format!("{}.json", file_name.to_string_lossy()));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, content))
            .map_err(|e| format!("Error saving file {}: {e}", file.display()))?;
        Ok(format!("Content downloaded to {}", file.display()))
    }
}

fn now_iso() -> String {
    iso_millis(now_millis())
}

/// `name:version` split; a name without a version (or with a colon in an ARN) stays whole.
fn name_and_version(reference: &str) -> (&str, Option<&str>) {
    match reference.rsplit_once(':') {
        Some((name, version))
            if !version.is_empty()
                && (version.chars().all(|c| c.is_ascii_digit())
                    || matches!(version, "$LATEST" | "$DEFAULT")) =>
        {
            (name, Some(version))
        }
        _ => (reference, None),
    }
}

/// A document's text, JSON or YAML.
fn parse_document(text: &str) -> Result<Value, String> {
    serde_json::from_str(text)
        .or_else(|json| {
            serde_yaml::from_str(text)
                .map_err(|yaml| format!("The document is neither JSON ({json}) nor YAML ({yaml})"))
        })
        .and_then(|value: Value| match value {
            Value::Object(_) => Ok(value),
            _ => Err("The document is not an object".into()),
        })
}

/// `documentParameters`: an object, or its JSON or YAML text; parameters set to null take
/// their default.
fn document_parameters(given: &Value) -> Result<BTreeMap<String, Value>, String> {
    let parameters: BTreeMap<String, Value> = match given {
        Value::Null => BTreeMap::new(),
        Value::String(text) if text.trim().is_empty() => BTreeMap::new(),
        Value::String(text) => serde_json::from_str(text).or_else(|json| {
            serde_yaml::from_str(text).map_err(|yaml| {
                format!(
                    "Unmarshalling document parameters failed. Please make sure the parameters are specified in the right format. JSON format error - {json}, YAML format error - {yaml}."
                )
            })
        })?,
        Value::Object(map) => map.clone().into_iter().collect(),
        _ => return Err("parameter type specified to run document is unknown".into()),
    };
    Ok(parameters
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect())
}

/// The more severe of two statuses.
fn merge_status<'a>(current: &'a str, new: &'a str) -> &'a str {
    let rank = |s: &str| SEVERITY.iter().position(|k| *k == s);
    match (rank(current), rank(new)) {
        (Some(a), Some(b)) if a >= b => current,
        (Some(_), None) => current,
        _ => new,
    }
}

/// Appends `text` on a line of its own.
fn append_line(out: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_parameters_and_statuses() {
        assert_eq!(name_and_version("Doc:3"), ("Doc", Some("3")));
        assert_eq!(name_and_version("Doc:$LATEST"), ("Doc", Some("$LATEST")));
        assert_eq!(
            name_and_version("arn:aws:ssm:us-east-1:1:document/Doc"),
            ("arn:aws:ssm:us-east-1:1:document/Doc", None)
        );
        let from_text = document_parameters(&json!("{\"a\":\"1\",\"b\":null}")).unwrap();
        assert_eq!(from_text, BTreeMap::from([("a".to_owned(), json!("1"))]));
        assert_eq!(
            document_parameters(&json!("a: x")).unwrap()["a"],
            json!("x")
        );
        assert!(document_parameters(&json!("{")).is_err());
        assert!(document_parameters(&json!(3)).is_err());
        assert_eq!(merge_status("Success", "Failed"), "Failed");
        assert_eq!(merge_status("TimedOut", "Failed"), "TimedOut");
        assert_eq!(merge_status("Success", "Skipped"), "Success");
        assert!(parse_document("schemaVersion: '2.2'\nmainSteps: []").is_ok());
        assert!(parse_document("[1]").is_err());
    }

    #[test]
    fn run_document_inputs_are_checked() {
        assert!(RunDocumentInputs::parse(&json!({"documentPath":"x"})).is_err());
        assert!(
            RunDocumentInputs::parse(&json!({"documentType":"Web","documentPath":"x"})).is_err()
        );
        assert!(RunDocumentInputs::parse(&json!({"documentType":"LocalPath"})).is_err());
        let ok = RunDocumentInputs::parse(
            &json!({"documentType":"SSMDocument","documentPath":"D","documentParameters":{"a":"b"}}),
        )
        .unwrap();
        assert_eq!(ok.parameters, json!({"a":"b"}));
    }
}
