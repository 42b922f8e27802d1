//! Parsing of forwarding specifications: `--bind`, `-L [bind:]local:host:remote` and
//! `-D [bind:]port`, with ssh's conventions (brackets around IPv6 addresses, `*` or an empty
//! bind address for every interface, a `/` in the local part for a Unix socket).

use std::path::PathBuf;

use super::ui::port::ListenAt;

/// Bind address used when none is given: loopback only, so forwarded ports are not exposed.
pub const DEFAULT_BIND: &str = "127.0.0.1";
/// What `*` or an empty bind address means: every IPv4 interface.
const ALL_INTERFACES: &str = "0.0.0.0";

/// One `-L` forward (or the `--remote-port` one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalForward {
    /// Where to listen.
    pub listen: ListenAt,
    /// Destination host as seen from the target; `None` for the target itself.
    pub host: Option<String>,
    /// Destination port.
    pub remote_port: u16,
}

/// Splits on `:` outside `[...]`.
fn fields(spec: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in spec.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => {
                out.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&spec[start..]);
    out
}

fn unbracket(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

fn bind_host(bind: Option<&str>) -> String {
    match bind.map(unbracket) {
        None => DEFAULT_BIND.to_owned(),
        Some("") | Some("*") => ALL_INTERFACES.to_owned(),
        Some(h) => h.to_owned(),
    }
}

fn port(text: &str, what: &str) -> anyhow::Result<u16> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{what} {text:?} is not a port number (0-65535)"))
}

/// Parses `--bind`: an address or host name (IPv6 optionally in brackets), or a Unix socket
/// path (anything with a `/`).
pub fn parse_bind(bind: Option<&str>, local_port: u16) -> ListenAt {
    match bind {
        Some(path) if path.contains('/') => ListenAt::Unix(PathBuf::from(path)),
        other => ListenAt::Tcp {
            host: bind_host(other),
            port: local_port,
        },
    }
}

/// Parses `-L [bind:]local:host:remote`.
pub fn parse_local_forward(spec: &str) -> anyhow::Result<LocalForward> {
    let parts = fields(spec);
    let (bind, local, host, remote) = match parts.as_slice() {
        [local, host, remote] => (None, *local, *host, *remote),
        [bind, local, host, remote] => (Some(*bind), *local, *host, *remote),
        _ => anyhow::bail!(
            "forward {spec:?} is not [bind_address:]local_port:host:remote_port (or local_socket:host:remote_port)"
        ),
    };
    let listen = if local.contains('/') {
        anyhow::ensure!(
            bind.is_none(),
            "forward {spec:?}: a Unix socket takes no bind address"
        );
        ListenAt::Unix(PathBuf::from(local))
    } else {
        ListenAt::Tcp {
            host: bind_host(bind),
            port: port(local, "local port")?,
        }
    };
    let host = unbracket(host);
    anyhow::ensure!(
        !host.is_empty(),
        "forward {spec:?} names no destination host"
    );
    Ok(LocalForward {
        listen,
        host: Some(host.to_owned()),
        remote_port: port(remote, "remote port")?,
    })
}

/// Parses `-D [bind:]port`.
pub fn parse_dynamic_forward(spec: &str) -> anyhow::Result<ListenAt> {
    let parts = fields(spec);
    let (bind, local) = match parts.as_slice() {
        [local] => (None, *local),
        [bind, local] => (Some(*bind), *local),
        _ => anyhow::bail!("dynamic forward {spec:?} is not [bind_address:]port"),
    };
    Ok(ListenAt::Tcp {
        host: bind_host(bind),
        port: port(local, "SOCKS port")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> ListenAt {
        ListenAt::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn local_forward_forms() {
        assert_eq!(
            parse_local_forward("8080:db.internal:5432").unwrap(),
            LocalForward {
                listen: tcp("127.0.0.1", 8080),
                host: Some("db.internal".into()),
                remote_port: 5432
            }
        );
        assert_eq!(
            parse_local_forward("[::1]:8080:[fd00::5]:80").unwrap(),
            LocalForward {
                listen: tcp("::1", 8080),
                host: Some("fd00::5".into()),
                remote_port: 80
            }
        );
        assert_eq!(
            parse_local_forward("*:1:localhost:2").unwrap().listen,
            tcp("0.0.0.0", 1)
        );
        assert_eq!(
            parse_local_forward("/tmp/s.sock:localhost:22")
                .unwrap()
                .listen,
            ListenAt::Unix("/tmp/s.sock".into())
        );
        assert!(parse_local_forward("8080:5432").is_err());
        assert!(parse_local_forward("x:h:1").is_err());
        assert!(parse_local_forward("1:h:70000").is_err());
        assert!(parse_local_forward("1::80").is_err());
    }

    #[test]
    fn dynamic_forward_and_bind() {
        assert_eq!(
            parse_dynamic_forward("1080").unwrap(),
            tcp("127.0.0.1", 1080)
        );
        assert_eq!(parse_dynamic_forward("[::]:1080").unwrap(), tcp("::", 1080));
        assert!(parse_dynamic_forward("a:b:c").is_err());
        assert_eq!(parse_bind(None, 5), tcp("127.0.0.1", 5));
        assert_eq!(parse_bind(Some("::1"), 5), tcp("::1", 5));
        assert_eq!(
            parse_bind(Some("/run/x.sock"), 5),
            ListenAt::Unix("/run/x.sock".into())
        );
    }
}
