//! A SOCKS5 front-end (RFC 1928, CONNECT, no authentication) whose connections go through
//! port sessions to hosts reachable from the target, one session per destination.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::{Error, PortForwarder, SessionManager};

const SOCKS_VERSION: u8 = 5;
const METHOD_NO_AUTH: u8 = 0;
const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;
const REPLY_SUCCEEDED: u8 = 0;
const REPLY_GENERAL_FAILURE: u8 = 1;
const REPLY_HOST_UNREACHABLE: u8 = 4;
const REPLY_COMMAND_NOT_SUPPORTED: u8 = 7;
const REPLY_ADDRESS_NOT_SUPPORTED: u8 = 8;

/// A destination requested by a SOCKS client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Why one SOCKS connection was not served.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    /// The client's greeting or request breaks RFC 1928 or asks for what is not offered.
    #[error("{0}")]
    Protocol(String),
    /// The client connection failed.
    #[error("SOCKS client connection: {0}")]
    Io(#[from] std::io::Error),
    /// No session to the destination could be started.
    #[error("{host}:{port}: {source}")]
    Session {
        /// The destination host.
        host: String,
        /// The destination port.
        port: u16,
        /// Why.
        #[source]
        source: Error,
    },
}

/// Why a SOCKS request cannot be served, with the reply code to send.
#[derive(Debug)]
struct Refusal {
    reply: u8,
    error: Error,
}

/// Reads the greeting and the request; answers the greeting. On a refusal the reply has been
/// sent when possible.
async fn read_request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<Destination, SocksError> {
    let version = s.read_u8().await?;
    if version != SOCKS_VERSION {
        return Err(protocol(format!("not a SOCKS5 client (version {version})")));
    }
    let n = s.read_u8().await? as usize;
    let mut methods = vec![0u8; n];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&METHOD_NO_AUTH) {
        s.write_all(&[SOCKS_VERSION, METHOD_NONE_ACCEPTABLE])
            .await?;
        return Err(protocol(
            "SOCKS client offers no unauthenticated method".into(),
        ));
    }
    s.write_all(&[SOCKS_VERSION, METHOD_NO_AUTH]).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let [version, cmd, _reserved, atyp] = head;
    if version != SOCKS_VERSION {
        return Err(protocol(format!("bad SOCKS request version {version}")));
    }
    let host = match atyp {
        ATYP_IPV4 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            Ipv4Addr::from(a).to_string()
        }
        ATYP_IPV6 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            Ipv6Addr::from(a).to_string()
        }
        ATYP_DOMAIN => {
            let len = s.read_u8().await? as usize;
            let mut name = vec![0u8; len];
            s.read_exact(&mut name).await?;
            String::from_utf8(name).map_err(|_| protocol("SOCKS host name is not UTF-8".into()))?
        }
        other => {
            reply(s, REPLY_ADDRESS_NOT_SUPPORTED).await?;
            return Err(protocol(format!("unsupported SOCKS address type {other}")));
        }
    };
    let port = s.read_u16().await?;
    if cmd != CMD_CONNECT {
        reply(s, REPLY_COMMAND_NOT_SUPPORTED).await?;
        return Err(protocol(format!(
            "unsupported SOCKS command {cmd} (only CONNECT)"
        )));
    }
    Ok(Destination { host, port })
}

async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: u8) -> std::io::Result<()> {
    // Bound address 0.0.0.0:0: the real socket is on the far side of the session.
    s.write_all(&[SOCKS_VERSION, code, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])
        .await
}

/// The session of one destination; its lock makes concurrent first uses start it only once.
type SessionSlot = Arc<Mutex<Option<Arc<PortForwarder>>>>;

/// Port sessions by destination, created on first use and replaced once they end.
pub struct SocksProxy {
    manager: SessionManager,
    target: String,
    document: String,
    sessions: Mutex<HashMap<Destination, SessionSlot>>,
}

impl SocksProxy {
    /// A proxy that opens sessions on `target` with the remote-host forwarding `document`.
    pub fn new(manager: SessionManager, target: String, document: String) -> SocksProxy {
        SocksProxy {
            manager,
            target,
            document,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The live session for `dest`, starting one if needed.
    async fn forwarder(&self, dest: &Destination) -> Result<Arc<PortForwarder>, Refusal> {
        let slot = self
            .sessions
            .lock()
            .await
            .entry(dest.clone())
            .or_default()
            .clone();
        // One start per destination at a time; other connections to it wait and share it.
        let mut slot = slot.lock().await;
        if let Some(f) = slot.as_ref().filter(|f| !f.is_closed()) {
            return Ok(f.clone());
        }
        let parameters = HashMap::from([
            ("host".to_owned(), vec![dest.host.clone()]),
            ("portNumber".to_owned(), vec![dest.port.to_string()]),
        ]);
        let session = self
            .manager
            .start_session(&self.target, Some(&self.document), parameters)
            .await
            .map_err(|error| Refusal {
                reply: match error {
                    Error::TargetNotConnected { .. } => REPLY_HOST_UNREACHABLE,
                    _ => REPLY_GENERAL_FAILURE,
                },
                error,
            })?;
        tracing::info!(session_id = session.id(), host = %dest.host, port = dest.port, "session for SOCKS destination");
        let forwarder = PortForwarder::new(session).await.map_err(|error| Refusal {
            reply: REPLY_GENERAL_FAILURE,
            error,
        })?;
        let forwarder = Arc::new(forwarder);
        *slot = Some(forwarder.clone());
        Ok(forwarder)
    }

    /// Serves one SOCKS client connection.
    async fn handle(&self, mut conn: TcpStream) -> Result<(), SocksError> {
        let dest = read_request(&mut conn).await?;
        match self.forwarder(&dest).await {
            Ok(forwarder) => {
                reply(&mut conn, REPLY_SUCCEEDED).await?;
                forwarder
                    .forward(conn)
                    .await
                    .map_err(|source| SocksError::Session {
                        host: dest.host,
                        port: dest.port,
                        source,
                    })
            }
            Err(refusal) => {
                let _ = reply(&mut conn, refusal.reply).await;
                Err(SocksError::Session {
                    host: dest.host,
                    port: dest.port,
                    source: refusal.error,
                })
            }
        }
    }

    /// Accepts SOCKS clients until the task is dropped; each connection is served on its own
    /// task, and one that fails is logged.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (conn, peer) = accepted?;
                    let _ = conn.set_nodelay(true);
                    let proxy = self.clone();
                    connections.spawn(async move {
                        if let Err(e) = proxy.handle(conn).await {
                            tracing::warn!(%peer, "SOCKS connection: {e}");
                        }
                    });
                }
                Some(_) = connections.join_next() => {}
            }
        }
    }

    /// The sessions the proxy started that are still open.
    pub async fn open_sessions(&self) -> Vec<Arc<PortForwarder>> {
        let slots: Vec<_> = self.sessions.lock().await.values().cloned().collect();
        let mut open = Vec::new();
        for slot in slots {
            if let Some(f) = slot.lock().await.as_ref().filter(|f| !f.is_closed()) {
                open.push(f.clone());
            }
        }
        open
    }
}

fn protocol(message: String) -> SocksError {
    SocksError::Protocol(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn request(bytes: &[u8]) -> (Result<Destination, SocksError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(bytes).await.unwrap();
        let result = read_request(&mut server).await;
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (result, answer)
    }

    #[tokio::test]
    async fn connect_by_name_ipv4_and_ipv6() {
        let (d, answer) = request(&[5, 1, 0, 5, 1, 0, 3, 4, b'h', b'o', b's', b't', 0, 80]).await;
        assert_eq!(
            d.unwrap(),
            Destination {
                host: "host".into(),
                port: 80
            }
        );
        assert_eq!(answer, [5, 0]);
        let (d, _) = request(&[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90]).await;
        assert_eq!(d.unwrap().host, "10.0.0.1");
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 22]);
        let (d, _) = request(&v6).await;
        assert_eq!(
            d.unwrap(),
            Destination {
                host: "::1".into(),
                port: 22
            }
        );
    }

    #[tokio::test]
    async fn refusals_are_answered() {
        let (d, answer) = request(&[5, 1, 2]).await;
        assert!(d.is_err());
        assert_eq!(answer, [5, 0xff]);
        let (d, answer) = request(&[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 1]).await;
        assert!(d.is_err());
        assert_eq!(answer[..2], [5, 0]);
        assert_eq!(answer[2..4], [5, REPLY_COMMAND_NOT_SUPPORTED]);
        let (d, _) = request(&[4, 1]).await;
        assert!(d.is_err());
    }
}
