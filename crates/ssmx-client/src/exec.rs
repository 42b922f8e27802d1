//! Running one command on a target through a NonInteractiveCommands session (PROTOCOL.md §8.3):
//! stdout and stderr apart, and the exit code.

use std::collections::HashMap;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::handshake::SessionType;
use crate::manager::SessionManager;
use crate::session::{Session, SessionEnd, SessionEvent, SessionReader};

/// The parameter of the exec document that carries the command line.
pub const COMMAND_PARAMETER: &str = "command";

/// What a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit status, when the document separates output streams (the agent only reports
    /// it then).
    pub exit_code: Option<i32>,
    /// Standard output (with standard error too when the document joins the streams).
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

/// How a command session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEnd {
    /// The exit status, if the agent sent one.
    pub exit_code: Option<i32>,
    /// How the session ended.
    pub end: SessionEnd,
}

impl SessionManager {
    /// Starts a session that runs `command` (one command line; the agent splits it shell-style
    /// into arguments, see [`shell_join`]) with the configured exec document.
    pub async fn start_command(&self, target: &str, command: &str) -> Result<Session> {
        let parameters = HashMap::from([(COMMAND_PARAMETER.to_owned(), vec![command.to_owned()])]);
        let document = self.inner.options.exec_document.clone();
        self.start_session(target, Some(&document), parameters)
            .await
    }

    /// Runs `command` on `target` and collects its output and exit code.
    ///
    /// ```no_run
    /// # async fn demo(manager: ssmx_client::SessionManager) -> ssmx_client::Result<()> {
    /// let out = manager.exec("mi-0123456789abcdef0", "sh -c 'echo hi; exit 3'").await?;
    /// assert_eq!(out.stdout, b"hi\n");
    /// assert_eq!(out.exit_code, Some(3));
    /// # Ok(()) }
    /// ```
    pub async fn exec(&self, target: &str, command: &str) -> Result<ExecOutput> {
        let session = self.start_command(target, command).await?;
        let (_writer, mut reader) = session.split();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let end = copy_command_output(&mut reader, &mut stdout, &mut stderr).await?;
        Ok(ExecOutput {
            exit_code: end.exit_code,
            stdout,
            stderr,
        })
    }
}

/// Writes a command session's Output to `stdout` and StdErr to `stderr` until it ends.
pub async fn copy_command_output<O, E>(
    reader: &mut SessionReader,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<CommandEnd>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    while let Some(event) = reader.next_event().await {
        match event? {
            SessionEvent::Started(start) => {
                if start.session_type != SessionType::NonInteractiveCommands {
                    tracing::info!(
                        session_type = start.session_type.as_str(),
                        "not a command session; copying its output"
                    );
                }
            }
            SessionEvent::Output(bytes) => {
                stdout.write_all(&bytes).await?;
                stdout.flush().await?;
            }
            SessionEvent::StdErr(bytes) => {
                stderr.write_all(&bytes).await?;
                stderr.flush().await?;
            }
            SessionEvent::Ended(end) => {
                return Ok(CommandEnd {
                    exit_code: reader.exit_code(),
                    end,
                })
            }
            SessionEvent::ExitCode(_) | SessionEvent::Flag(_) => {}
        }
    }
    Err(Error::SessionEnded)
}

/// Joins arguments into one command line that a POSIX-style splitter (as the agent uses) turns
/// back into the same arguments.
///
/// ```
/// assert_eq!(ssmx_client::shell_join(&["echo", "a b", "it's"]), r#"echo 'a b' 'it'\''s'"#);
/// ```
pub fn shell_join<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_arguments_apart() {
        assert_eq!(shell_join(&["ls", "-la", "/tmp"]), "ls -la /tmp");
        assert_eq!(shell_join(&["sh", "-c", "exit 3"]), "sh -c 'exit 3'");
        assert_eq!(shell_join(&[""]), "''");
        assert_eq!(shell_join(&["$HOME"]), "'$HOME'");
    }
}
