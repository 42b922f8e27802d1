//! The local terminal: raw mode that is always restored, its size, and the `~.` escape.

use std::io::IsTerminal;
use std::sync::Once;

/// Size used when the terminal's cannot be read (the official client's fallback).
pub const FALLBACK_SIZE: (u16, u16) = (300, 100);

/// Raw mode for as long as this value lives: keys (Ctrl-C, Ctrl-Z, Ctrl-\ included) reach the
/// remote side as bytes and nothing is echoed locally. Dropping it restores the terminal, on
/// every path including errors; a panic hook restores it on panics in any task.
pub struct RawMode {
    enabled: bool,
}

impl RawMode {
    /// Enables raw mode when stdin is a terminal; otherwise does nothing.
    pub fn enable() -> std::io::Result<RawMode> {
        if !std::io::stdin().is_terminal() {
            return Ok(RawMode { enabled: false });
        }
        install_panic_hook();
        crossterm::terminal::enable_raw_mode()?;
        Ok(RawMode { enabled: true })
    }

    /// True when the terminal is in raw mode (so signals arrive as bytes, not as signals).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.enabled {
            // Nothing more can be done if restoring fails while unwinding or exiting.
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::terminal::disable_raw_mode();
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
