//! Running a `session-manager-plugin` binary exactly as aws-cli runs it (PROTOCOL.md §11.1), so
//! ours and any other (the official one) are measured the same way.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use super::stack::{SessionRequest, SessionResponse};

/// aws-cli passes the start response through the environment only to plugins newer than this.
const ENV_FORM_MIN_VERSION_EXCLUSIVE: [u64; 4] = [1, 2, 497, 0];
/// The environment variable (and argv[1] value) of that form.
const START_RESPONSE_ENV: &str = "AWS_SSM_START_SESSION_RESPONSE";
/// The operation argument aws-cli passes.
const OPERATION: &str = "StartSession";
/// Variables of the benchmark's own environment that would point the plugin's AWS calls
/// elsewhere than the benchmark's gateway and key; removed from its environment.
const OVERRIDING_AWS_VARS: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SSM",
];
/// How long `--version` may take.
const VERSION_DEADLINE: Duration = Duration::from_secs(10);

/// A plugin binary and what aws-cli would learn from its `--version`.
#[derive(Clone, Debug)]
pub struct Plugin {
    /// The binary.
    pub path: PathBuf,
    /// Its `--version` output, whitespace removed.
    pub version: String,
    /// True when aws-cli would use the environment-variable form for it.
    env_form: bool,
}

impl Plugin {
    /// Runs `path --version` as aws-cli does and decides how to pass the start response.
    pub async fn probe(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            bail!(
                "no session-manager-plugin at {} (build it with `cargo build --release -p ssmx-cli`, or pass --plugin PATH)",
                path.display()
            );
        }
        let out = tokio::time::timeout(
            VERSION_DEADLINE,
            tokio::process::Command::new(path)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("`{} --version` hung", path.display()))?
        .with_context(|| format!("cannot run {}", path.display()))?;
        let version: String = String::from_utf8_lossy(&out.stdout)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let env_form = parse_version(&version)
            .is_some_and(|v| compare_padded(&v, &ENV_FORM_MIN_VERSION_EXCLUSIVE).is_gt());
        Ok(Self {
            path: path.to_owned(),
            version,
            env_form,
        })
    }

    /// The command line and environment aws-cli would use for this session.
    pub fn launch(
        &self,
        request: &SessionRequest,
        response: &SessionResponse,
        region: &str,
        endpoint_url: &str,
        aws_env: &[(String, String)],
    ) -> Launch {
        let response_json = python_json(&StartResponse {
            session_id: &response.session_id,
            token_value: &response.token_value,
            stream_url: &response.stream_url,
        });
        let request_json = python_json(&StartRequest {
            target: &request.target,
            document_name: request.document_name.as_deref(),
            parameters: (!request.parameters.is_empty()).then_some(&request.parameters),
            reason: Some(request.reason.as_str()).filter(|r| !r.is_empty()),
        });
        let mut env = aws_env.to_vec();
        let first = if self.env_form {
            env.push((START_RESPONSE_ENV.to_owned(), response_json));
            START_RESPONSE_ENV.to_owned()
        } else {
            response_json
        };
        Launch {
            program: self.path.clone(),
            args: vec![
                first,
                region.to_owned(),
                OPERATION.to_owned(),
                String::new(), // no --profile
                request_json,
                endpoint_url.to_owned(),
            ],
            env,
        }
    }
}

/// One plugin invocation: program, arguments after argv[0], extra environment.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The binary.
    pub program: PathBuf,
    /// argv[1..].
    pub args: Vec<String>,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// As a process without a terminal.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        for var in OVERRIDING_AWS_VARS {
            cmd.env_remove(var);
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// As a process on a PTY.
    pub fn pty_command(&self, cwd: &Path) -> portable_pty::CommandBuilder {
        let mut cmd = portable_pty::CommandBuilder::from_argv(
            std::iter::once(OsString::from(&self.program))
                .chain(self.args.iter().map(OsString::from))
                .collect(),
        );
        for var in OVERRIDING_AWS_VARS {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("TERM", "xterm-256color");
        cmd.cwd(cwd);
        cmd
    }
}

/// `start_session_response` with aws-cli's three keys in its order.
#[derive(Serialize)]
struct StartResponse<'a> {
    #[serde(rename = "SessionId")]
    session_id: &'a str,
    #[serde(rename = "TokenValue")]
    token_value: &'a str,
    #[serde(rename = "StreamUrl")]
    stream_url: &'a str,
}

/// The StartSession parameters aws-cli passes as argv[5].
#[derive(Serialize)]
struct StartRequest<'a> {
    #[serde(rename = "Target")]
    target: &'a str,
    #[serde(rename = "DocumentName", skip_serializing_if = "Option::is_none")]
    document_name: Option<&'a str>,
    #[serde(rename = "Parameters", skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a std::collections::BTreeMap<String, Vec<String>>>,
    #[serde(rename = "Reason", skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// aws-cli's version rule: 1 to 4 dot-separated decimal numbers.
fn parse_version(text: &str) -> Option<Vec<u64>> {
    let parts: Vec<u64> = text
        .split('.')
        .map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    (1..=4).contains(&parts.len()).then_some(parts)
}

/// Compares versions after padding the shorter with zero components, as aws-cli does.
fn compare_padded(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| at(a, i).cmp(&at(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// Python's `json.dumps` with default arguments: `", "` and `": "` separators, non-ASCII escaped.
fn python_json<T: Serialize>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut ser)
        .expect("plain structs of strings serialise");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// serde_json formatter reproducing Python's default `json.dumps` layout.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn start_response_is_laid_out_like_python_json_dumps() {
        let text = python_json(&StartResponse {
            session_id: "bench-0a1b",
            token_value: "tök",
            stream_url: "ws://127.0.0.1:1/v1/data-channel/bench-0a1b?role=publish_subscribe",
        });
        assert_eq!(
            text,
            r#"{"SessionId": "bench-0a1b", "TokenValue": "t\u00f6k", "StreamUrl": "ws://127.0.0.1:1/v1/data-channel/bench-0a1b?role=publish_subscribe"}"#
        );
    }

    #[test]
    fn request_matches_the_documented_example() {
        let params = BTreeMap::from([
            ("localPortNumber".to_owned(), vec!["56789".to_owned()]),
            ("portNumber".to_owned(), vec!["80".to_owned()]),
        ]);
        let text = python_json(&StartRequest {
            target: "i-0123456789abcdef0",
            document_name: Some("AWS-StartPortForwardingSession"),
            parameters: Some(&params),
            reason: None,
        });
        assert_eq!(
            text,
            r#"{"Target": "i-0123456789abcdef0", "DocumentName": "AWS-StartPortForwardingSession", "Parameters": {"localPortNumber": ["56789"], "portNumber": ["80"]}}"#
        );
    }

    #[test]
    fn version_rule_follows_aws_cli() {
        let newer = |v: &str| {
            parse_version(v)
                .is_some_and(|p| compare_padded(&p, &ENV_FORM_MIN_VERSION_EXCLUSIVE).is_gt())
        };
        assert!(newer("1.2.707.0"));
        assert!(newer("1.3"));
        assert!(!newer("1.2.497.0"));
        assert!(!newer("1.2.497"));
        assert!(!newer("1.2.0.0"));
        assert!(!newer("1.2.707.0.1"));
        assert!(!newer("v1.2.707.0"));
        assert!(!newer(""));
    }

    #[test]
    fn launch_uses_the_environment_form_for_new_plugins() {
        let plugin = Plugin {
            path: PathBuf::from("/bin/session-manager-plugin"),
            version: "1.2.707.0".into(),
            env_form: true,
        };
        let request = SessionRequest {
            target: "mi-0123456789abcdef0".into(),
            document_name: None,
            parameters: BTreeMap::new(),
            reason: "bench 1".into(),
        };
        let response = SessionResponse {
            session_id: "s".into(),
            token_value: "t".into(),
            stream_url: "u".into(),
        };
        let launch = plugin.launch(&request, &response, "us-east-1", "http://gw", &[]);
        assert_eq!(
            launch.args,
            [
                START_RESPONSE_ENV,
                "us-east-1",
                "StartSession",
                "",
                r#"{"Target": "mi-0123456789abcdef0", "Reason": "bench 1"}"#,
                "http://gw"
            ]
        );
        assert_eq!(
            launch.env,
            [(
                START_RESPONSE_ENV.to_owned(),
                r#"{"SessionId": "s", "TokenValue": "t", "StreamUrl": "u"}"#.to_owned()
            )]
        );
        let old = Plugin {
            env_form: false,
            ..plugin
        };
        let launch = old.launch(&request, &response, "us-east-1", "http://gw", &[]);
        assert_eq!(
            launch.args[0],
            r#"{"SessionId": "s", "TokenValue": "t", "StreamUrl": "u"}"#
        );
        assert!(launch.env.is_empty());
    }
}
