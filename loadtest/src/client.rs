//! Opening one harness connection: bound to a spread-out loopback source address, small
//! buffers (the harness holds thousands of sockets per process), the gateway's greeting read
//! (wsgate's welcome, or a peer's; see [`crate::dialect`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use crate::dialect::{Answer, Dialect};

/// A harness connection: plain TCP, or TLS for `wss://` targets.
pub type Ws = WebSocketStream<Either<TcpStream, TlsStream<TcpStream>>>;

/// Limit on each step of opening a connection (TCP connect, upgrade, greeting).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where connections go: the URL as given, its resolved address, the bearer token, and for
/// `wss://` the TLS client setup.
#[derive(Clone)]
pub struct Target {
    /// `ws://host:port/path` or `wss://...`.
    pub url: String,
    /// The URL's host and port, resolved once rather than per connection.
    pub addr: SocketAddr,
    /// Sent as `Authorization: Bearer` when set.
    pub token: Option<String>,
    /// `wss://`: the connector (trusting `--ca`) and the name the certificate must carry.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// What the gateway speaks.
    pub dialect: Dialect,
}

/// A TLS client trusting only the CA certificates in `ca` (PEM).
fn tls_connector(ca: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading --ca {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("--ca {}", ca.display()))?)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

impl Target {
    /// Resolves `url` of a wsgate node: `ws://`, or `wss://` with `ca` the CA to trust.
    pub async fn resolve(
        url: &str,
        token: Option<&str>,
        ca: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::resolve_as(url, token, ca, Dialect::Wsgate).await
    }

    /// [`Target::resolve`] for a gateway speaking `dialect`.
    pub async fn resolve_as(
        url: &str,
        token: Option<&str>,
        ca: Option<&Path>,
        dialect: Dialect,
    ) -> anyhow::Result<Self> {
        let req = url
            .into_client_request()
            .with_context(|| format!("bad URL {url}"))?;
        let secure = match req.uri().scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => bail!("{url}: only ws:// and wss:// URLs are supported"),
        };
        let host = req.uri().host().context("URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = req
            .uri()
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let ca = ca.with_context(|| format!("{url}: wss:// needs --ca"))?;
            let name = ServerName::try_from(host.to_owned())
                .with_context(|| format!("{host} is not a TLS server name"))?;
            Some((tls_connector(ca)?, name))
        } else {
            None
        };
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} does not resolve"))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
            token: token.map(str::to_owned),
            tls,
            dialect,
        })
    }
}

/// Source addresses used on loopback: 127.0.0.2 ..= 127.0.0.250. Each has its own ephemeral
/// port range, so tens of thousands of sockets never run out of ports.
pub fn source_for(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (index % 249) as u8)
}

/// Connects connection number `index` and reads its greeting (wsgate's welcome, Pusher's
/// `connection_established`, Engine.IO's open and Socket.IO's connect); returns the socket
/// and the connection id. Each step has its own timeout.
pub async fn connect(target: &Target, index: usize) -> anyhow::Result<(Ws, String)> {
    let socket = match target.addr {
        SocketAddr::V4(a) => {
            let s = TcpSocket::new_v4()?;
            // Only loopback has a whole /8 of source addresses to spread over.
            if a.ip().is_loopback() {
                s.bind(SocketAddr::new(IpAddr::V4(source_for(index)), 0))
                    .context("binding a loopback source address")?;
            }
            s
        }
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let stream = tokio::time::timeout(STEP_TIMEOUT, socket.connect(target.addr))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    let mut req = target.url.as_str().into_client_request()?;
    if let Some(p) = target.dialect.subprotocol() {
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    if let Some(token) = &target.token {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).context("bad --token")?,
        );
    }
    // Small buffers: 4 KiB read chunks (one read still drains a backlog of deliveries) and
    // no write buffer.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let stream = match &target.tls {
        None => Either::Left(stream),
        Some((connector, name)) => Either::Right(
            tokio::time::timeout(STEP_TIMEOUT, connector.connect(name.clone(), stream))
                .await
                .context("TLS handshake timed out")?
                .context("TLS handshake")?,
        ),
    };
    let (mut ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::client_async_with_config(req, stream, Some(config)),
    )
    .await
    .context("WebSocket handshake timed out")?
    .context("WebSocket handshake")?;
    let dialect = target.dialect;
    let mut id = read_until(&mut ws, dialect, "greeting", |t| dialect.greeting(t)).await?;
    if let Some(frame) = dialect.connect_frame() {
        ws.send(Message::text(frame)).await.context("connecting")?;
        id = read_until(&mut ws, dialect, "connect answer", |t| dialect.connected(t)).await?;
    }
    Ok((ws, id))
}

/// Reads frames until `step` says the answer came (`Ok`) or was a refusal, within
/// [`STEP_TIMEOUT`]; keep-alives of the dialect are answered meanwhile.
pub async fn read_until(
    ws: &mut Ws,
    dialect: Dialect,
    what: &str,
    step: impl Fn(&str) -> Answer,
) -> anyhow::Result<String> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match step(&t) {
                    Answer::Ok(id) => return Ok(id),
                    Answer::Refused(e) => bail!("{what}: refused: {e}"),
                    Answer::Other => {
                        if let Some(r) = dialect.keepalive_reply(&t) {
                            ws.send(Message::text(r)).await?;
                        }
                    }
                },
                Some(Ok(Message::Close(c))) => bail!("closed before the {what}: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).with_context(|| format!("reading the {what}")),
                None => bail!("closed before the {what}"),
            }
        }
    })
    .await
    .with_context(|| format!("no {what}"))?
}

/// Reads an `ack` or `error` frame: its request id if any, and `Err(frame)` for an error.
/// `None` for anything else (messages, pongs). Errors may lack an id: the node answers
/// rate-limited frames without decoding them.
pub fn answer(text: &str) -> Option<(Option<u64>, Result<(), String>)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = v["id"].as_u64();
    match v["type"].as_str()? {
        "ack" => Some((id, Ok(()))),
        "error" => Some((id, Err(text.to_owned()))),
        _ => None,
    }
}

/// Ends the harness's own sending connections: their readers first (the node's answer to our
/// close is not an error), then a close on each, bounded.
pub async fn close_senders(
    readers: Vec<tokio::task::JoinHandle<()>>,
    sinks: &mut [futures_util::stream::SplitSink<Ws, Message>],
) {
    for r in readers {
        r.abort();
    }
    for sink in sinks {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures_util::SinkExt::close(sink)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_stay_in_range() {
        assert_eq!(source_for(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_for(248), Ipv4Addr::new(127, 0, 0, 250));
        assert_eq!(source_for(249), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_for(usize::MAX / 2).octets()[..3], [127, 0, 0]);
    }

    #[test]
    fn answers_are_acks_and_errors() {
        assert_eq!(answer(r#"{"type":"ack","id":2}"#), Some((Some(2), Ok(()))));
        assert!(matches!(
            answer(r#"{"type":"error","id":1,"code":"forbidden","message":"no"}"#),
            Some((Some(1), Err(_)))
        ));
        assert!(matches!(
            answer(r#"{"type":"error","code":"rate_limited","message":"slow down"}"#),
            Some((None, Err(_)))
        ));
        assert_eq!(
            answer(r#"{"type":"message","room":"a","data":{"id":1}}"#),
            None
        );
    }

    #[tokio::test]
    async fn targets_resolve() {
        let t = Target::resolve("ws://127.0.0.1:8080/ws", Some("x"), None)
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert!(t.tls.is_none());
        assert!(
            Target::resolve("wss://127.0.0.1/ws", None, None)
                .await
                .is_err(),
            "needs --ca"
        );
        assert!(Target::resolve("http://127.0.0.1/ws", None, None)
            .await
            .is_err());
    }
}
