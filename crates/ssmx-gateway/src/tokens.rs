//! Channel tokens: the `TokenValue`s handed out by CreateControlChannel, CreateDataChannel,
//! StartSession and ResumeSession, and checked in the first frame of each WebSocket.
//!
//! A token is 256 random bits, bound to one purpose (control channel of an instance, agent or
//! client side of one session), expires, and is replaced (the old one stops working) when a new
//! one is issued for the same purpose. Ending a session revokes its tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::store::random_base64;

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
            },
        );
        value
    }

    /// What `value` opens, if it is live.
    pub fn check(&self, value: &str, now: Instant) -> Option<&Purpose> {
        self.by_value
            .get(value)
            .filter(|e| e.expires > now)
            .map(|e| &e.purpose)
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
        let first = t.issue(client.clone(), now);
        assert!(first.len() >= 43);
        assert_eq!(t.check(&first, now), Some(&client));
        let second = t.issue(client.clone(), now);
        assert_eq!(t.check(&first, now), None);
        assert_eq!(t.check(&second, now), Some(&client));
        assert_eq!(t.check(&second, now + TOKEN_TTL), None);
        let ctl = t.issue(
            Purpose::Control {
                instance_id: "mi-1".into(),
            },
            now,
        );
        t.revoke_session("s1");
        assert_eq!(t.check(&second, now), None);
        assert!(t.check(&ctl, now).is_some());
    }
}
