//! `aws:runShellScript`: the lines go to `_script.sh`, run by `sh` in a process group of its
//! own, killed as a group on timeout or cancel.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Name of the script file, as the official agent.
pub(crate) const SCRIPT_NAME: &str = "_script.sh";
/// `timeoutSeconds` when absent or unusable.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest `timeoutSeconds` (48 h, the document's allowed maximum).
const MAX_TIMEOUT_SECS: u64 = 172_800;
/// Most bytes kept of each of stdout and stderr (the rest is read and dropped).
const CAPTURE_CAP: usize = 16 << 20;
/// How long output is still read after the script exited (background jobs may hold the pipes).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Exit status of a process killed by SIGKILL.
pub(crate) const KILLED_EXIT_CODE: i64 = 137;

/// What a script needs besides its inputs.
pub(crate) struct ShellContext<'a> {
    /// Where `_script.sh` is written; also the default working directory.
    pub(crate) dir: PathBuf,
    /// `AWS_SSM_INSTANCE_ID`.
    pub(crate) instance_id: &'a str,
    /// `AWS_SSM_REGION_NAME`.
    pub(crate) region: &'a str,
    /// `SSM_COMMAND_ID`.
    pub(crate) command_id: &'a str,
}

/// Why a script was stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// `timeoutSeconds` elapsed.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
}

/// What happened to a script.
#[derive(Debug)]
pub(crate) struct ShellOutcome {
    /// The exit code (128 + signal when killed by one).
    pub(crate) code: i64,
    /// stdout.
    pub(crate) stdout: String,
    /// stderr, with the official agent's failure line appended.
    pub(crate) stderr: String,
    /// Set when the script was killed for a reason.
    pub(crate) stopped: Option<Stopped>,
}

impl ShellOutcome {
    fn failed(message: String) -> Self {
        Self {
            code: 1,
            stdout: String::new(),
            stderr: message,
            stopped: None,
        }
    }
}

/// The validated inputs of one `aws:runShellScript` step.
pub(crate) struct ShellInputs {
    lines: Vec<String>,
    working_directory: Option<PathBuf>,
    timeout: Duration,
}

impl ShellInputs {
    /// Reads `inputs`; `runCommand` must be an array of strings.
    pub(crate) fn parse(inputs: &Value) -> Result<Self, String> {
        let invalid = || format!("Invalid format in plugin properties {inputs};");
        let lines = match inputs.get("runCommand") {
            Some(Value::Array(lines)) => lines
                .iter()
                .map(|l| l.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)?,
            _ => return Err(invalid()),
        };
        let working_directory = inputs
            .get("workingDirectory")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        let timeout = match inputs.get("timeoutSeconds") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|secs| (1..=MAX_TIMEOUT_SECS).contains(secs))
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        Ok(Self {
            lines,
            working_directory,
            timeout,
        })
    }
}

/// Runs the script until it exits, times out, or `cancel` fires. `started` learns the process
/// group id as soon as it exists.
pub(crate) async fn run(
    inputs: &ShellInputs,
    ctx: &ShellContext<'_>,
    cancel: &CancellationToken,
    started: impl FnOnce(i32),
) -> ShellOutcome {
    let script = match write_script(&ctx.dir, &inputs.lines) {
        Ok(path) => path,
        Err(e) => return ShellOutcome::failed(format!("failed to create script file. {e}")),
    };
    let cwd = inputs
        .working_directory
        .clone()
        .unwrap_or_else(|| ctx.dir.clone());
    let mut child = match Command::new("sh")
        .arg(&script)
        .current_dir(&cwd)
        .env("AWS_SSM_INSTANCE_ID", ctx.instance_id)
        .env("AWS_SSM_REGION_NAME", ctx.region)
        .env("SSM_COMMAND_ID", ctx.command_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return ShellOutcome::failed(format!("failed to run commands: {e}")),
    };
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(0);
    started(pgid);
    let stdout = tokio::spawn(capture(child.stdout.take()));
    let stderr = tokio::spawn(capture(child.stderr.take()));
    let mut stopped = None;
    let status = tokio::select! {
        status = child.wait() => status,
        () = tokio::time::sleep(inputs.timeout) => {
            stopped = Some(Stopped::TimedOut);
            kill_group(pgid);
            child.wait().await
        }
        () = cancel.cancelled() => {
            stopped = Some(Stopped::Cancelled);
            kill_group(pgid);
            child.wait().await
        }
    };
    let code = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .map(i64::from)
                .or_else(|| status.signal().map(|s| 128 + i64::from(s)))
                .unwrap_or(1)
        }
        Err(e) => return ShellOutcome::failed(format!("failed to run commands: {e}")),
    };
    let drained = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
        let bytes = tokio::time::timeout(DRAIN_AFTER_EXIT, task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let stdout = drained(stdout).await;
    let mut stderr = drained(stderr).await;
    let reported_as_stop = code == KILLED_EXIT_CODE && stopped.is_some();
    if code != 0 && !reported_as_stop && code != super::REBOOT_EXIT_CODE {
        if !stderr.is_empty() && !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        stderr.push_str(&format!("failed to run commands: exit status {code}"));
    }
    ShellOutcome {
        code,
        stdout,
        stderr,
        stopped,
    }
}

/// SIGKILL to every process of group `pgid`.
pub(crate) fn kill_group(pgid: i32) {
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

fn write_script(dir: &Path, lines: &[String]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(SCRIPT_NAME);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&path)?;
    for line in lines {
        writeln!(file, "{line}")?;
    }
    file.sync_all()?;
    Ok(path)
}

/// Reads `pipe` to its end, keeping the first [`CAPTURE_CAP`] bytes.
async fn capture(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = CAPTURE_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_need_a_list_of_lines() {
        assert!(ShellInputs::parse(&json!({"runCommand":"echo"})).is_err());
        assert!(ShellInputs::parse(&json!({"runCommand":[1]})).is_err());
        let ok = ShellInputs::parse(
            &json!({"runCommand":["echo"],"timeoutSeconds":7,"workingDirectory":"rel"}),
        )
        .unwrap();
        assert_eq!(ok.timeout, Duration::from_secs(7));
        assert_eq!(ok.working_directory, None);
        let text = ShellInputs::parse(&json!({"runCommand":[],"timeoutSeconds":"12"})).unwrap();
        assert_eq!(text.timeout, Duration::from_secs(12));
        let bad = ShellInputs::parse(&json!({"runCommand":[],"timeoutSeconds":"x"})).unwrap();
        assert_eq!(bad.timeout, DEFAULT_TIMEOUT);
    }

    #[tokio::test]
    async fn scripts_run_with_their_environment_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = ShellInputs::parse(&json!({"runCommand":[
            "echo $AWS_SSM_INSTANCE_ID $AWS_SSM_REGION_NAME $SSM_COMMAND_ID", "pwd", "echo oops >&2", "exit 3"]}))
        .unwrap();
        let ctx = ShellContext {
            dir: dir.path().join("step"),
            instance_id: "mi-1",
            region: "eu-west-1",
            command_id: "c-1",
        };
        let out = run(&inputs, &ctx, &CancellationToken::new(), |_| {}).await;
        assert_eq!(out.code, 3);
        let cwd = ctx.dir.canonicalize().unwrap();
        assert_eq!(
            out.stdout,
            format!("mi-1 eu-west-1 c-1\n{}\n", cwd.display())
        );
        assert_eq!(out.stderr, "oops\nfailed to run commands: exit status 3");
        assert!(ctx.dir.join(SCRIPT_NAME).exists());
    }
}
