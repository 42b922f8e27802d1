//! `NonInteractiveCommands`: one command without a PTY and without stdin (PROTOCOL.md §8.3).
//!
//! With `separateOutputStream` its stdout goes out as Output, its stderr as StdErr, and its exit
//! status as an ExitCode payload once both streams ended; without it both streams share one pipe
//! (so their interleaving is kept) and no exit code is sent, as the official agent does. The
//! control bytes 0x03 and 0x1c from the client become SIGINT and SIGQUIT.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use ssmx_protocol::payload::ExitCode;
use ssmx_protocol::PayloadType;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::plugins::shell::working_directory;
use crate::process::{end_session_processes, SessionUser};
use crate::session::io::{
    complete_utf8, Input, Output, OutputClosed, PluginContext, PluginOutcome,
};
use crate::sys;

/// After the command exits, how long processes it left behind may keep its output open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Exit code reported when the command was killed by a signal (Go's `ExitCode()`, which the
/// official agent reports).
const SIGNALLED_EXIT_CODE: i32 = -1;

/// Exit code reported when the command could not be started (the official agent's error code).
const START_FAILED_EXIT_CODE: i32 = 1;

/// Longest stdout/stderr separator prefix (PROTOCOL.md §8.3).
const MAX_PREFIX_LEN: usize = 30;

/// What to run and how to report it.
#[derive(Clone, Debug)]
pub(crate) struct CommandSpec {
    /// Program and arguments (the document's command, split shell-style).
    pub(crate) argv: Vec<String>,
    /// Whom it runs as.
    pub(crate) user: SessionUser,
    /// Stdout and stderr apart, then the exit code.
    pub(crate) separate_output: bool,
    /// Inserted before the first stdout chunk and after every chunk ending in a newline.
    pub(crate) stdout_prefix: String,
    /// The same for stderr.
    pub(crate) stderr_prefix: String,
}

/// Checks a separator prefix against `^[0-9a-zA-Z\r\n_:-]{0,30}$`.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'\r' | b'\n' | b'_' | b':' | b'-'))
}

/// Runs the command until it ends or the session is cancelled.
pub(crate) async fn run(spec: CommandSpec, mut ctx: PluginContext) -> PluginOutcome {
    let mut command = tokio::process::Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.user.environment(None))
        .current_dir(working_directory(&spec.user))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let joined = if spec.separate_output {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    } else {
        match joined_pipe(&mut command) {
            Ok(reader) => Some(reader),
            Err(e) => return start_failed(&ctx.output, &spec, e).await,
        }
    };
    sys::prepare_child(&mut command, false, spec.user.switch_to.clone());
    let spawned = command.spawn();
    drop(command); // closes the agent's copies of the joined pipe's write end
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return start_failed(&ctx.output, &spec, e).await,
    };
    let Some(sid) = child.id().map(|id| id as i32) else {
        return PluginOutcome::failed("the command exited before it could be watched");
    };
    tracing::info!(argv = ?spec.argv, user = %spec.user.name, pid = sid, "command started");

    let room = ctx.max_payload;
    let separate = (child.stdout.take(), child.stderr.take());
    let output = ctx.output.clone();
    let streams = async {
        match (joined, separate) {
            (Some(reader), _) => forward(reader, &output, PayloadType::Output, "", room).await,
            (None, (Some(stdout), Some(stderr))) => {
                let ctx = &output;
                let (out, err) = tokio::join!(
                    forward(stdout, ctx, PayloadType::Output, &spec.stdout_prefix, room),
                    forward(stderr, ctx, PayloadType::StdErr, &spec.stderr_prefix, room),
                );
                out.and(err)
            }
            (None, _) => Ok(()),
        }
    };
    tokio::pin!(streams);
    let signals = deliver_signals(&mut ctx.input, sid);
    tokio::pin!(signals);

    let mut streams_done: Option<Result<(), OutputClosed>> = None;
    let mut status = None;
    let mut exit_deadline = None;
    let cancelled = loop {
        let drain_expired = async {
            match exit_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => break true,
            result = &mut streams, if streams_done.is_none() => {
                if result.is_err() {
                    break true;
                }
                streams_done = Some(result);
                if status.is_some() {
                    break false;
                }
            }
            result = child.wait(), if status.is_none() => {
                status = Some(result);
                if streams_done.is_some() {
                    break false;
                }
                exit_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = drain_expired => {
                // Something the command left behind still holds its output open.
                end_session_processes(sid, ctx.kill_grace).await;
                exit_deadline = None;
            }
            () = &mut signals => {}
        }
    };
    end_session_processes(sid, ctx.kill_grace).await;
    if cancelled {
        let _ = child.wait().await;
        return PluginOutcome::cancelled();
    }
    let code = match status {
        Some(Ok(status)) => status.code().unwrap_or(SIGNALLED_EXIT_CODE),
        Some(Err(e)) => {
            tracing::warn!("cannot read the command's exit status: {e}");
            START_FAILED_EXIT_CODE
        }
        None => START_FAILED_EXIT_CODE,
    };
    tracing::info!(code, "command ended");
    if let Some(t) = ctx.output.transcript() {
        t.marker(&format!("exit code {code}"));
    }
    if spec.separate_output
        && ctx
            .output
            .send(PayloadType::ExitCode, ExitCode(code).to_payload())
            .await
            .is_err()
    {
        return PluginOutcome::cancelled();
    }
    PluginOutcome::finished()
}

/// One pipe for both stdout and stderr of `command`; returns its reading end.
fn joined_pipe(
    command: &mut tokio::process::Command,
) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    let (writer, reader) = tokio::net::unix::pipe::pipe()?;
    let writer = writer.into_blocking_fd()?;
    command
        .stdout(Stdio::from(writer.try_clone()?))
        .stderr(Stdio::from(writer));
    Ok(reader)
}

/// Reports a command that could not start: the error as StdErr text (and exit code 1 with
/// separate output), then the session ends as failed.
async fn start_failed(output: &Output, spec: &CommandSpec, error: std::io::Error) -> PluginOutcome {
    let text = format!("Error occurred starting the command: {error}\n");
    tracing::warn!(argv = ?spec.argv, "{}", text.trim_end());
    let _ = output
        .send(PayloadType::StdErr, Bytes::from(text.clone()))
        .await;
    if spec.separate_output {
        let _ = output
            .send(
                PayloadType::ExitCode,
                ExitCode(START_FAILED_EXIT_CODE).to_payload(),
            )
            .await;
    }
    PluginOutcome {
        terminating: true,
        ..PluginOutcome::failed(text.trim_end())
    }
}

/// Copies one output stream of the command to the client as `payload_type` payloads of at most
/// `max_payload` bytes, with `prefix` before the first chunk and after every newline-ended one.
async fn forward(
    mut reader: impl AsyncRead + Unpin,
    output: &Output,
    payload_type: PayloadType,
    prefix: &str,
    max_payload: usize,
) -> Result<(), OutputClosed> {
    let mut carry = Vec::new();
    let mut buf = vec![0u8; max_payload.max(MAX_PREFIX_LEN + 8)];
    let mut need_prefix = true;
    loop {
        let room = max_payload
            .saturating_sub(prefix.len() + carry.len())
            .max(1)
            .min(buf.len());
        let n = match reader.read(&mut buf[..room]).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("reading the command's output failed: {e}");
                break;
            }
        };
        let data = &buf[..n];
        let chunk = if need_prefix && !prefix.is_empty() {
            let mut with_prefix = prefix.as_bytes().to_vec();
            with_prefix.extend_from_slice(data);
            complete_utf8(&mut carry, &with_prefix)
        } else {
            complete_utf8(&mut carry, data)
        };
        need_prefix = data.last() == Some(&b'\n');
        output.send(payload_type, chunk).await?;
    }
    if !carry.is_empty() {
        output.send(payload_type, Bytes::from(carry)).await?;
    }
    Ok(())
}

/// Turns the client's control bytes into signals for the command's process group: the first of
/// 0x03 (SIGINT) or 0x1c (SIGQUIT) in an Output payload; everything else is ignored.
async fn deliver_signals(input: &mut tokio::sync::mpsc::Receiver<Input>, pgid: i32) {
    while let Some(item) = input.recv().await {
        if item.payload_type != PayloadType::Output {
            continue;
        }
        let signal = item.payload.iter().find_map(|b| match b {
            0x03 => Some(Signal::SIGINT),
            0x1c => Some(Signal::SIGQUIT),
            _ => None,
        });
        if let Some(signal) = signal {
            tracing::info!(?signal, "signal from the client");
            if let Err(e) = killpg(Pid::from_raw(pgid), signal) {
                tracing::debug!("cannot signal the command: {e}");
            }
        }
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::resolve_session_user;
    use crate::session::io::test_support::context;

    fn spec(script: &str, separate: bool) -> CommandSpec {
        CommandSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            user: resolve_session_user(None).unwrap(),
            separate_output: separate,
            stdout_prefix: String::new(),
            stderr_prefix: String::new(),
        }
    }

    async fn collect(rx: &mut tokio::sync::mpsc::Receiver<Input>) -> Vec<Input> {
        let mut all = Vec::new();
        while let Ok(Some(item)) =
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await
        {
            all.push(item);
        }
        all
    }

    fn joined(items: &[Input], payload_type: PayloadType) -> String {
        let bytes: Vec<u8> = items
            .iter()
            .filter(|i| i.payload_type == payload_type)
            .flat_map(|i| i.payload.to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn separate_streams_then_exit_code_last() {
        let (ctx, _input, mut out, _cancel) = context(1024, "1.2.677.0");
        let s = spec("echo out; echo err >&2; exit 3", true);
        let (outcome, items) = tokio::join!(run(s, ctx), collect(&mut out));
        assert_eq!(outcome, PluginOutcome::finished());
        assert_eq!(joined(&items, PayloadType::Output), "out\n");
        assert_eq!(joined(&items, PayloadType::StdErr), "err\n");
        let last = items.last().unwrap();
        assert_eq!(last.payload_type, PayloadType::ExitCode);
        assert_eq!(&last.payload[..], b"EXIT_CODE: 3");
    }

    #[tokio::test]
    async fn joined_output_has_no_exit_code() {
        let (ctx, _input, mut out, _cancel) = context(1024, "1.2.677.0");
        let s = spec("echo one; echo two >&2; echo three; exit 5", false);
        let (outcome, items) = tokio::join!(run(s, ctx), collect(&mut out));
        assert_eq!(outcome, PluginOutcome::finished());
        assert!(items.iter().all(|i| i.payload_type == PayloadType::Output));
        assert_eq!(joined(&items, PayloadType::Output), "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn prefixes_mark_each_line_start() {
        let (ctx, _input, mut out, _cancel) = context(1024, "1.2.677.0");
        let mut s = spec("printf 'a\\nb\\n'; printf 'e\\n' >&2", true);
        s.stdout_prefix = "OUT:".into();
        s.stderr_prefix = "ERR:".into();
        let (_, items) = tokio::join!(run(s, ctx), collect(&mut out));
        let stdout = joined(&items, PayloadType::Output);
        assert!(stdout.starts_with("OUT:a\n"), "{stdout:?}");
        assert_eq!(joined(&items, PayloadType::StdErr), "ERR:e\n");
        assert!(valid_prefix("STDOUT:\n") && !valid_prefix("bad prefix!"));
    }

    #[tokio::test]
    async fn missing_program_reports_stderr_and_exit_code_one() {
        let (ctx, _input, mut out, _cancel) = context(1024, "1.2.677.0");
        let mut s = spec("", true);
        s.argv = vec!["/nonexistent/ssmx-test-program".into()];
        let (outcome, items) = tokio::join!(run(s, ctx), collect(&mut out));
        assert_eq!(outcome.status, "Failed");
        assert!(outcome.terminating);
        assert!(joined(&items, PayloadType::StdErr).contains("Error occurred starting the command"));
        assert_eq!(&items.last().unwrap().payload[..], b"EXIT_CODE: 1");
    }

    #[tokio::test]
    async fn ctrl_c_from_the_client_interrupts_the_command() {
        let (ctx, input, mut out, _cancel) = context(1024, "1.2.677.0");
        let s = spec(
            "trap 'echo interrupted; exit 130' INT; echo ready; while :; do sleep 0.05; done",
            true,
        );
        let run = tokio::spawn(run(s, ctx));
        let first = out.recv().await.unwrap();
        assert_eq!(&first.payload[..], b"ready\n");
        input
            .send(Input {
                payload_type: PayloadType::Output,
                payload: Bytes::from_static(b"\x03"),
            })
            .await
            .unwrap();
        assert_eq!(run.await.unwrap(), PluginOutcome::finished());
        let items = collect(&mut out).await;
        assert_eq!(joined(&items, PayloadType::Output), "interrupted\n");
        assert_eq!(&items.last().unwrap().payload[..], b"EXIT_CODE: 130");
    }
}
