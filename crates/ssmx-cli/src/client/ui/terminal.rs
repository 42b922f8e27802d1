//! The local terminal: a session's input mode that is always restored, its size, and the `~.`
//! escape.

use std::io::IsTerminal;
use std::sync::{Mutex, Once, PoisonError};

use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

/// Size used when the terminal's cannot be read (the official client's fallback).
pub const FALLBACK_SIZE: (u16, u16) = (300, 100);

/// The terminal settings from before [`TerminalMode::enable`], for the restore on drop or panic.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// How the terminal is set while a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Raw: keys (Ctrl-C, Ctrl-Z, Ctrl-\ included) reach the remote side as bytes, nothing is
    /// echoed locally and output is shown untouched (a remote terminal ends its lines itself).
    Raw,
    /// The official client's `stty cbreak -echo`: keys are sent as typed and not echoed, while
    /// output processing (a `\n` starts a new line) and the signal keys stay on.
    CbreakNoEcho,
}

/// The terminal in a [`Mode`] for as long as this value lives. Dropping it restores the
/// terminal, on every path including errors; a panic hook restores it on panics in any task.
pub struct TerminalMode {
    /// The mode set; `None` when stdin is not a terminal.
    mode: Option<Mode>,
}

impl TerminalMode {
    /// Sets `mode` when stdin is a terminal; otherwise does nothing.
    pub fn enable(mode: Mode) -> std::io::Result<TerminalMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(TerminalMode { mode: None });
        }
        let saved = termios::tcgetattr(&stdin)?;
        let mut settings = saved.clone();
        match mode {
            Mode::Raw => termios::cfmakeraw(&mut settings),
            Mode::CbreakNoEcho => {
                settings
                    .local_flags
                    .remove(LocalFlags::ICANON | LocalFlags::ECHO);
                settings.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
                settings.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
            }
        }
        install_panic_hook();
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &settings)?;
        Ok(TerminalMode { mode: Some(mode) })
    }

    /// True when keys that would raise signals arrive as bytes instead (raw mode on a terminal).
    pub fn signal_keys_are_bytes(&self) -> bool {
        self.mode == Some(Mode::Raw)
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back the settings saved by [`TerminalMode::enable`], once.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(saved) = saved {
        // Nothing more can be done if restoring fails while unwinding or exiting.
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &saved);
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The terminal's (columns, rows), or the fallback.
pub fn size() -> (u16, u16) {
    match crossterm::terminal::size() {
        Ok((cols, rows)) if cols > 0 && rows > 0 => (cols, rows),
        _ => FALLBACK_SIZE,
    }
}

/// What an escape sequence asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscapeAction {
    /// `~.`: end the session.
    Disconnect,
    /// `~?`: list the escapes.
    Help,
}

/// Help text for `~?` (raw mode: explicit carriage returns).
pub const ESCAPE_HELP: &str =
    "\r\nSupported escape sequences:\r\n ~.  - end the session\r\n ~?  - this message\r\n ~~  - send the escape character by typing it twice\r\n(Note that escapes are only recognized immediately after newline.)\r\n";

/// Recognises ssh-style escapes in keyboard input: `~` right after a newline (or at the start)
/// followed by `.`, `?` or `~`. Anything else passes through unchanged.
#[derive(Debug)]
pub struct EscapeScanner {
    at_line_start: bool,
    pending_tilde: bool,
}

impl Default for EscapeScanner {
    fn default() -> Self {
        Self {
            at_line_start: true,
            pending_tilde: false,
        }
    }
}

impl EscapeScanner {
    /// Filters one chunk of input: returns the bytes to send and the escape found, if any
    /// (input after a `~.` is dropped).
    pub fn scan(&mut self, input: &[u8]) -> (Vec<u8>, Option<EscapeAction>) {
        let mut out = Vec::with_capacity(input.len());
        let mut action = None;
        for &b in input {
            if self.pending_tilde {
                self.pending_tilde = false;
                match b {
                    b'.' => return (out, Some(EscapeAction::Disconnect)),
                    b'?' => {
                        action = Some(EscapeAction::Help);
                        self.at_line_start = true;
                        continue;
                    }
                    b'~' => {
                        out.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    other => {
                        out.push(b'~');
                        out.push(other);
                    }
                }
            } else if self.at_line_start && b == b'~' {
                self.pending_tilde = true;
                continue;
            } else {
                out.push(b);
            }
            self.at_line_start = b == b'\r' || b == b'\n';
        }
        (out, action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_dot_after_newline_disconnects() {
        let mut s = EscapeScanner::default();
        assert_eq!(s.scan(b"ls\r"), (b"ls\r".to_vec(), None));
        assert_eq!(s.scan(b"~"), (vec![], None));
        assert_eq!(s.scan(b".rest"), (vec![], Some(EscapeAction::Disconnect)));
    }

    #[test]
    fn tilde_elsewhere_passes_through() {
        let mut s = EscapeScanner::default();
        assert_eq!(s.scan(b"a~.b"), (b"a~.b".to_vec(), None));
        assert_eq!(s.scan(b"\r~x"), (b"\r~x".to_vec(), None));
        assert_eq!(s.scan(b"\r~~"), (b"\r~".to_vec(), None));
        assert_eq!(s.scan(b"."), (b".".to_vec(), None));
    }

    #[test]
    fn escape_at_session_start_and_help() {
        let mut s = EscapeScanner::default();
        assert_eq!(s.scan(b"~?"), (vec![], Some(EscapeAction::Help)));
        assert_eq!(s.scan(b"~."), (vec![], Some(EscapeAction::Disconnect)));
    }
}
