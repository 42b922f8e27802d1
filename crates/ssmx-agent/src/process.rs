//! Session processes: whom they run as, with what environment, and how their whole tree is ended.
//!
//! Every session's first process is a session leader (see [`crate::sys::prepare_child`]), so all
//! its descendants — including background jobs that shells put in their own process groups —
//! share its session id, which is how they are found and ended without leaving orphans.

use std::ffi::{CString, OsString};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use crate::sys::Identity;

/// PATH given to sessions that switch to another user (their login files may extend it).
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// PATH for unprivileged users that switch.
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// LANG given when the agent's environment has none (as the official agent).
const DEFAULT_LANG: &str = "C.UTF-8";
/// How often the end of a session's processes is checked during the grace period.
const KILL_POLL: Duration = Duration::from_millis(20);

/// The OS user a session runs as.
#[derive(Clone, Debug)]
pub(crate) struct SessionUser {
    /// Login name.
    pub(crate) name: String,
    /// Home directory (the session's working directory).
    pub(crate) home: PathBuf,
    /// Login shell from the password database.
    pub(crate) shell: PathBuf,
    /// Set when the session must switch to this user (the agent runs as someone else).
    pub(crate) switch_to: Option<Identity>,
}

impl SessionUser {
    /// The environment of a session process: the agent's own when no switch happens (plus
    /// `LANG`), a fresh login environment for another user; `TERM` when it has a terminal.
    pub(crate) fn environment(&self, terminal: Option<&str>) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = if self.switch_to.is_none() {
            std::env::vars_os().collect()
        } else {
            let path = if self.switch_to.as_ref().is_some_and(|id| id.uid == 0) {
                ROOT_PATH
            } else {
                USER_PATH
            };
            vec![
                ("HOME".into(), self.home.clone().into()),
                ("USER".into(), self.name.clone().into()),
                ("LOGNAME".into(), self.name.clone().into()),
                ("SHELL".into(), self.shell.clone().into()),
                ("PATH".into(), path.into()),
            ]
        };
        let mut set = |key: &str, value: OsString, replace: bool| match env
            .iter_mut()
            .find(|(k, _)| k == key)
        {
            Some(entry) if replace => entry.1 = value,
            Some(_) => {}
            None => env.push((key.into(), value)),
        };
        let lang = std::env::var_os("LANG").unwrap_or_else(|| DEFAULT_LANG.into());
        set("LANG", lang, false);
        if let Some(term) = terminal {
            set("TERM", term.into(), true);
        }
        env
    }
}

/// Who runs a session, from the agent's privileges and the request.
///
/// `requested` is the user the document asks for (run-as enabled) or the configured default;
/// `None` means the agent's own user.
pub(crate) fn resolve_session_user(requested: Option<&str>) -> Result<SessionUser, String> {
    let me = User::from_uid(nix::unistd::geteuid())
        .map_err(|e| format!("cannot look up the agent's own user: {e}"))?
        .ok_or_else(|| "the agent's own user is not in the password database".to_owned())?;
    let Some(name) = requested.filter(|n| *n != me.name) else {
        return Ok(SessionUser {
            name: me.name,
            home: me.dir,
            shell: me.shell,
            switch_to: None,
        });
    };
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("cannot run the session as {name:?}: no such user on this host"))?;
    if !nix::unistd::geteuid().is_root() {
        return Err(format!(
            "cannot run the session as {name:?}: the agent is not running as root"
        ));
    }
    let c_name = CString::new(name).map_err(|_| format!("invalid user name {name:?}"))?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .map_err(|e| format!("cannot read the groups of {name:?}: {e}"))?;
    Ok(SessionUser {
        switch_to: Some(Identity {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.iter().map(|g| g.as_raw()).collect(),
        }),
        name: user.name,
        home: user.dir,
        shell: user.shell,
    })
}

/// Process ids whose session id is `sid` (the session leader included while it lives).
pub(crate) fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            (stat_session(&stat)? == sid).then_some(pid)
        })
        .collect()
}

/// The session id field of a `/proc/<pid>/stat` line (the command name may hold spaces and
/// parentheses, so fields are counted after its last `)`).
fn stat_session(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Sends `signal` to every process of session `sid`; returns how many were signalled.
fn signal_session(sid: i32, signal: Signal) -> usize {
    session_members(sid)
        .into_iter()
        .filter(|pid| kill(Pid::from_raw(*pid), signal).is_ok())
        .count()
}

/// Ends every process of session `sid`: SIGHUP (as a terminal hang-up would) and SIGCONT, then
/// SIGKILL for whatever is left after `grace`.
pub(crate) async fn end_session_processes(sid: i32, grace: Duration) {
    if signal_session(sid, Signal::SIGHUP) == 0 {
        return;
    }
    signal_session(sid, Signal::SIGCONT);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if session_members(sid)
            .into_iter()
            .all(|pid| is_zombie(pid).unwrap_or(true))
        {
            return;
        }
        tokio::time::sleep(KILL_POLL).await;
    }
    let killed = signal_session(sid, Signal::SIGKILL);
    if killed > 0 {
        tracing::debug!(
            sid,
            killed,
            "killed session processes that outlived the grace period"
        );
    }
}

/// True when the process has exited but was not reaped yet; `None` when it is gone.
fn is_zombie(pid: i32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().next()? == "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_field_is_found_after_odd_command_names() {
        assert_eq!(
            stat_session("1234 (my (odd) cmd) S 1 1234 1234 34816 1234 4194560"),
            Some(1234)
        );
        assert_eq!(stat_session("garbage"), None);
    }

    #[test]
    fn own_user_needs_no_switch() {
        let me = resolve_session_user(None).unwrap();
        assert!(me.switch_to.is_none());
        let again = resolve_session_user(Some(&me.name)).unwrap();
        assert!(again.switch_to.is_none());
        let env = me.environment(Some("xterm-256color"));
        assert!(env
            .iter()
            .any(|(k, v)| k == "TERM" && v == "xterm-256color"));
        assert!(env.iter().any(|(k, _)| k == "LANG"));
    }

    #[test]
    fn unknown_or_forbidden_users_are_refused_with_a_reason() {
        let err = resolve_session_user(Some("no-such-user-ssmx-test")).unwrap_err();
        // Named as missing whether or not the agent runs as root.
        assert!(err.contains("no such user on this host"), "{err}");
    }
}
