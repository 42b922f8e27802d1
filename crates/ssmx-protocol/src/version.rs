//! Version strings and the thresholds at which the official ends change behaviour (§8.4, T14).
//!
//! Each side compares versions its own way; to agree with an official peer we must decide exactly
//! as that peer does, so both rules are here.

use std::cmp::Ordering;

/// Version this client reports: four numeric parts, above every client threshold the official
/// agent checks, above 1.2.497.0 so aws-cli passes the start response by environment variable,
/// and at least 1.2.764.0, below which current aws-cli warns of an outdated plugin.
pub const CLIENT_VERSION: &str = "1.2.779.0";
/// Version this agent reports: four numeric parts, above every agent threshold the official
/// client checks.
pub const AGENT_VERSION: &str = "3.3.2000.0";

/// Client uses smux iff the agent version is greater than this.
pub const CLIENT_MUX_MIN_AGENT_EXCLUSIVE: &str = "3.0.196.0";
/// Agent uses smux iff the client version is at least this.
pub const AGENT_MUX_MIN_CLIENT: &str = "1.1.70";
/// Client disables smux keep-alive iff the agent version is greater than this.
pub const CLIENT_KEEPALIVE_OFF_AGENT_EXCLUSIVE: &str = "3.1.1511.0";
/// Agent disables smux keep-alive iff the client version is greater than this.
pub const AGENT_KEEPALIVE_OFF_CLIENT_EXCLUSIVE: &str = "1.2.331.0";
/// Client sends the TerminateSession flag (rather than calling the API) iff agent > this.
pub const CLIENT_TERMINATE_FLAG_AGENT_EXCLUSIVE: &str = "2.3.722.0";

/// The official client's rule: numeric components, equal counts required. `None` when the rule
/// cannot compare (then the client takes the "old peer" branch).
pub fn client_compare(a: &str, b: &str) -> Option<Ordering> {
    let pa = numeric_parts(a)?;
    let pb = numeric_parts(b)?;
    (pa.len() == pb.len()).then(|| pa.cmp(&pb))
}

/// True when `agent_version` is greater than `threshold` under the client's rule.
pub fn client_sees_greater(agent_version: &str, threshold: &str) -> bool {
    client_compare(agent_version, threshold) == Some(Ordering::Greater)
}

/// The official agent's rule: component-wise, numeric where both are numeric, else lexical; when
/// all shared components are equal the longer version is greater. Empty sorts below everything.
pub fn agent_compare(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        _ => {}
    }
    let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(nx), Ok(ny)) => nx.cmp(&ny),
            _ => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

fn numeric_parts(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_rule_needs_equal_lengths() {
        assert!(client_sees_greater(
            "3.3.0.0",
            CLIENT_MUX_MIN_AGENT_EXCLUSIVE
        ));
        assert!(!client_sees_greater(
            "3.0.196.0",
            CLIENT_MUX_MIN_AGENT_EXCLUSIVE
        ));
        assert!(!client_sees_greater(
            "3.3.0",
            CLIENT_MUX_MIN_AGENT_EXCLUSIVE
        ));
        assert!(!client_sees_greater("dev", CLIENT_MUX_MIN_AGENT_EXCLUSIVE));
    }

    #[test]
    fn agent_rule_longer_is_greater() {
        assert_eq!(
            agent_compare("1.1.70.0", AGENT_MUX_MIN_CLIENT),
            Ordering::Greater
        );
        assert_eq!(
            agent_compare("1.1.69.0", AGENT_MUX_MIN_CLIENT),
            Ordering::Less
        );
        assert_eq!(agent_compare("", AGENT_MUX_MIN_CLIENT), Ordering::Less);
        assert_eq!(
            agent_compare(CLIENT_VERSION, AGENT_KEEPALIVE_OFF_CLIENT_EXCLUSIVE),
            Ordering::Greater
        );
    }

    #[test]
    fn our_versions_clear_every_threshold() {
        for t in [
            CLIENT_MUX_MIN_AGENT_EXCLUSIVE,
            CLIENT_KEEPALIVE_OFF_AGENT_EXCLUSIVE,
            CLIENT_TERMINATE_FLAG_AGENT_EXCLUSIVE,
        ] {
            assert!(client_sees_greater(AGENT_VERSION, t));
        }
        assert!(client_sees_greater(CLIENT_VERSION, "1.2.497.0"));
    }
}
