//! HTTP(S) proxy support for the data channel WebSocket: the usual `HTTPS_PROXY` / `HTTP_PROXY`
//! / `NO_PROXY` environment variables, and an HTTP `CONNECT` tunnel through the proxy.

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

/// Longest proxy response header we read before giving up on the proxy.
const MAX_PROXY_RESPONSE: usize = 16 * 1024;

/// A proxy to tunnel through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Proxy {
    /// `host:port` of the proxy.
    pub address: String,
    /// `Proxy-Authorization` value, from the proxy URL's user info.
    pub authorization: Option<String>,
}

/// Reads the environment the way Go's `http.ProxyFromEnvironment` (used by the official client)
/// does: `HTTPS_PROXY` for `wss://`, `HTTP_PROXY` for `ws://`, lowercase variants too, `NO_PROXY`
/// exemptions, and never a proxy for loopback hosts.
pub(crate) fn proxy_for(url: &Url) -> Option<Proxy> {
    proxy_from(url, |name| std::env::var(name).ok())
}

fn proxy_from(url: &Url, env: impl Fn(&str) -> Option<String>) -> Option<Proxy> {
    let var = |upper: &str| {
        env(upper)
            .or_else(|| env(&upper.to_ascii_lowercase()))
            .filter(|v| !v.is_empty())
    };
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    if is_loopback(host) {
        return None;
    }
    let setting = match url.scheme() {
        "wss" | "https" => var("HTTPS_PROXY"),
        _ => var("HTTP_PROXY"),
    }?;
    if let Some(no_proxy) = var("NO_PROXY") {
        if exempt(&no_proxy, host) {
            return None;
        }
    }
    let with_scheme = if setting.contains("://") {
        setting
    } else {
        format!("http://{setting}")
    };
    let proxy = Url::parse(&with_scheme).ok()?;
    let address = format!(
        "{}:{}",
        proxy.host_str()?,
        proxy.port_or_known_default().unwrap_or(80)
    );
    let authorization = (!proxy.username().is_empty()).then(|| {
        let credentials = format!(
            "{}:{}",
            percent_decode(proxy.username()),
            percent_decode(proxy.password().unwrap_or(""))
        );
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    });
    Some(Proxy {
        address,
        authorization,
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `NO_PROXY`: comma-separated hosts or domain suffixes (`.example.com` or `example.com` both
/// match subdomains); `*` disables proxying.
fn exempt(no_proxy: &str, host: &str) -> bool {
    no_proxy.split(',').map(str::trim).any(|entry| {
        let entry = entry.split(':').next().unwrap_or("");
        if entry == "*" {
            return true;
        }
        let suffix = entry.trim_start_matches('.');
        !suffix.is_empty()
            && (host.eq_ignore_ascii_case(suffix)
                || host
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", suffix.to_ascii_lowercase())))
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Opens a TCP connection to `target` (`host:port`) through `proxy` with HTTP `CONNECT`.
pub(crate) async fn tunnel(proxy: &Proxy, target: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(&proxy.address).await?;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    // Read byte by byte up to the blank line so no tunnelled byte is consumed.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_RESPONSE {
            return Err(std::io::Error::other("proxy response header is too long"));
        }
        let byte = stream.read_u8().await?;
        head.push(byte);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or("");
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if !code.starts_with('2') {
        return Err(std::io::Error::other(format!(
            "proxy {} refused CONNECT {target}: {status_line}",
            proxy.address
        )));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn https_proxy_applies_to_wss_only() {
        let e = env(&[("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:3128")]);
        let wss = Url::parse("wss://ssmmessages.us-east-1.amazonaws.com/v1/x").unwrap();
        let p = proxy_from(&wss, &e).unwrap();
        assert_eq!(p.address, "proxy.corp:3128");
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("user:p@ss")
            ))
            .as_deref()
        );
        let ws = Url::parse("ws://gateway.example:8080/v1/x").unwrap();
        assert_eq!(proxy_from(&ws, &e), None);
    }

    #[test]
    fn loopback_and_no_proxy_are_exempt() {
        let e = env(&[
            ("http_proxy", "proxy:8080"),
            ("NO_PROXY", "internal.example,.corp"),
        ]);
        for url in [
            "ws://127.0.0.1:9/x",
            "ws://localhost:9/x",
            "ws://[::1]:9/x",
            "ws://a.internal.example/x",
            "ws://internal.example/x",
            "ws://host.corp/x",
        ] {
            assert_eq!(proxy_from(&Url::parse(url).unwrap(), &e), None, "{url}");
        }
        let p = proxy_from(&Url::parse("ws://gateway.other/x").unwrap(), &e).unwrap();
        assert_eq!(p.address, "proxy:8080");
    }

    #[tokio::test]
    async fn connect_tunnel_reaches_the_target() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = proxy.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\ntunnelled")
                .await
                .unwrap();
            req
        });
        let p = Proxy {
            address: addr.to_string(),
            authorization: None,
        };
        let mut s = tunnel(&p, "example.invalid:443").await.unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "tunnelled");
        let req = server.await.unwrap();
        assert!(req.starts_with("CONNECT example.invalid:443 HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn refused_connect_is_an_error() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = proxy.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        });
        let p = Proxy {
            address: addr.to_string(),
            authorization: None,
        };
        let err = tunnel(&p, "x:1").await.unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
    }
}
