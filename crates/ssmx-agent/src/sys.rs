//! The only code with `unsafe`: what a PTY session needs from libc and nix that has no safe
//! wrapper — making the child a session leader with the PTY as its controlling terminal, switching
//! its user (with supplementary groups) between fork and exec, and setting the window size.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Both ends of a new pseudo-terminal, close-on-exec; the master is non-blocking.
pub(crate) struct PtyPair {
    /// The agent's end.
    pub(crate) master: OwnedFd,
    /// The session's end (becomes the child's stdin, stdout, stderr and controlling terminal).
    pub(crate) slave: OwnedFd,
}

/// Opens a PTY pair. Both descriptors are opened close-on-exec from the start, so a concurrent
/// spawn of another session cannot inherit them.
pub(crate) fn open_pty() -> io::Result<PtyPair> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_path = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        slave_path.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let master: OwnedFd = master.into();
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(PtyPair { master, slave })
}

/// Registers the PTY master with the tokio reactor for reading and writing.
pub(crate) fn async_master(master: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` owns its descriptor; it stays open and unchanged until the `AsyncFd`
    // (which owns the `OwnedFd`) is dropped.
    unsafe { AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE) }
        .map_err(io::Error::from)
}

/// Sets the terminal size of the PTY behind `fd` (the kernel then signals SIGWINCH to the
/// foreground process group).
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which is valid for the call;
    // `fd` is a live descriptor borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The identity a session's processes take on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// User id.
    pub(crate) uid: libc::uid_t,
    /// Primary group id.
    pub(crate) gid: libc::gid_t,
    /// Supplementary groups (resolved before the fork).
    pub(crate) groups: Vec<libc::gid_t>,
}

/// Makes the spawned child a new session leader (so its whole tree can be found and ended), gives
/// it its stdin as controlling terminal when `controlling_tty`, and switches to `identity` when
/// given (groups, then group, then user, so the switch cannot be undone by the child).
pub(crate) fn prepare_child(
    command: &mut tokio::process::Command,
    controlling_tty: bool,
    identity: Option<Identity>,
) {
    let pre_exec = move || -> io::Result<()> {
        // SAFETY (whole closure): runs in the forked child before exec; it only makes
        // async-signal-safe system calls on data allocated before the fork.
        unsafe {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(id) = &identity {
                if libc::setgroups(id.groups.len() as _, id.groups.as_ptr()) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(id.gid) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(id.uid) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure above is async-signal-safe (see inside).
    unsafe {
        command.pre_exec(pre_exec);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn pty_descriptors_are_close_on_exec_and_resizable() {
        let pair = open_pty().unwrap();
        for fd in [&pair.master, &pair.slave] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
        set_window_size(pair.master.as_fd(), 132, 40).unwrap();
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the valid pointer.
        let rc = unsafe { libc::ioctl(pair.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (132, 40));
    }
}
