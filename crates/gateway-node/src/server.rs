//! The accept loop of both listeners, and the client listener's routes.
//!
//! The accept loop is ours rather than `axum::serve` so that an upgraded connection is the
//! plain `TcpStream` (or the TLS stream, for wss://) underneath (the session writes to it
//! directly), so that every accepted socket gets `TCP_NODELAY`, and so that what a connection
//! may cost before it has sent a whole request is bounded: a header timeout (which the TLS
//! handshake shares), a header size limit (431), a slot taken at accept on the client
//! listener, a connection bound on the admin listener, and a deadline on the connections
//! still open when the listener stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::app::App;
use crate::ws::limits::{PendingSlot, Slots};

/// Largest request line plus headers, in bytes (SPEC section 3): over it the answer is 431.
/// hyper's read buffer is this large at most, so it also bounds what a slow client holds.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long connections still open when a listener stops may take to finish their request
/// (answers in flight, a handshake half sent); then they are dropped, so that no client can
/// hold a drain's exit.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Time a connection refused a slot at accept has to send the request that its 503 or 429
/// answers.
pub const REFUSED_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// What one listener allows a connection before and while it sends a request.
#[derive(Clone)]
pub struct ServeOptions {
    /// Time to send the request line and headers.
    pub header_timeout: Duration,
    /// Connections served at once; the rest wait in the kernel's accept queue.
    pub max_connections: Option<usize>,
    /// Client listener: each connection takes a slot at accept (node and per-IP limits).
    pub slots: Option<Arc<Slots>>,
    /// Client listener with `server.tls_cert_file`: the TLS handshake comes first, within the
    /// same header timeout.
    pub tls: Option<TlsAcceptor>,
}

/// `server.path` (matched exactly) upgrades to a wsgate session; paths under a `[[proxy]]`
/// prefix are proxied; everything else is 404 with a JSON body.
pub fn client_router(app: Arc<App>) -> axum::Router {
    let path = app.config.server.path.clone();
    axum::Router::new()
        .route(&path, get(crate::ws::handshake::upgrade))
        .fallback(crate::proxy::session::upgrade_or_404)
        .with_state(app)
}

/// Accepts connections until `stop`, then gives the open ones [`STOP_GRACE`] to finish.
/// Upgraded connections are sessions, which the drain ends, not this loop.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let conns = TaskTracker::new();
    let bound = opts.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    loop {
        let permit = match &bound {
            None => None,
            Some(sem) => tokio::select! {
                p = sem.clone().acquire_owned() => p.ok(),
                () = stop.cancelled() => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Small frames to many sockets: Nagle's algorithm would hold a frame back until the
        // client's (delayed) ACK of the previous one, adding up to 40 ms.
        let _ = tcp.set_nodelay(true);
        let slot = opts
            .slots
            .as_ref()
            .map(|slots| PendingSlot::accept(slots, peer.ip()));
        let router = router.clone();
        let stop = stop.clone();
        // A connection over the limits counts against nothing while it sends the request its
        // refusal answers: it gets a second for that, not the whole handshake timeout.
        let header_timeout = if slot.as_ref().is_some_and(PendingSlot::refused) {
            opts.header_timeout.min(REFUSED_HEADER_TIMEOUT)
        } else {
            opts.header_timeout
        };
        let tls = opts.tls.clone();
        conns.spawn(async move {
            let conn = Conn {
                peer,
                router,
                stop,
                header_timeout,
                slot,
            };
            match tls {
                None => conn.serve(tcp).await,
                Some(acceptor) => {
                    let started = tokio::time::Instant::now();
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            // One budget for the TLS handshake and the request headers.
                            let left = header_timeout.saturating_sub(started.elapsed());
                            conn.with_header_timeout(left.max(Duration::from_millis(1)))
                                .serve(stream)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    conns.close();
    if tokio::time::timeout(STOP_GRACE, conns.wait())
        .await
        .is_err()
    {
        tracing::debug!(
            open = conns.len(),
            "connections unfinished after the listener stopped: dropping them"
        );
    }
    Ok(())
}

/// One accepted connection and what serving it needs.
struct Conn {
    peer: SocketAddr,
    router: axum::Router,
    stop: CancellationToken,
    header_timeout: Duration,
    slot: Option<PendingSlot>,
}

impl Conn {
    fn with_header_timeout(mut self, header_timeout: Duration) -> Conn {
        self.header_timeout = header_timeout;
        self
    }

    /// Serves HTTP/1.1 requests on `io` (a TCP or TLS stream) until it closes, upgrades or the
    /// listener stops.
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            peer,
            router,
            stop,
            header_timeout,
            slot,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(slot) = &slot {
                req.extensions_mut().insert(slot.clone());
            }
            let mut router = router.clone();
            // `Router` is always ready, and its error type is `Infallible`.
            async move { router.call(req.map(axum::body::Body::new)).await }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
