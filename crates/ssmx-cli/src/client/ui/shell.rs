//! The interactive terminal for shell sessions (Standard_Stream, InteractiveCommands, and the
//! output of NonInteractiveCommands): keyboard in, remote output out, resizes, escapes.

use std::time::Duration;

use anyhow::Context;
use ssmx_client::{Session, SessionEnd, SessionEvent, SessionReader, SessionType, SessionWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::terminal::{self, EscapeAction, EscapeScanner, Mode, TerminalMode, ESCAPE_HELP};
use super::{Termination, Ui, TERMINATE_TIMEOUT};

/// Keyboard read size: a paste arrives in few messages; the channel splits larger ones.
const STDIN_CHUNK: usize = 16 * 1024;
/// How often the terminal size is checked when SIGWINCH cannot be watched (the official client
/// polls every 500 ms).
const RESIZE_POLL: Duration = Duration::from_millis(500);
/// Ctrl-C, Ctrl-\ and Ctrl-Z as the bytes a terminal sends (used when they arrive as signals).
const INTERRUPT_BYTE: u8 = 0x03;
const QUIT_BYTE: u8 = 0x1c;
const SUSPEND_BYTE: u8 = 0x1a;

/// How an interactive session ended.
#[derive(Debug)]
pub struct ShellOutcome {
    /// How the session ended; `None` when it was ended from this side and the service did not
    /// confirm in time.
    pub end: Option<SessionEnd>,
    /// The exit status a NonInteractiveCommands session reported.
    pub exit_code: Option<i32>,
}

/// Runs the terminal for `session` until it ends.
pub async fn run(session: Session, ui: Ui) -> anyhow::Result<ShellOutcome> {
    let session_id = session.id().to_owned();
    let (writer, mut reader) = session.split();
    let mut termination = Termination::watch().context("watching signals")?;
    let start = tokio::select! {
        start = reader.started() => match start {
            Ok(start) => start,
            Err(ssmx_client::Error::EndedBeforeStart(end)) => {
                ui.ended(&session_id, &end);
                return Ok(ShellOutcome { end: Some(end), exit_code: None });
            }
            Err(e) => return Err(e.into()),
        },
        r = tokio::signal::ctrl_c() => {
            r.context("watching SIGINT")?;
            return end_locally(&session_id, &writer, &mut reader, ui).await;
        }
        signal = termination.recv() => {
            tracing::info!("{signal} before the session started");
            return end_locally(&session_id, &writer, &mut reader, ui).await;
        }
    };
    if let Some(message) = &start.customer_message {
        ui.status(&format!("{message}\n"));
    }

    // An interactive session has a terminal on the remote side, which shapes the output and
    // wants every key as typed: raw mode. A command without one prints bare `\n` line ends,
    // which the local terminal must keep turning into new lines: the official client's mode.
    let mode = if start.session_type == SessionType::NonInteractiveCommands {
        Mode::CbreakNoEcho
    } else {
        Mode::Raw
    };
    let terminal = TerminalMode::enable(mode).context("setting up the terminal")?;
    let (escape_tx, mut escapes) = mpsc::channel(1);
    let mut tasks = JoinSet::new();
    tasks.spawn(keyboard(writer.clone(), ui.escape, escape_tx));
    tasks.spawn(resizes(writer.clone()));
    if !terminal.signal_keys_are_bytes() {
        tasks.spawn(signals_as_bytes(writer.clone()));
    }

    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let ended = loop {
        tokio::select! {
            event = reader.next_event() => match event {
                Some(Ok(SessionEvent::Output(bytes))) => {
                    stdout.write_all(&bytes).await?;
                    stdout.flush().await?;
                }
                Some(Ok(SessionEvent::StdErr(bytes))) => {
                    stderr.write_all(&bytes).await?;
                    stderr.flush().await?;
                }
                Some(Ok(SessionEvent::ExitCode(code))) if ui.print_exit_code => {
                    stdout.write_all(format!("EXIT_CODE: {code}").as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Ok(SessionEvent::Ended(end))) => break Some(end),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("session {session_id} stopped without a reason"),
            },
            Some(action) = escapes.recv() => match action {
                EscapeAction::Help => {
                    stderr.write_all(ESCAPE_HELP.as_bytes()).await?;
                    stderr.flush().await?;
                }
                EscapeAction::Disconnect => break None,
            },
            signal = termination.recv() => {
                tracing::info!("{signal}: ending the session");
                break None;
            }
        }
    };
    tasks.abort_all();
    drop(terminal);
    match ended {
        Some(end) => {
            ui.ended(&session_id, &end);
            Ok(ShellOutcome {
                end: Some(end),
                exit_code: reader.exit_code(),
            })
        }
        None => end_locally(&session_id, &writer, &mut reader, ui).await,
    }
}

/// Ends the session from this side: TerminateSession, then wait (briefly) for the service to
/// confirm with `channel_closed`.
async fn end_locally(
    session_id: &str,
    writer: &SessionWriter,
    reader: &mut SessionReader,
    ui: Ui,
) -> anyhow::Result<ShellOutcome> {
    let confirm = async {
        writer.terminate().await?;
        while let Some(event) = reader.next_event().await {
            if let SessionEvent::Ended(end) = event? {
                return Ok::<_, ssmx_client::Error>(Some(end));
            }
        }
        Ok(None)
    };
    let end = match tokio::time::timeout(TERMINATE_TIMEOUT, confirm).await {
        Ok(Ok(end)) => end,
        Ok(Err(e)) => {
            tracing::warn!("ending session {session_id}: {e}");
            None
        }
        Err(_) => None,
    };
    ui.ended(
        session_id,
        end.as_ref()
            .unwrap_or(&SessionEnd::Closed { message: None }),
    );
    Ok(ShellOutcome {
        end,
        exit_code: reader.exit_code(),
    })
}

/// Keyboard to session. In raw mode Enter is already `\r`; a lone `\n` (cbreak mode, piped
/// input) becomes `\r` as the official client does for keystrokes.
async fn keyboard(writer: SessionWriter, escape: bool, actions: mpsc::Sender<EscapeAction>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut scanner = escape.then(EscapeScanner::default);
    loop {
        let n = match stdin.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("stdin: {e}");
                return;
            }
        };
        let mut chunk = buf[..n].to_vec();
        if let Some(scanner) = &mut scanner {
            let (pass, action) = scanner.scan(&chunk);
            chunk = pass;
            if let Some(action) = action {
                let _ = actions.send(action).await;
                if action == EscapeAction::Disconnect {
                    return;
                }
            }
        }
        if chunk == b"\n" {
            chunk = b"\r".to_vec();
        }
        if writer.write(chunk).await.is_err() {
            return;
        }
    }
}

/// Sends the terminal size at start and whenever it changes.
async fn resizes(writer: SessionWriter) {
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut poll = tokio::time::interval(RESIZE_POLL);
    let mut last = None;
    loop {
        let size = terminal::size();
        if last != Some(size) {
            if writer.resize(size.0, size.1).await.is_err() {
                return;
            }
            last = Some(size);
        }
        match &mut winch {
            Some(w) => {
                if w.recv().await.is_none() {
                    return;
                }
            }
            None => {
                poll.tick().await;
            }
        }
    }
}

/// Without raw mode, Ctrl-C / Ctrl-\ / Ctrl-Z arrive as signals: forward them as the bytes a
/// terminal would have sent (the official client does the same).
async fn signals_as_bytes(writer: SessionWriter) {
    let (Ok(mut int), Ok(mut quit), Ok(mut suspend)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
        signal(SignalKind::from_raw(nix::libc::SIGTSTP)),
    ) else {
        return;
    };
    loop {
        let byte = tokio::select! {
            _ = int.recv() => INTERRUPT_BYTE,
            _ = quit.recv() => QUIT_BYTE,
            _ = suspend.recv() => SUSPEND_BYTE,
        };
        if writer.write(vec![byte]).await.is_err() {
            return;
        }
    }
}
