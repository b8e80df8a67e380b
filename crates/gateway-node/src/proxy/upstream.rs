//! Opening an upstream WebSocket: round robin over a `[[proxy]]` entry's upstreams, the next
//! one on failure, upstreams that failed skipped for a back-off (passive health checks), and
//! the client handshake written and read here so that the bytes an upstream sends right after
//! its 101 are kept for the relay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use url::Url;

use super::relay::{Reader, Writer};
use super::ProxyRoute;

/// Largest upstream handshake answer (status line and headers).
const MAX_ANSWER: usize = 16 * 1024;
/// First back-off of an upstream that failed; it doubles with each failure in a row.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One upstream and its health.
struct Upstream {
    url: Url,
    /// What clients are told: `upstream N` (the URL may name internal hosts and keys).
    label: String,
    /// Failures in a row, and until when it is skipped.
    health: Mutex<(u32, Option<Instant>)>,
}

/// The upstreams of one `[[proxy]]` entry.
pub struct Upstreams {
    list: Vec<Upstream>,
    next: AtomicUsize,
}

/// What the client offered and who it is: each upstream request is made from this (kept
/// by the session, for a reconnect).
pub struct Forward {
    /// The client's request headers.
    pub headers: HeaderMap,
    /// The request path.
    pub path: String,
    /// The query string.
    pub query: Option<String>,
    /// The client's address.
    pub peer: std::net::IpAddr,
    /// `http` or `https`: how the client reached the gateway.
    pub proto: &'static str,
    /// The session's connection id.
    pub connection_id: String,
    /// The token's `sub`.
    pub sub: Option<String>,
}

/// An open upstream.
pub struct Connected {
    /// Its URL, for logs, `/sessions` and close reasons.
    pub url: String,
    /// Its name for clients (`upstream N`), for close reasons.
    pub label: String,
    /// Its reading end.
    pub reader: Reader,
    /// Its writing end.
    pub writer: Writer,
    /// Bytes it sent after its handshake answer.
    pub prefix: Vec<u8>,
    /// The subprotocol it chose.
    pub protocol: Option<String>,
}

impl Upstreams {
    /// The upstreams, all healthy.
    pub fn new(urls: Vec<Url>) -> anyhow::Result<Upstreams> {
        if urls.is_empty() {
            anyhow::bail!("needs at least one upstream");
        }
        Ok(Upstreams {
            list: urls
                .into_iter()
                .enumerate()
                .map(|(i, url)| Upstream {
                    url,
                    label: format!("upstream {}", i + 1),
                    health: Mutex::new((0, None)),
                })
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// Whether any upstream is `wss://` (the node then needs a TLS client).
    pub fn any_tls(&self) -> bool {
        self.list.iter().any(|u| u.url.scheme() == "wss")
    }

    /// The order to try them in: round robin over the healthy ones, then those in back-off
    /// (tried anyway when nothing else is left, rather than refusing).
    fn order(&self) -> Vec<&Upstream> {
        let now = Instant::now();
        let (mut healthy, resting): (Vec<&Upstream>, Vec<&Upstream>) = self
            .list
            .iter()
            .partition(|u| u.health.lock().1.is_none_or(|until| until <= now));
        if !healthy.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
            healthy.rotate_left(start);
        }
        healthy.extend(resting);
        healthy
    }
}

impl Upstream {
    fn failed(&self) {
        let mut h = self.health.lock();
        h.0 = h.0.saturating_add(1);
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << (h.0 - 1).min(5))
            .min(BACKOFF_MAX);
        h.1 = Some(Instant::now() + backoff);
    }

    fn succeeded(&self) {
        *self.health.lock() = (0, None);
    }
}

/// Whether a client header goes upstream: not the ones the gateway sets itself, not those
/// that belong to one hop (including the names the client's `Connection` header lists), and
/// not a name with `_`, which CGI-style upstreams read as the `-` spelling of a header the
/// gateway vouches for (`X-Wsgate_Sub`), as nginx refuses them.
fn forwarded(name: &str, hop_by_hop: &[String]) -> bool {
    !name.contains('_')
        && !hop_by_hop.iter().any(|h| h.eq_ignore_ascii_case(name))
        && !matches!(
            name,
            "host"
                | "connection"
                | "upgrade"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "content-length"
                | "sec-websocket-key"
                | "sec-websocket-version"
                | "sec-websocket-protocol"
                | "sec-websocket-extensions"
                | "sec-websocket-accept"
                | "forwarded"
                | "x-real-ip"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-wsgate-connection-id"
                | "x-wsgate-sub"
        )
}

/// Whether `value` can travel as a header value: no CR, LF or NUL (a token's `sub` is any
/// JSON string, and one with a line break would write headers of its own upstream).
fn header_safe(value: &[u8]) -> bool {
    !value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// The upstream handshake request.
fn request(url: &Url, target: &str, fwd: &Forward, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut line = |name: &str, value: &[u8]| {
        if !header_safe(value) {
            tracing::warn!(
                header = name,
                "a header value with a line break is not forwarded"
            );
            return;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    line("Host", host.as_bytes());
    line("Upgrade", b"websocket");
    line("Connection", b"Upgrade");
    line("Sec-WebSocket-Key", key.as_bytes());
    line("Sec-WebSocket-Version", b"13");
    let offered = crate::ws::handshake::offered_protocols(&fwd.headers);
    if !offered.is_empty() {
        line("Sec-WebSocket-Protocol", offered.join(", ").as_bytes());
    }
    let hop_by_hop: Vec<String> = fwd
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .collect();
    for (name, value) in &fwd.headers {
        if forwarded(name.as_str(), &hop_by_hop) {
            line(name.as_str(), value.as_bytes());
        }
    }
    let mut xff: Vec<u8> = Vec::new();
    for v in fwd.headers.get_all("x-forwarded-for") {
        xff.extend_from_slice(v.as_bytes());
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(fwd.peer.to_string().as_bytes());
    line("X-Forwarded-For", &xff);
    line("X-Forwarded-Proto", fwd.proto.as_bytes());
    if let Some(h) = fwd.headers.get(http::header::HOST) {
        line("X-Forwarded-Host", h.as_bytes());
    }
    line("X-Wsgate-Connection-Id", fwd.connection_id.as_bytes());
    if let Some(sub) = &fwd.sub {
        line("X-Wsgate-Sub", sub.as_bytes());
    }
    let mut req = format!("GET {target} HTTP/1.1\r\n").into_bytes();
    req.extend_from_slice(&out);
    req.extend_from_slice(b"\r\n");
    req
}

/// A TCP or TLS connection to an upstream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    fn split(self) -> (Reader, Writer) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// Why an upstream was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// It answered the handshake with a 4xx: the client's request is refused, by an upstream
    /// that is up (no other upstream is asked, and its health stands).
    #[error("the upstream refused the client with {0}")]
    Refused(u16),
    /// It could not be reached, or failed: the next upstream is tried.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for OpenError {
    fn from(why: String) -> OpenError {
        OpenError::Failed(why)
    }
}

impl From<&str> for OpenError {
    fn from(why: &str) -> OpenError {
        OpenError::Failed(why.to_owned())
    }
}

/// Why one upstream could not be opened.
fn describe(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// Opens one upstream and does the handshake.
async fn open(
    url: &Url,
    target: &str,
    fwd: &Forward,
    tls: Option<&TlsConnector>,
) -> Result<Connected, OpenError> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(describe)?;
    let _ = tcp.set_nodelay(true);
    let mut stream = if url.scheme() == "wss" {
        let Some(tls) = tls else {
            return Err("no TLS client".into());
        };
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| format!("bad TLS server name: {e}"))?;
        Stream::Tls(Box::new(
            tls.connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?,
        ))
    } else {
        Stream::Plain(tcp)
    };
    let key = generate_key();
    stream
        .write_all(&request(url, target, fwd, &key))
        .await
        .map_err(describe)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            if buf.len() >= MAX_ANSWER {
                return Err("handshake answer over 16 KiB".into());
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[len..]).await.map_err(describe)?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut headers);
        let body = match answer.parse(&buf[..len]) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(at)) => at,
            Err(e) => return Err(format!("bad handshake answer: {e}").into()),
        };
        let code = answer.code.unwrap_or(0);
        if (400..500).contains(&code) {
            return Err(OpenError::Refused(code));
        }
        if code != 101 {
            return Err(OpenError::Failed(format!(
                "answered {code} {}",
                answer.reason.unwrap_or_default()
            )));
        }
        let header = |name: &str| {
            answer
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        if header("sec-websocket-accept").as_deref()
            != Some(derive_accept_key(key.as_bytes()).as_str())
        {
            return Err("wrong Sec-WebSocket-Accept".into());
        }
        if header("sec-websocket-extensions").is_some() {
            return Err("agreed an extension that was not offered".into());
        }
        let protocol = header("sec-websocket-protocol");
        if let Some(p) = &protocol {
            if !crate::ws::handshake::offered_protocols(&fwd.headers)
                .iter()
                .any(|o| o == p)
            {
                return Err(
                    format!("chose subprotocol {p:?}, which the client did not offer").into(),
                );
            }
        }
        let prefix = buf[body..len].to_vec();
        let (reader, writer) = stream.split();
        return Ok(Connected {
            url: url.to_string(),
            label: String::new(),
            reader,
            writer,
            prefix,
            protocol,
        });
    }
}

impl ProxyRoute {
    /// Opens an upstream for a client: each in turn (round robin, those in back-off last),
    /// each within `connect_timeout`; the error names every failure.
    pub async fn connect(
        &self,
        fwd: &Forward,
        tls: Option<&TlsConnector>,
    ) -> Result<Connected, OpenError> {
        let mut failures = Vec::new();
        for upstream in self.upstreams.order() {
            let target = self.upstream_target(&upstream.url, &fwd.path, fwd.query.as_deref());
            let why = match tokio::time::timeout(
                self.connect_timeout,
                open(&upstream.url, &target, fwd, tls),
            )
            .await
            {
                Ok(Ok(mut connected)) => {
                    upstream.succeeded();
                    connected.label = upstream.label.clone();
                    return Ok(connected);
                }
                Ok(Err(OpenError::Refused(status))) => {
                    upstream.succeeded();
                    return Err(OpenError::Refused(status));
                }
                Ok(Err(OpenError::Failed(why))) => why,
                Err(_) => format!("no handshake within {:?}", self.connect_timeout),
            };
            upstream.failed();
            tracing::info!(upstream = %upstream.url, %why, "upstream failed");
            failures.push(format!("{}: {why}", upstream.label));
        }
        Err(OpenError::Failed(format!(
            "no upstream reachable: {}",
            failures.join("; ")
        )))
    }
}

/// The TLS client for `wss://` upstreams: the system's roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` choose others, as with OpenSSL).
pub fn tls_connector() -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        anyhow::bail!(
            "no trusted root certificates found for wss:// upstreams (set SSL_CERT_FILE)"
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
