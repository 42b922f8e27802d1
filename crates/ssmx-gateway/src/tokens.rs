//! Channel tokens: the `TokenValue`s handed out by CreateControlChannel, CreateDataChannel,
//! StartSession and ResumeSession, and checked in the first frame of each WebSocket.
//!
//! A token is 256 random bits, bound to one purpose (control channel of an instance, agent or
//! client side of one session), expires, and is replaced (the old one stops working) when a new
//! one is issued for the same purpose. A token opens one connection: a second WebSocket
//! presenting it is refused, so a leaked token cannot take over a live channel (reconnecting
//! takes a new token: ResumeSession for clients, CreateDataChannel or CreateControlChannel for
//! agents, as the official ends do). Ending a session revokes its tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::secrets::random_base64;

/// Random bytes in a token: 256 bits, well above the 128 the brief requires.
const TOKEN_BYTES: usize = 32;
/// How long a token may wait before its WebSocket presents it. Agents open their socket
/// immediately after the REST call and clients right after StartSession; five minutes covers
/// slow starts (aws-cli spawning the plugin) and the clients' own retry loops.
pub const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// What a token opens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// The control channel of an instance.
    Control {
        /// The instance.
        instance_id: String,
    },
    /// The agent's side of a session's data channel.
    AgentData {
        /// The session.
        session_id: String,
        /// The agent allowed to use it.
        instance_id: String,
    },
    /// The client's side of a session's data channel.
    ClientData {
        /// The session.
        session_id: String,
    },
}

impl Purpose {
    fn session_id(&self) -> Option<&str> {
        match self {
            Purpose::Control { .. } => None,
            Purpose::AgentData { session_id, .. } | Purpose::ClientData { session_id } => {
                Some(session_id)
            }
        }
    }
}

struct Entry {
    purpose: Purpose,
    expires: Instant,
    /// Set once a connection opened with it.
    used: bool,
}

/// Why a token did not open a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Unknown, expired, revoked, or for something else.
    #[error("invalid or expired token")]
    Invalid,
    /// It already opened its connection.
    #[error(
        "this token already opened a connection; reconnecting needs a new token (ResumeSession)"
    )]
    AlreadyUsed,
}

/// The live tokens.
#[derive(Default)]
pub struct Tokens {
    by_value: HashMap<String, Entry>,
    current: HashMap<Purpose, String>,
}

impl Tokens {
    /// Issues a token for `purpose`, revoking the previous one for the same purpose.
    pub fn issue(&mut self, purpose: Purpose, now: Instant) -> String {
        self.prune(now);
        let value = random_base64(TOKEN_BYTES);
        if let Some(old) = self.current.insert(purpose.clone(), value.clone()) {
            self.by_value.remove(&old);
        }
        self.by_value.insert(
            value.clone(),
            Entry {
                purpose,
                expires: now + TOKEN_TTL,
                used: false,
            },
        );
        value
    }

    /// Opens a connection with `value` if it is live, unused and `fits` its purpose; it cannot
    /// open another one afterwards.
    pub fn claim(
        &mut self,
        value: &str,
        now: Instant,
        fits: impl FnOnce(&Purpose) -> bool,
    ) -> Result<Purpose, TokenRefusal> {
        let entry = self
            .by_value
            .get_mut(value)
            .filter(|e| e.expires > now && fits(&e.purpose))
            .ok_or(TokenRefusal::Invalid)?;
        if entry.used {
            return Err(TokenRefusal::AlreadyUsed);
        }
        entry.used = true;
        Ok(entry.purpose.clone())
    }

    /// Revokes every token of a session.
    pub fn revoke_session(&mut self, session_id: &str) {
        self.by_value
            .retain(|_, e| e.purpose.session_id() != Some(session_id));
        self.current
            .retain(|p, _| p.session_id() != Some(session_id));
    }

    fn prune(&mut self, now: Instant) {
        let before = self.by_value.len();
        self.by_value.retain(|_, e| e.expires > now);
        if self.by_value.len() != before {
            let live = &self.by_value;
            self.current.retain(|_, v| live.contains_key(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_replaced_expired_and_revoked() {
        let mut t = Tokens::default();
        let now = Instant::now();
        let client = Purpose::ClientData {
            session_id: "s1".into(),
        };
        let any = |_: &Purpose| true;
        let first = t.issue(client.clone(), now);
        assert!(first.len() >= 43);
        let second = t.issue(client.clone(), now);
        assert_eq!(t.claim(&first, now, any), Err(TokenRefusal::Invalid));
        assert_eq!(
            t.claim(&second, now + TOKEN_TTL, any),
            Err(TokenRefusal::Invalid)
        );
        let ctl = t.issue(
            Purpose::Control {
                instance_id: "mi-1".into(),
            },
            now,
        );
        t.revoke_session("s1");
        assert_eq!(t.claim(&second, now, any), Err(TokenRefusal::Invalid));
        assert!(t.claim(&ctl, now, any).is_ok());
    }

    #[test]
    fn a_token_opens_one_connection_for_its_purpose_only() {
        let mut t = Tokens::default();
        let now = Instant::now();
        let client = Purpose::ClientData {
            session_id: "s1".into(),
        };
        let token = t.issue(client.clone(), now);
        let is_control = |p: &Purpose| matches!(p, Purpose::Control { .. });
        assert_eq!(t.claim(&token, now, is_control), Err(TokenRefusal::Invalid));
        assert_eq!(t.claim(&token, now, |p| p == &client), Ok(client.clone()));
        assert_eq!(
            t.claim(&token, now, |p| p == &client),
            Err(TokenRefusal::AlreadyUsed)
        );
        let resumed = t.issue(client.clone(), now);
        assert_eq!(t.claim(&resumed, now, |p| p == &client), Ok(client));
    }
}
