//! WebSocket upstreams for the reverse proxy's tests: real servers on loopback that record
//! what reaches them (request path, headers, close frames, losses) and behave as told (echo,
//! choose a subprotocol, never answer the handshake, never read, flood).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// How an upstream behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Echoes messages; text commands (see [`Upstream`]) make it do other things.
    Echo,
    /// Echoes, and chooses the client's second offered subprotocol.
    ChooseSecond,
    /// Accepts TCP and never answers the handshake.
    Silent,
    /// Completes the handshake and never reads again.
    NoRead,
    /// Refuses every handshake with 403.
    Forbid,
}

/// Close frames received: code and reason, `(None, "lost")` for a connection that ended
/// without one.
pub type Closes = Arc<Mutex<Vec<(Option<u16>, String)>>>;

/// A handshake the upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Path and query.
    pub target: String,
    /// Headers, names lower-case (repeated ones joined with `, `).
    pub headers: HashMap<String, String>,
}

/// A running upstream. Echo commands (text messages): `close:CODE:REASON` closes with that
/// code, `close-empty` closes with no code, `drop` drops the TCP connection, `frag` sends
/// "frag" as two frames, `bad-utf8` sends a text frame that is not UTF-8, `flood` sends 1 KiB
/// text messages until the socket fails (counting the bytes in `flooded`).
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Handshakes seen.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Close frames received (code, reason), and `lost` for connections that ended without.
    pub closes: Closes,
    /// TCP connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Bytes a `flood` got written.
    pub flooded: Arc<AtomicU64>,
}

impl Upstream {
    /// Starts a `ws://` upstream.
    pub async fn start(behaviour: Behaviour) -> Upstream {
        Upstream::start_inner(behaviour, None).await
    }

    /// Starts a `wss://` upstream serving `cert` and `key`.
    pub async fn start_tls(behaviour: Behaviour, cert: &Path, key: &Path) -> Upstream {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Upstream::start_inner(
            behaviour,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_inner(behaviour: Behaviour, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            seen: Default::default(),
            closes: Default::default(),
            accepted: Default::default(),
            flooded: Default::default(),
        };
        let shared = (
            up.seen.clone(),
            up.closes.clone(),
            up.accepted.clone(),
            up.flooded.clone(),
        );
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                shared.2.fetch_add(1, Ordering::SeqCst);
                if behaviour == Behaviour::Silent {
                    held.push(tcp);
                    continue;
                }
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, behaviour, shared).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, behaviour, shared).await
                            }
                        }
                    }
                });
            }
        });
        up
    }

    /// Its `ws://` URL with `path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The last handshake it saw.
    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a handshake")
    }

    /// Waits for the `n`th close (or loss) to reach it, and returns it.
    pub async fn close_received(&self, n: usize) -> (Option<u16>, String) {
        crate::eventually("the upstream to see the close", || async {
            self.closes.lock().unwrap().len() >= n
        })
        .await;
        self.closes.lock().unwrap()[n - 1].clone()
    }
}

type Shared = (
    Arc<Mutex<Vec<Seen>>>,
    Closes,
    Arc<AtomicUsize>,
    Arc<AtomicU64>,
);

// tungstenite's handshake callback returns its large error response by value.
#[allow(clippy::result_large_err)]
async fn serve<S>(stream: S, behaviour: Behaviour, (seen, closes, _, flooded): Shared)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let record = seen.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let mut headers: HashMap<String, String> = HashMap::new();
        for (k, v) in req.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers
                .entry(k.as_str().to_owned())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(&v);
                })
                .or_insert(v);
        }
        if behaviour == Behaviour::ChooseSecond {
            let offered: Vec<String> = headers
                .get("sec-websocket-protocol")
                .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
                .unwrap_or_default();
            if let Some(p) = offered.get(1) {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", p.parse().unwrap());
            }
        }
        record.lock().unwrap().push(Seen {
            target: req.uri().to_string(),
            headers,
        });
        if behaviour == Behaviour::Forbid {
            let mut refusal = ErrorResponse::new(Some("no".into()));
            *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
            return Err(refusal);
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    if behaviour == Behaviour::NoRead {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let (mut tx, mut rx) = ws.split();
    let mut closed = false;
    while let Some(msg) = rx.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(_) => break,
        };
        let reply = match msg {
            Message::Close(frame) => {
                closes.lock().unwrap().push(match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                    None => (None, String::new()),
                });
                closed = true;
                // tungstenite answers the close itself.
                let _ = tx.flush().await;
                continue;
            }
            Message::Text(t) => match t.as_str() {
                "drop" => return,
                "close-empty" => {
                    let _ = tx.send(Message::Close(None)).await;
                    continue;
                }
                "frag" => {
                    let _ = tx
                        .feed(Message::Frame(Frame::message(
                            "fr",
                            OpCode::Data(Data::Text),
                            false,
                        )))
                        .await;
                    let _ = tx
                        .send(Message::Frame(Frame::message(
                            "ag",
                            OpCode::Data(Data::Continue),
                            true,
                        )))
                        .await;
                    continue;
                }
                "bad-utf8" => {
                    let bad = vec![b'a', 0xFF, 0xFE];
                    let _ = tx
                        .send(Message::Frame(Frame::message(
                            bad,
                            OpCode::Data(Data::Text),
                            true,
                        )))
                        .await;
                    continue;
                }
                "flood" => {
                    let flooded = flooded.clone();
                    tokio::spawn(async move {
                        let chunk = "f".repeat(1024);
                        while tx.send(Message::text(chunk.clone())).await.is_ok() {
                            flooded.fetch_add(1024, Ordering::SeqCst);
                        }
                    });
                    // Keep reading (a close, the end) while the flood runs.
                    while let Some(Ok(m)) = rx.next().await {
                        if let Message::Close(Some(f)) = m {
                            closes
                                .lock()
                                .unwrap()
                                .push((Some(u16::from(f.code)), f.reason.to_string()));
                        }
                    }
                    return;
                }
                cmd if cmd.starts_with("close:") => {
                    let mut parts = cmd.splitn(3, ':').skip(1);
                    let code: u16 = parts.next().unwrap().parse().unwrap();
                    let reason = parts.next().unwrap_or("").to_owned();
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        })))
                        .await;
                    continue;
                }
                _ => Message::Text(t),
            },
            Message::Binary(b) => Message::Binary(b),
            _ => continue,
        };
        if tx.send(reply).await.is_err() {
            break;
        }
    }
    if !closed {
        closes.lock().unwrap().push((None, "lost".into()));
    }
}
