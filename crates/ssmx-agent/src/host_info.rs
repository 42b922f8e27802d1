//! What the agent reports about its host: name, addresses, platform.

use std::net::IpAddr;

/// `PlatformType` in OpenControlChannel and registration (lowercase, as the official agent).
pub(crate) const PLATFORM_TYPE: &str = "linux";

/// `PlatformType` in UpdateInstanceInformation (the SSM API's capitalised enum value).
pub(crate) const API_PLATFORM_TYPE: &str = "Linux";

/// The host's name, or `localhost` if it cannot be read.
pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host's addresses: non-loopback IPv4 first, then non-loopback IPv6 (link-local excluded),
/// then loopback if nothing else exists.
pub(crate) fn ip_addresses() -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifaddr in addrs {
            let Some(storage) = ifaddr.address else {
                continue;
            };
            let ip = if let Some(v4) = storage.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = storage.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if !found.contains(&ip) {
                found.push(ip);
            }
        }
    }
    let is_link_local_v6 = |ip: &IpAddr| match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    };
    let mut ordered: Vec<IpAddr> = found
        .iter()
        .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
        .chain(
            found
                .iter()
                .filter(|ip| ip.is_ipv6() && !ip.is_loopback() && !is_link_local_v6(ip)),
        )
        .copied()
        .collect();
    if ordered.is_empty() {
        ordered = found.into_iter().filter(|ip| ip.is_loopback()).collect();
    }
    if ordered.is_empty() {
        ordered.push(IpAddr::from([127, 0, 0, 1]));
    }
    ordered
}

/// Operating system name and version from `/etc/os-release` (`NAME`, `VERSION_ID`).
pub(crate) fn platform() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_os_release(&text)
}

fn parse_os_release(text: &str) -> (String, String) {
    let mut name = String::new();
    let mut version = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').trim_matches('\'').to_owned();
        match key.trim() {
            "NAME" => name = value,
            "VERSION_ID" => version = value,
            _ => {}
        }
    }
    if name.is_empty() {
        name = "Linux".to_owned();
    }
    (name, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_fields_are_read() {
        let (name, version) = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n",
        );
        assert_eq!(name, "Debian GNU/Linux");
        assert_eq!(version, "12");
        assert_eq!(parse_os_release("").0, "Linux");
    }

    #[test]
    fn at_least_one_address_is_reported() {
        assert!(!ip_addresses().is_empty());
        assert!(!hostname().is_empty());
    }
}
