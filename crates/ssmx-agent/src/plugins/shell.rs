//! `Standard_Stream` (a login shell) and `InteractiveCommands` (`sh -c <commands>`) on a PTY
//! (PROTOCOL.md §8.1, §8.2).
//!
//! Keystrokes (Output payloads) are written to the PTY verbatim, Size payloads resize it, and the
//! PTY's output goes back in Output payloads of at most the negotiated size that never split a
//! UTF-8 sequence. The session ends when the shell exits (and the PTY has been drained) or when it
//! is cancelled; either way every process of the shell's session is ended.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use nix::errno::Errno;
use ssmx_protocol::payload::{from_json, TerminalSize};
use ssmx_protocol::PayloadType;
use tokio::io::unix::AsyncFd;

use crate::process::{end_session_processes, SessionUser};
use crate::session::io::{
    complete_utf8, Input, Output, OutputClosed, PluginContext, PluginOutcome,
};
use crate::sys;

/// `TERM` of every PTY session (as the official agent).
const TERMINAL_TYPE: &str = "xterm-256color";

/// After the shell exits, how long its PTY may still be drained (a process outside the shell's
/// session may hold it open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What to run on the PTY.
#[derive(Clone, Debug)]
pub(crate) struct ShellSpec {
    /// The executable.
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// `argv[0]` when it differs from the program (`-bash` for a login shell).
    pub(crate) arg0: Option<OsString>,
    /// Whom it runs as, and its environment.
    pub(crate) user: SessionUser,
    /// Written to the PTY followed by a newline right after the start (`shellProfile.linux`).
    pub(crate) profile: String,
}

/// Runs the shell until it exits or the session is cancelled.
pub(crate) async fn run(spec: ShellSpec, mut ctx: PluginContext) -> PluginOutcome {
    let pty = match sys::open_pty() {
        Ok(pty) => pty,
        Err(e) => return PluginOutcome::failed(format!("cannot open a pseudo-terminal: {e}")),
    };
    let mut child = match spawn(&spec, pty.slave) {
        Ok(child) => child,
        Err(e) => return PluginOutcome::failed(format!("Unable to start command: {e}")),
    };
    let Some(sid) = child.id().map(|id| id as i32) else {
        return PluginOutcome::failed("the shell exited before it could be watched");
    };
    tracing::info!(program = %spec.program.display(), user = %spec.user.name, pid = sid, "shell started");
    let master = match sys::async_master(pty.master) {
        Ok(fd) => fd,
        Err(e) => {
            end_session_processes(sid, ctx.kill_grace).await;
            let _ = child.wait().await;
            return PluginOutcome::failed(format!("cannot watch the pseudo-terminal: {e}"));
        }
    };
    if !spec.profile.is_empty() {
        let profile = format!("{}\n", spec.profile);
        if let Err(e) = write_all(&master, profile.as_bytes()).await {
            tracing::warn!("cannot write the shell profile: {e}");
        }
    }

    let output = ctx.output.clone();
    let max_payload = ctx.max_payload;
    let io = pump(&master, &output, &mut ctx.input, max_payload);
    tokio::pin!(io);
    enum Ending {
        Cancelled,
        PtyClosed(Result<(), OutputClosed>),
        ShellExited,
    }
    let ending = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Ending::Cancelled,
        result = &mut io => Ending::PtyClosed(result),
        _ = child.wait() => Ending::ShellExited,
    };
    let outcome = match ending {
        Ending::Cancelled => PluginOutcome::cancelled(),
        Ending::PtyClosed(Err(OutputClosed)) => PluginOutcome::cancelled(),
        Ending::PtyClosed(Ok(())) => PluginOutcome::finished(),
        Ending::ShellExited => {
            // Stragglers of the shell's session get the hang-up a terminal would send; then the
            // PTY is drained of what they and the shell wrote.
            end_session_processes(sid, ctx.kill_grace).await;
            tokio::select! {
                () = ctx.cancel.cancelled() => PluginOutcome::cancelled(),
                result = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut io) => match result {
                    Ok(Err(OutputClosed)) => PluginOutcome::cancelled(),
                    Ok(Ok(())) | Err(_) => PluginOutcome::finished(),
                },
            }
        }
    };
    end_session_processes(sid, ctx.kill_grace).await;
    match child.wait().await {
        Ok(status) => tracing::info!(%status, "shell ended"),
        Err(e) => tracing::warn!("cannot reap the shell: {e}"),
    }
    outcome
}

fn spawn(spec: &ShellSpec, slave: OwnedFd) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.user.environment(Some(TERMINAL_TYPE)))
        .current_dir(working_directory(&spec.user))
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .kill_on_drop(true);
    if let Some(arg0) = &spec.arg0 {
        command.arg0(arg0);
    }
    sys::prepare_child(&mut command, true, spec.user.switch_to.clone());
    command.spawn()
}

/// The user's home when it exists, else `/`.
pub(crate) fn working_directory(user: &SessionUser) -> PathBuf {
    if user.home.is_dir() {
        user.home.clone()
    } else {
        PathBuf::from("/")
    }
}

/// Moves PTY output to the client and client input to the PTY; returns when the PTY reports the
/// end of output (every process holding it has closed it) or the channel is gone.
async fn pump(
    master: &AsyncFd<OwnedFd>,
    output: &Output,
    input: &mut tokio::sync::mpsc::Receiver<Input>,
    max_payload: usize,
) -> Result<(), OutputClosed> {
    let out = pump_output(master, output, max_payload);
    let inp = pump_input(master, input, output);
    tokio::pin!(out, inp);
    let mut input_open = true;
    loop {
        tokio::select! {
            result = &mut out => return result,
            () = &mut inp, if input_open => input_open = false,
        }
    }
}

async fn pump_output(
    master: &AsyncFd<OwnedFd>,
    output: &Output,
    max_payload: usize,
) -> Result<(), OutputClosed> {
    let mut carry = Vec::new();
    let mut buf = vec![0u8; max_payload.max(4)];
    loop {
        let room = max_payload.saturating_sub(carry.len()).max(1);
        let read = read_some(master, &mut buf[..room]).await;
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            // EIO: the other side of the PTY is closed by every process that had it.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                tracing::warn!("reading the pseudo-terminal failed: {e}");
                break;
            }
        };
        let chunk = complete_utf8(&mut carry, &buf[..n]);
        output.send(PayloadType::Output, chunk).await?;
    }
    if !carry.is_empty() {
        output.send(PayloadType::Output, Bytes::from(carry)).await?;
    }
    Ok(())
}

async fn pump_input(
    master: &AsyncFd<OwnedFd>,
    input: &mut tokio::sync::mpsc::Receiver<Input>,
    output: &Output,
) {
    while let Some(item) = input.recv().await {
        match item.payload_type {
            PayloadType::Output => {
                if let Some(t) = output.transcript() {
                    t.input(&item.payload);
                }
                if let Err(e) = write_all(master, &item.payload).await {
                    tracing::warn!("writing to the pseudo-terminal failed: {e}");
                }
            }
            PayloadType::Size => match from_json::<TerminalSize>("Size", &item.payload) {
                Ok(size) => {
                    let cols = u16::try_from(size.cols).unwrap_or(u16::MAX);
                    let rows = u16::try_from(size.rows).unwrap_or(u16::MAX);
                    if let Err(e) = sys::set_window_size(master.get_ref().as_fd(), cols, rows) {
                        tracing::warn!("cannot resize the pseudo-terminal: {e}");
                    }
                    if let Some(t) = output.transcript() {
                        t.resize(size.cols, size.rows);
                    }
                }
                Err(e) => tracing::warn!("ignoring a bad terminal size: {e}"),
            },
            other => tracing::debug!(payload_type = ?other, "ignoring input"),
        }
    }
}

/// Reads what is available from the non-blocking descriptor, waiting until something is.
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard
            .try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(std::io::Error::from))
        {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data` to the non-blocking descriptor.
async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.raw_os_error() == Some(Errno::EINTR as i32) => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::resolve_session_user;
    use crate::session::io::test_support::context;
    use std::time::Duration;

    fn sh(script: &str) -> ShellSpec {
        ShellSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            arg0: None,
            user: resolve_session_user(None).unwrap(),
            profile: String::new(),
        }
    }

    async fn collect(rx: &mut tokio::sync::mpsc::Receiver<Input>) -> Vec<u8> {
        let mut all = Vec::new();
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            assert_eq!(item.payload_type, PayloadType::Output);
            assert!(std::str::from_utf8(&item.payload).is_ok(), "split UTF-8");
            all.extend_from_slice(&item.payload);
        }
        all
    }

    #[tokio::test]
    async fn command_output_arrives_in_small_valid_utf8_chunks_and_ends_the_session() {
        let (ctx, _input, mut out, _cancel) = context(7, "");
        let spec = sh("printf 'héllo wörld €€€ done'");
        let (outcome, all) = tokio::join!(run(spec, ctx), collect(&mut out));
        assert_eq!(outcome, PluginOutcome::finished());
        assert_eq!(String::from_utf8(all).unwrap(), "héllo wörld €€€ done");
    }

    #[tokio::test]
    async fn keystrokes_and_size_reach_the_terminal() {
        let (ctx, input, mut out, _cancel) = context(1024, "");
        let spec = sh("stty -echo; read line; stty size; echo \"got:$line\"");
        let feed = async {
            input
                .send(Input {
                    payload_type: PayloadType::Size,
                    payload: Bytes::from_static(br#"{"cols":132,"rows":40}"#),
                })
                .await
                .unwrap();
            input
                .send(Input {
                    payload_type: PayloadType::Output,
                    payload: Bytes::from_static(b"hello\r"),
                })
                .await
                .unwrap();
        };
        let (outcome, all, ()) = tokio::join!(run(spec, ctx), collect(&mut out), feed);
        assert_eq!(outcome, PluginOutcome::finished());
        let text = String::from_utf8(all).unwrap();
        assert!(text.contains("40 132"), "{text:?}");
        assert!(text.contains("got:hello"), "{text:?}");
    }

    #[tokio::test]
    async fn cancel_ends_the_shell_and_its_background_jobs() {
        let (ctx, _input, mut out, cancel) = context(1024, "");
        let marker = format!("{}", 400_000 + std::process::id() % 100_000);
        let spec = sh(&format!("sleep {marker} & sleep {marker}; echo never"));
        let run = tokio::spawn(run(spec, ctx));
        // Wait until both sleeps run, then cancel.
        let mut found = 0;
        for _ in 0..200 {
            found = count_processes_with_arg(&marker);
            if found >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(found >= 2, "the background jobs never started");
        cancel.cancel();
        assert_eq!(run.await.unwrap(), PluginOutcome::cancelled());
        // The background job is the shell's child, killed with its process group but reaped by
        // init: on a busy machine it may take a moment to disappear.
        let mut left = count_processes_with_arg(&marker);
        for _ in 0..500 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            left = count_processes_with_arg(&marker);
        }
        assert_eq!(left, 0, "a background job outlived the cancelled session");
        while let Ok(item) = out.try_recv() {
            assert!(!item.payload.windows(5).any(|w| w == b"never"));
        }
    }

    pub(crate) fn count_processes_with_arg(arg: &str) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let state = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let zombie = state
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.split_whitespace().next() == Some("Z"));
                (!zombie && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())).then_some(())
            })
            .count()
    }
}
