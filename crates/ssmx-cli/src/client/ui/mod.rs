//! The user-facing side of sessions, shared by `ssmx` and `session-manager-plugin`: the
//! interactive terminal, port listeners and standard-stream piping.

pub mod port;
pub mod shell;
pub mod stdio;
mod terminal;

use std::io::Write;

use ssmx_client::SessionEnd;

/// How long ending a session through the API may take before the process exits anyway.
pub const TERMINATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where status text goes and which conveniences are on.
#[derive(Clone, Copy, Debug)]
pub struct Ui {
    /// Status lines on stdout, as the official plugin prints them; otherwise on stderr so
    /// session output can be piped.
    pub status_to_stdout: bool,
    /// Recognise `~.` after a newline to end the session, as ssh does.
    pub escape: bool,
    /// Show a command's exit code as the official plugin does (`EXIT_CODE: <n>` on stdout).
    pub print_exit_code: bool,
}

impl Ui {
    /// Writes status text exactly as given (callers include the newlines).
    pub fn status(&self, text: &str) {
        // Status text is best effort: a closed stdout/stderr must not abort the session.
        if self.status_to_stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        } else {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }

    /// The official client's text for the start of a session.
    pub fn starting(&self, session_id: &str) {
        self.status(&format!(
            "\nStarting session with SessionId: {session_id}\n"
        ));
    }

    /// The official client's text for the end of a session.
    pub fn ended(&self, session_id: &str, end: &SessionEnd) {
        let text = match end {
            SessionEnd::Closed { message: None } => {
                format!("\n\nExiting session with sessionId: {session_id}.\n\n")
            }
            SessionEnd::Closed {
                message: Some(reason),
            } => format!("\n\nSessionId: {session_id} : {reason}\n\n"),
            SessionEnd::TimedOut => format!("Session: {session_id} timed out.\n"),
            _ => format!("\n\nSession {session_id} ended.\n\n"),
        };
        self.status(&text);
    }

    /// The official client's text when a signal ends a port session.
    pub fn terminate_signal(&self) {
        self.status("Terminate signal received, exiting.\n");
    }
}

/// Signals that end a session from outside (the terminal went away, a supervisor stops us).
pub struct Termination {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Termination {
    /// Starts watching SIGTERM and SIGHUP.
    pub fn watch() -> std::io::Result<Termination> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Termination {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves with the signal's name when one arrives.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
